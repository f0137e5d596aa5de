"""One episode of one env driven by a policy: what the scripted collection records and what a
fine-tuning video shows (many envs at once: ``policy.evaluation.Evaluator`` and fine-tuning's
collection step vector envs and record with the same :class:`datasets.episode.EpisodeRecorder`)."""

from __future__ import annotations

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
