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


def results_root() -> Path:
    """Where a script writes benchmarks/results/ and BENCHMARKS.md: this checkout when it runs from inside it,
    else the current directory (a run elsewhere never rewrites the checkout's figures), or the folder
    $STVLA_REPO names when asked."""
    if os.environ.get("STVLA_REPO"):
        return Path(os.environ["STVLA_REPO"])
    here = Path.cwd().resolve()
    return ROOT if here.is_relative_to(ROOT) else here


RESULTS_ROOT = results_root()
record = functools.partial(_record, root=RESULTS_ROOT)


def run(main) -> None:
    """Run a script's `main`; a busy results folder or bad input ends it in one line naming it, status 2."""
    sys.exit(reporting_errors(Path(sys.argv[0]).name, main))
