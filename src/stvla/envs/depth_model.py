"""Metric depth from RGB with ZoeDepth, for cameras without a depth sensor (the ST-VLA paper's setting).

    estimator = ZoeDepthEstimator("/path/to/zoedepth-nyu-kitti")   # a local transformers checkpoint
    depth = estimator(rgb)                                         # (H, W) uint8 RGB -> (H, W) float32 m
    env = make_env("reach-v3", depth_model="/path/to/zoedepth-nyu-kitti")   # obs["depth"] from the model

The simulator renders true depth, so this is off by default; `--depth_model PATH` on `stvla collect` and
`stvla eval` swaps the rendered depth for the model's, to train and test the way a real robot runs.
Pre- and post-processing follow ZoeDepth's: the checkpoint's image processor (reflect padding, resize,
normalisation), then the padding cropped off the prediction, which is resized back to the frame, and
the average with the prediction of the mirrored frame. Weights load from a local directory only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from stvla.devices import torch_device
from stvla.requirements import require

PADDING_FACTOR = 3  # ZoeDepth pads int(sqrt(side / 2) * 3) pixels on each side against border artefacts


class ZoeDepthEstimator:
    """A ZoeDepth checkpoint in the transformers layout: (H, W, 3) uint8 RGB -> (H, W) float32 metres."""

    def __init__(self, path: str | Path, flip: bool = True, device: str = "cpu"):
        require("transformers", "5.23", "The ZoeDepth adapter")
        from transformers import ZoeDepthForDepthEstimation
        from transformers.models.zoedepth.image_processing_pil_zoedepth import ZoeDepthImageProcessorPil

        path = Path(path)
        for name in ("config.json", "preprocessor_config.json"):
            if not (path / name).is_file():
                raise FileNotFoundError(f"ZoeDepth: no {name} in {str(path)!r}; give the local directory of a "
                                        f"transformers checkpoint (e.g. a snapshot of Intel/zoedepth-nyu-kitti)")
        # The PIL processor: same steps as the default one, without needing torchvision.
        self.processor = ZoeDepthImageProcessorPil.from_pretrained(str(path), local_files_only=True)
        self.device = torch_device(device)  # a device this machine lacks is a clear error, before loading
        self.model = ZoeDepthForDepthEstimation.from_pretrained(str(path), local_files_only=True).to(self.device).eval()
        self.flip = flip

    @torch.no_grad()
    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"ZoeDepth expects an (H, W, 3) uint8 RGB frame, got {rgb.shape} {rgb.dtype}")
        height, width = rgb.shape[:2]
        pixels = self.processor(images=rgb, return_tensors="pt")["pixel_values"].to(self.device)
        depth = self.model(pixel_values=pixels).predicted_depth
        if self.flip:  # test-time augmentation of ZoeDepth: average with the mirrored frame's prediction
            depth = (depth + self.model(pixel_values=pixels.flip(-1)).predicted_depth.flip(-1)) / 2
        pad_h = int(np.sqrt(height / 2) * PADDING_FACTOR) if self.processor.do_pad else 0
        pad_w = int(np.sqrt(width / 2) * PADDING_FACTOR) if self.processor.do_pad else 0
        depth = F.interpolate(depth[:, None], size=(height + 2 * pad_h, width + 2 * pad_w), mode="bicubic",
                              align_corners=False)[0, 0]
        depth = depth[pad_h: pad_h + height, pad_w: pad_w + width]
        return depth.clamp_min(0.0).cpu().numpy().astype(np.float32)


_SHARED: dict[tuple[str, str], ZoeDepthEstimator] = {}


def shared_depth_estimator(path: str, device: str = "cpu") -> ZoeDepthEstimator:
    """One estimator per checkpoint, device and process: the environments of every task share its weights."""
    key = (str(Path(path).resolve()), device)
    if key not in _SHARED:
        _SHARED[key] = ZoeDepthEstimator(path, device=device)
    return _SHARED[key]
