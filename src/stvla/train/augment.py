"""Training-time augmentation of a model batch: random shift (DrQ), the same for every image-like input.

Each sample's RGB, TraceVLA's traced RGB and the depth Ego3D encodes (raw or traced) are padded by
`shift_px` pixels (edge values repeated) and cropped back to their size at one random offset per
sample, so that all of them still show the same view. The camera's principal point moves with the
crop, so Ego3D back-projects every pixel to the 3D point it showed before the shift (a test holds
this), and LLARVA's trace targets (pixels of the current image) move with the image.

Diffusion Policy, robomimic and DrQ find crop or shift augmentation essential for image policies
trained on few demonstrations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as functional

from stvla import features as F

IMAGE_KEYS = (F.RGB, F.TRACED_RGB, F.PREVIOUS_RGB)  # (B, C, H, W) batch entries (C = 3 per image)
DEPTH_KEYS = (F.DEPTH,)  # (B, H, W) batch entries


@dataclass
class AugmentConfig:
    shift_px: int = 0  # random shift: pad every image-like input by this many pixels and crop back at a random offset (0 = off)

    def __post_init__(self) -> None:
        if self.shift_px < 0:
            raise ValueError(f"shift_px must be >= 0, got {self.shift_px}")

    @property
    def enabled(self) -> bool:
        return self.shift_px > 0


def augment_batch(batch: dict[str, Any], config: AugmentConfig, rng: np.random.Generator) -> dict[str, Any]:
    """The batch with each sample shifted by its own random offset (see the module docs)."""
    if not config.enabled:
        return batch
    count = len(batch[F.RGB])
    shifts = rng.integers(-config.shift_px, config.shift_px + 1, size=(count, 2))
    return shift_batch(batch, shifts, config.shift_px)


def shift_batch(batch: dict[str, Any], shifts: np.ndarray, pad: int) -> dict[str, Any]:
    """Shift sample i by `shifts[i]` = (sx, sy) pixels, |sx|, |sy| <= `pad`: the new pixel (u, v) shows
    what the original showed at (u + sx, v + sy) (edge values beyond the border)."""
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
    return out
