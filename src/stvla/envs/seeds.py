"""Episode seeds: the start of every episode is a pure function of (task, attempt number, split).

Collection draws training starts and evaluation draws held-out ones from the same function, so a
collection is reproducible, a resumed one continues where it stopped, and the two never meet.
"""

from __future__ import annotations

from stvla.envs.metaworld_env import TASKS
from stvla.envs.variants import VARIANTS

SEEDS_PER_TASK = 100_000
EVAL_SEED_OFFSET = 50_000  # evaluation starts use attempts >= this; training ones stay below it


def episode_seed(task: str, attempt: int, split: str = "train") -> int:
    """The environment seed of a task's `attempt`-th episode; train and eval seeds never overlap."""
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    if not 0 <= attempt < EVAL_SEED_OFFSET:
        raise ValueError(f"attempt must be in [0, {EVAL_SEED_OFFSET}), got {attempt}")
    offset = EVAL_SEED_OFFSET if split == "eval" else 0
    # Variants number after Meta-World's tasks: every task's seeds keep their values as variants are added.
    return (TASKS + tuple(VARIANTS)).index(task) * SEEDS_PER_TASK + offset + attempt
