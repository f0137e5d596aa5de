"""Evaluation: deterministic episodes of a policy in parallel sim workers, and the
calibration picture (the critic's Q against Monte-Carlo returns on fixed states)."""

from __future__ import annotations

import logging
from typing import Any, Callable

import numpy as np
import torch

import sim
from datasets.episode import Episode
from datasets.offline import DemoFile
from datasets.replay import Batch, ReplayBuffer
from datasets.returns import RewardConfig
from policy.agent import Agent
from sim.rollout import EpisodeCollector

log = logging.getLogger(__name__)


def calibration_batch(data: DemoFile, obs_keys: list[str], gamma: float, reward: RewardConfig, terminals: str,
                      filter_key: str | None, count: int, seed: int, fallback: ReplayBuffer,
                      image_size: int | None = None) -> Batch:
    """``count`` fixed dataset states with their MC returns, from the held-out split
    ``filter_key`` when the file has one (frames resized to ``image_size`` like the training
    replay's), else from ``fallback`` (the training replay)."""
    source = fallback
    if filter_key:
        try:
            source, _ = data.load_replay(obs_keys, gamma, reward, filter_key, terminals, image_size)
        except ValueError as error:
            log.info("calibration states from the training split (%s)", error)
    index = np.random.default_rng(seed).integers(0, len(source), size=min(count, len(source)))
    return source.gather(index, gamma)


def calibration_metrics(agent: Agent, batch: Batch, prefix: str = "") -> dict[str, float]:
    """Mean Q of the policy's and the data's actions against the mean MC return on ``batch``'s
    states, the share of states whose policy action is valued below its MC return (where
    Cal-QL's bound acts; for CQL: whether its critic is conservative), and whether Q ranks
    states like their returns do (``q_data_mc_corr``)."""
    q_policy = agent.q_values(batch.obs)
    q_data = agent.q_values(batch.obs, batch.actions)
    returns = torch.as_tensor(batch.mc_returns).cpu().numpy()
    spread = np.std(q_data) > 0 and np.std(returns) > 0
    return {
        f"{prefix}q_policy": float(q_policy.mean()),
        f"{prefix}q_data": float(q_data.mean()),
        f"{prefix}mc_return": float(returns.mean()),
        f"{prefix}q_policy_minus_mc": float((q_policy - returns).mean()),
        f"{prefix}q_policy_below_mc": float((q_policy < returns).mean()),
        f"{prefix}q_data_mc_corr": float(np.corrcoef(q_data, returns)[0, 1]) if spread else float("nan"),
    }


def evaluate_policies(evaluator: "Evaluator", agent: Agent, episodes: int, trained_too: bool) -> dict[str, float]:
    """The evaluated policy's success rate, return and length over ``episodes`` seeded episodes,
    and ``trained_success_rate``: the trained weights' on the same episodes. With a policy average
    that is a second evaluation (skipped unless ``trained_too``); without one the evaluated
    policy is the trained weights."""
    metrics = evaluator.run(lambda obs: agent.act(obs), episodes)
    metrics["policy_average"] = float(agent.policy_average is not None)  # which policy success_rate is
    if agent.policy_average is None:
        metrics["trained_success_rate"] = metrics["success_rate"]
    elif trained_too:
        trained = evaluator.run(lambda obs: agent.act(obs, trained=True), episodes)
        metrics.update({f"trained_{key}": value for key, value in trained.items()})
    return metrics


class Evaluator:
    """Runs seeded episodes of an env in ``workers`` processes (started on first use)."""

    def __init__(self, env_name: str, env_kwargs: dict, workers: int, seed: int) -> None:
        self.env_name = env_name
        self.env_kwargs = env_kwargs
        self.workers = workers
        self.seed = seed
        self._collector: EpisodeCollector | None = None

    def episodes(self, policy: Callable[[dict[str, np.ndarray]], np.ndarray], episodes: int,
                 keys: list[str] | None = None) -> list[Episode]:
        """``episodes`` seeded episodes of ``policy``, in seed order, recording the observations
        ``keys`` (none by default: outcomes only)."""
        if self._collector is None:
            envs = sim.make_vector_env(self.env_name, self.workers, autoreset_mode="SameStep", **self.env_kwargs)
            self._collector = EpisodeCollector(envs, keys=[])
        self._collector.keys = list(keys or [])
        played: list[Episode] = []
        for first in range(0, episodes, self.workers):
            count = min(self.workers, episodes - first)
            self._collector.start([self.seed + first + i for i in range(self.workers)], count)
            ended: list[Episode] = []
            while not self._collector.idle:
                ended += self._collector.step(policy, pause=True)[1]
            played += sorted(ended, key=lambda episode: episode.attrs["env"])
        return played

    def run(self, policy: Callable[[dict[str, np.ndarray]], np.ndarray], episodes: int,
            per_episode: bool = False) -> dict[str, Any]:
        """Success rate, mean return and mean length over ``episodes`` seeded episodes (and with
        ``per_episode`` each episode's success, in seed order, as ``successes``)."""
        played = self.episodes(policy, episodes)
        successes = [episode.attrs["success"] for episode in played]
        returns = [float(episode.rewards.sum()) for episode in played]
        lengths = [len(episode) for episode in played]
        metrics: dict[str, Any] = {
            "success_rate": float(np.mean(successes)),
            "return": float(np.mean(returns)),
            "episode_length": float(np.mean(lengths)),
        }
        if per_episode:
            metrics["successes"] = [bool(success) for success in successes]
        return metrics

    def close(self) -> None:
        if self._collector is not None:
            self._collector.envs.close()
            self._collector = None
