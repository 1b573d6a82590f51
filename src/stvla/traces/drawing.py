"""Drawing traces onto RGB (TraceVLA style) or into a depth map (ST-VLA, variants A / B / C).

RGB: one anti-aliased polyline per trace, 2 px wide, in evenly spaced hues, with a filled arrowhead
at the newest point. Depth: the polylines are rasterised without anti-aliasing, and only those pixels
get new values, chosen by the variant (our reading of the ST-VLA paper, see SPEC.md section 1):

    "A" own depth      each vertex carries the depth its point had in the frame it was seen in;
                       values are interpolated linearly along each segment.
    "B" constant       one marker value (`marker_depth`, by default 0: the near limit).
    "C" object depth   one value, a robust minimum of the valid scene depth (a low percentile of the
                       finite depth in (0, depth_max), robot pixels excluded when a mask is given).

Guarantees of `draw_traces_depth`: every pixel that is not a trace pixel is bitwise unchanged (NaN and
inf included); every value written is finite. NaN / inf / non-positive depth (and depth at or beyond
`depth_max`) is never used to compute a value. When a variant has no value to give (variant C on a
frame with no valid depth, variant A on a trace whose vertices all lack depth), nothing is drawn
for that trace rather than an invented value.

A trace pixel is a pixel whose centre lies within thickness / 2 of the polyline. Where traces
overlap, the later trace in the list (and, within a trace, the newer segment) wins.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from stvla.traces.lift import sample_depth, valid_depth


@dataclass
class DepthDrawConfig:
    thickness: float = 2.0  # trace width in pixels (pixel centres within thickness / 2 of the line)
    marker_depth: float = 0.0  # variant B: the constant written on trace pixels (metres)
    depth_max: float | None = None  # depth at or beyond this is background (the env clips there); None = no limit
    object_percentile: float = 2.0  # variant C: percentile of the valid depth taken as the nearest object

    def __post_init__(self) -> None:
        if not self.thickness > 0:
            raise ValueError(f"thickness must be > 0, got {self.thickness}")
        if not np.isfinite(self.marker_depth):
            raise ValueError(f"marker_depth must be finite, got {self.marker_depth}")
        if self.depth_max is not None and not self.depth_max > 0:
            raise ValueError(f"depth_max must be > 0 or None, got {self.depth_max}")
        if not 0 <= self.object_percentile <= 100:
            raise ValueError(f"object_percentile must be in [0, 100], got {self.object_percentile}")


def _polyline(trace) -> np.ndarray:
    """(L, 2) float64 vertices of a Trace or of an array-like polyline."""
    points = np.asarray(getattr(trace, "points", trace), dtype=np.float64).reshape(-1, 2)
    if not np.all(np.isfinite(points)):
        raise ValueError("trace vertices must be finite")
    return points


# --- RGB ------------------------------------------------------------------------------------------
def trace_colors(count: int) -> np.ndarray:
    """(count, 3) uint8 RGB colours at evenly spaced hues, full saturation and value."""
    if count == 0:
        return np.empty((0, 3), np.uint8)
    hues = (np.arange(count) * 180.0 / max(count, 1)).astype(np.uint8)  # OpenCV hue range is [0, 180)
    hsv = np.stack([hues, np.full(count, 255, np.uint8), np.full(count, 255, np.uint8)], axis=-1)
    return cv2.cvtColor(hsv.reshape(1, -1, 3), cv2.COLOR_HSV2RGB).reshape(-1, 3)


def arrowhead(points: np.ndarray, length: float, angle_deg: float) -> np.ndarray | None:
    """(3, 2) triangle with its tip on the last vertex, along the last non-zero segment; None if none."""
    steps = np.diff(points, axis=0)
    moving = np.flatnonzero(np.hypot(steps[:, 0], steps[:, 1]) > 1e-6)
    if len(moving) == 0:
        return None
    direction = steps[moving[-1]] / np.hypot(*steps[moving[-1]])
    half = np.deg2rad(angle_deg) / 2.0
    sides = [np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]) @ direction for a in (half, -half)]
    tip = points[-1]
    return np.stack([tip, tip - length * sides[0], tip - length * sides[1]])


def draw_traces_rgb(
    rgb: np.ndarray,
    traces: Sequence,
    *,
    thickness: int = 2,
    arrow_length: float | None = None,
    arrow_angle_deg: float = 40.0,
) -> np.ndarray:
    """A copy of `rgb` (H, W, 3) uint8 with the traces drawn TraceVLA-style.

    `arrow_length` defaults to 10 px at 256 px, scaled with the image; `arrow_angle_deg` is the
    arrowhead's opening angle.
    """
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"rgb must be uint8 (H, W, 3), got dtype {rgb.dtype} with shape {rgb.shape}")
    out = np.ascontiguousarray(rgb).copy()
    if arrow_length is None:
        arrow_length = max(3.0, 10.0 * min(rgb.shape[:2]) / 256.0)
    shift = 4  # OpenCV's fixed-point sub-pixel bits: vertices are drawn at 1/16 px
    polylines = [_polyline(t) for t in traces]
    for points, color in zip(polylines, trace_colors(len(polylines))):
        color = tuple(int(c) for c in color)
        fixed = np.round(points * (1 << shift)).astype(np.int32)
        cv2.polylines(out, [fixed], False, color, thickness, cv2.LINE_AA, shift)
        head = arrowhead(points, arrow_length, arrow_angle_deg)
        if head is not None:
            cv2.fillPoly(out, [np.round(head * (1 << shift)).astype(np.int32)], color, cv2.LINE_AA, shift)
    return out


# --- depth rasterisation --------------------------------------------------------------------------
@dataclass(frozen=True)
class Segments:
    """All traces' segments, in drawing order, with the value carried by each end."""

    start: np.ndarray  # (S, 2) float64
    end: np.ndarray  # (S, 2) float64
    start_value: np.ndarray  # (S,) float64
    end_value: np.ndarray  # (S,) float64


