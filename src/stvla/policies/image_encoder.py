"""A small convolutional patch encoder: an image to one token per patch, trained from scratch on a CPU.

It stands where the papers put SigLIP: (B, 3, H, W) in [0, 1] -> (B, (H/p) * (W/p), width), patches
in row-major order, so the Ego3D tokens of the same patches can be added token by token.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class ImageEncoderConfig:
    channels: tuple[int, ...] = (32, 64, 96)  # conv widths of the stride-2 stages before the patch layer
    width: int = 128  # token width (must equal the trunk's)


class ConvPatchEncoder(nn.Module):
    """Stride-2 conv stages down to the patch grid, then a 1x1 projection to the token width."""

    def __init__(self, config: ImageEncoderConfig, patch_size: int):
        super().__init__()
        stages = int(math.log2(patch_size))
        if 2**stages != patch_size:
            raise ValueError(f"patch_size must be a power of two, got {patch_size}")
        widths = list(config.channels[:stages]) + [config.channels[-1]] * max(0, stages - len(config.channels))
        layers: list[nn.Module] = []
        in_channels = 3
        for out_channels in widths:
            layers += [nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1), nn.GroupNorm(8, out_channels),
                       nn.GELU()]
            in_channels = out_channels
        self.stages = nn.Sequential(*layers)
        self.project = nn.Conv2d(in_channels, config.width, 1)
        self.register_buffer("mean", torch.tensor([0.5, 0.5, 0.5]).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.project(self.stages(images - self.mean))
        return features.flatten(2).transpose(1, 2)
