"""Validation while training: episodes held out of the training samples, the loss on them, closed-loop
success in the simulator (the same code as `stvla eval`), and the best checkpoint by either.

The held-out episodes are each task's last `per_task` episodes (a task keeps at least MIN_TRAINING
episodes to train on), so a resumed run holds out the same ones. The best checkpoint is exported to
`<out>/best` beside the last one (`<out>/policy`); `<out>/run.json` says which step and figure made it
the best, and that `policy/` is the last. A resumed run reads the best so far from run.json.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stvla.data.store import EpisodeStore, write_atomically
from stvla.devices import batch_to
from stvla.policies.base import Policy

MIN_TRAINING = 4  # episodes a task keeps for training whatever --val_episodes asks
MAX_VALIDATION_FRAMES = 512  # validation loss on at most this many frames (evenly spaced): its cost stays bounded
RUN_FILE = "run.json"
BEST_DIR = "best"


def episodes_by_task(store: EpisodeStore) -> dict[str, list[int]]:
    """The dataset's episodes by task (the simulator task it was recorded on, else its first task string)."""
    by_task: dict[str, list[int]] = {}
    for episode in range(store.num_episodes):
        meta = store.episode_meta(episode)
        by_task.setdefault(str(meta.get("env_task") or meta["tasks"][0]), []).append(episode)
    return by_task


def held_out_episodes(store: EpisodeStore, per_task: int) -> list[int]:
    """The episodes kept out of training: each task's last `per_task`, if it keeps MIN_TRAINING to train on."""
    if per_task <= 0:
        return []
    held = []
    for episodes in episodes_by_task(store).values():
        if len(episodes) - per_task >= MIN_TRAINING:
            held += episodes[-per_task:]
    return sorted(held)


def simulator_tasks(store: EpisodeStore) -> list[str]:
    """The Meta-World tasks a dataset was recorded on (its `env_task` column), for closed-loop evaluation."""
    tasks = [store.episode_meta(e).get("env_task") for e in range(store.num_episodes)]
    if not tasks or any(not isinstance(t, str) or not t for t in tasks):
        raise ValueError(f"--eval_every evaluates in the simulator: dataset {store.root} has episodes without an "
                         f"env_task (recorded elsewhere); train with --eval_every 0 and evaluate with stvla eval")
    return list(dict.fromkeys(tasks))


@torch.no_grad()
def validation_loss(policy: Policy, batches: list[dict[str, torch.Tensor]], device: torch.device) -> float:
    """The mean loss over the validation batches (no augmentation, no dropout)."""
    was_training = policy.training
    policy.eval()
    total = count = 0.0
    for batch in batches:
        loss, _ = policy(batch_to(batch, device))
        size = len(next(iter(batch.values())))
        total, count = total + float(loss) * size, count + size
    policy.train(was_training)
    return total / max(count, 1)


def validation_frames(frames: np.ndarray) -> np.ndarray:
    """At most MAX_VALIDATION_FRAMES of the held-out frames, evenly spaced."""
    if len(frames) <= MAX_VALIDATION_FRAMES:
        return frames
    return frames[np.linspace(0, len(frames) - 1, MAX_VALIDATION_FRAMES).astype(np.int64)]


def closed_loop_success(policy_dir: Path, tasks: list[str], episodes: int, out: Path) -> float:
    """Success rate of a saved policy over `episodes` held-out simulator episodes per task (stvla eval)."""
    from stvla.evaluate import EvalConfig, evaluate

    info = evaluate(EvalConfig(policy=str(policy_dir), tasks=",".join(tasks), episodes=episodes, workers=1,
                               videos=0, out=str(out)), progress=False)
    return float(info["overall"]["success_rate"])


@dataclass
class Best:
    """The best checkpoint so far: by closed-loop success (higher is better) or validation loss (lower)."""

    metric: str  # "success_rate" or "val_loss"
    value: float
    step: int

    def beaten_by(self, value: float) -> bool:
        return value > self.value if self.metric == "success_rate" else value < self.value


class RunRecord:
    """`run.json`: the held-out episodes, the best checkpoint so far, and which checkpoint `policy/` is."""

    def __init__(self, out: Path, held_out: list[int]) -> None:
        self.path = Path(out) / RUN_FILE
        self.held_out = held_out
        self.best: Best | None = None
        if self.path.is_file():  # a resumed run: the best so far stays the best to beat
            saved = json.loads(self.path.read_text()).get("best")
            self.best = Best(saved["metric"], saved["value"], saved["step"]) if saved else None

    def offer(self, step: int, metric: str, value: float, export: Callable[[Path], Any]) -> bool:
        """Export a new best (via `export(directory)`) when `value` beats the best so far."""
        if self.best is not None and self.best.metric == metric and not self.best.beaten_by(value):
            return False
        export(Path(self.path.parent) / BEST_DIR)
        self.best = Best(metric, value, step)
        self.write(finished=False)
        return True

    def write(self, finished: bool, seconds: dict[str, float] | None = None) -> None:
        """`seconds`: where the run's wall time went (training steps, logging, validation)."""
        record = {
            "policy": "policy/ holds the weights of the last step" if finished else None,
            "seconds": seconds,
            "best": None if self.best is None else {"directory": BEST_DIR, "metric": self.best.metric,
                                                    "value": self.best.value, "step": self.best.step},
            "validation_episodes": self.held_out,
        }
        write_atomically(self.path, lambda temporary: temporary.write_text(json.dumps(record, indent=2) + "\n"))
