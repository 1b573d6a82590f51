"""SpatialVLA's Ego3D position encoder: a depth map -> one 3D position token per image patch.

For each p x p patch (row-major patch order, matching the image encoder's tokens):

1. split it into r x r sub-cells (r = `samples_per_side`, 2 in SpatialVLA);
2. each sub-cell's depth is the MEAN of its valid pixels, back-projected at the sub-cell's centre pixel
   (u, v) = (x0 + (c - 1) / 2, y0 + (c - 1) / 2), c = p / r, as d * K^-1 [u, v, 1] in the camera
   frame (egocentric: no extrinsics), so a patch gives r^2 points = 3 r^2 numbers;
3. normalise (point - center) / scale (SpatialVLA: center (0, 0, 2) m, scale 2 m);
4. frequency-encode every number x as [x, sin(2^0 x), cos(2^0 x), ..., sin(2^(K-1) x), cos(2^(K-1) x)]
   (K = 8: 17 values per number, 204 per patch for r = 2);
5. MLP Linear -> LayerNorm -> ReLU -> Linear to the token width, both linear layers xavier-uniform
   with gain 0.01 and zero bias, so at the start the tokens barely disturb the image tokens they are
   added to.

Sub-cell means instead of SpatialVLA's single pixel per sample (our reading, documented in the
project's method notes): with only r^2 single-pixel samples per patch a 2 px drawn trace would usually
be missed; averaging makes every drawn trace pixel move the encoding of the patch it lies in.
Invalid depth (NaN, inf, <= 0) is left out of the mean, i.e. replaced by the mean of the sub-cell's
valid pixels; a sub-cell without any valid pixel gets depth 0 (its point is the camera centre).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


@dataclass
class Ego3DConfig:
    samples_per_side: int = 2  # r: each patch is split into r x r sub-cells, one 3D point each
    num_frequencies: int = 8  # K: sin and cos at 2^0 .. 2^(K-1) per number (2K + 1 features each)
    center: tuple[float, float, float] = (0.0, 0.0, 2.0)  # subtracted from camera-frame points, metres
    scale: float = 2.0  # divides the centred points, metres (x, y in [-2, 2], z in [0, 4] map to [-1, 1])
    hidden_width: int = 256  # MLP hidden width
    output_width: int | None = None  # token width; None takes the width the owning model passes
    init_gain: float = 0.01  # xavier gain of both linear layers: near-zero tokens at the start

    def __post_init__(self) -> None:
        center = self.center.strip("()[] ").split(",") if isinstance(self.center, str) else self.center
        self.center = tuple(float(c) for c in center)  # type: ignore[assignment]  # JSON gives a list
        if len(self.center) != 3:
            raise ValueError(f"center needs 3 values, got {self.center}")
        if self.samples_per_side < 1:
            raise ValueError(f"samples_per_side must be >= 1, got {self.samples_per_side}")
        if self.num_frequencies < 0:
            raise ValueError(f"num_frequencies must be >= 0, got {self.num_frequencies}")
        if not self.scale > 0:
            raise ValueError(f"scale must be > 0, got {self.scale}")
        if self.hidden_width < 1:
            raise ValueError(f"hidden_width must be >= 1, got {self.hidden_width}")

    @property
    def features_per_patch(self) -> int:
        """MLP input width: 3 r^2 numbers x (2K + 1) features."""
        return 3 * self.samples_per_side**2 * (2 * self.num_frequencies + 1)


def patch_points(depth: torch.Tensor, intrinsics: torch.Tensor | np.ndarray, patch_size: int,
                 samples_per_side: int = 2) -> torch.Tensor:
    """Back-projected sub-cell points (B, P, r * r, 3) of depth (B, H, W) and intrinsics (B, 3, 3) or (3, 3).

    Patches in row-major order; within a patch, sub-cells in row-major order. See the module docs.
    """
    if depth.dim() != 3:
        raise ValueError(f"depth must be (B, H, W), got shape {tuple(depth.shape)}")
    batch, height, width = depth.shape
    r = samples_per_side
    if patch_size < 1 or height % patch_size or width % patch_size:
        raise ValueError(f"image {height}x{width} is not divisible into {patch_size} px patches")
    if patch_size % r:
        raise ValueError(f"patch_size {patch_size} is not divisible by samples_per_side {r}")
    dtype = depth.dtype if depth.is_floating_point() else torch.float32
    depth = depth.to(dtype)
    K = torch.as_tensor(intrinsics, device=depth.device)
    K = K.expand(batch, 3, 3) if K.dim() == 2 else K
    if K.shape != (batch, 3, 3):
        raise ValueError(f"intrinsics must be (B, 3, 3) or (3, 3) for B = {batch}, got {tuple(K.shape)}")

    cell = patch_size // r
    rows, cols = height // cell, width // cell
    valid = torch.isfinite(depth) & (depth > 0)
    # where(), not multiplication: NaN * 0 is still NaN.
    cell_sums = torch.where(valid, depth, torch.zeros_like(depth)).view(batch, rows, cell, cols, cell).sum((2, 4))
    cell_counts = valid.view(batch, rows, cell, cols, cell).sum((2, 4))
    cell_depth = torch.where(cell_counts > 0, cell_sums / cell_counts.clamp(min=1), torch.zeros_like(cell_sums))

    offset = (cell - 1) / 2
    v = torch.arange(rows, device=depth.device, dtype=dtype) * cell + offset
    u = torch.arange(cols, device=depth.device, dtype=dtype) * cell + offset
    pixels = torch.stack([u.expand(rows, cols), v[:, None].expand(rows, cols), torch.ones(rows, cols, dtype=dtype,
                                                                                          device=depth.device)], -1)
    # Invert in float64: a float32 inverse of K (fx ~ 100s) loses digits the points then inherit.
    rays = torch.einsum("bij,hwj->bhwi", torch.linalg.inv(K.double()).to(dtype), pixels)
    points = rays * cell_depth[..., None]  # (B, rows, cols, 3)
    grid_rows, grid_cols = height // patch_size, width // patch_size
    points = points.view(batch, grid_rows, r, grid_cols, r, 3).permute(0, 1, 3, 2, 4, 5)
    return points.reshape(batch, grid_rows * grid_cols, r * r, 3)


def frequency_encode(x: torch.Tensor, num_frequencies: int = 8) -> torch.Tensor:
    """(..., N) -> (..., N * (2K + 1)): per number [x, sin(2^0 x), cos(2^0 x), ..., sin(2^(K-1) x), cos(2^(K-1) x)]."""
    frequencies = 2.0 ** torch.arange(num_frequencies, dtype=x.dtype, device=x.device)
    angles = x[..., None] * frequencies
    waves = torch.stack([torch.sin(angles), torch.cos(angles)], dim=-1).flatten(-2)  # sin, cos per frequency
    return torch.cat([x[..., None], waves], dim=-1).flatten(-2)


class Ego3DEncoder(nn.Module):
    """Depth (B, H, W) + intrinsics -> Ego3D position tokens (B, num_patches, width), see module docs."""

    center: torch.Tensor

    def __init__(self, config: Ego3DConfig | None = None, width: int | None = None) -> None:
        super().__init__()
        self.config = config or Ego3DConfig()
        if width is None and self.config.output_width is None:
            raise ValueError("Ego3DEncoder needs a token width: pass `width` or set Ego3DConfig.output_width")
        if width is not None and self.config.output_width is not None and width != self.config.output_width:
            raise ValueError(f"width {width} contradicts Ego3DConfig.output_width {self.config.output_width}")
        self.width = width if width is not None else self.config.output_width
        self.mlp = nn.Sequential(
            nn.Linear(self.config.features_per_patch, self.config.hidden_width),
            nn.LayerNorm(self.config.hidden_width),
            nn.ReLU(),
            nn.Linear(self.config.hidden_width, self.width),
        )
        for layer in (self.mlp[0], self.mlp[3]):
            nn.init.xavier_uniform_(layer.weight, gain=self.config.init_gain)
            nn.init.zeros_(layer.bias)
        # Not persistent: it is the config's constant, not a learned or fitted statistic.
        self.register_buffer("center", torch.tensor(self.config.center, dtype=torch.float32), persistent=False)

    def encode_points(self, points: torch.Tensor) -> torch.Tensor:
        """Back-projected points (B, P, r * r, 3) -> tokens (B, P, width)."""
        normalised = (points - self.center.to(points.dtype)) / self.config.scale
        features = frequency_encode(normalised.flatten(-2), self.config.num_frequencies)
        return self.mlp(features.to(self.mlp[0].weight.dtype))

    def forward(self, depth: torch.Tensor, intrinsics: torch.Tensor, patch_size: int) -> torch.Tensor:
        """Depth (B, H, W) in metres and intrinsics (B, 3, 3) -> (B, (H / p) * (W / p), width), row-major patches."""
        return self.encode_points(patch_points(depth, intrinsics, patch_size, self.config.samples_per_side))
