"""Observation encoders: images (uint8 HWC) and low-dimensional keys to one feature vector.

Conversion to float CHW happens here, at the model boundary. ``conv`` is the default image
trunk, sized for CPU throughput: three 3x3 stride-2 convolutions (stride instead of pooling:
same downsampling at a fraction of the cost) into a linear layer with LayerNorm and tanh;
``encoder.strides`` sets the stride per layer and ``encoder.head=keypoints`` replaces the
flattening with spatial-softmax keypoints (expected image coordinates of learned heat maps).
``resnet18`` is torchvision's ResNet-18 trunk with a spatial-softmax keypoint head.
Low-dimensional keys are standardised with the training data's per-dimension mean and std
(buffers set by :meth:`ObservationEncoder.set_lowdim_normalization`, saved with the weights and
exported with the policy; identity until set), because the decisions of this task hang on
centimetre differences of positions near 1 m. They are concatenated to the image features;
with no image key at all the encoder is that concatenation (the low-dimensional debugging mode).
Setting ``bf16`` on an encoder runs its image trunks under bfloat16 autocast (``encoder_bf16``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from datasets.replay import ObsSpec, is_image
from perception.augment import random_shift

ENCODERS = ("conv", "resnet18")
CONV_HEADS = ("flatten", "keypoints")


@dataclass
class EncoderConfig:
    name: str = "conv"
    channels: list[int] = field(default_factory=lambda: [16, 32, 32])
    strides: Optional[list[int]] = None  # conv: one per layer; null: 2 for every layer
    head: str = "flatten"  # conv: flatten | keypoints (spatial softmax)
    feature_dim: int = 64  # per image key
    keypoints: int = 32  # spatial-softmax keypoints (resnet18, and conv with head=keypoints)
    augment_pad: int = 4  # random shift in pixels; 0 turns augmentation off


class ConvTrunk(nn.Module):
    def __init__(self, image_shape: list[int], config: EncoderConfig) -> None:
        super().__init__()
        strides = config.strides if config.strides is not None else [2] * len(config.channels)
        if len(strides) != len(config.channels):
            raise ValueError(f"encoder.strides has {len(strides)} entries, encoder.channels "
                             f"{len(config.channels)}: one stride per conv layer")
        if config.head not in CONV_HEADS:
            raise ValueError(f"unknown conv encoder head {config.head!r}; available: {', '.join(CONV_HEADS)}")
        height, width, in_channels = image_shape
        layers: list[nn.Module] = []
        for out_channels, stride in zip(config.channels, strides):
            layers += [nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1), nn.ReLU(inplace=True)]
            in_channels = out_channels
        self.convs = nn.Sequential(*layers)
        if config.head == "keypoints":
            self.pool: nn.Module = SpatialSoftmax(in_channels, config.keypoints)
            pooled = 2 * config.keypoints
        else:
            self.pool = nn.Flatten(1)
            with torch.no_grad():
                pooled = self.convs(torch.zeros(1, image_shape[2], height, width)).numel()
        self.head = nn.Sequential(nn.Linear(pooled, config.feature_dim), nn.LayerNorm(config.feature_dim), nn.Tanh())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.convs(images)))


class SpatialSoftmax(nn.Module):
    """Expected image coordinates of ``keypoints`` learned heat maps (2 numbers each)."""

    def __init__(self, in_channels: int, keypoints: int) -> None:
        super().__init__()
        self.project = nn.Conv2d(in_channels, keypoints, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        maps = self.project(features)
        batch, keypoints, height, width = maps.shape
        attention = F.softmax(maps.flatten(2), dim=-1).view(batch, keypoints, height, width)
        ys = torch.linspace(-1.0, 1.0, height, device=maps.device)
        xs = torch.linspace(-1.0, 1.0, width, device=maps.device)
        x = (attention.sum(dim=2) * xs).sum(-1)
        y = (attention.sum(dim=3) * ys).sum(-1)
        return torch.stack([x, y], dim=-1).flatten(1)


class ResNet18Trunk(nn.Module):
    def __init__(self, image_shape: list[int], keypoints: int, feature_dim: int) -> None:
        super().__init__()
        from perception.torchvision_compat import import_torchvision

        torchvision = import_torchvision()
        resnet = torchvision.models.resnet18(weights=None)
        self.backbone = nn.Sequential(*list(resnet.children())[:-2])
        self.keypoints = SpatialSoftmax(512, keypoints)
        self.head = nn.Sequential(nn.Linear(2 * keypoints, feature_dim), nn.LayerNorm(feature_dim), nn.Tanh())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.keypoints(self.backbone(images)))


class ObservationEncoder(nn.Module):
    """Encodes a dict of batched observation tensors into (B, output_dim) features."""

    def __init__(self, obs_spec: ObsSpec, config: EncoderConfig) -> None:
        super().__init__()
        if config.name not in ENCODERS:
            raise ValueError(f"unknown encoder {config.name!r}; available: {', '.join(ENCODERS)}")
        self.config = config
        self.image_keys = sorted(k for k, s in obs_spec.items() if is_image(s))
        self.lowdim_keys = sorted(k for k, s in obs_spec.items() if not is_image(s))
        trunks = {}
        for key in self.image_keys:
            shape = obs_spec[key]["shape"]
            if config.name == "conv":
                trunks[key] = ConvTrunk(shape, config)
            else:
                trunks[key] = ResNet18Trunk(shape, config.keypoints, config.feature_dim)
        self.trunks = nn.ModuleDict(trunks)
        lowdim = sum(int(torch.tensor(obs_spec[k]["shape"]).prod()) for k in self.lowdim_keys)
        self.output_dim = config.feature_dim * len(self.image_keys) + lowdim
        self.register_buffer("lowdim_mean", torch.zeros(lowdim))
        self.register_buffer("lowdim_std", torch.ones(lowdim))
        self.to(memory_format=torch.channels_last)
        # Image trunks under bfloat16 autocast (a training-speed setting, not part of the
        # weights: checkpoints and exported policies compute in float32).
        self.bf16 = False

    @staticmethod
    def preprocess(images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, H, W, C) -> float (B, C, H, W) in [-0.5, 0.5], channels-last in memory."""
        return (images.permute(0, 3, 1, 2).float() / 255.0 - 0.5).contiguous(memory_format=torch.channels_last)

    def forward(self, obs: dict[str, torch.Tensor], augment: bool = False) -> torch.Tensor:
        parts = []
        for key in self.image_keys:
            images = obs[key]
            if augment and self.config.augment_pad > 0:
                images = random_shift(images, self.config.augment_pad)
            images = self.preprocess(images)
            with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                features = self.trunks[key](images)
            parts.append(features.float())
        if self.lowdim_keys:
            lowdim = torch.cat([obs[key].float().flatten(1) for key in self.lowdim_keys], dim=-1)
            parts.append((lowdim - self.lowdim_mean) / self.lowdim_std)
        return torch.cat(parts, dim=-1)

    def set_lowdim_normalization(self, stats: dict[str, tuple[np.ndarray, np.ndarray]], min_std: float = 1e-3) -> None:
        """Per-key (mean, std) arrays, e.g. from ``ReplayBuffer.lowdim_stats``; a std below
        ``min_std`` (a constant input) is raised to it."""
        missing = [key for key in self.lowdim_keys if key not in stats]
        if missing:
            raise ValueError(f"no normalization statistics for observation keys {missing}")
        mean = np.concatenate([np.ravel(stats[key][0]) for key in self.lowdim_keys])
        std = np.concatenate([np.ravel(stats[key][1]) for key in self.lowdim_keys])
        if mean.shape != self.lowdim_mean.shape or std.shape != self.lowdim_std.shape:
            raise ValueError(f"normalization statistics of size {mean.size}, expected {self.lowdim_mean.numel()}")
        if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(std))):
            raise ValueError("non-finite observation normalization statistics")
        self.lowdim_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.lowdim_std.copy_(torch.as_tensor(np.maximum(std, min_std), dtype=torch.float32))