def segments_of(polylines: Sequence[np.ndarray], vertex_values: Sequence[np.ndarray]) -> Segments:
    """Consecutive-vertex segments of each polyline; a single vertex becomes a zero-length segment."""
    parts = []
    for points, values in zip(polylines, vertex_values):
        if len(points) == 1:
            points, values = np.repeat(points, 2, axis=0), np.repeat(values, 2)
        parts.append((points[:-1], points[1:], values[:-1], values[1:]))
    if not parts:
        empty2, empty = np.empty((0, 2)), np.empty(0)
        return Segments(empty2, empty2, empty, empty)
    return Segments(*(np.concatenate(column).astype(np.float64) for column in zip(*parts)))


def rasterize_segments(segments: Segments, shape: tuple[int, int], thickness: float) -> tuple[np.ndarray, ...]:
    """Trace pixels and their values: (rows, cols, values), later segments after earlier ones.

    A pixel belongs to a segment if its centre is within thickness / 2 of it; its value is the
    segment's end values interpolated at the centre's projection onto the segment. Candidates come
    from a stencil around samples taken every pixel along each segment, then the exact distance test.
    """
    h, w = shape
    radius = thickness / 2.0
    delta = segments.end - segments.start
    length = np.hypot(delta[:, 0], delta[:, 1])
    samples_per = np.ceil(length).astype(np.int64) + 1
    segment_id = np.repeat(np.arange(len(length)), samples_per)
    first = np.cumsum(samples_per) - samples_per
    fraction = (np.arange(len(segment_id)) - first[segment_id]) / np.maximum(samples_per[segment_id] - 1, 1)
    centres = np.floor(segments.start[segment_id] + fraction[:, None] * delta[segment_id] + 0.5)
    # Samples are <= 0.5 px from any point of the segment and rounding moves them <= 0.5 px per axis.
    reach = int(np.ceil(radius + 1.0))
    offsets = np.stack(np.mgrid[-reach : reach + 1, -reach : reach + 1], axis=-1).reshape(-1, 2)[:, ::-1]
    pixel = (centres[:, None, :] + offsets[None]).reshape(-1, 2)
    segment_id = np.repeat(segment_id, len(offsets))
    inside = (pixel[:, 0] >= 0) & (pixel[:, 0] < w) & (pixel[:, 1] >= 0) & (pixel[:, 1] < h)
    pixel, segment_id = pixel[inside], segment_id[inside]
    start, seg_delta = segments.start[segment_id], delta[segment_id]
    du, dv = seg_delta[:, 0], seg_delta[:, 1]
    squared = np.maximum(du * du + dv * dv, 1e-12)
    t = np.clip(((pixel[:, 0] - start[:, 0]) * du + (pixel[:, 1] - start[:, 1]) * dv) / squared, 0.0, 1.0)
    distance = np.hypot(start[:, 0] + t * du - pixel[:, 0], start[:, 1] + t * dv - pixel[:, 1])
    hit = distance <= radius + 1e-9
    t, segment_id, pixel = t[hit], segment_id[hit], pixel[hit].astype(np.int64)
    a, b = segments.start_value[segment_id], segments.end_value[segment_id]
    return pixel[:, 1], pixel[:, 0], a + t * (b - a)


