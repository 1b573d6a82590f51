"""An exponential moving average of the trained weights (Polyak averaging), exported instead of the last
step's weights when asked for: diffusion_policy and many imitation-learning codebases find it gives
steadier closed-loop behaviour than the raw weights of a noisy last step.

Only trainable parameters are averaged (in stage 2, the LoRA adapters); buffers such as the fitted
normalisers and action grid do not change during training.
"""

from __future__ import annotations

import torch
from torch import nn


class WeightAverage:
    """shadow <- decay * shadow + (1 - decay) * weights, after every optimiser step."""

    def __init__(self, module: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"the weight average's decay must lie in (0, 1), got {decay}")
        self.decay = decay
        self.shadow = {name: p.detach().clone() for name, p in module.named_parameters() if p.requires_grad}

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        for name, parameter in module.named_parameters():
            if name in self.shadow:
                self.shadow[name].lerp_(parameter.detach(), 1.0 - self.decay)

    @torch.no_grad()
    def copy_to(self, module: nn.Module) -> None:
        """Put the averaged weights into `module` (for export)."""
        for name, parameter in module.named_parameters():
            if name in self.shadow:
                parameter.copy_(self.shadow[name])

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {name: value.detach().cpu().contiguous() for name, value in self.shadow.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if state.keys() != self.shadow.keys():
            different = sorted(state.keys() ^ self.shadow.keys())[:5]
            raise ValueError(f"weight average: saved names differ from the model's ({different})")
        for name, value in state.items():
            self.shadow[name].copy_(value)
