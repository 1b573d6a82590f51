"""Torch devices: the one check that a named device exists here, and moving a batch onto it."""

from __future__ import annotations

from typing import Any

import torch


def torch_device(name: str) -> torch.device:
    """The torch device called `name` ("cpu", "cuda", "cuda:1", "mps"), or a clear error if absent here."""
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ValueError(f"unknown device {name!r}: {error}") from error
    available = {"cpu": True, "cuda": torch.cuda.is_available(),
                 "mps": hasattr(torch.backends, "mps") and torch.backends.mps.is_available()}
    if not available.get(device.type, False):
        raise ValueError(f"device {name!r} is not available on this machine (torch {torch.__version__})")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def batch_to(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """The batch with its tensors on `device` (other entries, such as prompt strings, unchanged)."""
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