def trace_mask(traces: Sequence, shape: tuple[int, int], thickness: float = 2.0) -> np.ndarray:
    """(H, W) bool: the pixels `draw_traces_depth` writes for these traces (the same for every variant)."""
    polylines = [_polyline(t) for t in traces]
    rows, cols, _ = rasterize_segments(segments_of(polylines, [np.zeros(len(p)) for p in polylines]), shape, thickness)
    mask = np.zeros(shape, dtype=bool)
    mask[rows, cols] = True
    return mask


# --- depth variants: the value each vertex carries ------------------------------------------------
VertexValues = list  # one (L,) float64 array per trace, or None for a trace that is not drawn


def object_depth(
    depth: np.ndarray,
    depth_max: float | None = None,
    robot_mask: np.ndarray | None = None,
    percentile: float = 2.0,
) -> float | None:
    """A robust minimum of the valid scene depth (None if no pixel is valid)."""
    usable = valid_depth(depth, depth_max)
    if robot_mask is not None:
        usable &= ~np.asarray(robot_mask, dtype=bool)
    values = np.asarray(depth)[usable]
    return float(np.percentile(values, percentile)) if values.size else None


def own_depth_values(depth, traces, config: DepthDrawConfig, robot_mask=None) -> VertexValues:
    """Variant A: each vertex's depth when its point was seen (Trace.vertex_depth), else the current
    depth at the vertex; vertices without valid depth take values interpolated from their neighbours."""
    values = []
    for trace in traces:
        points = _polyline(trace)
        own = getattr(trace, "vertex_depth", None)
        d = np.asarray(own, dtype=np.float64) if own is not None else sample_depth(depth, points).astype(np.float64)
        ok = valid_depth(d, config.depth_max)
        if not ok.any():
            values.append(None)
            continue
        index = np.arange(len(d))
        values.append(np.interp(index, index[ok], d[ok]))
    return values


def constant_values(depth, traces, config: DepthDrawConfig, robot_mask=None) -> VertexValues:
    """Variant B: the marker value everywhere."""
    return [np.full(len(_polyline(t)), float(config.marker_depth)) for t in traces]


def object_depth_values(depth, traces, config: DepthDrawConfig, robot_mask=None) -> VertexValues:
    """Variant C: the nearest object's depth everywhere."""
    value = object_depth(depth, config.depth_max, robot_mask, config.object_percentile)
    return [None if value is None else np.full(len(_polyline(t)), value) for t in traces]


DEPTH_VARIANTS: dict[str, Callable[..., VertexValues]] = {
    "A": own_depth_values,
    "B": constant_values,
    "C": object_depth_values,
}


def draw_traces_depth(
    depth: np.ndarray,
    traces: Sequence,
    variant: str = "C",
    config: DepthDrawConfig | None = None,
    *,
    robot_mask: np.ndarray | None = None,
) -> np.ndarray:
    """A float32 copy of `depth` (H, W) with the traces drawn into it by `variant` (see module docs)."""
    if variant not in DEPTH_VARIANTS:
        raise ValueError(f"unknown depth trace variant {variant!r}; valid: {', '.join(DEPTH_VARIANTS)}")
    depth = np.asarray(depth)
    if depth.ndim != 2:
        raise ValueError(f"depth must be (H, W), got shape {depth.shape}")
    if robot_mask is not None and np.shape(robot_mask) != depth.shape:
        raise ValueError(f"robot_mask must have the depth's shape {depth.shape}, got {np.shape(robot_mask)}")
    config = config or DepthDrawConfig()
    out = depth.astype(np.float32, copy=True)
    values = DEPTH_VARIANTS[variant](depth, traces, config, robot_mask)
    drawn = [(_polyline(t), v) for t, v in zip(traces, values) if v is not None]
    if not drawn:
        return out
    rows, cols, written = rasterize_segments(segments_of(*zip(*drawn)), depth.shape, config.thickness)
    # Repeated indices keep the last value assigned: later segments are drawn over earlier ones.
    out[rows, cols] = written.astype(np.float32)
    return out
