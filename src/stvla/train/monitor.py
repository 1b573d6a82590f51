"""What a training run records as it goes, to be watched while it runs and looked at afterwards.

    log = RunLog(out, LogConfig(), run_config)
    log.record(step, {"loss": 0.8, "lr": 3e-4}, split="train")     # every `log.every` steps
    log.record(step, {"loss": 0.9}, split="val")                    # validation
    log.close()                                                     # and loss.png

Every record goes to `train_log.jsonl` (one JSON object per line with `step` and `split`, the file a
resumed run appends to), to TensorBoard event files in `tensorboard/` (`tensorboard --logdir OUT`),
and with `--log.wandb` to Weights & Biases (offline unless WANDB_MODE says otherwise: no network is
needed, `wandb sync` uploads later). `loss.png` plots the whole jsonl at the end of the run.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LOG_FILE = "train_log.jsonl"
PLOT_FILE = "loss.png"


@dataclass
class LogConfig:
    every: int = 25  # steps between training records (loss, learning rate, throughput)
    tensorboard: bool = True  # TensorBoard event files in <out>/tensorboard
    wandb: bool = False  # also log to Weights & Biases (pip install wandb; offline unless WANDB_MODE=online)
    wandb_project: str = "stvla"  # the Weights & Biases project

    def __post_init__(self) -> None:
        if self.every < 1:
            raise ValueError(f"--log.every must be >= 1, got {self.every}")


class RunLog:
    """The run's records, to every sink the config asks for (only the process that writes, under torchrun)."""

    def __init__(self, out: Path, config: LogConfig, run_config: dict[str, Any], enabled: bool = True) -> None:
        self.out = Path(out)
        self.config = config
        self.enabled = enabled
        self.path = self.out / LOG_FILE
        self.seconds = 0.0  # wall time spent recording (what logging costs the run)
        self._tensorboard = self._wandb = None
        if not enabled:
            return
        if config.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tensorboard = SummaryWriter(str(self.out / "tensorboard"))
        if config.wandb:
            try:
                import wandb
            except ImportError:
                raise ValueError("--log.wandb needs the wandb package: pip install wandb") from None
            os.environ.setdefault("WANDB_MODE", "offline")
            self._wandb = wandb.init(project=config.wandb_project, dir=str(self.out), config=run_config,
                                     name=self.out.name, resume="allow", id=_wandb_id(self.out))

    def record(self, step: int, values: dict[str, float], split: str = "train") -> None:
        if not self.enabled:
            return
        started = time.perf_counter()
        self._write(step, values, split)
        self.seconds += time.perf_counter() - started

    def _write(self, step: int, values: dict[str, float], split: str) -> None:
        with self.path.open("a") as log:
            log.write(json.dumps({"step": step, "split": split, **values}) + "\n")
        if self._tensorboard is not None:
            for name, value in values.items():
                self._tensorboard.add_scalar(f"{split}/{name}", value, step)
        if self._wandb is not None:
            self._wandb.log({f"{split}/{name}": value for name, value in values.items()}, step=step)

    def close(self) -> Path | None:
        """Flush every sink and plot the losses; returns loss.png (None when nothing was logged)."""
        if not self.enabled:
            return None
        if self._tensorboard is not None:
            self._tensorboard.close()
        if self._wandb is not None:
            self._wandb.finish()
        return plot_log(self.path, self.out / PLOT_FILE) if self.path.is_file() else None


def read_log(path: Path) -> list[dict[str, Any]]:
    """The records of a train_log.jsonl (lines of older runs, without `split`, are training records)."""
    records = []
    for line in Path(path).read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            record.setdefault("split", "train")
            records.append(record)
    return records


def plot_log(path: Path, out: Path) -> Path:
    """loss.png: the training loss, the validation loss and, when measured, validation success over steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_log(path)
    series = {split: [r for r in records if r["split"] == split and "loss" in r] for split in ("train", "val")}
    success = [r for r in records if r["split"] == "eval" and "success_rate" in r]
    figure, loss_axis = plt.subplots(figsize=(7, 4))
    for split, style in (("train", "-"), ("val", "o-")):
        if series[split]:
            loss_axis.plot([r["step"] for r in series[split]], [r["loss"] for r in series[split]], style,
                           label=f"{split} loss", markersize=3)
    loss_axis.set_xlabel("step")
    loss_axis.set_ylabel("loss")
    loss_axis.set_yscale("log")
    handles, labels = loss_axis.get_legend_handles_labels()
    if success:
        rate_axis = loss_axis.twinx()
        rate_axis.plot([r["step"] for r in success], [100 * r["success_rate"] for r in success], "s--", color="tab:green",
                       label="closed-loop success")
        rate_axis.set_ylabel("success (%)")
        rate_axis.set_ylim(0, 100)
        more = rate_axis.get_legend_handles_labels()
        handles, labels = handles + more[0], labels + more[1]
    loss_axis.legend(handles, labels, loc="upper right")
    loss_axis.set_title(Path(path).parent.name)
    figure.tight_layout()
    figure.savefig(out, dpi=100)
    plt.close(figure)
    return out


def _wandb_id(out: Path) -> str:
    """The same W&B run id for the same output folder, so a resumed run continues its curves."""
    import hashlib

    return hashlib.sha1(str(out.resolve()).encode()).hexdigest()[:12]
