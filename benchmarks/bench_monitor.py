"""What watching a run costs: the share of a training run's wall time spent recording (train_log.jsonl
and TensorBoard every 25 steps) and validating (one episode per task held out, its loss every 250
steps), the defaults, as the run itself times them (run.json "seconds"; a difference of two runs'
wall times was lost in their noise here), over two runs.

    python benchmarks/bench_monitor.py [--steps 500] [--work runs/bench-monitor]

The default stage-1 model (spatialvla, batch 32, 128 px) on reach and push, 10 expert episodes each.
Writes benchmarks/results/monitor.json and the "Monitoring" section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import record, run  # noqa: E402

from stvla.data import CollectConfig, collect  # noqa: E402
from stvla.train import TrainConfig, train  # noqa: E402


def monitoring_share(config: TrainConfig) -> dict[str, float]:
    """Train from scratch and read where the run's time went (run.json)."""
    shutil.rmtree(config.out, ignore_errors=True)
    train(config, progress=False)
    return json.loads((Path(config.out) / "run.json").read_text())["seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=500, help="training steps per run")
    parser.add_argument("--work", default="runs/bench-monitor", help="scratch folder")
    args = parser.parse_args()
    work = Path(args.work)
    data = work / "data"
    collect(CollectConfig(task="reach-v3,push-v3", episodes=10, out=str(data), resume=True, workers=2), progress=False)
    config = TrainConfig(policy="spatialvla", dataset=str(data), out=str(work / "run"), steps=args.steps,
                         data=dataclasses.replace(TrainConfig().data, cache_dir=str(work / "cache")))
    runs = [monitoring_share(config) for _ in range(2)]
    for seconds in runs:
        print(seconds, flush=True)
    loop, logging, validation = (sum(r[k] for r in runs) for k in ("loop", "logging", "validation"))
    share = (logging + validation) / (loop - logging - validation)
    figures = {"runs": runs, "steps": args.steps, "logging_share": round(logging / loop, 4),
               "validation_share": round(validation / loop, 4), "overhead_share": round(share, 4)}
    rows = [("training run: steps / logging / validation, seconds (2 runs of "
             f"{args.steps} steps)", f"{loop - logging - validation:.1f} / {logging:.2f} / {validation:.2f}"),
            ("cost of the default logging (jsonl + TensorBoard every 25 steps) and validation (one episode per "
             "task, every 250 steps) as a share of the training steps' time", f"{100 * share:.1f}%")]
    record("monitor", figures, rows, title="Monitoring: the cost of training curves and validation (issue 20)")


if __name__ == "__main__":
    run(main)
