"""Metric depth from RGB, for cameras without a depth sensor (the ST-VLA paper's setting): ZoeDepth (the
paper's) or Depth Anything V2 metric, from a local transformers checkpoint.

    estimator = load_depth_estimator("/path/to/zoedepth-nyu-kitti")   # or a Depth-Anything-V2-Metric-*-hf
    depth = estimator(rgb)                               # (H, W, 3) uint8 RGB -> (H, W) float32 metres
    depths = estimator.estimate_batch(rgbs)              # (B, H, W, 3) -> (B, H, W), one forward pass
    env = make_env("reach-v3", depth_model="/path/to/zoedepth-nyu-kitti")   # obs["depth"] from the model

The simulator renders true depth, so this is off by default; `--depth_model PATH` on `stvla collect` and
`stvla eval` swaps the rendered depth for the model's, to train and test the way a real robot runs, and
`stvla depth` adds the estimate to a recorded dataset that has no depth. Weights load from a local
directory only; which model it is comes from its config.json (`model_type`).

- ZoeDepth: the checkpoint's image processor (reflect padding, resize, normalisation), then the padding
  cropped off the prediction, which is resized back to the frame, and the average with the prediction
  of the mirrored frame, as ZoeDepth does.
- Depth Anything V2: the checkpoint's DPT processor (resize keeping the aspect ratio to a multiple of
  14, normalisation); the metric head's output (metres) resized back to the frame. Relative-depth
  checkpoints are refused: their output is not in metres.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from stvla.devices import torch_device
from stvla.pretrained import from_local, local_config
from stvla.requirements import require

PADDING_FACTOR = 3  # ZoeDepth pads int(sqrt(side / 2) * 3) pixels on each side against border artefacts


class ZoeDepthEstimator:
    """A ZoeDepth checkpoint in the transformers layout: (H, W, 3) uint8 RGB -> (H, W) float32 metres."""

    def __init__(self, path: str | Path, flip: bool = True, device: str = "cpu"):
        require("transformers", "5.23", "The ZoeDepth adapter")
        from transformers import ZoeDepthForDepthEstimation
        from transformers.models.zoedepth.image_processing_pil_zoedepth import ZoeDepthImageProcessorPil

        path = Path(path)
        _require_files(path, "ZoeDepth", "Intel/zoedepth-nyu-kitti")
        # The PIL processor: same steps as the default one, without needing torchvision.
        self.processor = from_local(ZoeDepthImageProcessorPil.from_pretrained, path, "ZoeDepth's image processor")
        self.device = torch_device(device)  # a device this machine lacks is a clear error, before loading
        self.model = from_local(ZoeDepthForDepthEstimation.from_pretrained, path, "ZoeDepth").to(self.device).eval()
        self.flip = flip

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        return self.estimate_batch(_frames(rgb[None] if np.ndim(rgb) == 3 else rgb, "ZoeDepth"))[0]

    @torch.no_grad()
    def estimate_batch(self, rgbs: np.ndarray) -> np.ndarray:
        """(B, H, W, 3) uint8 RGB -> (B, H, W) float32 metres."""
        rgbs = _frames(rgbs, "ZoeDepth")
        height, width = rgbs.shape[1:3]
        pixels = self.processor(images=list(rgbs), return_tensors="pt")["pixel_values"].to(self.device)
        depth = self.model(pixel_values=pixels).predicted_depth
        if self.flip:  # test-time augmentation of ZoeDepth: average with the mirrored frame's prediction
            depth = (depth + self.model(pixel_values=pixels.flip(-1)).predicted_depth.flip(-1)) / 2
        pad_h = int(np.sqrt(height / 2) * PADDING_FACTOR) if self.processor.do_pad else 0
        pad_w = int(np.sqrt(width / 2) * PADDING_FACTOR) if self.processor.do_pad else 0
        depth = F.interpolate(depth[:, None], size=(height + 2 * pad_h, width + 2 * pad_w), mode="bicubic",
                              align_corners=False)[:, 0]
        depth = depth[:, pad_h: pad_h + height, pad_w: pad_w + width]
        return depth.clamp_min(0.0).cpu().numpy().astype(np.float32)


class DepthAnythingEstimator:
    """A Depth Anything V2 metric checkpoint in the transformers layout (e.g. a local snapshot of
    depth-anything/Depth-Anything-V2-Metric-Indoor-Small-hf): (H, W, 3) uint8 RGB -> (H, W) float32 metres."""

    def __init__(self, path: str | Path, device: str = "cpu"):
        require("transformers", "5.23", "The Depth Anything adapter")
        from transformers import DepthAnythingForDepthEstimation
        from transformers.models.dpt.image_processing_pil_dpt import DPTImageProcessorPil

        path = Path(path)
        _require_files(path, "Depth Anything", "depth-anything/Depth-Anything-V2-Metric-Indoor-Small-hf")
        config = local_config(path)
        if config.get("depth_estimation_type", "relative") != "metric":
            raise ValueError(f"{path}: a relative-depth Depth Anything checkpoint (its output is not in metres); "
                             f"use a metric one, e.g. Depth-Anything-V2-Metric-Indoor-Small-hf")
        # The PIL processor: the same steps as the default one, without needing torchvision.
        self.processor = from_local(DPTImageProcessorPil.from_pretrained, path, "Depth Anything's image processor")
        self.device = torch_device(device)  # a device this machine lacks is a clear error, before loading
        self.model = from_local(DepthAnythingForDepthEstimation.from_pretrained, path, "Depth Anything")
        self.model = self.model.to(self.device).eval()

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        return self.estimate_batch(_frames(rgb[None] if np.ndim(rgb) == 3 else rgb, "Depth Anything"))[0]

    @torch.no_grad()
    def estimate_batch(self, rgbs: np.ndarray) -> np.ndarray:
        """(B, H, W, 3) uint8 RGB -> (B, H, W) float32 metres."""
        rgbs = _frames(rgbs, "Depth Anything")
        pixels = self.processor(images=list(rgbs), return_tensors="pt")["pixel_values"].to(self.device)
        depth = self.model(pixel_values=pixels).predicted_depth
        depth = F.interpolate(depth[:, None], size=rgbs.shape[1:3], mode="bicubic", align_corners=False)[:, 0]
        # Bicubic resizing overshoots a little at edges; the metric head's range is [0, max_depth].
        return depth.clamp(0.0, float(self.model.config.max_depth)).cpu().numpy().astype(np.float32)


DepthEstimator = ZoeDepthEstimator | DepthAnythingEstimator
ESTIMATORS = {"zoedepth": ZoeDepthEstimator, "depth_anything": DepthAnythingEstimator}  # config.json model_type


def load_depth_estimator(path: str | Path, device: str = "cpu") -> DepthEstimator:
    """The metric depth model in a local transformers checkpoint directory, by its config.json model_type."""
    path = Path(path)
    config_path = path / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"depth model: no config.json in {str(path)!r}; give the local directory of a "
                                f"transformers checkpoint ({', '.join(ESTIMATORS)})")
    model_type = local_config(path).get("model_type")
    if not isinstance(model_type, str) or model_type not in ESTIMATORS:  # a list or a mapping is no key
        raise ValueError(f"{config_path}: model_type {model_type!r} is not a depth model stvla runs; "
                         f"supported: {', '.join(ESTIMATORS)}")
    return ESTIMATORS[model_type](path, device=device)


def _frames(rgbs: np.ndarray, name: str) -> np.ndarray:
    rgbs = np.asarray(rgbs)
    if rgbs.ndim != 4 or rgbs.shape[3] != 3 or rgbs.dtype != np.uint8:
        raise ValueError(f"{name} expects (H, W, 3) uint8 RGB frames, got {rgbs.shape} {rgbs.dtype}")
    return rgbs


def _require_files(path: Path, name: str, example: str) -> None:
    for file in ("config.json", "preprocessor_config.json"):
        if not (path / file).is_file():
            raise FileNotFoundError(f"{name}: no {file} in {str(path)!r}; give the local directory of a "
                                    f"transformers checkpoint (e.g. a snapshot of {example})")


_SHARED: dict[tuple[str, str], DepthEstimator] = {}


def shared_depth_estimator(path: str, device: str = "cpu") -> DepthEstimator:
    """One estimator per checkpoint, device and process: the environments of every task share its weights."""
    key = (str(Path(path).resolve()), device)
    if key not in _SHARED:
        _SHARED[key] = load_depth_estimator(path, device=device)
    return _SHARED[key]
