"""`tracevla`: TraceVLA-style visual trace prompting. The original and a traced copy of the RGB frame
are both encoded and joined by a learned separator token; the prompt says so when traces are shown.
Steps without traces, and a share of training samples, get [original, original] and the plain prompt.

Depth enters as in the base (Ego3D of the raw depth): every row of the benchmark gets the same
inputs and differs only in its trace path."""

from __future__ import annotations

from dataclasses import dataclass, field

from stvla.policies.base import Policy, TracedPolicyConfig
from stvla.policies.processor import InputProcessor
from stvla.policies.vla import VLAConfig


@dataclass
class TraceVLAConfig(TracedPolicyConfig):
    vla: VLAConfig = field(default_factory=lambda: VLAConfig(two_images=True))  # model with a second image
    untraced_fraction: float = 0.2  # share of training samples shown [original, original] and the plain prompt


class TraceVLAProcessor(InputProcessor):
    uses_traced_rgb = True

    def prompt(self, instruction: str, traced: bool) -> str:
        if not traced:
            return instruction
        return (f"{instruction}. You are given two images: the current view, and the same view with the "
                f"robot's recent motion drawn as visual traces")


class TraceVLAPolicy(Policy):
    name = "tracevla"
    config_class = TraceVLAConfig
    processor_class = TraceVLAProcessor
