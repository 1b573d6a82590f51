"""LLARVA's structured prompt: robot type, control mode, task and proprio history as one text.

    You are a sawyer robot using the end-effector delta position control. The task is "push the puck
    to the goal", and the previous five (including current) steps is [[0.0, 0.0, 0.0, 0.0], ...,
    [0.0123, 0.6012, 0.2001, 1.0]], can you predict action of the next 4 step and the trajectories
    of the end effector?

The wording is LLARVA's (its paper); the trace form appends " and the trajectories of the end
effector" before the question mark. The history holds the last five proprio states, oldest first,
zero-padded at the start of an episode (documented padding, never a shifted window), with Gaussian
noise (sigma 0.01) added in training and at test time and every number rounded to 4 decimals.

The policy reads this text as word-piece tokens (see `PromptTokens`), numbers included.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from torch import nn

from stvla.policies.trunk import MLP, SelfAttention, TrunkConfig
from stvla.pretrained import from_local

HISTORY_LENGTH = 5  # LLARVA: the previous five (including current) proprio states
# Latents that read a prompt's word pieces before the trunk (PromptResampler). A constant rather than a
# VLAConfig field: every cached cell and kept checkpoint is keyed by the full VLAConfig, and a new field
# would invalidate them all (the committed MT10 base among them).
PROMPT_LATENTS = 16


@dataclass
class PromptConfig:
    robot_type: str = "sawyer"  # robot named in the prompt (stvla train: the dataset's robot_type)
    control_mode: str = "end-effector delta position control"  # control mode named in the prompt (stvla train: the action layout's)
    state_dim: int = 4  # proprio numbers per step the robot gives (Meta-World: hand xyz + gripper; stvla train: the dataset's)
    noise_std: float = 0.01  # Gaussian noise added to the history (training and test), as LLARVA


def proprio_history(states: np.ndarray, index: int, length: int = HISTORY_LENGTH) -> np.ndarray:
    """(length, S): states[index - length + 1 .. index] of one episode, zero rows before its start."""
    states = np.asarray(states, dtype=np.float64)
    if states.ndim != 2:
        raise ValueError(f"states must be (T, S), got shape {states.shape}")
    if not 0 <= index < len(states):
        raise IndexError(f"index {index} outside the episode's {len(states)} steps")
    window = states[max(0, index - length + 1): index + 1]
    return np.concatenate([np.zeros((length - len(window), states.shape[1])), window])


def format_history(history: np.ndarray) -> str:
    """Nested lists with 4 decimals: [[0.1234, -0.5, ...], ...] (trailing zeros dropped, -0 as 0)."""
    def number(x: float) -> str:
        text = f"{x:.4f}".rstrip("0").rstrip(".")
        return "0.0" if text in ("0", "-0") else (text if "." in text else text + ".0")

    return "[" + ", ".join("[" + ", ".join(number(x) for x in row) + "]" for row in history) + "]"


def llarva_prompt(config: PromptConfig, instruction: str, history: np.ndarray, n_steps: int, with_traces: bool,
                  rng: np.random.Generator | None = None) -> str:
    """The structured prompt for a (HISTORY_LENGTH, state_dim) proprio history.

    With `rng`, noise of `config.noise_std` is added first; the numbers are rounded to 4 decimals.
    """
    history = np.asarray(history, dtype=np.float64)
    if history.shape != (HISTORY_LENGTH, config.state_dim):
        raise ValueError(f"proprio history must be ({HISTORY_LENGTH}, {config.state_dim}) for a "
                         f"{config.robot_type} robot, got shape {history.shape}")
    bad = np.argwhere(~np.isfinite(history))
    if len(bad):
        raise ValueError(f"proprio history has a non-finite value at step {bad[0][0]}, dimension {bad[0][1]}")
    if rng is not None and config.noise_std > 0:
        history = history + rng.normal(0.0, config.noise_std, history.shape)
    question = f"can you predict action of the next {n_steps} step"
    if with_traces:
        question += " and the trajectories of the end effector"
    return (f"You are a {config.robot_type} robot using the {config.control_mode}. The task is \"{instruction}\", "
            f"and the previous five (including current) steps is {format_history(np.round(history, 4))}, "
            f"{question}?")


class PromptTokens(nn.Module):
    """Prompt texts -> (B, L, width) tokens and a (B, L) mask of real tokens.

    Why this encoding: the prompt changes every step (noisy numbers), so nothing can be cached per
    string and a BERT forward per sample would dominate training on 2 cores. Instead the text is split
    into all-MiniLM-L6-v2's word pieces (numbers become digit pieces, so the policy reads them as
    LLARVA's language model does), looked up in MiniLM's frozen word-embedding table (the vocabulary
    the instruction encoder shares), projected to the model width and given learned positions; the
    trunk's attention does the reading. A typical Meta-World prompt is 170-200 pieces.
    """

    def __init__(self, width: int, max_tokens: int, model_path: str | Path | None = None):
        super().__init__()
        from stvla.policies.text import EMBEDDING_DIM, default_model_path

        path = Path(model_path) if model_path is not None else default_model_path()
        from transformers import AutoTokenizer

        self.tokenizer = from_local(AutoTokenizer.from_pretrained, path, "the text encoder's tokenizer")
        with safe_open(str(path / "model.safetensors"), framework="pt") as weights:
            name = next(k for k in weights.keys() if k.endswith("embeddings.word_embeddings.weight"))
            table = weights.get_tensor(name).float()
        # A frozen buffer, not a parameter: it is MiniLM's, and saving it with every checkpoint would
        # add 47 MB; `persistent=False` keeps it out of state_dict (it is reloaded from MiniLM).
        self.register_buffer("word_embeddings", table, persistent=False)
        self.max_tokens = max_tokens
        self.project = nn.Linear(EMBEDDING_DIM, width)
        self.position = nn.Parameter(torch.randn(1, max_tokens, width) * 0.02)

    def forward(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        encoded = self.tokenizer(texts, padding=True, return_tensors="pt")
        device = self.word_embeddings.device
        ids, mask = encoded["input_ids"].to(device), encoded["attention_mask"].bool().to(device)
        if ids.shape[1] > self.max_tokens:
            raise ValueError(f"a prompt has {ids.shape[1]} word pieces, more than max_tokens={self.max_tokens}: "
                             f"raise the model's prompt_max_tokens (a prompt is never silently cut)")
        tokens = self.project(self.word_embeddings[ids]) + self.position[:, : ids.shape[1]]
        return tokens, mask


class PromptResampler(nn.Module):
    """(B, L, width) word-piece tokens and their (B, L) mask -> (B, K, width): K learned latents read
    the prompt by cross-attention (a Perceiver-style resampler), then pass an MLP.

    Why: a Meta-World prompt is 170-200 pieces against 64 image patches, and the trunk's cost grows
    with every token it carries through every block; reading the pieces once into K latents keeps
    each number's digits available to the policy (the latents attend to single pieces) at a quarter
    of the tokens.
    """

    def __init__(self, width: int, latents: int, heads: int):
        super().__init__()
        block = TrunkConfig(width=width, depth=1, heads=heads)  # the trunk's own attention and MLP
        self.latents = nn.Parameter(torch.randn(1, latents, width) * 0.02)
        self.latent_norm = nn.LayerNorm(width)
        self.token_norm = nn.LayerNorm(width)
        self.read = SelfAttention(block)
        self.mlp_norm = nn.LayerNorm(width)
        self.mlp = MLP(block)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        latents = self.latents.expand(len(tokens), -1, -1)
        latents = latents + self.read(self.latent_norm(latents), mask[:, None, None, :], context=self.token_norm(tokens))
        return latents + self.mlp(self.mlp_norm(latents))
