"""Checking actions at the env boundary."""

from __future__ import annotations

import numpy as np


def checked_action(action, dim: int) -> np.ndarray:
    """``action`` as a float64 array of shape (dim,), clipped to [-1, 1]; a ``ValueError``
    naming the problem for a wrong shape or a non-finite value."""
    action = np.asarray(action, dtype=np.float64)
    if action.shape != (dim,):
        raise ValueError(f"action must have shape ({dim},), got {action.shape}")
    if not np.all(np.isfinite(action)):
        raise ValueError(f"action must be finite, got {action}")
    return np.clip(action, -1.0, 1.0)
