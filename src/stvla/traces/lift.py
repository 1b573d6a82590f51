"""Depth at trace vertices, and traces lifted to 3D camera-frame (or world-frame) points.

A vertex's depth is read from the frame the point was seen in when the trace carries it
(`Trace.vertex_depth`, kept by the online tracer), else from a given depth map (usually the current
one). Depth is sampled at the nearest pixel: interpolating would blend an object's edge with the
background behind it into a depth that belongs to neither.

Invalid depth (NaN, inf, <= 0, or at/after `depth_max`, where the simulator clips the background)
gives NaN rows; `np.isfinite(points).all(axis=1)` is the validity mask.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from stvla import geometry


def valid_depth(depth: np.ndarray, depth_max: float | None = None) -> np.ndarray:
    """Bool mask of usable depth: finite, > 0 and (if given) < depth_max."""
    depth = np.asarray(depth)
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(depth) & (depth > 0)
        if depth_max is not None:
            ok &= depth < depth_max
    return ok


def sample_depth(depth: np.ndarray, uv: np.ndarray, depth_max: float | None = None) -> np.ndarray:
    """Depth (...) at pixels (..., 2) (u, v), nearest pixel; NaN outside the image or where invalid."""
    depth = np.asarray(depth)
    if depth.ndim != 2:
        raise ValueError(f"depth must be (H, W), got shape {depth.shape}")
    uv = np.asarray(uv, dtype=np.float64)
    h, w = depth.shape
    with np.errstate(invalid="ignore"):
        col = np.floor(uv[..., 0] + 0.5)
        row = np.floor(uv[..., 1] + 0.5)
        inside = (col >= 0) & (col < w) & (row >= 0) & (row < h)
    col = np.where(inside, col, 0).astype(np.int64)
    row = np.where(inside, row, 0).astype(np.int64)
    values = depth[row, col].astype(np.float32)
    return np.where(inside & valid_depth(values, depth_max), values, np.float32(np.nan))


def lift_traces(
    traces: Sequence,
    intrinsics: np.ndarray,
    depth: np.ndarray | None = None,
    *,
    pose: np.ndarray | None = None,
    depth_max: float | None = None,
) -> list[np.ndarray]:
    """Each trace as (L, 3) float64 points: camera frame, or world frame if `pose` (world-from-camera).

    Vertex depth comes from `trace.vertex_depth` when present, else from `depth` at the vertex. With a
    moving camera, the vertex depths of past frames belong to past poses: lift with the current depth.
    """
    lifted = []
    for trace in traces:
        uv = np.asarray(getattr(trace, "points", trace), dtype=np.float64)
        vertex_depth = getattr(trace, "vertex_depth", None)
        if vertex_depth is None:
            if depth is None:
                raise ValueError("a trace has no vertex_depth: pass the depth map to read its vertices from")
            vertex_depth = sample_depth(depth, uv, depth_max)
        d = np.where(valid_depth(vertex_depth, depth_max), vertex_depth, np.nan)
        points = geometry.backproject_pixels(uv, d, intrinsics)
        lifted.append(points if pose is None else geometry.camera_to_world(points, pose))
    return lifted
