"""The README's main job from a fresh clone: wall time of `make demo` (install included) and its results.

    python benchmarks/bench_demo.py [--keep DIR]

Clones this repository's HEAD into a temporary directory (nothing of this checkout's .venv or runs/
comes along), runs `make demo` there, and records the wall time of the install and of the job, the
per-task success the job printed, and the machine's load while it ran (other work slows it). Then,
outside the timed job, the kept base is evaluated zero-shot on the same tasks and held-out episodes:
what the fine-tuning added.
Writes benchmarks/results/demo.json and the "Main job" section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, record, run  # noqa: E402


def percent(row: dict) -> str:
    low, high = row["ci95"]
    return f"{100 * row['success_rate']:.0f}% [{100 * low:.0f}, {100 * high:.0f}]"


def run(command: list[str], cwd: Path, log) -> float:
    """Run a command, its output appended to `log`; returns its wall time in seconds (raises on failure)."""
    started = time.perf_counter()
    subprocess.run(command, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, check=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keep", default="", help="clone into this directory and keep it (default: a temporary one)")
    args = parser.parse_args()
    parent = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="stvla-demo-"))
    clone = parent / "stvla"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    load_before = os.getloadavg()[0]
    with (parent / "demo.log").open("w") as log:
        install_s = run(["make", "install"], clone, log)
        demo_s = run(["make", "demo"], clone, log)
    info = json.loads((clone / "runs/demo/eval/eval_info.json").read_text())
    config = json.loads((clone / "runs/demo/st/train_config.json").read_text())
    evaluated = json.loads((clone / "runs/demo/eval/eval_config.json").read_text())
    with (parent / "demo.log").open("a") as log:  # the base before fine-tuning, on the same held-out episodes
        run([str(clone / ".venv/bin/stvla"), "eval", "--policy", "checkpoints/base-mt10", "--tasks", evaluated["tasks"],
             "--episodes", str(evaluated["episodes"]), "--workers", "2", "--videos", "0",
             "--out", "runs/demo/eval-base"], clone, log)
    zero_shot = json.loads((clone / "runs/demo/eval-base/eval_info.json").read_text())
    figures = {
        "install_minutes": round(install_s / 60, 2),
        "demo_minutes": round(demo_s / 60, 2),
        "total_minutes": round((install_s + demo_s) / 60, 2),
        "per_task": {task: {k: row[k] for k in ("episodes", "success_rate", "ci95", "subgoal_rate")}
                     for task, row in info["per_task"].items()},
        "overall": {k: info["overall"][k] for k in ("episodes", "success_rate", "ci95", "subgoal_rate")},
        "base_zero_shot": {task: {k: row[k] for k in ("episodes", "success_rate", "ci95")}
                           for task, row in [*zero_shot["per_task"].items(), ("overall", zero_shot["overall"])]},
        "init": config["init"], "steps": config["steps"],
        "load_average_at_start": round(load_before, 2), "load_average_at_end": round(os.getloadavg()[0], 2),
        "log": str(parent / "demo.log"),
    }
    rows = [
        ("`make install` in a fresh clone (venv, torch CPU wheel, the package): minutes", f"{figures['install_minutes']}"),
        ("`make demo` (collect, ST-VLA LoRA fine-tune from the kept base, closed-loop evaluation): minutes",
         f"{figures['demo_minutes']}"),
    ]
    for task, row in [*figures["per_task"].items(), ("overall", figures["overall"])]:
        before = figures["base_zero_shot"].get(task)
        rows.append((f"success of the fine-tuned `st` policy, {task} ({row['episodes']} held-out episodes)",
                     f"{percent(row)}; sub-goal "
                     + (f"{100 * row['subgoal_rate']:.0f}%" if row["subgoal_rate"] is not None else "none defined")
                     + (f"; the base before fine-tuning: {percent(before)}" if before else "")))
    rows.append(("machine load average (1 min) at the start / end: other work running beside it slows the job",
                 f"{figures['load_average_at_start']} / {figures['load_average_at_end']}"))
    print(json.dumps(figures, indent=1))
    record("demo", figures, rows, title="Main job: `make demo` from a fresh clone (issue 5)")


if __name__ == "__main__":
    run(main)
