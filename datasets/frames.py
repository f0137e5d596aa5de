"""Camera frames at the policy's input size: one resize for training data and deployment."""

from __future__ import annotations

import cv2
import numpy as np


def resize_frames(frames: np.ndarray, size: int) -> np.ndarray:
    """``frames`` (uint8, ``[..., H, W, 3]``: one frame or a stack) resized to ``size`` x ``size``
    with OpenCV's area interpolation, which averages the source pixels each output pixel
    covers (no aliasing when shrinking). Frames already at that size are returned as they are."""
    if size < 1:
        raise ValueError(f"image size must be positive, got {size}")
    if frames.shape[-3:-1] == (size, size):
        return frames
    flat = frames.reshape(-1, *frames.shape[-3:])
    resized = np.empty((len(flat), size, size, flat.shape[-1]), dtype=frames.dtype)
    for index, frame in enumerate(flat):
        resized[index] = cv2.resize(frame, (size, size), interpolation=cv2.INTER_AREA)
    return resized.reshape(*frames.shape[:-3], size, size, frames.shape[-1])
