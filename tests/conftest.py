"""Shared test fixtures: one small expert dataset collected from the simulator, reused read-only."""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("MUJOCO_GL", "egl")
# Training caches of the tests' datasets go to a folder of this run, never the user's ~/.cache/stvla.
os.environ["STVLA_CACHE"] = tempfile.mkdtemp(prefix="stvla-test-cache-")

import pytest  # noqa: E402

from stvla.data import CollectConfig, collect  # noqa: E402


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory):
    """Two tasks x 2 episodes at 64 px (reach and pick-place: short expert episodes)."""
    root = tmp_path_factory.mktemp("data") / "small"
    summary = collect(CollectConfig(task="reach-v3,pick-place-v3", episodes=2, out=str(root), image_size=64),
                      progress=False)
    return root, summary
