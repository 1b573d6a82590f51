"""stvla: spatial and temporal visual traces for vision-language-action robot policies.

Layers, each importing only from the ones above it in this list:
geometry -> traces -> envs -> data -> policies -> train / evaluate / benchmark -> cli.
Beneath them all, two utilities with no stvla imports: config (dataclass configs, cache keys) and
requirements (version checks of the optional adapters).
"""

__version__ = "0.1.0"
