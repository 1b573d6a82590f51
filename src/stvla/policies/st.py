"""`st`: ST-VLA. The traces of the online tracker are drawn INTO the depth map (variant A, B or C),
and the traced depth goes through Ego3D; RGB is untouched. Same weights layout as `spatialvla`, so a
SpatialVLA-style base loads directly (and runs with traces but no fine-tuning: "zero-shot traces")."""

from __future__ import annotations

from dataclasses import dataclass

from stvla.policies.base import Policy, TracedPolicyConfig
from stvla.policies.processor import InputProcessor


@dataclass
class STConfig(TracedPolicyConfig):
    pass


class STProcessor(InputProcessor):
    depth_source = "traced"


class STPolicy(Policy):
    name = "st"
    config_class = STConfig
    processor_class = STProcessor
