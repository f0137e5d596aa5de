"""Image augmentation on batch tensors."""

from __future__ import annotations

import torch


def replicate_pad(images: torch.Tensor, pad: int) -> torch.Tensor:
    """(B, H, W, C) -> (B, H + 2 pad, W + 2 pad, C), the border rows and columns repeated."""
    images = torch.cat([images[:, :1].expand(-1, pad, -1, -1), images, images[:, -1:].expand(-1, pad, -1, -1)], dim=1)
    return torch.cat([images[:, :, :1].expand(-1, -1, pad, -1), images, images[:, :, -1:].expand(-1, -1, pad, -1)], dim=2)


def random_shift(images: torch.Tensor, pad: int = 4, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random shift (DrQ's augmentation): pad each side by ``pad`` with edge replication, then
    crop back to size at an independent random integer offset per sample. ``images``: (B, H, W, C)
    of any dtype; applied to the uint8 observations before their conversion to float (a quarter of
    the bytes, and the same result since the conversion is per pixel)."""
    if pad == 0:
        return images
    batch, height, width, _ = images.shape
    offsets = torch.randint(0, 2 * pad + 1, (batch, 2), device=images.device, generator=generator)
    # every window of the padded images as a view (B, 2p+1, 2p+1, H, W, C); one copy picks each sample's
    windows = replicate_pad(images, pad).unfold(1, height, 1).unfold(2, width, 1).permute(0, 1, 2, 4, 5, 3)
    return windows[torch.arange(batch, device=images.device), offsets[:, 0], offsets[:, 1]]
