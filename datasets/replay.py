"""In-memory replay of transitions with dict observations, held as tensors on the training device.

Image frames are stored once, as uint8 HWC: an episode of T steps keeps its T+1 frames and
each transition points at its observation frame and the next one. Low-dimensional
observations are small and stored per transition for both ``obs`` and ``next_obs``.
Every transition carries ``terminals`` (the task ended: no bootstrapping) apart from
``timeouts`` (a time limit cut the episode), and its Monte-Carlo return ``mc_returns``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import Any, Union

import numpy as np
import torch

ObsSpec = dict[str, dict[str, Any]]  # key -> {"shape": [...], "dtype": "uint8" | "float32"}
TRANSITION_KEYS = ("actions", "rewards", "terminals", "timeouts", "mc_returns")


Array = Union[np.ndarray, torch.Tensor]


@dataclass
class Batch:
    """A batch of transitions: the one shape every agent's ``update`` takes.

    ``discounts`` is the factor of the bootstrap value: gamma for one-step transitions,
    gamma**m for an n-step transition that took m steps. ``online`` is 1 for transitions from
    the online buffer (fine-tuning), 0 for offline data. A replay's batches are tensors on its
    device already; ``to_torch`` makes tensors on a device of any other batch (the model
    boundary). Images stay uint8 HWC until the encoder.
    """

    obs: dict[str, Array]
    next_obs: dict[str, Array]
    actions: Array
    rewards: Array
    terminals: Array
    timeouts: Array
    mc_returns: Array
    discounts: Array
    online: Array

    def __len__(self) -> int:
        return len(self.actions)

    def to_torch(self, device: torch.device | str) -> "Batch":
        def convert(value: Array) -> torch.Tensor:
            return torch.as_tensor(value).to(device, non_blocking=True)

        return Batch(**{
            f.name: ({k: convert(v) for k, v in getattr(self, f.name).items()} if f.name in ("obs", "next_obs")
                     else convert(getattr(self, f.name)))
            for f in fields(self)
        })

    @staticmethod
    def concatenate(parts: list["Batch"]) -> "Batch":
        if len(parts) == 1:
            return parts[0]
        return Batch(**{
            f.name: ({k: torch.cat([getattr(p, f.name)[k] for p in parts]) for k in getattr(parts[0], f.name)}
                     if f.name in ("obs", "next_obs") else torch.cat([getattr(p, f.name) for p in parts]))
            for f in fields(Batch)
        })

    @staticmethod
    def select(condition: torch.Tensor, where_true: "Batch", where_false: "Batch") -> "Batch":
        """Row i from ``where_true`` where ``condition[i]``, else from ``where_false``."""
        def pick(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return torch.where(condition.view(-1, *([1] * (a.dim() - 1))), a, b)

        return Batch(**{
            f.name: ({k: pick(getattr(where_true, f.name)[k], getattr(where_false, f.name)[k]) for k in getattr(where_true, f.name)}
                     if f.name in ("obs", "next_obs") else pick(getattr(where_true, f.name), getattr(where_false, f.name)))
            for f in fields(Batch)
        })


def is_image(spec: dict[str, Any]) -> bool:
    return spec["dtype"] == "uint8" and len(spec["shape"]) == 3


def input_image_size(obs_spec: ObsSpec) -> int | None:
    """The side of a policy's square camera frames, read off its observation spec (the one home
    of the trained input size; ``dataset.image_size`` and ``env.kwargs.image_size`` only decide
    what a new run loads and renders). None without cameras."""
    sizes = {spec["shape"][0] for spec in obs_spec.values() if is_image(spec)}
    if len(sizes) > 1:
        raise ValueError(f"cameras of different sizes {sorted(sizes)} in one observation spec")
    return sizes.pop() if sizes else None


def obs_spec_of(obs: dict[str, Array], batched: bool = True) -> ObsSpec:
    """The observation spec of a (batched) observation dict of arrays or tensors."""
    return {
        key: {"shape": list(value.shape[1:] if batched else value.shape), "dtype": str(value.dtype).removeprefix("torch.")}
        for key, value in obs.items()
    }


class ReplayBuffer:
    """Fixed-capacity transition store; ``add_episode`` appends, ``sample`` draws uniformly.

    Everything is held as torch tensors on ``device`` (the training device), so a batch is
    gathered where the model trains, with no copy from the host per update.
    """

    def __init__(self, obs_spec: ObsSpec, action_dim: int, capacity: int, frame_capacity: int,
                 device: torch.device | str = "cpu") -> None:
        self.obs_spec = obs_spec
        self.action_dim = action_dim
        self.capacity = capacity
        self.frame_capacity = frame_capacity
        self.device = torch.device(device)
        self.image_keys = [k for k, s in obs_spec.items() if is_image(s)]
        self.lowdim_keys = [k for k, s in obs_spec.items() if not is_image(s)]

        def empty(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
            return torch.empty(shape, dtype=dtype, device=self.device)

        self.frames = {k: empty(frame_capacity, *obs_spec[k]["shape"], dtype=torch.uint8) for k in self.image_keys}
        self.lowdim = {k: empty(capacity, *obs_spec[k]["shape"]) for k in self.lowdim_keys}
        self.next_lowdim = {k: empty(capacity, *obs_spec[k]["shape"]) for k in self.lowdim_keys}
        self.episode_end = empty(capacity, dtype=torch.int64)  # one past the episode's last row
        self.obs_frame = empty(capacity, dtype=torch.int64)
        self.next_frame = empty(capacity, dtype=torch.int64)
        self.data = {"actions": empty(capacity, action_dim), **{key: empty(capacity) for key in TRANSITION_KEYS[1:]}}
        self.size = 0
        self.num_frames = 0
        self.num_episodes = 0

    def __len__(self) -> int:
        return self.size

    def _tensors(self) -> list[torch.Tensor]:
        return [*self.frames.values(), *self.lowdim.values(), *self.next_lowdim.values(), *self.data.values(),
                self.episode_end, self.obs_frame, self.next_frame]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self._tensors())

    def add_episode(self, obs: dict[str, Array], next_obs: dict[str, Array], **transitions: Array) -> None:
        """Append one episode: ``obs``/``next_obs`` dicts of (T, ...) arrays where
        ``next_obs[t]`` is ``obs[t + 1]`` for t < T-1, and (T,)-arrays for TRANSITION_KEYS."""
        steps = len(transitions["actions"])
        if set(transitions) != set(TRANSITION_KEYS):
            raise ValueError(f"episode needs exactly {TRANSITION_KEYS}, got {sorted(transitions)}")
        if steps == 0:
            return
        if self.size + steps > self.capacity or self.num_frames + steps + 1 > self.frame_capacity:
            raise ValueError(f"replay is full: {self.size} + {steps} transitions exceed its capacity {self.capacity}")

        def tensor(value: Array) -> torch.Tensor:
            return torch.as_tensor(np.asarray(value) if not isinstance(value, torch.Tensor) else value).to(self.device)

        rows = slice(self.size, self.size + steps)
        for key in self.image_keys:
            frames = self.frames[key]
            frames[self.num_frames : self.num_frames + steps] = tensor(obs[key])
            frames[self.num_frames + steps] = tensor(next_obs[key][-1])
        for key in self.lowdim_keys:
            self.lowdim[key][rows] = tensor(obs[key])
            self.next_lowdim[key][rows] = tensor(next_obs[key])
        self.episode_end[rows] = self.size + steps
        self.obs_frame[rows] = torch.arange(self.num_frames, self.num_frames + steps, device=self.device)
        self.next_frame[rows] = torch.arange(self.num_frames + 1, self.num_frames + 1 + steps, device=self.device)
        for key, value in transitions.items():
            self.data[key][rows] = tensor(value).reshape(self.data[key][rows].shape)
        self.size += steps
        self.num_frames += steps + 1
        self.num_episodes += 1

    def lowdim_stats(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Per-dimension mean and std of each low-dimensional key over the stored transitions."""
        if self.size == 0:
            raise ValueError("cannot compute statistics of an empty replay")
        stats = {}
        for key in self.lowdim_keys:
            values = self.lowdim[key][: self.size].double()
            stats[key] = (values.mean(dim=0).cpu().numpy(), values.std(dim=0, unbiased=False).cpu().numpy())
        return stats

    def gather(self, index: Array, gamma: float, n_step: int = 1) -> Batch:
        """The transitions at ``index`` as a batch of tensors on the buffer's device.

        With ``n_step`` > 1 each transition spans up to n steps of its episode, stopping early
        at a terminal or at the episode's end: ``rewards`` is their discounted sum, ``next_obs``,
        ``terminals`` and ``timeouts`` are those of the last step, and ``discounts`` holds
        gamma**m for the m steps taken (the factor of the bootstrap value).
        """
        if n_step < 1:
            raise ValueError(f"n_step must be >= 1, got {n_step}")
        index = torch.as_tensor(index, dtype=torch.int64, device=self.device)
        last, steps = index, torch.ones_like(index)
        rewards = self.data["rewards"][index]
        if n_step > 1:
            offsets = torch.arange(n_step, device=self.device)
            rows = index[:, None] + offsets  # (B, n)
            in_episode = rows < self.episode_end[index][:, None]
            rows = torch.where(in_episode, rows, index[:, None])
            terminal = self.data["terminals"][rows] * in_episode
            taken = in_episode & (torch.cumsum(terminal, dim=1) - terminal == 0)  # up to the first terminal
            steps = taken.sum(dim=1)
            last = index + steps - 1
            rewards = (self.data["rewards"][rows] * taken * gamma ** offsets).sum(dim=1)
        obs = {k: self.frames[k][self.obs_frame[index]] for k in self.image_keys}
        next_obs = {k: self.frames[k][self.next_frame[last]] for k in self.image_keys}
        for k in self.lowdim_keys:
            obs[k] = self.lowdim[k][index]
            next_obs[k] = self.next_lowdim[k][last]
        return Batch(
            obs=obs, next_obs=next_obs, actions=self.data["actions"][index], rewards=rewards,
            terminals=self.data["terminals"][last], timeouts=self.data["timeouts"][last],
            mc_returns=self.data["mc_returns"][index], discounts=torch.pow(gamma, steps.float()),
            online=torch.zeros(len(index), device=self.device),
        )

    def sample(self, batch_size: int, generator: torch.Generator, gamma: float, n_step: int = 1) -> Batch:
        """``batch_size`` transitions drawn uniformly with ``generator`` (on the buffer's device)."""
        if self.size == 0:
            raise ValueError("cannot sample from an empty replay")
        return self.gather(self._indices(batch_size, self.size, generator), gamma, n_step)

    def _indices(self, count: int, high: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randint(0, high, (count,), generator=generator, device=self.device)

    # --------------------------------------------------------------------- (de)serialisation
    def state_dict(self) -> dict[str, Any]:
        """The filled part of the buffer as CPU tensors (for weights-only checkpoints)."""
        n, f = self.size, self.num_frames

        def saved(t: torch.Tensor) -> torch.Tensor:
            return t.detach().to("cpu", copy=True)

        return {
            "size": n, "num_frames": f, "num_episodes": self.num_episodes,
            "frames": {k: saved(v[:f]) for k, v in self.frames.items()},
            "lowdim": {k: saved(v[:n]) for k, v in self.lowdim.items()},
            "next_lowdim": {k: saved(v[:n]) for k, v in self.next_lowdim.items()},
            "episode_end": saved(self.episode_end[:n]),
            "obs_frame": saved(self.obs_frame[:n]),
            "next_frame": saved(self.next_frame[:n]),
            "data": {k: saved(v[:n]) for k, v in self.data.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        n, f = int(state["size"]), int(state["num_frames"])
        if n > self.capacity or f > self.frame_capacity:
            raise ValueError(f"saved replay of {n} transitions does not fit a buffer of capacity {self.capacity}")
        for k in self.frames:
            self.frames[k][:f] = state["frames"][k]
        for k in self.lowdim:
            self.lowdim[k][:n] = state["lowdim"][k]
            self.next_lowdim[k][:n] = state["next_lowdim"][k]
        for name in ("episode_end", "obs_frame", "next_frame"):
            getattr(self, name)[:n] = state[name]
        for k in self.data:
            self.data[k][:n] = state["data"][k]
        self.size, self.num_frames, self.num_episodes = n, f, int(state["num_episodes"])


SAMPLING_MODES = ("mixed", "uniform", "offline")


def sample_offline_online(
    offline: ReplayBuffer | None, online: ReplayBuffer, batch_size: int, generator: torch.Generator,
    gamma: float, n_step: int = 1, mode: str = "mixed", offline_ratio: float = 0.5,
) -> Batch:
    """A batch from offline data and the online buffer, gathered on the online buffer's device.

    ``mixed`` (Cal-QL's protocol): ``round(offline_ratio * batch_size)`` offline transitions and
    the rest online. ``uniform`` (AWAC's protocol): uniformly over the union of both, as if they
    were one buffer. ``offline`` (the offline-only control): the whole batch from the offline
    data. While one buffer is empty (or there is no offline data) the whole batch comes from
    the other.
    """
    if mode not in SAMPLING_MODES:
        raise ValueError(f"unknown sampling mode {mode!r}; available: {', '.join(SAMPLING_MODES)}")
    num_offline_data = len(offline) if offline is not None else 0
    if mode == "offline":
        if not num_offline_data:
            raise ValueError("sampling mode 'offline' needs offline data")
        return offline.sample(batch_size, generator, gamma, n_step)
    if num_offline_data == 0 or len(online) == 0:
        source = offline if num_offline_data else online
        batch = source.sample(batch_size, generator, gamma, n_step)
        return batch if source is offline else dataclasses.replace(batch, online=torch.ones_like(batch.online))
    if mode == "uniform":
        # Rows of the union, split into the two buffers' rows without reading the split back to
        # the host: both are gathered in full and each row takes the one it belongs to.
        rows = online._indices(batch_size, num_offline_data + len(online), generator)
        from_online = rows >= num_offline_data
        offline_part = offline.gather(rows.clamp(max=num_offline_data - 1), gamma, n_step)
        online_part = online.gather((rows - num_offline_data).clamp(min=0), gamma, n_step)
        online_part = dataclasses.replace(online_part, online=from_online.float())
        return Batch.select(from_online, online_part, offline_part)
    num_offline = round(offline_ratio * batch_size)
    parts = []
    if num_offline:
        parts.append(offline.sample(num_offline, generator, gamma, n_step))
    if batch_size - num_offline:
        part = online.sample(batch_size - num_offline, generator, gamma, n_step)
        parts.append(dataclasses.replace(part, online=torch.ones_like(part.online)))
    return Batch.concatenate(parts)
