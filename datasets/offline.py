"""Loading robomimic-format HDF5 demonstrations into a replay buffer.

Any robomimic-format file works, not only the ones ``sim.collect`` writes:

- observation keys are chosen by config; an unknown key is an error listing the file's keys;
- ``mask/<filter_key>`` selects demos (``filter_key: null`` takes all of them);
- a file without ``next_obs`` gets it by shifting ``obs`` (the last step repeats its obs and
  is a timeout or terminal, so its next observation never enters a target);
- a demo is split into episodes wherever ``next_obs[t] != obs[t + 1]``;
- actions must lie in [-1, 1];
- ``image_size=N`` resizes every camera's frames to NxN (``datasets.frames``), so that a file
  recorded at another size (robomimic's are 84x84) trains a policy at N.

``dones`` become terminals by the ``terminals`` rule; the first terminal ends its episode
(later steps are dropped: the task is over, and robomimic's ``done_mode 2`` marks every
step after the first success too). The last step of an episode without a terminal is a
timeout.

- ``success`` (default): terminal where ``dones == 1`` and the reward is positive. Works for
  ``done_mode`` 0, 1 and 2 files and for ours: a ``done`` at the end of a failed demo is not
  a terminal.
- ``dones``: terminal wherever ``dones == 1``.
- ``none``: no terminals; every episode ends in a timeout.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import h5py
import numpy as np
import torch

from datasets.replay import ObsSpec, ReplayBuffer, obs_spec_of
from datasets.episode import Episode
from datasets.returns import RewardConfig
from datasets.robomimic_hdf5 import demo_names, open_dataset, read_env_args
from datasets.frames import resize_frames

log = logging.getLogger(__name__)
TERMINAL_RULES = ("success", "dones", "none")
ACTION_TOLERANCE = 1e-6
REQUIRED_DEMO_KEYS = ("obs", "actions", "rewards")


def succeeded(rewards: np.ndarray) -> bool:
    """Whether an episode reached the goal: some reward is positive. Its ``dones`` cannot
    tell, since robomimic's ``done_mode`` 1 and 2 set the last step's done of every demo."""
    return bool(np.any(rewards > 0))


@dataclass
class LoaderStats:
    demos: int = 0
    episodes: int = 0
    transitions: int = 0
    terminals: int = 0
    successes: int = 0
    dropped_after_terminal: int = 0
    split_episodes: int = 0
    episode_lengths: list[int] = field(default_factory=list)


def _read_obs(group: h5py.Group, keys: list[str], where: str) -> dict[str, np.ndarray]:
    missing = [k for k in keys if k not in group]
    if missing:
        raise ValueError(f"{where}: observation key(s) {missing} not found; the file has: {sorted(group.keys())}")
    return {k: group[k][()] for k in keys}


def _check_observations(where: str, obs: dict[str, np.ndarray], steps: int, spec: ObsSpec | None,
                        image_size: int | None) -> None:
    """Lengths, finite values, and images as uint8 HxWx3 with the same shape in every demo
    (any size when they are resized to ``image_size``)."""
    for key, value in obs.items():
        if len(value) != steps:
            raise ValueError(f"{where}/{key} has {len(value)} steps, actions have {steps}")
        if value.ndim == 4 and (value.dtype != np.uint8 or value.shape[-1] != 3):
            raise ValueError(f"{where}/{key} holds {value.dtype} images of shape {list(value.shape[1:])}: images must be "
                             f"uint8 HxWx3 (floats in [0, 1] convert with (x * 255).round().astype(np.uint8))")
        if value.dtype != np.uint8 and not np.all(np.isfinite(value)):
            raise ValueError(f"{where}/{key} contains non-finite values (NaN or inf)")
        resized = image_size is not None and value.ndim == 4
        if spec is not None and not resized and list(value.shape[1:]) != spec[key]["shape"]:
            raise ValueError(f"{where}/{key} has shape {list(value.shape[1:])}, the first demo's is {spec[key]['shape']}")


def _check_demo(where: str, actions: np.ndarray, rewards: np.ndarray) -> None:
    if not np.all(np.isfinite(rewards)):
        raise ValueError(f"{where}/rewards contains non-finite values (NaN or inf)")
    if not np.all(np.isfinite(actions)):
        raise ValueError(f"{where}/actions contains non-finite values (NaN or inf)")
    if np.abs(actions).max(initial=0.0) > 1.0 + ACTION_TOLERANCE:
        raise ValueError(f"{where}/actions exceed [-1, 1] (max |a| = {np.abs(actions).max():.3f})")


def _resized(obs: dict[str, np.ndarray], image_size: int | None) -> dict[str, np.ndarray]:
    if image_size is None:
        return obs
    return {key: resize_frames(value, image_size) if value.ndim == 4 else value for key, value in obs.items()}


def check_terminals_rule(terminals: str) -> None:
    if terminals not in TERMINAL_RULES:
        raise ValueError(f"unknown terminals rule {terminals!r}; available: {', '.join(TERMINAL_RULES)}")


class DemoFile:
    """A robomimic-format file, opened once for everything read from it: the env it was made
    in, the observation spec, the splits and the episodes (``with DemoFile(path) as data:``)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.file = open_dataset(self.path)

    def __enter__(self) -> "DemoFile":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        self.file.close()

    def env_args(self) -> dict[str, Any]:
        """The ``env_args`` the file was made with (``env_name`` and ``env_kwargs``)."""
        return read_env_args(self.file)

    def demo_names(self, filter_key: str | None = None) -> list[str]:
        return demo_names(self.file, filter_key)

    def obs_spec(self, obs_keys: list[str], image_size: int | None = None) -> ObsSpec:
        """Shapes and dtypes of ``obs_keys`` in the first demo, images resized to ``image_size``
        when given."""
        group = self.file[f"data/{self.demo_names()[0]}/obs"]
        missing = [k for k in obs_keys if k not in group]
        if missing:
            raise ValueError(f"{self.path}: observation key(s) {missing} not found; the file has: {sorted(group.keys())}")
        spec = {}
        for key in obs_keys:
            shape = list(group[key].shape[1:])
            if image_size is not None and len(shape) == 3:
                shape = [image_size, image_size, shape[2]]
            spec[key] = {"shape": shape, "dtype": "uint8" if group[key].dtype == np.uint8 else "float32"}
        return spec

    def episodes(self, obs_keys: list[str], filter_key: str | None = "train", terminals: str = "success",
                 stats: LoaderStats | None = None, image_size: int | None = None) -> Iterator[Episode]:
        """Episodes of the selected demos, following the rules in the module docstring."""
        check_terminals_rule(terminals)
        stats = stats if stats is not None else LoaderStats()
        spec = None
        for name in self.demo_names(filter_key):
            where = f"{self.path}: data/{name}"
            demo = self._read_demo(name, obs_keys)
            _check_observations(f"{where}/obs", demo.obs, len(demo.actions), spec, image_size)
            _check_demo(where, demo.actions, demo.rewards)
            if demo.next_obs is not None:
                _check_observations(f"{where}/next_obs", demo.next_obs, len(demo.actions), spec, image_size)
            ends = _episode_breaks(demo.obs, demo.next_obs)  # as stored: a resize could make distinct frames equal
            obs = _resized(demo.obs, image_size)
            next_obs = (_resized(demo.next_obs, image_size) if demo.next_obs is not None
                        else {k: np.concatenate([v[1:], v[-1:]]) for k, v in obs.items()})
            spec = spec or obs_spec_of(obs)
            stats.demos += 1
            stats.split_episodes += len(ends)
            for start, stop in zip(np.concatenate([[0], ends]), np.concatenate([ends, [len(demo.actions)]])):
                episode = _episode(name, obs, next_obs, demo, int(start), int(stop), terminals, stats)
                stats.episodes += 1
                stats.transitions += len(episode)
                stats.successes += int(succeeded(episode.rewards))
                stats.episode_lengths.append(len(episode))
                yield episode

    def _read_demo(self, name: str, obs_keys: list[str]) -> "_Demo":
        where = f"{self.path}: data/{name}"
        try:
            demo = self.file[f"data/{name}"]
            for required in REQUIRED_DEMO_KEYS:
                if required not in demo:
                    raise ValueError(f"{where}: missing '{required}'")
            obs = _read_obs(demo["obs"], obs_keys, f"{where}/obs")
            actions = demo["actions"][()].astype(np.float32)
            steps = len(actions)
            rewards = demo["rewards"][()].astype(np.float32)
            if rewards.size != steps:
                raise ValueError(f"{where}/rewards has {rewards.size} steps, actions have {steps}")
            dones = demo["dones"][()].reshape(steps) > 0 if "dones" in demo else np.zeros(steps, bool)
            next_obs = _read_obs(demo["next_obs"], obs_keys, f"{where}/next_obs") if "next_obs" in demo else None
        except (OSError, KeyError, RuntimeError) as error:  # h5py's errors for damaged objects
            raise ValueError(f"{where}: cannot be read ({error})") from None
        return _Demo(obs, next_obs, actions, rewards.reshape(steps), dones)

    def load_replay(self, obs_keys: list[str], gamma: float, reward: RewardConfig, filter_key: str | None = "train",
                    terminals: str = "success", image_size: int | None = None,
                    device: torch.device | str = "cpu") -> tuple[ReplayBuffer, LoaderStats]:
        """All selected episodes in a replay buffer on ``device``, with MC returns; camera frames
        resized to ``image_size`` when given."""
        stats = LoaderStats()
        episodes = list(self.episodes(obs_keys, filter_key, terminals, stats, image_size))
        if not episodes:
            raise ValueError(f"{self.path}: no episodes selected (filter key {filter_key!r})")
        transitions = sum(len(e) for e in episodes)
        buffer = ReplayBuffer(self.obs_spec(obs_keys, image_size), episodes[0].actions.shape[1], transitions,
                              transitions + len(episodes), device)
        for episode in episodes:
            buffer.add_episode(episode.obs, episode.next_obs, **episode.transitions(gamma, reward))
        log.info("loaded %s: %d episodes, %d transitions, %d terminals, replay %.1f MB",
                 self.path, stats.episodes, stats.transitions, stats.terminals, buffer.nbytes / 2**20)
        return buffer, stats


