"""Image augmentation on batch tensors."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def random_shift(images: torch.Tensor, pad: int = 4, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random shift: pad each side by ``pad`` with edge replication, then crop back to size at
    an independent random integer offset per sample. ``images``: (B, C, H, W) float."""
    if pad == 0:
        return images
    batch, channels, height, width = images.shape
    padded = F.pad(images, (pad, pad, pad, pad), mode="replicate")
    offsets = torch.randint(0, 2 * pad + 1, (batch, 2), device=images.device, generator=generator)
    rows = (offsets[:, 0, None] + torch.arange(height, device=images.device))  # (B, H)
    cols = (offsets[:, 1, None] + torch.arange(width, device=images.device))  # (B, W)
    batch_index = torch.arange(batch, device=images.device)[:, None, None]
    # (B, H, W, C) gather of the shifted windows, back to (B, C, H, W)
    cropped = padded.permute(0, 2, 3, 1)[batch_index, rows[:, :, None], cols[:, None, :]]
    return cropped.permute(0, 3, 1, 2)
