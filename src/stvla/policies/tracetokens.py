"""`tracetokens`: traces handed to the trunk as tokens (ours, beyond both papers).

ST-VLA draws its traces into depth and TraceVLA onto a second image, so the model must read a path back
out of pixels; here the K chosen traces' last b points themselves become K tokens
(stvla.policies.trace_encoder): lifted to 3D in the camera frame with the depth each point had when it
was seen (`trace_space = "3d"`), or as pixels (`"2d"`, for a camera without depth). The image and Ego3D
of the raw depth are the base's, so a SpatialVLA-style base loads directly and only the trace encoder is
new. Removing the traces (`stvla eval --remove_traces`) turns every trace token into the learned
"no trace" token.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from stvla.policies.base import Policy, TracedPolicyConfig
from stvla.policies.processor import InputProcessor
from stvla.policies.vla import VLAConfig
from stvla.traces import TraceConfig
from stvla.traces.points import SPACES


@dataclass
class TraceTokensConfig(TracedPolicyConfig):
    """The base's model with a trace-token encoder, and where the traces' points live."""

    vla: VLAConfig = field(default_factory=lambda: VLAConfig(trace_tokens=True))  # model with a trace-token encoder
    trace_space: str = "3d"  # the traces' points: "3d" camera-frame metres (needs depth), "2d" pixels

    def __post_init__(self) -> None:
        if hasattr(super(), "__post_init__"):
            super().__post_init__()
        if self.trace_space not in SPACES:
            raise ValueError(f"unknown trace_space {self.trace_space!r}; valid: {', '.join(SPACES)}")


class TraceTokensProcessor(InputProcessor):
    """The base's inputs, and the chosen traces' points (`trace_frame` adds them; `trace_space` says where)."""

    @property
    def trace_config(self) -> TraceConfig:
        """The policy's trace settings; in 3D keeping each point's depth history, since lifting a past vertex
        needs the depth it had when it was seen, not today's depth at that pixel."""
        traces = self.config.traces
        return dataclasses.replace(traces, keep_point_depths=True) if self.config.trace_space == "3d" else traces


class TraceTokensPolicy(Policy):
    name = "tracetokens"
    config_class = TraceTokensConfig
    processor_class = TraceTokensProcessor
