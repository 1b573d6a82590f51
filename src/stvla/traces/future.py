"""LLARVA's visual-trace targets: the end effector's FUTURE path, in the pixels of the current frame.

For frame t of an episode of T frames, the target is the end-effector position at frames t .. T-1,
projected with frame t's camera and sub-sampled to P points evenly spaced in time (P = 16 by default;
LLARVA used about 30). When fewer than P frames remain, the remaining frames are used in order, the
rest repeat the last one and the mask marks them False (as it marks points behind the camera). Frame indices and targets therefore always
come from the same episode and step: no shifted windows across episode boundaries.
"""

from __future__ import annotations

import numpy as np

from stvla.geometry import project_world_points


def future_indices(length: int, index: int, num_points: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices (P,), mask (P,)): frames of the future path of `index` in an episode of `length` frames."""
    if num_points < 1:
        raise ValueError(f"num_points must be >= 1, got {num_points}")
    if not 0 <= index < length:
        raise IndexError(f"index {index} outside an episode of {length} frames")
    remaining = length - index
    if remaining >= num_points:
        return np.round(np.linspace(index, length - 1, num_points)).astype(np.int64), np.ones(num_points, bool)
    indices = np.concatenate([np.arange(index, length), np.full(num_points - remaining, length - 1)])
    return indices.astype(np.int64), np.arange(num_points) < remaining


def future_trace_targets(positions: np.ndarray, intrinsics: np.ndarray, poses: np.ndarray,
                         num_points: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """For every frame of one episode: (T, P, 2) float32 pixel targets and their (T, P) mask.

    `positions` (T, 3) world end-effector positions; `intrinsics` (T, 3, 3); `poses` (T, 4, 4)
    world-from-camera (OpenCV axes), per frame.
    """
    positions = np.asarray(positions, dtype=np.float64)
    length = len(positions)
    if positions.shape != (length, 3) or np.shape(intrinsics) != (length, 3, 3) or np.shape(poses) != (length, 4, 4):
        raise ValueError(f"expected positions (T, 3), intrinsics (T, 3, 3), poses (T, 4, 4) of one episode; got "
                         f"{positions.shape}, {np.shape(intrinsics)}, {np.shape(poses)}")
    targets = np.zeros((length, num_points, 2), np.float32)
    masks = np.zeros((length, num_points), bool)
    for t in range(length):
        indices, masks[t] = future_indices(length, t, num_points)
        targets[t] = project_world_points(positions[indices], intrinsics[t], poses[t])
    # A point behind the camera has no pixel: it is masked out (and zeroed) rather than poisoning the loss.
    behind = ~np.isfinite(targets).all(axis=-1)
    masks &= ~behind
    targets[behind] = 0.0
    return targets, masks


def trace_error_px(predicted: np.ndarray, target: np.ndarray, mask: np.ndarray) -> float:
    """Mean Euclidean distance in pixels over the masked points (NaN when no point is masked in)."""
    mask = np.asarray(mask, bool)
    if not mask.any():
        return float("nan")
    distances = np.linalg.norm(np.asarray(predicted, np.float64) - np.asarray(target, np.float64), axis=-1)
    return float(distances[mask].mean())
