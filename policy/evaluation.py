"""Deterministic evaluation of a policy in parallel sim workers."""

from __future__ import annotations

from typing import Callable

import numpy as np

import sim


class Evaluator:
    """Runs seeded episodes of an env in ``workers`` processes (started on first use)."""

    def __init__(self, env_name: str, env_kwargs: dict, workers: int, seed: int) -> None:
        self.env_name = env_name
        self.env_kwargs = env_kwargs
        self.workers = workers
        self.seed = seed
        self._envs = None

    def run(self, policy: Callable[[dict[str, np.ndarray]], np.ndarray], episodes: int) -> dict[str, float]:
        """Success rate, mean return and mean length over ``episodes`` seeded episodes."""
        if self._envs is None:
            self._envs = sim.make_vector_env(self.env_name, self.workers, **self.env_kwargs)
        successes, returns, lengths = [], [], []
        for first in range(0, episodes, self.workers):
            count = min(self.workers, episodes - first)
            seeds = [self.seed + first + i for i in range(self.workers)]
            obs, _ = self._envs.reset(seed=seeds)
            active = np.arange(self.workers) < count
            episode_return = np.zeros(self.workers)
            episode_length = np.zeros(self.workers, dtype=int)
            success = np.zeros(self.workers, dtype=bool)
            while active.any():
                obs, reward, terminated, truncated, info = self._envs.step(policy(obs))
                episode_return += reward * active
                episode_length += active
                success |= active & np.asarray(info.get("is_success", np.zeros(self.workers, bool)), dtype=bool)
                active &= ~(terminated | truncated)
            successes += list(success[:count])
            returns += list(episode_return[:count])
            lengths += list(episode_length[:count])
        return {
            "success_rate": float(np.mean(successes)),
            "return": float(np.mean(returns)),
            "episode_length": float(np.mean(lengths)),
        }

    def close(self) -> None:
        if self._envs is not None:
            self._envs.close()
            self._envs = None
