"""Training-time augmentation of a model batch: random shift (DrQ), the same for every image-like input,
and colour jitter (brightness and contrast) of the RGB inputs.

Each sample's RGB, TraceVLA's traced RGB and the depth Ego3D encodes (raw or traced) are padded by
`shift_px` pixels (edge values repeated) and cropped back to their size at one random offset per
sample, so that all of them still show the same view. The camera's principal point moves with the
crop, so Ego3D back-projects every pixel to the 3D point it showed before the shift (a test holds
this), and LLARVA's trace targets and the trace tokens' points when they are pixels (the `2d` space)
move with the image (3D trace points stay: the moved principal point keeps them where the image shows them).

Diffusion Policy, robomimic and DrQ find crop or shift augmentation essential for image policies
trained on few demonstrations.

Colour jitter scales each sample's brightness and contrast by factors drawn from [1 - j, 1 + j], the
same factors for all of a sample's RGB images (so a traced image still matches its original) and none
for depth: hues, which tell Meta-World's red, green and blue goal markers apart, are kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as functional

from stvla import features as F

IMAGE_KEYS = (F.RGB, F.TRACED_RGB, F.PREVIOUS_RGB, *F.EXTRA_CAMERAS)  # (B, C, H, W) batch entries (C = 3 per image)
DEPTH_KEYS = (F.DEPTH,)  # (B, H, W) batch entries


@dataclass
class AugmentConfig:
    shift_px: int = 0  # random shift: pad every image-like input by this many pixels and crop back at a random offset (0 = off)
    color_jitter: float = 0.0  # RGB brightness and contrast scaled by factors drawn from [1 - x, 1 + x] per sample (0 = off)

    def __post_init__(self) -> None:
        if self.shift_px < 0:
            raise ValueError(f"shift_px must be >= 0, got {self.shift_px}")
        if not 0.0 <= self.color_jitter < 1.0:
            raise ValueError(f"color_jitter must be in [0, 1), got {self.color_jitter}")

    @property
    def enabled(self) -> bool:
        return self.shift_px > 0 or self.color_jitter > 0


def augment_batch(batch: dict[str, Any], config: AugmentConfig, rng: np.random.Generator,
                  pixel_trace_points: bool = False) -> dict[str, Any]:
    """The batch with each sample shifted by its own random offset and its colours jittered (module docs).
    `pixel_trace_points`: the batch's trace points are pixels (`2d`), which move with the image."""
    count = len(batch[F.RGB])
    if config.shift_px > 0:
        shifts = rng.integers(-config.shift_px, config.shift_px + 1, size=(count, 2))
        batch = shift_batch(batch, shifts, config.shift_px, pixel_trace_points)
    if config.color_jitter > 0:
        factors = rng.uniform(1.0 - config.color_jitter, 1.0 + config.color_jitter, size=(2, count))
        batch = jitter_batch(batch, brightness=factors[0], contrast=factors[1])
    return batch


def jitter_batch(batch: dict[str, Any], brightness: np.ndarray, contrast: np.ndarray) -> dict[str, Any]:
    """Sample i's RGB images (values in [0, 1]) with contrast scaled by `contrast[i]` about the image's mean
    grey level, then brightness by `brightness[i]`, clipped to [0, 1]; depth and the rest as they were."""
    out = dict(batch)
    for key in IMAGE_KEYS:
        if key not in batch:
            continue
        images = batch[key]
        shape = (len(images),) + (1,) * (images.dim() - 1)
        gain = torch.as_tensor(contrast, dtype=images.dtype).view(shape)
        scale = torch.as_tensor(brightness, dtype=images.dtype).view(shape)
        mean = images.mean(dim=tuple(range(1, images.dim())), keepdim=True)
        out[key] = (((images - mean) * gain + mean) * scale).clamp_(0.0, 1.0)
    return out


def shift_batch(batch: dict[str, Any], shifts: np.ndarray, pad: int, pixel_trace_points: bool = False) -> dict[str, Any]:
    """Shift sample i by `shifts[i]` = (sx, sy) pixels, |sx|, |sy| <= `pad`: the new pixel (u, v) shows
    what the original showed at (u + sx, v + sy) (edge values beyond the border). `pixel_trace_points`:
    the trace points are pixels scaled to [-1, 1] (stvla.traces.points), moved with the image."""
    shifts = np.asarray(shifts, dtype=np.int64)
    if np.abs(shifts).max(initial=0) > pad:
        raise ValueError(f"shifts must lie within +-{pad} pixels, got up to {np.abs(shifts).max()}")
    out = dict(batch)
    for key in IMAGE_KEYS + DEPTH_KEYS:
        if key not in batch:
            continue
        images = batch[key] if key in IMAGE_KEYS else batch[key].unsqueeze(1)
        height, width = images.shape[-2:]
        padded = functional.pad(images, (pad, pad, pad, pad), mode="replicate")
        crops = torch.stack([padded[i, :, pad + sy: pad + sy + height, pad + sx: pad + sx + width]
                             for i, (sx, sy) in enumerate(shifts)])
        out[key] = crops if key in IMAGE_KEYS else crops.squeeze(1)
    offset = torch.as_tensor(shifts, dtype=torch.float32)
    if F.INTRINSICS in batch:
        intrinsics = batch[F.INTRINSICS].clone()
        intrinsics[:, :2, 2] -= offset.to(intrinsics.dtype)  # the principal point moves against the shift
        out[F.INTRINSICS] = intrinsics
    if F.TRACE_TARGET in batch:
        out[F.TRACE_TARGET] = batch[F.TRACE_TARGET] - offset[:, None, :].to(batch[F.TRACE_TARGET].dtype)
    if F.TRACE_POINTS in batch and pixel_trace_points:
        points = batch[F.TRACE_POINTS].clone()
        height, width = batch[F.RGB].shape[-2:]
        moved = offset * torch.tensor([2.0 / width, 2.0 / height])  # pixels in the points' [-1, 1] scale
        exists = points[..., 3:] > 0.5
        points[..., :2] -= torch.where(exists, moved[:, None, None, :].to(points.dtype), torch.zeros(()))
        out[F.TRACE_POINTS] = points
    return out
