"""Drawing traces onto RGB (TraceVLA style) or into a depth map (ST-VLA, variants A / B / C).

RGB: one anti-aliased polyline per trace, 2 px wide, in evenly spaced hues, with a filled arrowhead
at the newest point. Depth: the polylines are rasterised without anti-aliasing, and only those pixels
get new values, chosen by the variant (our reading of the ST-VLA paper):

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

Any finite coordinates are accepted: segments are clipped to the image (plus the line's reach) before
anything is allocated, so the work is bounded by the image size, never by how far a vertex lies
outside it; widths are bounded by MAX_THICKNESS. Bad input raises a ValueError naming the argument.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from stvla.traces.lift import sample_depth, valid_depth


MAX_THICKNESS = 64  # px: a wider trace would cover a policy's whole input image


@dataclass
class DepthDrawConfig:
    thickness: float = 2.0  # trace width in pixels (pixel centres within thickness / 2 of the line)
    marker_depth: float = 0.0  # variant B: the constant written on trace pixels (metres)
    depth_max: float | None = None  # depth at or beyond this is background (the env clips there); None = no limit
    object_percentile: float = 2.0  # variant C: percentile of the valid depth taken as the nearest object

    def __post_init__(self) -> None:
        if not 0 < self.thickness <= MAX_THICKNESS:
            raise ValueError(f"thickness must be in (0, {MAX_THICKNESS}] px, got {self.thickness}")
        if not np.isfinite(self.marker_depth):
            raise ValueError(f"marker_depth must be finite, got {self.marker_depth}")
        if self.depth_max is not None and not self.depth_max > 0:
            raise ValueError(f"depth_max must be > 0 or None, got {self.depth_max}")
        if not 0 <= self.object_percentile <= 100:
            raise ValueError(f"object_percentile must be in [0, 100], got {self.object_percentile}")


def _polyline(trace) -> np.ndarray:
    """(L, 2) float64 vertices of a Trace or of an array-like polyline (L >= 1, finite)."""
    try:
        points = np.asarray(getattr(trace, "points", trace), dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"a trace must be (L, 2) pixel coordinates, got {type(trace).__name__}") from None
    if points.ndim != 2 or points.shape[1] != 2 or len(points) == 0:
        raise ValueError(f"a trace must be (L, 2) pixel coordinates with L >= 1, got shape {points.shape}")
    if not np.all(np.isfinite(points)):
        raise ValueError("trace vertices must be finite")
    return points


def clip_segments(start: np.ndarray, end: np.ndarray, low: np.ndarray, high: np.ndarray) -> tuple[np.ndarray, ...]:
    """Segments clipped to the box [low, high] (Liang-Barsky): (keep, t0, t1) with t in [0, 1] along each.

    The kept part of segment i runs from start + t0 * (end - start) to start + t1 * (end - start).
    """
    delta = end - start
    t0, t1 = np.zeros(len(start)), np.ones(len(start))
    keep = np.ones(len(start), dtype=bool)
    with np.errstate(divide="ignore", invalid="ignore"):
        for axis in (0, 1):
            for p, q in ((-delta[:, axis], start[:, axis] - low[axis]), (delta[:, axis], high[axis] - start[:, axis])):
                parallel = p == 0
                keep &= ~(parallel & (q < 0))
                r = q / np.where(parallel, 1.0, p)
                t0 = np.where(~parallel & (p < 0), np.maximum(t0, r), t0)
                t1 = np.where(~parallel & (p > 0), np.minimum(t1, r), t1)
    return keep & (t0 <= t1), t0, t1


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
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3 or 0 in rgb.shape:
        raise ValueError(f"rgb must be uint8 (H, W, 3), got dtype {rgb.dtype} with shape {rgb.shape}")
    if not (isinstance(thickness, (int, np.integer)) and 1 <= thickness <= MAX_THICKNESS):
        raise ValueError(f"thickness must be an integer in [1, {MAX_THICKNESS}] px, got {thickness!r}")
    if arrow_length is None:
        arrow_length = max(3.0, 10.0 * min(rgb.shape[:2]) / 256.0)
    if not (np.isfinite(arrow_length) and 0 <= arrow_length <= max(rgb.shape[:2])):
        raise ValueError(f"arrow_length must be in [0, {max(rgb.shape[:2])}] px (the image side), got {arrow_length}")
    if not 0 < arrow_angle_deg < 180:
        raise ValueError(f"arrow_angle_deg must be in (0, 180), got {arrow_angle_deg}")
    out = np.ascontiguousarray(rgb).copy()
    h, w = rgb.shape[:2]
    # Only what can touch the image is drawn, so OpenCV's int32 fixed-point coordinates never overflow.
    margin = thickness + arrow_length + 1
    low, high = np.array([-margin, -margin]), np.array([w - 1 + margin, h - 1 + margin])
    shift = 4  # OpenCV's fixed-point sub-pixel bits: vertices are drawn at 1/16 px
    polylines = [_polyline(t) for t in traces]
    for points, color in zip(polylines, trace_colors(len(polylines))):
        color = tuple(int(c) for c in color)
        pieces = [points]
        if (points < low).any() or (points > high).any():
            pieces = visible_pieces(points, low, high)
        for piece in pieces:
            cv2.polylines(out, [np.round(piece * (1 << shift)).astype(np.int32)], False, color, thickness, cv2.LINE_AA, shift)
        head = arrowhead(points, arrow_length, arrow_angle_deg)
        if head is not None and (head >= low).all() and (head <= high).all():
            cv2.fillPoly(out, [np.round(head * (1 << shift)).astype(np.int32)], color, cv2.LINE_AA, shift)
    return out


def visible_pieces(points: np.ndarray, low: np.ndarray, high: np.ndarray) -> list[np.ndarray]:
    """A polyline's segments clipped to the box [low, high], as 2-vertex polylines."""
    if len(points) == 1:
        return [points] if (points >= low).all() and (points <= high).all() else []
    start, end = points[:-1], points[1:]
    keep, t0, t1 = clip_segments(start, end, low, high)
    delta = end - start
    return [np.stack([start[i] + t0[i] * delta[i], start[i] + t1[i] * delta[i]]) for i in np.flatnonzero(keep)]


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
    if not 0 < thickness <= MAX_THICKNESS:
        raise ValueError(f"thickness must be in (0, {MAX_THICKNESS}] px, got {thickness}")
    h, w = shape
    radius = thickness / 2.0
    # Clip to the pixels the line can reach first: the work below is then bounded by the image.
    reach = radius + 1.0
    keep, t0, t1 = clip_segments(segments.start, segments.end, np.array([-reach, -reach]),
                                 np.array([w - 1 + reach, h - 1 + reach]))
    full = segments.end - segments.start
    value_delta = segments.end_value - segments.start_value
    segments = Segments(
        start=(segments.start + t0[:, None] * full)[keep],
        end=(segments.start + t1[:, None] * full)[keep],
        start_value=(segments.start_value + t0 * value_delta)[keep],
        end_value=(segments.start_value + t1 * value_delta)[keep],
    )
    delta = segments.end - segments.start
    length = np.hypot(delta[:, 0], delta[:, 1])
    samples_per = np.ceil(length).astype(np.int64) + 1
    segment_id = np.repeat(np.arange(len(length)), samples_per)
    first = np.cumsum(samples_per) - samples_per
    fraction = (np.arange(len(segment_id)) - first[segment_id]) / np.maximum(samples_per[segment_id] - 1, 1)
    centres = np.floor(segments.start[segment_id] + fraction[:, None] * delta[segment_id] + 0.5)
    # Samples are <= 0.5 px from any point of the segment and rounding moves them <= 0.5 px per axis.
    reach = int(np.ceil(reach))
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
        if d.shape != (len(points),):
            raise ValueError(f"a trace's vertex_depth must have one value per vertex ({len(points)}), got shape {d.shape}")
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
    if depth.ndim != 2 or 0 in depth.shape or not np.issubdtype(depth.dtype, np.number):
        raise ValueError(f"depth must be a numeric (H, W) map, got dtype {depth.dtype} with shape {depth.shape}")
    if robot_mask is not None and np.shape(robot_mask) != depth.shape:
        raise ValueError(f"robot_mask must have the depth's shape {depth.shape}, got {np.shape(robot_mask)}")
    config = config or DepthDrawConfig()
    out = depth.astype(np.float32, copy=True)
    polylines = [_polyline(t) for t in traces]  # every trace checked, whether the variant draws it or not
    values = DEPTH_VARIANTS[variant](depth, traces, config, robot_mask)
    drawn = [(points, v) for points, v in zip(polylines, values) if v is not None]
    if not drawn:
        return out
    rows, cols, written = rasterize_segments(segments_of(*zip(*drawn)), depth.shape, config.thickness)
    # Repeated indices keep the last value assigned: later segments are drawn over earlier ones.
    out[rows, cols] = written.astype(np.float32)
    return out
