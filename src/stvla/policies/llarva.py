"""`llarva`: LLARVA's vision-action instruction tuning on our small VLA.

The language input is the structured prompt (robot type, control mode, task, the last five proprio
states with noise; see stvla.policies.prompt) read as word-piece tokens, and a trace query predicts
the end effector's future path (P pixel points in the current image) beside the action chunk,
trained with a weighted L1 loss. `stvla train` names the dataset's robot_type, the control mode of
its action layout (stvla.policies.action_layout) and its state's size in the prompt, so Meta-World's
prompts stay the paper's and another robot's say what it is. Depth enters as in the base (Ego3D of
the raw depth), so that the benchmark rows differ only in what the papers change. `trace_points = 0` is the ablation without
trace prediction; training from scratch on the target tasks is the one without instruction
pre-training.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from stvla import features as F
from stvla.policies.base import Policy, PolicyConfig
from stvla.policies.processor import InputProcessor
from stvla.policies.prompt import PromptConfig, llarva_prompt
from stvla.policies.vla import VLAConfig


@dataclass
class LLARVAConfig(PolicyConfig):
    vla: VLAConfig = field(default_factory=lambda: VLAConfig(language="prompt", trace_points=16))  # prompt tokens + trace head
    prompt: PromptConfig = field(default_factory=PromptConfig)  # robot type, control mode, history noise


class LLARVAProcessor(InputProcessor):
    uses_state_history = True

    def language_prompts(self, instruction: str) -> list[str]:
        return []  # LLARVA's prompt is tokenized, not embedded

    def language_inputs(self, frames: dict[str, Any], shown: np.ndarray,
                        rng: np.random.Generator | None) -> dict[str, Any]:
        vla = self.config.vla
        texts = [llarva_prompt(self.config.prompt, instruction, history, vla.chunk_size, vla.trace_points > 0, rng)
                 for instruction, history in zip(frames[F.TASK], frames[F.STATE_HISTORY])]
        return {F.PROMPT: texts}


class LLARVAPolicy(Policy):
    name = "llarva"
    config_class = LLARVAConfig
    processor_class = LLARVAProcessor
