"""stvla: spatial and temporal visual traces for vision-language-action robot policies.

Layers, each importing only from the ones above it in this list:
geometry -> traces -> envs -> data -> policies -> serve -> train / evaluate / benchmark -> cli.
Beneath them all, small modules with no stvla imports: features (every feature key, and the map from
environment observations to dataset features), config (dataclass configs, cache keys), devices (torch
devices), requirements (version checks of the optional adapters) and image_fit (a camera's images, depth
and intrinsics brought to a model's square input).
"""

__version__ = "0.1.0"
