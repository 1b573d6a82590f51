"""Reading a user's pretrained weights from a local directory (transformers' `from_pretrained`, nothing
downloaded): any failure, a pickle that `weights_only` loading refuses, a damaged or missing shard, a config
of another architecture, becomes one line naming what was loaded and from where, never a multi-line
traceback from deep inside torch or transformers.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def first_line(error: BaseException, limit: int = 300) -> str:
    """An error's message as one short line (its first non-empty line), or its type's name."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return (lines[0] if lines else type(error).__name__)[:limit]


def from_local(loader: Callable[..., T], path: str | Path, what: str, **options: Any) -> T:
    """`loader(path, local_files_only=True, **options)` (a `from_pretrained`); a failure raises a one-line
    ValueError naming `what` and `path`."""
    try:
        return loader(str(path), local_files_only=True, **options)
    except Exception as error:  # noqa: BLE001 - whatever the files did wrong, the user gets one line
        raise ValueError(f"{what} at {path} could not be loaded ({type(error).__name__}: {first_line(error)})") from None


def local_config(path: str | Path) -> dict[str, Any]:
    """`path`/config.json (a transformers checkpoint's settings) as a dict. A file that is not JSON, or not a
    JSON object, raises a one-line ValueError naming it; a missing or unreadable one, the OSError (which names it)."""
    config_path = Path(path) / "config.json"
    try:
        config = json.loads(config_path.read_text())
    except ValueError as error:  # not UTF-8, or not JSON
        raise ValueError(f"{config_path}: not a JSON file ({first_line(error)})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{config_path}: expected a JSON object of settings, got {json.dumps(config)[:40]}")
    return config
