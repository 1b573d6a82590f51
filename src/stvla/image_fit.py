"""A camera's images of any size and aspect brought to a model's square input, and its intrinsics with them.

    fit_rgb(image, side, "crop")                    # (H, W, 3) uint8 -> (side, side, 3)
    fit_depth(depth, side, "crop")                  # (H, W) float metres -> (side, side), no depths mixed
    fit_intrinsics(K, (H, W), side, "crop")         # K of the (H, W) image -> K of the fitted one

Both fits first take a square window of the image, centred, then resize it to `side`:

- "crop": the largest centred square inside the image (what lies beyond it on the long side is lost);
- "pad": the smallest centred square holding the whole image, the rest zeros (black RGB; depth 0, which
  every depth reader here takes as no reading: geometry.check_metric_depth, Ego3D's valid mask).

RGB is resized with area averaging when shrinking (bilinear when growing). Depth takes the nearest
pixel, so every fitted depth is one the sensor measured: averaging across an object's edge would make
points that lie on neither surface. The intrinsics move with the window (the principal point shifts by
its offset) and scale with the resize (pixel centres at integer values, as stvla.geometry has them).

numpy and OpenCV only (no torch, no other stvla module): the training reader, the policy's processor at
control time and a robot client all fit images with these same functions, so they agree to the bit.
"""

from __future__ import annotations

import cv2
import numpy as np

FITS = ("crop", "pad")


def check_fit(fit: str, where: str = "--image_fit") -> str:
    """`fit` when it is one of FITS, else a ValueError naming `where`."""
    if fit not in FITS:
        raise ValueError(f"{where} {fit!r}: expected one of {', '.join(FITS)}")
    return fit


def square_window(height: int, width: int, fit: str) -> tuple[int, int, int]:
    """(top, left, length): the centred square of the (height, width) image that is resized to the model's
    side; `top` or `left` is negative where "pad" reaches beyond the image."""
    check_fit(fit)
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    length = min(height, width) if fit == "crop" else max(height, width)
    return (height - length) // 2, (width - length) // 2, length


def is_identity(height: int, width: int, side: int) -> bool:
    """Whether fitting a (height, width) image to `side` changes nothing (a square camera at the model's side)."""
    return height == width == side


def _square(image: np.ndarray, fit: str) -> np.ndarray:
    """The window of `square_window` cut from `image` (H, W, ...), zeros where it lies outside."""
    height, width = image.shape[:2]
    top, left, length = square_window(height, width, fit)
    if fit == "crop":
        return image[top:top + length, left:left + length]
    square = np.zeros((length, length, *image.shape[2:]), image.dtype)
    square[-top:-top + height, -left:-left + width] = image
    return square


def _each(images: np.ndarray, frame_dims: int, fit_one) -> np.ndarray:
    """`fit_one` applied to every frame of `images` (..., *frame), frames having `frame_dims` dimensions."""
    images = np.asarray(images)
    if images.ndim == frame_dims:
        return fit_one(images)
    leading = images.shape[:-frame_dims]
    flat = images.reshape(-1, *images.shape[-frame_dims:])
    fitted = [fit_one(frame) for frame in flat]
    return np.stack(fitted).reshape(*leading, *fitted[0].shape) if fitted else flat


def fit_rgb(image: np.ndarray, side: int, fit: str = "crop") -> np.ndarray:
    """RGB (..., H, W, 3) uint8 as (..., side, side, 3): the square window, area-averaged to `side`."""
    def one(frame: np.ndarray) -> np.ndarray:
        if is_identity(*frame.shape[:2], side):
            return frame
        square = np.ascontiguousarray(_square(frame, fit))
        if len(square) == side:
            return square
        interpolation = cv2.INTER_AREA if len(square) > side else cv2.INTER_LINEAR
        return cv2.resize(square, (side, side), interpolation=interpolation)

    return _each(image, 3, one)


def nearest_indices(length: int, side: int) -> np.ndarray:
    """For each of `side` output pixels, the one of `length` input pixels whose area holds its centre."""
    return np.minimum(((np.arange(side) + 0.5) * length / side).astype(np.int64), length - 1)


def fit_depth(depth: np.ndarray, side: int, fit: str = "crop") -> np.ndarray:
    """Depth (..., H, W) as (..., side, side): the square window (0 = no reading where "pad" adds pixels),
    then each output pixel the nearest input pixel's depth; every value is one of the input's (or 0)."""
    def one(frame: np.ndarray) -> np.ndarray:
        if is_identity(*frame.shape, side):
            return frame
        square = _square(frame, fit)
        index = nearest_indices(len(square), side)
        return square[index[:, None], index[None, :]]

    return _each(depth, 2, one)


def fit_intrinsics(intrinsics: np.ndarray, camera_hw: tuple[int, int], side: int, fit: str = "crop") -> np.ndarray:
    """Camera matrices (..., 3, 3) of (H, W) = `camera_hw` images as those of their fitted (side, side)
    images: the principal point shifted by the window's offset, then scaled about pixel centres."""
    K = np.asarray(intrinsics)
    height, width = camera_hw
    if is_identity(height, width, side):
        return K
    top, left, length = square_window(height, width, fit)
    scale = side / length
    moved = np.array(K, dtype=np.float64)
    moved[..., 0, 2] -= left
    moved[..., 1, 2] -= top
    moved[..., :2, :] *= scale  # fx, fy and the skew scale; the principal point as below
    # Pixel centres: u' = (u + 0.5) * scale - 0.5 (the shift above already applied to u).
    moved[..., 0, 2] += 0.5 * scale - 0.5
    moved[..., 1, 2] += 0.5 * scale - 0.5
    return moved.astype(K.dtype if K.dtype.kind == "f" else np.float64)
