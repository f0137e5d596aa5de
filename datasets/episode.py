"""The one shape of an episode: what the scripted expert collects, what a demonstration file holds
per demo, what fine-tuning collects online, and what the replay buffer takes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from datasets.returns import RewardConfig, episode_rewards_and_returns

EPISODE_ARRAYS = ("actions", "rewards", "terminals")


@dataclass
class Episode:
    """One episode as parallel arrays over its T steps.

    ``rewards`` are raw, as the env gave them (the reward transform comes later, with the
    returns); ``terminals[t]`` marks the step where the task ended (a file's ``dones``); an
    episode whose last step is not terminal ran into its time limit (``timeouts``). ``states``
    are simulator states, where they were recorded; ``attrs`` describe the episode (a demo's
    HDF5 attributes)."""

    obs: dict[str, np.ndarray]
    next_obs: dict[str, np.ndarray]
    actions: np.ndarray
    rewards: np.ndarray
    terminals: np.ndarray
    states: np.ndarray | None = None
    attrs: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.actions)

    @property
    def timeouts(self) -> np.ndarray:
        """True at the last step of an episode cut off by its time limit."""
        timeouts = np.zeros(len(self), bool)
        if len(self):
            timeouts[-1] = not self.terminals[-1]
        return timeouts

    def transitions(self, gamma: float, reward: RewardConfig) -> dict[str, np.ndarray]:
        """The replay buffer's per-step arrays (``ReplayBuffer.add_episode``): actions, the
        transformed rewards, terminals, timeouts and the Monte-Carlo returns at ``gamma``."""
        rewards, returns = episode_rewards_and_returns(self.rewards, self.terminals, gamma, reward)
        return {"actions": self.actions, "rewards": rewards, "terminals": self.terminals, "timeouts": self.timeouts,
                "mc_returns": returns}

    @property
    def nbytes(self) -> int:
        arrays = [*self.obs.values(), *self.next_obs.values(), *(getattr(self, key) for key in EPISODE_ARRAYS)]
        return sum(np.asarray(a).nbytes for a in arrays) + (self.states.nbytes if self.states is not None else 0)

    def validate(self) -> None:
        steps = len(self)
        arrays = {**{f"obs/{k}": v for k, v in self.obs.items()}, **{f"next_obs/{k}": v for k, v in self.next_obs.items()}}
        arrays.update({key: getattr(self, key) for key in EPISODE_ARRAYS})
        if self.states is not None:
            arrays["states"] = self.states
        for name, array in arrays.items():
            if len(array) != steps:
                raise ValueError(f"episode array {name} has {len(array)} steps, actions have {steps}")
        if set(self.obs) != set(self.next_obs):
            raise ValueError(f"obs keys {sorted(self.obs)} differ from next_obs keys {sorted(self.next_obs)}")


class EpisodeRecorder:
    """Builds an :class:`Episode` step by step, as an env runs (one env's steps, unbatched)."""

    def __init__(self, keys: list[str] | None = None, states: bool = False) -> None:
        """``keys``: the observation keys kept (None: all); ``states``: simulator states are recorded."""
        self.keys = keys
        self.record_states = states
        self.steps: dict[str, list] = {"obs": [], "next_obs": [], "actions": [], "rewards": [], "terminals": [], "states": []}

    def __len__(self) -> int:
        return len(self.steps["actions"])

    def add(self, obs: dict[str, np.ndarray], action: np.ndarray, reward: float, terminated: bool,
            next_obs: dict[str, np.ndarray], state: np.ndarray | None = None) -> None:
        keys = self.keys if self.keys is not None else list(obs)
        self.steps["obs"].append({k: obs[k] for k in keys})
        self.steps["next_obs"].append({k: next_obs[k] for k in keys})
        self.steps["actions"].append(action)
        self.steps["rewards"].append(reward)
        self.steps["terminals"].append(bool(terminated))
        if self.record_states:
            self.steps["states"].append(state)

    def finish(self, attrs: dict[str, Any] | None = None) -> Episode:
        """The recorded steps as an episode; the recorder starts over empty."""
        steps = self.steps
        if not steps["actions"]:
            raise ValueError("an episode needs at least one step")
        keys = list(steps["obs"][0])
        episode = Episode(
            obs={k: np.stack([o[k] for o in steps["obs"]]) for k in keys},
            next_obs={k: np.stack([o[k] for o in steps["next_obs"]]) for k in keys},
            actions=np.asarray(steps["actions"], dtype=np.float32),
            rewards=np.asarray(steps["rewards"], dtype=np.float32),
            terminals=np.asarray(steps["terminals"], dtype=bool),
            states=np.asarray(steps["states"], dtype=np.float64) if self.record_states else None,
            attrs=dict(attrs or {}),
        )
        self.steps = {name: [] for name in steps}
        return episode
