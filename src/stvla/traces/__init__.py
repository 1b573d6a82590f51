"""Visual traces: track points online, choose the moving ones, draw them into depth or onto RGB.

Layer 2 of stvla (numpy + OpenCV; imports only stvla.geometry, stvla.config and, for CoTracker,
stvla.devices from the rest of stvla). Importing it does not import torch: the one part that needs torch, the `cotracker`
subpackage, loads its torch modules only when one of their names is asked for.

- tracker:   `PointTracker` interface; `LucasKanadeTracker` (default) and `DenseFlowTracker`, one
             frame-to-frame update per frame into a ring buffer of the last b positions.
- cotracker: subpackage for CoTracker3's online model from a local checkpoint behind the same
             interface: `config` (`CoTrackerConfig`, torch-free, part of `TraceConfig`), `network`
             (the model), `weights` (checkpoint loading), `online` (`CoTrackerOnline`, the adapter).
- selection: `TraceSelector`: TraceVLA's rule (K moving points seen throughout the window), with an
             adaptive mode that still traces slow motion.
- drawing:   `draw_traces_rgb` (TraceVLA style) and `draw_traces_depth` with the ST-VLA variants
             "A" (own depth), "B" (constant marker), "C" (nearest-object depth, the default).
- lift:      traces as 3D camera-frame points.
- pipeline:  `OnlineTracer`, the one object policies, viewers and the dataset cacher step per frame;
             `TraceConfig`; `make_tracker` and `TRACKER_TYPES` (every tracker by name, CoTracker3 included).
- future:    LLARVA's trace targets (the end effector's future path in the current frame's pixels);
             not re-exported here, import it from stvla.traces.future.
"""

from stvla.traces.cotracker import CoTrackerConfig
from stvla.traces.drawing import (
    DEPTH_VARIANTS,
    DepthDrawConfig,
    draw_traces_depth,
    draw_traces_rgb,
    object_depth,
    trace_colors,
    trace_mask,
)
from stvla.traces.lift import lift_traces, sample_depth, valid_depth
from stvla.traces.pipeline import TRACKER_TYPES, OnlineTracer, TraceConfig, TraceOutput, make_tracker
from stvla.traces.selection import SelectionConfig, Trace, TraceSelector, active_points, mean_step_motion
from stvla.traces.tracker import (
    TRACKERS,
    DenseFlowTracker,
    FlowTracker,
    LucasKanadeTracker,
    PointTracker,
    RingBuffer,
    TrackerConfig,
    TrackState,
)

__all__ = [
    "DEPTH_VARIANTS", "TRACKER_TYPES", "TRACKERS",
    "CoTrackerConfig", "DenseFlowTracker", "DepthDrawConfig", "FlowTracker", "LucasKanadeTracker", "OnlineTracer", "PointTracker",
    "RingBuffer", "SelectionConfig", "Trace", "TraceConfig", "TraceOutput", "TraceSelector", "TrackState",
    "TrackerConfig",
    "active_points", "draw_traces_depth", "draw_traces_rgb", "lift_traces", "make_tracker", "mean_step_motion",
    "object_depth", "sample_depth", "trace_colors", "trace_mask", "valid_depth",
]
