"""Envs driven by a policy, recorded as :class:`datasets.episode.Episode`: one env for one episode
(``play_episode``: the scripted collection, fine-tuning's videos) and many envs collecting
episodes as they end (``EpisodeCollector``: fine-tuning's online data)."""

from __future__ import annotations

import time
from typing import Callable

import gymnasium as gym
import numpy as np

from datasets.episode import Episode, EpisodeRecorder


def play_episode(env: gym.Env, act: Callable[[dict[str, np.ndarray]], np.ndarray], seed: int,
                 states: bool = False, frames: bool = False) -> tuple[Episode, list[np.ndarray]]:
    """Reset ``env`` with ``seed`` and step it with ``act(obs)`` until the episode ends. Returns
    the episode (``attrs["success"]``: the env's ``is_success`` at the end; ``states``: the
    simulator state before each step) and, with ``frames``, the rendered frames (the first
    before any step)."""
    recorder = EpisodeRecorder(states=states)
    obs, _ = env.reset(seed=seed)
    rendered = [env.render()] if frames else []
    while True:
        state = env.unwrapped.get_state() if states else None
        action = act(obs)
        next_obs, reward, terminated, truncated, info = env.step(action)
        recorder.add(obs, action, reward, terminated, next_obs, state)
        if frames:
            rendered.append(env.render())
        obs = next_obs
        if terminated or truncated:
            return recorder.finish({"success": bool(info["is_success"])}), rendered


class EpisodeCollector:
    """Many envs stepped together by one policy, each recording its episode; finished episodes
    are handed back as they end.

    A run that checkpoints at episode boundaries asks for a ``pause``: each env then finishes
    its episode and idles (its steps are neither kept nor counted) until every env is ``idle``
    and ``start`` begins new episodes in all of them."""

    def __init__(self, envs: gym.vector.VectorEnv, keys: list[str]) -> None:
        """``envs``: a vector env with same-step autoreset; ``keys``: the observations recorded
        (a new list applies from the next ``start``)."""
        self.envs = envs
        self.keys = keys
        self.recorders = [EpisodeRecorder(keys) for _ in range(envs.num_envs)]
        self.collecting = np.zeros(envs.num_envs, bool)
        self.obs: dict[str, np.ndarray] = {}
        self.sim_seconds = 0.0  # time spent inside the envs' steps

    @property
    def idle(self) -> bool:
        return not self.collecting.any()

    def start(self, seeds: list[int], count: int | None = None) -> None:
        """A new episode in every env, from these seeds (episodes in progress are dropped); with
        ``count``, only the first ``count`` envs collect (the others idle until the next start)."""
        self.obs, _ = self.envs.reset(seed=seeds)
        self.recorders = [EpisodeRecorder(self.keys) for _ in self.recorders]
        self.collecting[:] = np.arange(len(self.collecting)) < (len(self.collecting) if count is None else count)

    def step(self, act: Callable[[dict[str, np.ndarray]], np.ndarray], pause: bool = False) -> tuple[int, list[Episode]]:
        """One step of every env with ``act`` (the envs' batched observations, every key, to
        batched actions). Returns
        the steps kept (those of collecting envs) and the episodes this step finished, in env
        order (``attrs``: ``success``, ``sim_fault``, ``env``: the env's index); with ``pause`` an
        env whose episode ends stops collecting."""
        keys, obs = self.keys, self.obs
        actions = act(obs)
        start = time.perf_counter()
        next_obs, rewards, terminated, truncated, info = self.envs.step(actions)
        self.sim_seconds += time.perf_counter() - start
        kept = int(self.collecting.sum())
        done = terminated | truncated
        finished = []
        for i in np.flatnonzero(self.collecting):
            # with same-step autoreset a finished env already shows its reset observation
            following = info["final_obs"][i] if done[i] else {k: next_obs[k][i] for k in keys}
            self.recorders[i].add({k: obs[k][i] for k in keys}, actions[i], rewards[i], bool(terminated[i]), following)
            if done[i]:
                final_info = info["final_info"]
                fault = bool(final_info.get("sim_fault", np.zeros(len(done), bool))[i])
                finished.append(self.recorders[i].finish({"success": bool(final_info["is_success"][i]), "sim_fault": fault,
                                                          "env": int(i)}))
                self.collecting[i] = not pause
        self.obs = next_obs
        return kept, finished
