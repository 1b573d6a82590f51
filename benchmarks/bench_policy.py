"""Policy speed: one ST-VLA control step, training throughput of both stages, peak memory, and the
wall time of a stage-2 fine-tune on 52 episodes (4 tasks x 13), all on this machine's 2 cores.

    python benchmarks/bench_policy.py [--work runs/bench-policy] [--stage1_steps 150]

The 52-episode set is collected once into `--work` (seeds disjoint from pre-training: first attempt
1000) and reused by later runs. Stage 1 trains a spatialvla base for a few steps only (enough to time
it); stage 2 is the default `stvla train --policy st --init BASE` run, timed from start to saved
policy (trace cache included). Writes benchmarks/results/policy.json and BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import resource
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import record, run  # noqa: E402

from stvla import features as F  # noqa: E402
from stvla.data import CollectConfig, EpisodeStore, collect  # noqa: E402
from stvla.policies.registry import load_policy, make_policy  # noqa: E402
from stvla.data.roles import DataConfig  # noqa: E402
from stvla.train import TrainConfig, train  # noqa: E402
from stvla.train.monitor import read_log  # noqa: E402

FINETUNE_TASKS = "pick-place-v3,push-v3,drawer-open-v3,door-open-v3"
OBSERVED = (F.RGB, F.DEPTH, F.INTRINSICS, F.STATE)  # the recorded features an `st` policy reads


def throughput(out: Path, skip_steps: int) -> float:
    """Mean samples/s over the logged intervals after the first `skip_steps` (warm-up, caches)."""
    rows = [row for row in read_log(out / "train_log.jsonl") if row["split"] == "train"]
    rates = [row["samples_per_s"] for row in rows if row["step"] > skip_steps]
    return float(np.mean(rates))


def control_step_ms(base: Path, dataset: Path, n_action_steps: int, steps: int = 200) -> list[float]:
    """select_action of an `st` policy (trace update + forward when its action queue is empty), per step."""
    torch.set_num_threads(2)
    base_policy = load_policy(base)
    config = make_policy("st").config
    config.vla = dataclasses.replace(base_policy.config.vla, n_action_steps=n_action_steps)
    policy = make_policy("st", config)
    policy.load_weights(base, strict=True)
    policy.eval()
    store = EpisodeStore(dataset)
    timings: list[float] = []
    episode = 0
    while len(timings) < steps:
        frames = store.episode(episode % store.num_episodes, list(OBSERVED))
        instruction = store.episode_meta(episode % store.num_episodes)["tasks"][0]
        policy.reset()
        for index in range(len(frames[F.STATE])):
            obs = {F.FEATURE_OF_OBSERVATION[key]: frames[key][index] for key in OBSERVED}
            obs[F.OBS_INSTRUCTION] = instruction
            started = time.perf_counter()
            policy.select_action(obs)
            timings.append(1000 * (time.perf_counter() - started))
        episode += 1
    return timings[:steps]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--work", default="runs/bench-policy", help="directory for the dataset and checkpoints")
    parser.add_argument("--stage1_steps", type=int, default=150, help="stage-1 steps to time (not a full pre-train)")
    args = parser.parse_args()
    work = Path(args.work)
    dataset = work / "finetune52"
    collect(CollectConfig(task=FINETUNE_TASKS, episodes=13, out=str(dataset), resume=True, workers=2,
                          first_attempt=1000), progress=True)

    stage1_out = work / "stage1"
    shutil.rmtree(stage1_out, ignore_errors=True)
    data = DataConfig(cache_dir=str(work / "cache"))  # the caches this script builds and times
    base = train(TrainConfig(policy="spatialvla", dataset=str(dataset), out=str(stage1_out), data=data,
                             steps=args.stage1_steps, save_every=10_000, val_episodes=0), progress=True)
    stage1_rate = throughput(stage1_out, skip_steps=25)

    per_step = control_step_ms(base, dataset, n_action_steps=1)
    chunked = control_step_ms(base, dataset, n_action_steps=4)

    stage2_out = work / "stage2"
    shutil.rmtree(stage2_out, ignore_errors=True)
    shutil.rmtree(data.cache_dir, ignore_errors=True)  # time the trace cache too, as a first run has it
    stage2_config = TrainConfig(policy="st", dataset=str(dataset), out=str(stage2_out), init=str(base), data=data,
                                val_episodes=0)
    started = time.perf_counter()
    train(stage2_config, progress=True)
    stage2_minutes = (time.perf_counter() - started) / 60
    stage2_rate = throughput(stage2_out, skip_steps=25)
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20

    frames = EpisodeStore(dataset).num_frames
    figures = {
        "st_control_step_ms_median": round(float(np.median(per_step)), 2),
        "st_control_step_ms_p95": round(float(np.percentile(per_step, 95)), 2),
        "st_control_step_ms_median_chunked": round(float(np.median(chunked)), 2),
        "train_samples_per_s_stage1": round(stage1_rate, 1),
        "train_samples_per_s_stage2": round(stage2_rate, 1),
        "train_peak_rss_gib": round(peak_gib, 2),
        "stage2_52ep_minutes": round(stage2_minutes, 2),
        "stage2_steps": stage2_config.steps,
        "stage2_batch_size": stage2_config.batch_size,
        "finetune_frames": frames,
        "finetune_tasks": FINETUNE_TASKS,
    }
    rows = [
        ("ST-VLA control step, trace update + forward every step (2 threads): median / p95 ms",
         f"{figures['st_control_step_ms_median']} / {figures['st_control_step_ms_p95']}"),
        ("ST-VLA control step with chunks of 4 (forward every 4th step): median ms",
         f"{figures['st_control_step_ms_median_chunked']}"),
        ("stage-1 training (spatialvla, full weights, batch 32, 128 px): samples/s",
         f"{figures['train_samples_per_s_stage1']}"),
        ("stage-2 training (st, LoRA r=32, batch 32, 128 px): samples/s", f"{figures['train_samples_per_s_stage2']}"),
        (f"stage-2 fine-tune on 52 episodes ({frames} frames, {stage2_config.steps} steps, trace cache included): "
         "minutes", f"{figures['stage2_52ep_minutes']}"),
        ("peak resident memory of the whole run: GiB", f"{figures['train_peak_rss_gib']}"),
    ]
    for row in rows:
        print(*row, sep=": ")
    record("policy", figures, rows, "Policy speed: control step and training (issue 4)")


if __name__ == "__main__":
    run(main)
