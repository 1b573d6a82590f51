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


def responsive(policy, rng_seed: int = 0, samples: int = 300):
    """A random policy whose decoded actions follow its inputs: fitted statistics, and its weight matrices
    scaled up (at its initial scale a random model picks the same action bins whatever it sees, and Ego3D
    starts near zero). For tests that must tell inputs apart through the actions."""
    import numpy as np
    import torch

    rng = np.random.default_rng(rng_seed)
    policy.fit_statistics(rng.uniform(-1, 1, (samples, 4)), rng.normal(0, 0.3, (samples, 4)))
    with torch.no_grad():
        for parameter in policy.model.parameters():
            if parameter.dim() > 1:
                parameter.mul_(4.0)
    return policy
