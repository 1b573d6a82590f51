"""Cached cells: each piece of the benchmark (a dataset, a checkpoint, an evaluation) runs once.

A cell is a directory or a result file plus the configuration that produced it. `Cell.run(work)` calls
`work()` only when the cell has no finished result for exactly this configuration, so a second
`stvla bench` runs only what is missing and a killed run resumes (the work itself resumes too: data
collection and training continue from what they left on disk).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stvla.benchmark.record import code_fingerprint
from stvla.locks import FolderLock


def config_hash(config: dict[str, Any]) -> str:
    return hashlib.sha1(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]


@dataclass
class Cell:
    """One unit of benchmark work, finished when `record` exists and names the same configuration."""

    name: str  # what the cell is, for progress messages ("stage2/st-C-b30-s0")
    record: Path  # JSON written when the work has finished: {"config": ..., "config_hash": ..., "result": ...}
    config: dict[str, Any]  # everything the result depends on (inputs, settings, seeds)

    def finished(self) -> dict[str, Any] | None:
        """The stored result, or None when the cell has not run with this configuration."""
        if not self.record.is_file():
            return None
        try:
            stored = json.loads(self.record.read_text())
        except json.JSONDecodeError:
            return None  # a record cut off mid-write is no record
        if stored.get("config_hash") != config_hash(self.config):
            return None
        return stored["result"]

    def run(self, work: Callable[[], dict[str, Any]], log: Callable[[str], None] = print) -> dict[str, Any]:
        """The cell's result: the stored one, or `work()`'s, then stored (atomically)."""
        result = self.finished()
        if result is not None:
            log(f"[bench] {self.name}: cached")
            return result
        # One process per cell: a second benchmark running the same cell is refused, naming the first.
        with FolderLock(self.record.parent, f"stvla bench (cell {self.name})", name=f".{self.record.name}.lock"):
            log(f"[bench] {self.name}: running")
            result = work()
            tmp = self.record.with_name(self.record.name + ".tmp")
            tmp.write_text(json.dumps({"config": self.config, "config_hash": config_hash(self.config),
                                       "code": code_fingerprint(), "result": result}, indent=1) + "\n")
            os.replace(tmp, self.record)
        return result
