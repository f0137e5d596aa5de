"""Monte-Carlo returns-to-go, the reference values that calibrate Cal-QL."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class RewardConfig:
    # -10 per step, 0 at success. The scale sets the reward's size against CQL's penalty,
    # whose pull on Q is in absolute units: at scale 1 that pull outweighed the -1 per step
    # and the critic drifted above every possible return (measured; README).
    scale: float = 10.0
    bias: float = -10.0
    sparse: bool = True  # episodes with no positive reward get the infinite-horizon failure value


def transform_rewards(rewards: np.ndarray, scale: float, bias: float) -> np.ndarray:
    """``r * scale + bias``, the reward transform applied before returns are computed."""
    return (np.asarray(rewards, dtype=np.float64) * scale + bias).astype(np.float32)


def mc_returns(
    rewards: np.ndarray,
    terminals: np.ndarray,
    gamma: float,
    failure_value: float | None = None,
) -> np.ndarray:
    """Discounted returns-to-go of one episode of already transformed rewards.

    ``G_t = r_t + gamma * (1 - terminal_t) * G_{t+1}``, with ``G = 0`` after the last step:
    an episode cut off by a time limit is not bootstrapped. When ``failure_value`` is given
    (a sparse-reward episode that never succeeded) every step gets it instead: the value of
    failing forever, ``r_fail / (1 - gamma)``, rather than a sum truncated by the time limit.
    """
    rewards = np.asarray(rewards, dtype=np.float64)
    terminals = np.asarray(terminals, dtype=bool)
    if rewards.shape != terminals.shape or rewards.ndim != 1:
        raise ValueError(f"rewards {rewards.shape} and terminals {terminals.shape} must be equal 1-d shapes")
    if failure_value is not None:
        return np.full(len(rewards), failure_value, dtype=np.float32)
    returns = np.empty(len(rewards))
    future = 0.0
    for t in range(len(rewards) - 1, -1, -1):
        future = rewards[t] + gamma * (0.0 if terminals[t] else future)
        returns[t] = future
    return returns.astype(np.float32)


def episode_rewards_and_returns(
    raw_rewards: np.ndarray, terminals: np.ndarray, gamma: float, reward: RewardConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Transformed rewards and MC returns of one episode from its raw rewards: the one place
    where offline files and online episodes get the values the critic learns from.

    With ``reward.sparse``, an episode whose raw rewards are never positive never succeeded
    and gets the infinite-horizon failure value ``(0 * scale + bias) / (1 - gamma)``.
    """
    rewards = transform_rewards(raw_rewards, reward.scale, reward.bias)
    failed = reward.sparse and not np.any(np.asarray(raw_rewards) > 0)
    returns = mc_returns(rewards, terminals, gamma, failure_value=reward.bias / (1.0 - gamma) if failed else None)
    return rewards, returns
