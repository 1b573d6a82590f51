"""Shared by the benchmark scripts: headless settings, and `record` bound to this repository."""

from __future__ import annotations

import functools
import os
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("MUJOCO_GL", "egl")

from stvla.benchmark.record import record as _record  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
record = functools.partial(_record, root=ROOT)
