"""Keeping long runs alive through simulator faults."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np


class FaultTolerantEnv(gym.Wrapper):
    """Ends an episode as truncated when a sim step raises or returns non-finite state.

    The step returns the last good observation with reward 0, ``truncated=True`` and
    ``info["sim_fault"] = True`` (with the error in ``info["sim_fault_error"]``), so the caller
    can count it and reset. Bad actions (``ValueError``) are the caller's error and propagate.
    """

    def reset(self, **kwargs: Any):
        obs, info = self.env.reset(**kwargs)
        self._last_obs = obs
        return obs, info

    def step(self, action):
        try:
            obs, reward, terminated, truncated, info = self.env.step(action)
            bad = [k for k, v in obs.items() if np.issubdtype(np.asarray(v).dtype, np.floating) and not np.all(np.isfinite(v))]
            if bad or not np.isfinite(reward):
                raise RuntimeError(f"non-finite {'observation ' + ', '.join(bad) if bad else 'reward'}")
        except ValueError:
            raise
        except Exception as error:  # the simulator's own failure: end the episode, keep the run
            return self._last_obs, 0.0, False, True, {"is_success": False, "sim_fault": True, "sim_fault_error": str(error)}
        self._last_obs = obs
        return obs, reward, terminated, truncated, {**info, "sim_fault": False}
