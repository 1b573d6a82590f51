"""PaliGemma(2) as the VLA's backbone: its SigLIP tower encodes the image, its Gemma decoder is the trunk.

This is the papers' backbone (SpatialVLA and ST-VLA fine-tune PaliGemma2), behind the same two
slots the small CPU model fills, so every policy (spatialvla, tracevla, st, tracetokens, llarva) runs on it unchanged:

    image slot  (B, 3, H, W) in [0, 1] -> SigLIP (at its own input size) -> multi-modal projector
                -> (B, (H/p) * (W/p), hidden) on the VLA's patch grid, where Ego3D tokens are added;
    trunk slot  (B, L, hidden) tokens + padding -> the Gemma decoder with every token in PaliGemma's
                bidirectional prefix (token_type_ids = 0), so the action queries read the whole input.

The weights come from a local directory in the transformers layout (config.json + *.safetensors), e.g.
a snapshot of google/paligemma2-3b-pt-224 that `huggingface-cli download` put in your cache; nothing is
fetched. Stage-2 LoRA wraps the decoder's projections (`lora_target_modules`), as in the papers.
The language enters as the small model's does (a projected sentence embedding or LLARVA's prompt
latents), not through Gemma's tokenizer. The tests build a tiny random PaliGemma2 of the same
architecture, save it, and load it through this code.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from stvla.pretrained import from_local
from stvla.requirements import require

# SigLIP's preprocessing in PaliGemma's processor: pixels rescaled to [0, 1], then (x - 0.5) / 0.5.
SIGLIP_MEAN = 0.5
SIGLIP_STD = 0.5
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
TRANSFORMERS = "5.23"  # the transformers release this adapter was tested with (prefix masks by block ids)


def read_backbone_config(path: str | Path) -> dict:
    """The checkpoint's config.json (widths and grid), read without loading any weight."""
    config_path = Path(path) / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"PaliGemma backbone: no config.json in {path!r}; give the local directory of a "
                                f"transformers checkpoint (e.g. a snapshot of google/paligemma2-3b-pt-224)")
    config = json.loads(config_path.read_text())
    if config.get("model_type") != "paligemma":
        raise ValueError(f"{config_path}: model_type {config.get('model_type')!r}, expected 'paligemma'")
    return config


def backbone_shape(path: str | Path) -> tuple[int, int]:
    """(hidden width of the decoder, side of SigLIP's patch grid) of the checkpoint at `path`."""
    require("transformers", TRANSFORMERS, "The PaliGemma backbone")
    from transformers import PaliGemmaConfig

    config = PaliGemmaConfig.from_dict(read_backbone_config(path))
    vision = config.vision_config
    return config.text_config.hidden_size, vision.image_size // vision.patch_size


def load_paligemma(path: str | Path, dtype: str, weights: bool = True) -> nn.Module:
    """transformers' PaliGemmaModel (vision tower, projector, decoder; no LM head) from `path`.

    With weights=False only the architecture is built (randomly initialised): a saved stvla checkpoint
    carries every backbone weight itself, so reloading one need not read the original twice.
    """
    from transformers import PaliGemmaConfig, PaliGemmaModel

    if dtype not in DTYPES:
        raise ValueError(f"PaliGemma backbone: unknown dtype {dtype!r}; valid: {', '.join(DTYPES)}")
    if weights:
        return from_local(PaliGemmaModel.from_pretrained, path, "PaliGemma backbone", dtype=DTYPES[dtype])
    config = from_local(PaliGemmaConfig.from_pretrained, path, "PaliGemma backbone's config")
    return PaliGemmaModel(config).to(DTYPES[dtype])


class SiglipPatchEncoder(nn.Module):
    """PaliGemma's SigLIP tower and projector, giving one token per patch of the VLA's grid."""

    def __init__(self, paligemma: nn.Module, grid: int):
        super().__init__()
        self.vision_tower = paligemma.vision_tower
        self.multi_modal_projector = paligemma.multi_modal_projector
        vision = paligemma.config.vision_config
        self.input_size = vision.image_size
        self.native_grid = vision.image_size // vision.patch_size
        self.grid = grid

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        dtype = self.multi_modal_projector.linear.weight.dtype
        pixels = F.interpolate(images, size=(self.input_size, self.input_size), mode="bilinear", antialias=True,
                               align_corners=False)
        features = self.vision_tower((pixels - SIGLIP_MEAN) / SIGLIP_STD).last_hidden_state
        tokens = self.multi_modal_projector(features.to(dtype)).float()
        if self.native_grid != self.grid:  # SigLIP's grid differs from the Ego3D grid: resample the features
            batch, _, width = tokens.shape
            square = tokens.transpose(1, 2).reshape(batch, width, self.native_grid, self.native_grid)
            square = F.interpolate(square, size=(self.grid, self.grid), mode="area" if self.grid < self.native_grid
                                   else "bilinear")
            tokens = square.flatten(2).transpose(1, 2)
        return tokens


class GemmaTrunk(nn.Module):
    """PaliGemma's Gemma decoder over our token sequence, every token in the bidirectional prefix."""

    def __init__(self, paligemma: nn.Module):
        super().__init__()
        self.language_model = paligemma.language_model

    @staticmethod
    def lora_target_modules() -> list[str]:
        """The decoder's linear layers, for peft's `LoraConfig(target_modules=...)`."""
        return ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

        batch, length, _ = x.shape
        config = self.language_model.config
        x = x.to(self.language_model.embed_tokens.weight.dtype)
        attend = torch.ones(batch, length, dtype=torch.long, device=x.device)
        if key_padding_mask is not None:
            attend = (~key_padding_mask).long()
        positions = torch.arange(1, length + 1, device=x.device).unsqueeze(0)  # PaliGemma counts from 1
        # One block for the whole sequence: PaliGemma's prefix attention (bidirectional), as for its image
        # and prompt tokens, so the action queries read every token and every token reads them.
        masks = {"config": config, "inputs_embeds": x, "attention_mask": attend, "past_key_values": None,
                 "position_ids": positions,
                 "block_sequence_ids": torch.zeros(batch, length, dtype=torch.long, device=x.device)}
        mapping = {"full_attention": create_causal_mask(**masks)}
        if getattr(config, "sliding_window", None) is not None:
            mapping["sliding_attention"] = create_sliding_window_causal_mask(**masks)
        out = self.language_model(inputs_embeds=x, attention_mask=mapping, position_ids=positions, use_cache=False)
        return out.last_hidden_state.float()
