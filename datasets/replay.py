"""In-memory replay of transitions with dict observations.

Image frames are stored once, as uint8 HWC: an episode of T steps keeps its T+1 frames and
each transition points at its observation frame and the next one. Low-dimensional
observations are small and stored per transition for both ``obs`` and ``next_obs``.
Every transition carries ``terminals`` (the task ended: no bootstrapping) apart from
``timeouts`` (a time limit cut the episode), and its Monte-Carlo return ``mc_returns``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

ObsSpec = dict[str, dict[str, Any]]  # key -> {"shape": [...], "dtype": "uint8" | "float32"}
TRANSITION_KEYS = ("actions", "rewards", "terminals", "timeouts", "mc_returns")


def is_image(spec: dict[str, Any]) -> bool:
    return spec["dtype"] == "uint8" and len(spec["shape"]) == 3


def obs_spec_of(obs: dict[str, np.ndarray], batched: bool = True) -> ObsSpec:
    """The observation spec of a (batched) observation dict."""
    return {
        key: {"shape": list(value.shape[1:] if batched else value.shape), "dtype": str(value.dtype)}
        for key, value in obs.items()
    }


class ReplayBuffer:
    """Fixed-capacity transition store; ``add_episode`` appends, ``sample`` draws uniformly."""

    def __init__(self, obs_spec: ObsSpec, action_dim: int, capacity: int, frame_capacity: int) -> None:
        self.obs_spec = obs_spec
        self.action_dim = action_dim
        self.capacity = capacity
        self.frame_capacity = frame_capacity
        self.image_keys = [k for k, s in obs_spec.items() if is_image(s)]
        self.lowdim_keys = [k for k, s in obs_spec.items() if not is_image(s)]
        self.frames = {k: np.empty((frame_capacity, *obs_spec[k]["shape"]), np.uint8) for k in self.image_keys}
        self.lowdim = {k: np.empty((capacity, *obs_spec[k]["shape"]), np.float32) for k in self.lowdim_keys}
        self.next_lowdim = {k: np.empty((capacity, *obs_spec[k]["shape"]), np.float32) for k in self.lowdim_keys}
        self.episode_end = np.empty(capacity, np.int64)  # one past the episode's last row
        self.obs_frame = np.empty(capacity, np.int64)
        self.next_frame = np.empty(capacity, np.int64)
        self.data = {
            "actions": np.empty((capacity, action_dim), np.float32),
            **{key: np.empty(capacity, np.float32) for key in TRANSITION_KEYS[1:]},
        }
        self.size = 0
        self.num_frames = 0
        self.num_episodes = 0

    def __len__(self) -> int:
        return self.size

    @property
    def nbytes(self) -> int:
        arrays = [*self.frames.values(), *self.lowdim.values(), *self.next_lowdim.values(), *self.data.values(),
                  self.episode_end, self.obs_frame, self.next_frame]
        return sum(a.nbytes for a in arrays)

    def add_episode(self, obs: dict[str, np.ndarray], next_obs: dict[str, np.ndarray], **transitions: np.ndarray) -> None:
        """Append one episode: ``obs``/``next_obs`` dicts of (T, ...) arrays where
        ``next_obs[t]`` is ``obs[t + 1]`` for t < T-1, and (T,)-arrays for TRANSITION_KEYS."""
        steps = len(transitions["actions"])
        if set(transitions) != set(TRANSITION_KEYS):
            raise ValueError(f"episode needs exactly {TRANSITION_KEYS}, got {sorted(transitions)}")
        if steps == 0:
            return
        if self.size + steps > self.capacity or self.num_frames + steps + 1 > self.frame_capacity:
            raise ValueError(f"replay is full: {self.size} + {steps} transitions exceed its capacity {self.capacity}")
        rows = slice(self.size, self.size + steps)
        for key in self.image_keys:
            frames = self.frames[key]
            frames[self.num_frames : self.num_frames + steps] = obs[key]
            frames[self.num_frames + steps] = next_obs[key][-1]
        for key in self.lowdim_keys:
            self.lowdim[key][rows] = obs[key]
            self.next_lowdim[key][rows] = next_obs[key]
        self.episode_end[rows] = self.size + steps
        self.obs_frame[rows] = self.num_frames + np.arange(steps)
        self.next_frame[rows] = self.num_frames + 1 + np.arange(steps)
        for key, value in transitions.items():
            self.data[key][rows] = np.asarray(value).reshape(self.data[key][rows].shape)
        self.size += steps
        self.num_frames += steps + 1
        self.num_episodes += 1

    def lowdim_stats(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Per-dimension mean and std of each low-dimensional key over the stored transitions."""
        if self.size == 0:
            raise ValueError("cannot compute statistics of an empty replay")
        stats = {}
        for key in self.lowdim_keys:
            values = self.lowdim[key][: self.size].astype(np.float64)
            stats[key] = (values.mean(axis=0), values.std(axis=0))
        return stats

    def gather(self, index: np.ndarray, n_step: int = 1, gamma: float | None = None) -> dict[str, Any]:
        """The transitions at ``index`` as a batch of numpy arrays.

        With ``n_step`` > 1 each transition spans up to n steps of its episode, stopping early
        at a terminal or at the episode's end: ``rewards`` is their discounted sum, ``next_obs``,
        ``terminals`` and ``timeouts`` are those of the last step, and ``discounts`` holds
        gamma**m for the m steps taken (the factor of the bootstrap value).
        """
        last = index
        if n_step > 1:
            if gamma is None:
                raise ValueError("n-step transitions need the discount gamma")
            offsets = np.arange(n_step)
            rows = index[:, None] + offsets  # (B, n)
            in_episode = rows < self.episode_end[index][:, None]
            rows = np.where(in_episode, rows, index[:, None])
            terminal = self.data["terminals"][rows] * in_episode
            taken = in_episode & (np.cumsum(terminal, axis=1) - terminal == 0)  # up to the first terminal
            steps = taken.sum(axis=1)
            last = index + steps - 1
        obs = {k: self.frames[k][self.obs_frame[index]] for k in self.image_keys}
        next_obs = {k: self.frames[k][self.next_frame[last]] for k in self.image_keys}
        for k in self.lowdim_keys:
            obs[k] = self.lowdim[k][index]
            next_obs[k] = self.next_lowdim[k][last]
        batch = {"obs": obs, "next_obs": next_obs, **{key: value[index] for key, value in self.data.items()}}
        if n_step > 1:
            batch["rewards"] = (self.data["rewards"][rows] * taken * gamma ** offsets).sum(axis=1).astype(np.float32)
            batch["terminals"] = self.data["terminals"][last]
            batch["timeouts"] = self.data["timeouts"][last]
            batch["discounts"] = (gamma ** steps).astype(np.float32)
        return batch

    def sample(self, batch_size: int, rng: np.random.Generator, n_step: int = 1, gamma: float | None = None) -> dict[str, Any]:
        if self.size == 0:
            raise ValueError("cannot sample from an empty replay")
        return self.gather(rng.integers(0, self.size, size=batch_size), n_step, gamma)
