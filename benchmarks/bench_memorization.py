"""Memorising or generalising? A policy's success on the starts it was trained on against held-out ones.

The kept MT10 base solves the tasks whose goal is the same every episode relative to the scene
(doors, drawers, buttons, windows) and mostly fails those with a goal drawn anew per episode (reach,
push, pick-place; BENCHMARKS.md's base trials). This tells two explanations apart: if it succeeds on the
training starts (the goals it saw demonstrated) and fails on held-out ones, it has learnt each
demonstrated goal, not where a goal is from the image: more demonstrations per goal-varying task
(or a representation that generalises over goal positions) is what it lacks; if it fails on its
training starts too, it cannot even fit them, and the limit is capacity or training.

Both evaluations are ordinary `stvla eval` runs (`--split train` and the default held-out split),
so they resume; the training dataset is read to say how many of the replayed starts it holds (a
start whose expert episode failed is not in it).

    python benchmarks/bench_memorization.py [--policy checkpoints/base-mt10] [--tasks reach-v3,push-v3,pick-place-v3]
    python benchmarks/bench_memorization.py --policy checkpoints/base-mt10-steps20k --dataset runs/bench/data/pretrain-mt10

Writes benchmarks/results/memorization_<policy directory>.json and its section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS_ROOT, ROOT, record, run  # noqa: E402

from stvla.benchmark.protocol import Bench, BenchConfig  # noqa: E402
from stvla.benchmark.report import difference, points_text, rate_text  # noqa: E402
from stvla.data.store import EpisodeStore  # noqa: E402
from stvla.envs import episode_seed, parse_tasks  # noqa: E402
from stvla.evaluate import EvalConfig, evaluate  # noqa: E402


def kept_base_dataset() -> str:
    """Where `stvla bench` collects the kept base's training data: the extended pre-training set when
    stage 1 has a second phase (its extra starts are training starts too), else the pre-training set."""
    bench = Bench(BenchConfig(repo=str(RESULTS_ROOT)))
    first, _ = bench.stage1()
    return (bench.stage1_more(first) or first).dataset


def training_seeds(dataset: Path) -> set[int]:
    """The environment seeds of the episodes a dataset holds."""
    store = EpisodeStore(dataset)
    return {int(store.episode_meta(i)["seed"]) for i in range(store.num_episodes)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", default="checkpoints/base-mt10", help="the policy checkpoint to evaluate")
    parser.add_argument("--dataset", default="", help="the dataset it was trained on (to count the replayed starts "
                        "it holds; default: the kept base's, as `stvla bench` collects it)")
    parser.add_argument("--tasks", default="reach-v3,push-v3,pick-place-v3")
    parser.add_argument("--episodes", type=int, default=50, help="episodes per task and split")
    parser.add_argument("--work", default="", help="evaluation directory (default: runs/bench-memorization/<policy directory>)")
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    tasks = parse_tasks(args.tasks)
    args.dataset = args.dataset or kept_base_dataset()
    name = Path(args.policy).name
    args.work = args.work or f"runs/bench-memorization/{name}"
    dataset = ROOT / args.dataset
    if not (dataset / "meta" / "info.json").is_file():
        sys.exit(f"error: {dataset} is not a dataset: pass the policy's training data with --dataset")
    seen = training_seeds(dataset)

    episodes: dict[str, list[dict]] = {}
    for split in ("train", "eval"):
        info = evaluate(EvalConfig(policy=str(ROOT / args.policy), tasks=",".join(tasks), episodes=args.episodes,
                                   split=split, workers=args.workers, videos=0, out=str(ROOT / args.work / split)))
        episodes[split] = info["episodes"]

    rows, figures = [], {"policy": args.policy, "dataset": args.dataset, "episodes": args.episodes, "tasks": {}}
    for task in tasks:
        counts = {split: (sum(e["success"] for e in episodes[split] if e["task"] == task),
                          sum(e["task"] == task for e in episodes[split])) for split in episodes}
        held = sum(episode_seed(task, attempt, "train") in seen for attempt in range(args.episodes))
        diff, low, high = difference(counts["train"], counts["eval"])
        figures["tasks"][task] = {"train": counts["train"], "eval": counts["eval"], "train_starts_in_dataset": held,
                                  "difference": [diff, low, high]}
        rows.append((f"{task}: success on its training starts ({held} of {args.episodes} in the dataset) / "
                     "on held-out starts; difference (95% CI)",
                     f"{rate_text(*counts['train'])} / {rate_text(*counts['eval'])}; "
                     f"{points_text(diff, low, high)} points"))
    record(f"memorization_{name}", figures, rows, f"Memorising or generalising ({args.policy}, {args.episodes} episodes "
                                           "per task and split)")
    print("\n".join(f"{what}: {value}" for what, value in rows))


if __name__ == "__main__":
    run(main)
