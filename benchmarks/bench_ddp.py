"""Training on several processes (torchrun, DDP over gloo) on this 2-core CPU: throughput of 1 process x 2
threads against 2 processes x 1 thread at the same global batch, and what the gradient all-reduce costs.

    python benchmarks/bench_ddp.py [--steps 60] [--work runs/bench-ddp]

Stage 1 of the benchmark's `spatialvla` model (128 px, global batch 32) on a small dataset this script
collects (reach-v3 and window-open-v3, 5 episodes each). Samples per second come from the runs' own
train_log.jsonl (steps 26-50, after warm-up). The all-reduce is timed alone, in 2 processes, on a
tensor of the model's parameter count (float32, gloo), which is what DDP reduces each step (in buckets).
CPU figures show that the path is correct and what its overhead is on CPU; they say nothing of GPU
speed-ups, which depend on NCCL and the interconnect. Writes benchmarks/results/ddp.json and BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import record, run  # noqa: E402

from stvla.train.monitor import read_log  # noqa: E402

DATA_TASKS = "reach-v3,window-open-v3"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def allreduce_ms(elements: int, repeats: int = 20) -> float:
    """Run inside torchrun: mean ms of one all-reduce of `elements` float32 over the group (rank 0 prints)."""
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo")
    tensor = torch.ones(elements)
    for _ in range(3):
        dist.all_reduce(tensor)
    started = time.perf_counter()
    for _ in range(repeats):
        dist.all_reduce(tensor)
    milliseconds = (time.perf_counter() - started) / repeats * 1000
    if dist.get_rank() == 0:
        print(json.dumps({"allreduce_ms": milliseconds}))
    dist.destroy_process_group()
    return milliseconds


def samples_per_s(out: Path) -> float:
    lines = [line for line in read_log(out / "train_log.jsonl") if line["split"] == "train"]
    return float([line for line in lines if line["step"] == 50][0]["samples_per_s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60, help="optimiser steps per run (>= 50)")
    parser.add_argument("--work", default="runs/bench-ddp", help="directory for the dataset and the runs")
    parser.add_argument("--allreduce", type=int, default=0, help=argparse.SUPPRESS)  # inside torchrun
    args = parser.parse_args()
    if args.allreduce:
        allreduce_ms(args.allreduce)
        return
    from stvla.data import CollectConfig, collect
    from stvla.policies.registry import make_policy

    work = Path(args.work)
    dataset = work / "data"
    collect(CollectConfig(task=DATA_TASKS, episodes=5, out=str(dataset), resume=True, workers=2), progress=False)
    env = {**os.environ, "STVLA_CACHE": str(work / "cache"), "OMP_NUM_THREADS": "1"}
    common = ["train", "--policy", "spatialvla", "--dataset", str(dataset), "--steps", str(args.steps),
              "--batch_size", "32", "--save_every", "100000", "--val_episodes", "0"]
    runs = {"1 process x 2 threads": (1, 2), "2 processes x 1 thread": (2, 1)}
    rates, minutes = {}, {}
    for name, (processes, threads) in runs.items():
        out = work / f"p{processes}"
        subprocess.run(["rm", "-rf", str(out)], check=True)
        launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
                    "--master_port", str(free_port()), "-m", "stvla.cli"] if processes > 1 else [sys.executable, "-m", "stvla.cli"]
        started = time.perf_counter()
        subprocess.run([*launcher, *common, "--out", str(out), "--threads", str(threads)], env=env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        minutes[name] = (time.perf_counter() - started) / 60
        rates[name] = samples_per_s(out)
    parameters = sum(p.numel() for p in make_policy("spatialvla").parameters() if p.requires_grad)
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                           str(free_port()), __file__, "--allreduce", str(parameters)], env=env, check=True,
                          capture_output=True, text=True)
    reduce_ms = json.loads([line for line in done.stdout.splitlines() if line.startswith("{")][-1])["allreduce_ms"]
    step_ms = 32 / rates["2 processes x 1 thread"] * 1000
    rows = [(f"{name}: samples/s (global batch 32, steps 26-50)", f"{rate:.1f}") for name, rate in rates.items()]
    rows += [(f"{name}: wall time of the {args.steps}-step run with start-up (min)", f"{m:.2f}") for name, m in minutes.items()]
    rows += [(f"all-reduce of the {parameters / 1e6:.2f} M trainable parameters (float32, gloo, 2 processes, ms)",
              f"{reduce_ms:.1f}"),
             ("its share of a 2-process step (%)", f"{100 * reduce_ms / step_ms:.0f}")]
    record("ddp", {"samples_per_s": rates, "minutes": minutes, "allreduce_ms": reduce_ms, "parameters": parameters,
                   "step_ms_2_processes": step_ms}, rows,
           "Training on several processes (torchrun + DDP over gloo, CPU; correctness and overhead, not GPU speed)")


if __name__ == "__main__":
    run(main)
