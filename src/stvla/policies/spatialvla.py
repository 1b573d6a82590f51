"""`spatialvla`: the base policy, SpatialVLA-style: RGB tokens + Ego3D tokens of the raw depth, no traces.
Its inputs are the processor's defaults (stvla.policies.processor.InputProcessor)."""

from __future__ import annotations

from dataclasses import dataclass

from stvla.policies.base import Policy, PolicyConfig


@dataclass
class SpatialVLAConfig(PolicyConfig):
    pass


class SpatialVLAPolicy(Policy):
    name = "spatialvla"
    config_class = SpatialVLAConfig
