"""The online tracer: one object that turns a stream of RGB-D frames into traces and traced depth.

A policy, a viewer and the dataset cacher all use it the same way, so training sees exactly what
deployment sees:

    tracer = OnlineTracer(TraceConfig(variant="C"))
    tracer.reset()                                   # at every episode start
    out = tracer.step(obs["rgb"], obs["depth"])      # once per control step
    out.traced_depth                                 # (H, W) float32, the Ego3D input
    out.traced_rgb                                   # TraceVLA-style overlay, drawn on first access

Per step: one tracker update (previous frame to this one), trace selection, drawing into depth.
For variant A (and 3D traces with their own depth) it also keeps, per point and buffered frame,
the depth the point had when seen: (b, N) floats in a ring buffer instead of b whole depth maps.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from stvla.config import KEY_NEUTRAL, config_key
from stvla.traces.cotracker.config import CoTrackerConfig
from stvla.traces.drawing import DEPTH_VARIANTS, DepthDrawConfig, draw_traces_depth, draw_traces_rgb
from stvla.traces.lift import lift_traces, sample_depth
from stvla.traces.selection import SelectionConfig, Trace, TraceSelector
from stvla.traces.tracker import TRACKERS, PointTracker, RingBuffer, TrackerConfig, TrackState

# Every tracker by name: the frame-to-frame ones (stvla.traces.tracker.TRACKERS), and CoTracker3
# (stvla.traces.cotracker, needs torch and a local checkpoint).
TRACKER_TYPES: tuple[str, ...] = (*TRACKERS, "cotracker")


def make_tracker(name: str = "lk", config: TrackerConfig | None = None, cotracker=None) -> PointTracker:
    """A tracker by name ("lk", "dense", or "cotracker" with its `CoTrackerConfig`); an unknown name raises
    a ValueError listing the valid ones."""
    if name == "cotracker":
        from stvla.traces.cotracker.online import CoTrackerOnline  # torch loads only when asked for

        return CoTrackerOnline(cotracker, config)
    if name not in TRACKERS:
        raise ValueError(f"unknown tracker {name!r}; valid: {', '.join(TRACKER_TYPES)}")
    return TRACKERS[name](config)


@dataclass
class TraceConfig:
    tracker: TrackerConfig = field(default_factory=TrackerConfig)  # point tracker, incl. buffer_length b = 30
    tracker_type: str = "lk"  # "lk" (pyramidal Lucas-Kanade), "dense" (DIS dense flow) or "cotracker" (CoTracker3 online)
    cotracker: CoTrackerConfig = field(default_factory=CoTrackerConfig, metadata=KEY_NEUTRAL)  # tracker_type cotracker: checkpoint, device, cadence
    selection: SelectionConfig = field(default_factory=SelectionConfig)  # which points become the K traces
    variant: str = "C"  # depth drawing: "A" own depth, "B" constant marker, "C" nearest-object depth
    depth: DepthDrawConfig = field(default_factory=DepthDrawConfig)  # trace width, marker, depth range
    keep_point_depths: bool = False  # keep each point's depth history even when the variant is not A

    def __post_init__(self) -> None:
        if self.tracker_type not in TRACKER_TYPES:
            raise ValueError(f"unknown tracker_type {self.tracker_type!r}; valid: {', '.join(TRACKER_TYPES)}")
        if self.tracker_type == "cotracker" and not self.cotracker.checkpoint:
            raise ValueError("tracker_type 'cotracker' needs cotracker.checkpoint (on `stvla train`: "
                             "--traces.cotracker.checkpoint PATH, the local scaled_online.pth)")
        if self.variant not in DEPTH_VARIANTS:
            raise ValueError(f"unknown variant {self.variant!r}; valid: {', '.join(DEPTH_VARIANTS)}")

    @property
    def buffer_length(self) -> int:
        """b: frames of history behind each trace (the tracker's buffer)."""
        return self.tracker.buffer_length

    def cache_key(self) -> str:
        """A short stable hash of every setting, for caching traced inputs on disk."""
        text = json.dumps(config_key(self), sort_keys=True)
        return hashlib.sha1(text.encode()).hexdigest()[:12]


@dataclass
class TraceOutput:
    """What one step produced; the RGB overlay and the 3D traces are computed on first access."""

    traces: list[Trace]  # up to K traces, oldest vertex first
    traced_depth: np.ndarray  # (H, W) float32: the depth with the traces drawn in
    state: TrackState  # the tracker's buffered tracks after this step
    rgb: np.ndarray  # the step's input frame
    depth: np.ndarray  # the step's input depth
    intrinsics: np.ndarray | None = None  # (3, 3) camera intrinsics, if given to step()
    depth_max: float | None = None  # background depth limit used to reject invalid depth

    @cached_property
    def traced_rgb(self) -> np.ndarray:
        """(H, W, 3) uint8: the frame with the traces drawn TraceVLA-style."""
        return draw_traces_rgb(self.rgb, self.traces)

    @cached_property
    def traces_3d(self) -> list[np.ndarray] | None:
        """Each trace as (L, 3) camera-frame points (NaN rows where depth is invalid); None without intrinsics."""
        if self.intrinsics is None:
            return None
        return lift_traces(self.traces, self.intrinsics, self.depth, depth_max=self.depth_max)


class OnlineTracer:
    """Tracker + selection + drawing, one step per control step (see module docs)."""

    def __init__(self, config: TraceConfig | None = None, tracker: PointTracker | None = None) -> None:
        self.config = config or TraceConfig()
        self.tracker = tracker or make_tracker(self.config.tracker_type, self.config.tracker,
                                               self.config.cotracker)
        self.selector = TraceSelector(self.config.selection)
        self._point_depths: RingBuffer | None = None
        if self.config.variant == "A" or self.config.keep_point_depths:
            n, b = self.tracker.config.num_points, self.tracker.buffer_length
            self._point_depths = RingBuffer(b, (n,), np.float32, fill=np.nan)

    def reset(self) -> None:
        """Forget the previous episode (call at every episode start)."""
        self.tracker.reset()
        self.selector.reset()
        if self._point_depths is not None:
            self._point_depths.clear()

    def episode_state(self) -> dict[str, object]:
        """This episode's tracing (tracker, selector, point depths) as it is now, for `restore_episode`:
        undoing a step that failed later (`stvla serve`). Settings and models are shared, not copied."""
        return {"tracker": self.tracker.episode_state(), "selector": self.selector.episode_state(),
                "point_depths": None if self._point_depths is None else self._point_depths.copy()}

    def restore_episode(self, state: dict[str, object]) -> None:
        self.tracker.restore_episode(state["tracker"])
        self.selector.restore_episode(state["selector"])
        self._point_depths = state["point_depths"]

    def step(
        self,
        rgb: np.ndarray,
        depth: np.ndarray,
        *,
        intrinsics: np.ndarray | None = None,
        robot_mask: np.ndarray | None = None,
    ) -> TraceOutput:
        """Track into this frame, choose the traces and draw them into the depth map."""
        depth = np.asarray(depth)
        if depth.shape != np.shape(rgb)[:2]:
            raise ValueError(f"depth must be (H, W) matching rgb {np.shape(rgb)[:2]}, got shape {depth.shape}")
        state = self.tracker.update(rgb)
        traces = self.selector.select(state)
        if self._point_depths is not None:
            self._point_depths.push(sample_depth(depth, state.latest, self.config.depth.depth_max))
            traces = self._with_vertex_depths(traces, self._point_depths.chronological())
        traced = draw_traces_depth(depth, traces, self.config.variant, self.config.depth, robot_mask=robot_mask)
        return TraceOutput(traces, traced, state, rgb, depth, intrinsics, self.config.depth.depth_max)

    @staticmethod
    def _with_vertex_depths(traces: list[Trace], point_depths: np.ndarray) -> list[Trace]:
        """Attach to each vertex the depth its point had in the frame it was seen in."""
        return [
            dataclasses.replace(t, vertex_depth=point_depths[t.frame_index, t.point_id]) for t in traces
        ]
