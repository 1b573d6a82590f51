"""CoTracker3 (online), Meta's learned point tracker, behind the `PointTracker` interface.

    from stvla.traces import TrackerConfig
    from stvla.traces.cotracker import CoTrackerConfig, CoTrackerOnline

    tracker = CoTrackerOnline(CoTrackerConfig(checkpoint="/models/scaled_online.pth"), TrackerConfig(num_points=400))

- config:  `CoTrackerConfig`, the model's architecture and how it runs; torch-free, so `TraceConfig`
           can carry it.
- network: `CoTrackerThreeOnlineNet`, a re-implementation of CoTracker3's online model (nn.Modules and
           pure tensor functions, named as the official state dict).
- weights: `load_cotracker`: read a local checkpoint (weights_only=True, or safetensors) and build the
           model of a `CoTrackerConfig` with it; nothing is downloaded.
- online:  `CoTrackerOnline`, the sliding-window adapter (one update per frame), and its coordinate helpers.

Imports point down only: online -> weights -> network -> config. network, weights and online import
torch at the top; this package imports only `config` and loads every other name (`CoTrackerOnline`,
`load_cotracker`, `CoTrackerThreeOnlineNet`, ...) from its module on first access (PEP 562), so
`import stvla.traces` does not import torch and the numpy/OpenCV trackers stay usable without it.
"""

from __future__ import annotations

import importlib

from stvla.traces.cotracker.config import CoTrackerConfig

# Names that need torch, by the module that defines them.
LAZY_NAMES: dict[str, str] = {
    **dict.fromkeys(("Attention", "CoTrackerThreeOnlineNet", "CrossAttentionBlock", "FeatureEncoder", "Mlp",
                     "ResidualBlock", "SelfAttentionBlock", "UpdateTransformer", "motion_encoding",
                     "plain_layer_norm", "sample_patches", "sincos_time_embedding"), "network"),
    **dict.fromkeys(("SHOWN_KEYS", "load_cotracker", "load_weights", "read_state_dict"), "weights"),
    **dict.fromkeys(("CoTrackerOnline", "WindowFrame", "frame_to_model", "model_scale", "model_to_frame"), "online"),
}

__all__ = ["CoTrackerConfig", *LAZY_NAMES]


def __getattr__(name: str):
    """Load a torch-dependent name from its module on first access (and keep it here)."""
    module = LAZY_NAMES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *LAZY_NAMES})
