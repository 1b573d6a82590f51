"""The transformer trunk of the small policies: pre-LayerNorm blocks built from explicit `nn.Linear` layers.

Every linear layer has a fixed name (`q_proj`, `k_proj`, `v_proj`, `o_proj` in attention, `fc1`, `fc2`
in the MLP), so LoRA can target all of them, as ST-VLA's fine-tuning does ("LoRA on all linear layers"):

    LoraConfig(r=32, target_modules=Trunk.lora_target_modules())

Attention runs through `torch.nn.functional.scaled_dot_product_attention` (fused kernels on CPU too).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

LORA_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "fc1", "fc2")


@dataclass
class TrunkConfig:
    width: int = 128  # token width
    depth: int = 4  # transformer blocks
    heads: int = 4  # attention heads (width must be divisible by heads)
    mlp_ratio: int = 4  # MLP hidden width = mlp_ratio * width
    dropout: float = 0.0  # dropout on attention weights and on each residual branch (training only)

    def __post_init__(self) -> None:
        if self.width < 1 or self.depth < 1 or self.heads < 1 or self.mlp_ratio < 1:
            raise ValueError(f"width, depth, heads and mlp_ratio must be >= 1, got {self}")
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by heads {self.heads}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


class SelfAttention(nn.Module):
    """Multi-head attention with separate q, k, v and output projections: self-attention, or with a
    `context`, cross-attention (queries from x, keys and values from the context)."""

    def __init__(self, config: TrunkConfig) -> None:
        super().__init__()
        self.heads = config.heads
        self.dropout = config.dropout
        self.q_proj = nn.Linear(config.width, config.width)
        self.k_proj = nn.Linear(config.width, config.width)
        self.v_proj = nn.Linear(config.width, config.width)
        self.o_proj = nn.Linear(config.width, config.width)

    def forward(self, x: torch.Tensor, attend: torch.Tensor | None = None,
                context: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, T, width); `attend` (B, 1, 1, S) bool, True where a key may be attended to; `context`
        (B, S, width) the keys and values (default: x)."""
        batch, tokens, width = x.shape
        context = x if context is None else context

        def split_heads(projected: torch.Tensor) -> torch.Tensor:
            return projected.view(batch, projected.shape[1], self.heads, width // self.heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(
            split_heads(self.q_proj(x)), split_heads(self.k_proj(context)), split_heads(self.v_proj(context)),
            attn_mask=attend, dropout_p=self.dropout if self.training else 0.0,
        )
        return self.o_proj(out.transpose(1, 2).reshape(batch, tokens, width))


class MLP(nn.Module):
    """Two linear layers with a GELU between them."""

    def __init__(self, config: TrunkConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(config.width, config.mlp_ratio * config.width)
        self.fc2 = nn.Linear(config.mlp_ratio * config.width, config.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: TrunkConfig) -> None:
        super().__init__()
        self.attn_norm = nn.LayerNorm(config.width)
        self.attn = SelfAttention(config)
        self.mlp_norm = nn.LayerNorm(config.width)
        self.mlp = MLP(config)
        self.residual_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, attend: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.residual_dropout(self.attn(self.attn_norm(x), attend))
        return x + self.residual_dropout(self.mlp(self.mlp_norm(x)))


class Trunk(nn.Module):
    """(B, T, width) tokens -> (B, T, width) features: `depth` pre-LN blocks and a final LayerNorm."""

    def __init__(self, config: TrunkConfig | None = None) -> None:
        super().__init__()
        self.config = config or TrunkConfig()
        self.blocks = nn.ModuleList(Block(self.config) for _ in range(self.config.depth))
        self.final_norm = nn.LayerNorm(self.config.width)

    @staticmethod
    def lora_target_modules() -> list[str]:
        """Names of every linear layer kind in the trunk, for peft's `LoraConfig(target_modules=...)`."""
        return list(LORA_TARGET_MODULES)

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, T, width); `key_padding_mask` (B, T) bool, True at padding tokens that nobody attends to."""
        if x.dim() != 3 or x.shape[-1] != self.config.width:
            raise ValueError(f"expected (B, T, {self.config.width}) tokens, got shape {tuple(x.shape)}")
        attend = None
        if key_padding_mask is not None:
            if key_padding_mask.shape != x.shape[:2]:
                raise ValueError(f"key_padding_mask must be {tuple(x.shape[:2])}, got {tuple(key_padding_mask.shape)}")
            attend = ~key_padding_mask.bool()
            # A sequence that is all padding would give 0 / 0 = NaN; let it attend to everything instead
            # (its outputs are padding anyway) so no NaN reaches the loss or the gradients.
            attend = attend | ~attend.any(dim=-1, keepdim=True)
            attend = attend[:, None, None, :]
        for block in self.blocks:
            x = block(x, attend)
        return self.final_norm(x)
