"""What watching a run costs: wall time per training step with the default logging and validation
(train_log.jsonl and TensorBoard every 25 steps, one episode per task held out, its loss every 250
steps) against a run that records nothing beyond the log file, same data, same steps.

    python benchmarks/bench_monitor.py [--steps 500] [--work runs/bench-monitor]

The default stage-1 model (spatialvla, batch 32, 128 px) on reach and push, 10 expert episodes each.
Run alone on the machine: the figure is a difference of two wall times. Writes
benchmarks/results/monitor.json and the "Monitoring" section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import record  # noqa: E402

from stvla.data import CollectConfig, collect  # noqa: E402
from stvla.train import TrainConfig, train  # noqa: E402
from stvla.train.monitor import LogConfig  # noqa: E402


def seconds_per_step(config: TrainConfig) -> float:
    shutil.rmtree(config.out, ignore_errors=True)
    started = time.perf_counter()
    train(config, progress=False)
    return (time.perf_counter() - started) / config.steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=500, help="training steps per run")
    parser.add_argument("--work", default="runs/bench-monitor", help="scratch folder")
    args = parser.parse_args()
    work = Path(args.work)
    data = work / "data"
    collect(CollectConfig(task="reach-v3,push-v3", episodes=10, out=str(data), resume=True, workers=2), progress=False)
    watched = TrainConfig(policy="spatialvla", dataset=str(data), out=str(work / "watched"), steps=args.steps,
                          data=dataclasses.replace(TrainConfig().data, cache_dir=str(work / "cache")))
    # Nothing held out (the step's cost does not depend on how many frames it draws from).
    quiet = dataclasses.replace(watched, out=str(work / "quiet"), log=LogConfig(tensorboard=False, every=args.steps),
                                val_episodes=0)
    seconds_per_step(dataclasses.replace(quiet, steps=5))  # the caches, built once before timing
    # Alternated, twice each: the machine's drift falls on both alike.
    timings = {"quiet": [], "watched": []}
    for _ in range(2):
        for name, config in (("quiet", quiet), ("watched", watched)):
            timings[name].append(seconds_per_step(config))
            print(name, timings[name][-1], flush=True)
    quiet_s, watched_s = min(timings["quiet"]), min(timings["watched"])
    share = (watched_s - quiet_s) / quiet_s
    figures = {"seconds_per_step_quiet": round(quiet_s, 5), "seconds_per_step_watched": round(watched_s, 5),
               "overhead_share": round(share, 4), "steps": args.steps, "timings": timings}
    rows = [("training step, nothing recorded beyond the log file / default logging and validation",
             f"{1000 * quiet_s:.1f} / {1000 * watched_s:.1f} ms"),
            ("cost of the default logging (jsonl + TensorBoard every 25 steps) and validation (one episode per "
             "task, every 250 steps) as a share of a step", f"{100 * share:.1f}%")]
    record("monitor", figures, rows, title="Monitoring: the cost of training curves and validation (issue 20)")


if __name__ == "__main__":
    main()
