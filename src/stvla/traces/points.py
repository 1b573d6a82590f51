"""The chosen traces as one fixed-size array, for a model that reads each trace as a token.

A step's traces have different lengths (a trace starts when its point entered the window; the adaptive
selection drops vertices), so each is laid out on the tracker's window of b frames: slot b - 1 is the
newest frame, slot b - 1 - t the frame t steps before it, and a slot without a vertex is marked absent.
Up to K traces fill K rows; rows without a trace are all absent.

    array = trace_point_array(traces, window=len(state.positions), buffer_length=b, num_traces=K,
                              image_shape=(H, W), lifted=out.traces_3d)   # (K, b, 4) float32

Each point is (x, y, z, 1): camera-frame metres when `lifted` gives the traces in 3D (a vertex whose depth
was invalid is absent), else (u, v, 0, 1) with the pixel scaled to [-1, 1] over the image. Absent points
are (0, 0, 0, 0).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from stvla.traces.selection import Trace

POINT_CHANNELS = 4  # x y z (or u v 0) and whether the point exists
SPACES = ("3d", "2d")  # camera-frame metres from depth, or image pixels


def trace_point_array(traces: Sequence[Trace], window: int, buffer_length: int, num_traces: int,
                      image_shape: tuple[int, int], lifted: Sequence[np.ndarray] | None = None) -> np.ndarray:
    """(num_traces, buffer_length, 4) float32: `traces` (seen over the last `window` <= buffer_length frames)
    laid out by frame, newest last (see module docs). `lifted`: each trace's (L, 3) camera-frame points
    (NaN rows where depth is invalid), or None for 2D."""
    if window > buffer_length:
        raise ValueError(f"the tracker's window ({window} frames) is longer than buffer_length {buffer_length}")
    if len(traces) > num_traces:
        raise ValueError(f"{len(traces)} traces for {num_traces} rows: the selection chose more than num_traces")
    array = np.zeros((num_traces, buffer_length, POINT_CHANNELS), np.float32)
    height, width = image_shape
    scale = np.array([2.0 / width, 2.0 / height])
    for row, trace in enumerate(traces):
        slots = buffer_length - window + np.asarray(trace.frame_index, np.int64)
        if lifted is not None:
            points = np.asarray(lifted[row], np.float64)
            exists = np.isfinite(points).all(axis=1)
        else:
            # Pixel centres at integer coordinates: pixel 0 is -1 + 1/W, pixel W-1 is 1 - 1/W.
            uv = (np.asarray(trace.points, np.float64) + 0.5) * scale - 1.0
            points = np.concatenate([uv, np.zeros((len(uv), 1))], axis=1)
            exists = np.isfinite(points).all(axis=1)
        array[row, slots[exists], :3] = points[exists]
        array[row, slots[exists], 3] = 1.0
    return array


def present_traces(array: np.ndarray) -> np.ndarray:
    """(..., K) bool: which rows of trace point arrays (..., K, b, 4) hold a trace."""
    return np.asarray(array)[..., 3].max(axis=-1) > 0.5