@dataclass
class _Demo:
    """One demo's arrays as read from the file (``next_obs`` None where it has none)."""

    obs: dict[str, np.ndarray]
    next_obs: dict[str, np.ndarray] | None
    actions: np.ndarray
    rewards: np.ndarray
    dones: np.ndarray


def _episode_breaks(obs: dict[str, np.ndarray], next_obs: dict[str, np.ndarray] | None) -> np.ndarray:
    """Step indices where a new episode starts: where the next observation is not the following one."""
    if next_obs is None:
        return np.array([], dtype=int)
    steps = len(next(iter(obs.values())))
    breaks = np.zeros(max(steps - 1, 0), bool)
    for key in obs:
        breaks |= (next_obs[key][:-1] != obs[key][1:]).reshape(steps - 1, -1).any(axis=1)
    return np.flatnonzero(breaks) + 1


def _episode(name: str, obs: dict[str, np.ndarray], next_obs: dict[str, np.ndarray], demo: _Demo, start: int, stop: int,
             terminals: str, stats: LoaderStats) -> Episode:
    """Steps ``start:stop`` of a demo as an episode: its first terminal (by the ``terminals``
    rule) ends it; without one its last step is a timeout."""
    terminal = demo.dones[start:stop].copy()
    if terminals == "success":
        terminal &= demo.rewards[start:stop] > 0
    elif terminals == "none":
        terminal[:] = False
    if terminal.any():
        first = int(np.argmax(terminal))
        stats.dropped_after_terminal += (stop - start) - (first + 1)
        stop = start + first + 1
        terminal = terminal[: first + 1]
        stats.terminals += 1
    return Episode(obs={k: v[start:stop] for k, v in obs.items()}, next_obs={k: v[start:stop] for k, v in next_obs.items()},
                   actions=demo.actions[start:stop], rewards=demo.rewards[start:stop], terminals=terminal,
                   attrs={"source": name})


