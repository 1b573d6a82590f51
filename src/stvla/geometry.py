"""Pinhole camera geometry: intrinsics, camera pose, projection and back-projection.

Conventions (used everywhere in stvla):
- Camera frame follows OpenCV: x right, y down, z forward (along the optical axis).
- `pose` is the 4x4 world-from-camera transform: p_world = R @ p_cam + t.
- Pixel coordinates are (u, v) = (column, row), with pixel centres at integer values.
- Depth is the z coordinate in the camera frame, in metres (not the distance along the ray).

numpy only: this layer is imported by every other one.
"""

from __future__ import annotations

import numpy as np


def intrinsics_from_fov(fovy_deg: float, height: int, width: int) -> np.ndarray:
    """3x3 intrinsics of a pinhole camera with square pixels and a centred principal point.

    `fovy_deg` is the vertical field of view (MuJoCo's `cam_fovy`).
    """
    if not 0.0 < fovy_deg < 180.0:
        raise ValueError(f"fovy_deg must be in (0, 180), got {fovy_deg}")
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got height={height}, width={width}")
    fy = (height / 2.0) / np.tan(np.deg2rad(fovy_deg) / 2.0)
    # MuJoCo (and OpenGL) put the image edge at +-0.5 px beyond the outermost pixel centres.
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    return np.array([[fy, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], dtype=np.float64)


def scale_intrinsics(intrinsics: np.ndarray, from_hw: tuple[int, int], to_hw: tuple[int, int]) -> np.ndarray:
    """Intrinsics of the same camera after resizing its image from `from_hw` to `to_hw`."""
    sy, sx = to_hw[0] / from_hw[0], to_hw[1] / from_hw[1]
    K = np.asarray(intrinsics, dtype=np.float64).copy()
    K[0, 0] *= sx
    K[1, 1] *= sy
    # Pixel centres move with the half-pixel offset: u' = (u + 0.5) * s - 0.5.
    K[0, 2] = (K[0, 2] + 0.5) * sx - 0.5
    K[1, 2] = (K[1, 2] + 0.5) * sy - 0.5
    return K


def pose_from_rotation_translation(rotation: np.ndarray, translation: np.ndarray) -> np.ndarray:
    """4x4 homogeneous transform from a 3x3 rotation and a 3-vector translation."""
    pose = np.eye(4, dtype=np.float64)
    pose[:3, :3] = np.asarray(rotation, dtype=np.float64).reshape(3, 3)
    pose[:3, 3] = np.asarray(translation, dtype=np.float64).reshape(3)
    return pose


def invert_pose(pose: np.ndarray) -> np.ndarray:
    """Inverse of a rigid 4x4 transform (camera-from-world from world-from-camera)."""
    R, t = pose[:3, :3], pose[:3, 3]
    return pose_from_rotation_translation(R.T, -R.T @ t)


def world_to_camera(points_world: np.ndarray, pose: np.ndarray) -> np.ndarray:
    """Points (..., 3) in the world frame to the camera frame, given world-from-camera `pose`."""
    R, t = pose[:3, :3], pose[:3, 3]
    return (np.asarray(points_world, dtype=np.float64) - t) @ R


def camera_to_world(points_cam: np.ndarray, pose: np.ndarray) -> np.ndarray:
    """Points (..., 3) in the camera frame to the world frame, given world-from-camera `pose`."""
    R, t = pose[:3, :3], pose[:3, 3]
    return np.asarray(points_cam, dtype=np.float64) @ R.T + t


def project_camera_points(points_cam: np.ndarray, intrinsics: np.ndarray) -> np.ndarray:
    """Camera-frame points (..., 3) to pixels (..., 2) as (u, v). Points behind the camera give NaN."""
    p = np.asarray(points_cam, dtype=np.float64)
    z = p[..., 2:3]
    with np.errstate(divide="ignore", invalid="ignore"):
        uv1 = (p / np.where(z > 0, z, np.nan)) @ np.asarray(intrinsics, dtype=np.float64).T
    return uv1[..., :2]


def project_world_points(points_world: np.ndarray, intrinsics: np.ndarray, pose: np.ndarray) -> np.ndarray:
    """World points (..., 3) to pixels (..., 2), given intrinsics and world-from-camera pose."""
    return project_camera_points(world_to_camera(points_world, pose), intrinsics)


def backproject_pixels(uv: np.ndarray, depth: np.ndarray, intrinsics: np.ndarray) -> np.ndarray:
    """Pixels (..., 2) with their depths (...) to camera-frame points (..., 3): p = d * K^-1 [u, v, 1]."""
    uv = np.asarray(uv, dtype=np.float64)
    d = np.asarray(depth, dtype=np.float64)
    K = np.asarray(intrinsics, dtype=np.float64)
    x = (uv[..., 0] - K[0, 2]) / K[0, 0] * d
    y = (uv[..., 1] - K[1, 2]) / K[1, 1] * d
    return np.stack([x, y, d], axis=-1)


def backproject_depth(depth: np.ndarray, intrinsics: np.ndarray) -> np.ndarray:
    """A depth map (H, W) to a camera-frame point map (H, W, 3), one point per pixel centre."""
    depth = np.asarray(depth)
    if depth.ndim != 2:
        raise ValueError(f"depth must be (H, W), got shape {depth.shape}")
    h, w = depth.shape
    v, u = np.mgrid[0:h, 0:w]
    return backproject_pixels(np.stack([u, v], axis=-1), depth, intrinsics)


# --- checks on values from outside (sensors, datasets, robot clients) -------------------------------
# A median valid depth above this is not a tabletop scene in metres: most likely millimetres.
PLAUSIBLE_DEPTH_MEDIAN_M = 100.0


def check_metric_depth(depth: np.ndarray, where: str) -> tuple[np.ndarray, float]:
    """Raise a ValueError naming `where` unless `depth` looks like metric depth in metres; else return its
    valid readings and their median (for a caller's stricter checks, without computing them again).

    Holes (NaN, inf, 0) are allowed: the encoders treat them as missing. Refused: a non-float dtype (raw
    sensor units), negative values, no valid value at all, and a median that only millimetres explain.
    """
    depth = np.asarray(depth)
    if depth.dtype.kind != "f":
        raise ValueError(f"{where}: depth must be float metres, got {depth.dtype} (raw sensor units? scale to metres)")
    with np.errstate(invalid="ignore"):
        negative = int((depth < 0).sum())
        valid = depth[np.isfinite(depth) & (depth > 0)]
    if negative:
        raise ValueError(f"{where}: depth has {negative} negative values (min {np.nanmin(depth):.4g}); depth is "
                         f"distance along the optical axis in metres, >= 0 (0, NaN or inf for no reading)")
    if valid.size == 0:
        raise ValueError(f"{where}: depth has no valid value (every pixel is 0, NaN or inf)")
    median = float(np.median(valid))
    if median > PLAUSIBLE_DEPTH_MEDIAN_M:
        raise ValueError(f"{where}: depth's median is {median:.4g}: that looks like millimetres, not metres "
                         f"(divide by 1000)")
    return valid, median


def check_intrinsics(intrinsics: np.ndarray, where: str) -> None:
    """Raise a ValueError naming `where` unless `intrinsics` is a finite, invertible pinhole matrix (3, 3)."""
    K = np.asarray(intrinsics)
    if K.shape != (3, 3) or K.dtype.kind not in "fiu":
        raise ValueError(f"{where}: intrinsics must be a numeric (3, 3) matrix, got {K.dtype} {list(K.shape)}")
    if not np.isfinite(K).all():
        raise ValueError(f"{where}: intrinsics have non-finite values: {K.tolist()}")
    if not (K[0, 0] > 0 and K[1, 1] > 0) or not np.allclose(K[2], [0, 0, 1]) or K[1, 0] != 0:
        raise ValueError(f"{where}: intrinsics must be [[fx, s, cx], [0, fy, cy], [0, 0, 1]] with fx, fy > 0, "
                         f"got {np.round(K, 4).tolist()}")
