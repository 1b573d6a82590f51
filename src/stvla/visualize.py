"""Pictures for people: colour-mapped depth, labelled panels side by side, markers. numpy + OpenCV."""

from __future__ import annotations

import cv2
import numpy as np


def colorize_depth(depth: np.ndarray, depth_min: float | None = None, depth_max: float | None = None) -> np.ndarray:
    """(H, W) metres -> (H, W, 3) uint8 RGB, near = warm, far = cool; NaN/inf and non-positive shown black.

    Without limits, the 1st and 99th percentiles of the valid depth set the colour range.
    """
    depth = np.asarray(depth, dtype=np.float32)
    valid = np.isfinite(depth) & (depth > 0)
    if not valid.any():
        return np.zeros((*depth.shape, 3), np.uint8)
    lo = float(np.percentile(depth[valid], 1)) if depth_min is None else depth_min
    hi = float(np.percentile(depth[valid], 99)) if depth_max is None else depth_max
    scaled = np.clip((np.where(valid, depth, hi) - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
    bgr = cv2.applyColorMap(((1.0 - scaled) * 255).astype(np.uint8), cv2.COLORMAP_TURBO)
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    rgb[~valid] = 0
    return rgb


def working_depth_range(depths: np.ndarray) -> tuple[float, float]:
    """A colour scale for a scene's depth maps: from the nearest objects to the table (the 1st and 75th
    percentiles), not the far background, so the tenths of a metre between a trace and the surface it
    crosses show as a change of hue."""
    low, high = np.nanpercentile(np.asarray(depths, dtype=np.float32), [1, 75])
    return float(low), float(high)


def mark_point(rgb: np.ndarray, uv: np.ndarray | None, color: tuple[int, int, int] = (0, 255, 0)) -> np.ndarray:
    """A copy of `rgb` with a small ring at pixel (u, v); points outside the image, or none, are skipped."""
    out = rgb.copy()
    if uv is None:
        return out
    u, v = (float(x) for x in np.asarray(uv).reshape(2))
    if np.isfinite(u) and np.isfinite(v):
        radius = max(2, out.shape[0] // 40)
        cv2.circle(out, (int(round(u)), int(round(v))), radius, color, 1, lineType=cv2.LINE_AA)
    return out


def panels(images: list[np.ndarray], labels: list[str] | None = None, height: int = 256) -> np.ndarray:
    """Images side by side, each resized to `height` (nearest neighbour), with a label on top."""
    row = []
    for i, image in enumerate(images):
        scale = height / image.shape[0]
        tile = cv2.resize(image, (int(round(image.shape[1] * scale)), height), interpolation=cv2.INTER_NEAREST)
        if labels:
            cv2.putText(tile, labels[i], (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
        row.append(tile)
    return np.concatenate(row, axis=1)