def iter_episodes(
    path: str | Path, obs_keys: list[str], filter_key: str | None = "train", terminals: str = "success",
    stats: LoaderStats | None = None, image_size: int | None = None,
) -> Iterator[Episode]:
    """:meth:`DemoFile.episodes` of the file at ``path``."""
    check_terminals_rule(terminals)  # a setting's error before the file's
    with DemoFile(path) as data:
        yield from data.episodes(obs_keys, filter_key, terminals, stats, image_size)


def file_obs_spec(path: str | Path, obs_keys: list[str], image_size: int | None = None) -> ObsSpec:
    """:meth:`DemoFile.obs_spec` of the file at ``path``."""
    with DemoFile(path) as data:
        return data.obs_spec(obs_keys, image_size)


def load_replay(
    path: str | Path, obs_keys: list[str], gamma: float, reward: RewardConfig,
    filter_key: str | None = "train", terminals: str = "success", image_size: int | None = None,
    device: torch.device | str = "cpu",
) -> tuple[ReplayBuffer, LoaderStats]:
    """:meth:`DemoFile.load_replay` of the file at ``path``."""
    check_terminals_rule(terminals)
    with DemoFile(path) as data:
        return data.load_replay(obs_keys, gamma, reward, filter_key, terminals, image_size, device)
