"""Shared by the benchmark scripts: headless settings, `record` bound to this repository, and `run`, which ends
a script on bad input with one line, as the `stvla` commands do."""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("MUJOCO_GL", "egl")

from stvla.benchmark.record import record as _record  # noqa: E402
from stvla.cli import reporting_errors  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
record = functools.partial(_record, root=ROOT)


def run(main) -> None:
    """Run a script's `main`; a busy results folder or bad input ends it in one line naming it, status 2."""
    sys.exit(reporting_errors(Path(sys.argv[0]).name, main))
