"""CoTracker3 checkpoints: read a local state dict (weights_only, or safetensors) and build the loaded model.

The weights come from a local file only, nothing is downloaded. Loading is strict: the parameter and
buffer names of stvla.traces.cotracker.network follow the official code, so the released
`scaled_online.pth` fits a `CoTrackerThreeOnlineNet` built from the matching `CoTrackerConfig`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from stvla.pretrained import first_line
from stvla.traces.cotracker.config import CoTrackerConfig
from stvla.traces.cotracker.network import CoTrackerThreeOnlineNet

# How many missing / unexpected / mismatched names a loading error lists.
SHOWN_KEYS = 8


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file: safetensors, or a torch state dict (plain or under "model"), no pickle code."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CoTracker checkpoint not found: {str(path)!r} (give the local path of "
                                f"scaled_online.pth; nothing is downloaded)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as error:
            raise ValueError(f"CoTracker checkpoint {str(path)!r} could not be read as a torch state dict "
                             f"(weights_only): {first_line(error)}") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"CoTracker checkpoint {str(path)!r} is not a state dict of tensors")
    return state


def load_weights(model: CoTrackerThreeOnlineNet, path: str | Path) -> None:
    """Load a checkpoint into `model` strictly; a mismatch raises a ValueError naming the file and a few keys."""
    state = read_state_dict(path)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = [f"{k} {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
                   for k in sorted(set(state) & set(expected)) if state[k].shape != expected[k].shape]
    if missing or unexpected or wrong_shape:
        parts = []
        for label, names in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", wrong_shape)):
            if names:
                more = f", ... ({len(names)} in all)" if len(names) > SHOWN_KEYS else ""
                parts.append(f"{label}: {', '.join(names[:SHOWN_KEYS])}{more}")
        raise ValueError(f"CoTracker checkpoint {str(path)!r} does not fit the CoTracker3 online architecture of "
                         f"this CoTrackerConfig (window_len, corr_levels, corr_radius, widths and depths must be "
                         f"the checkpoint's); " + "; ".join(parts))
    model.load_state_dict(state, strict=True)


def load_cotracker(config: CoTrackerConfig) -> CoTrackerThreeOnlineNet:
    """The network of `config` with the weights of `config.checkpoint`, in eval mode on `config.device`."""
    if not config.checkpoint:
        raise ValueError("CoTrackerConfig.checkpoint is empty: give the local path of scaled_online.pth")
    model = CoTrackerThreeOnlineNet(config)
    load_weights(model, config.checkpoint)
    return model.to(config.device).eval()
