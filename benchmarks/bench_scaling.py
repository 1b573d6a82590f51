"""How many demonstrations does a learner without history need to reach what one frame allows? The
no-history row of bench_history.py (the SpatialVLA-style base, LoRA fine-tuned from the kept base) on
each history task at several numbers of demonstrations N, each trained for its own number of steps,
against the scripted expert given the current frame only (bench_variants.py: the level one frame allows).

    python benchmarks/bench_scaling.py [--tasks reach-moving-v3,reach-moving-hidden-v3]
        [--demos 50,200,800] [--steps 2000,4000,8000] [--init checkpoints/base-mt10] [--report_only]

Every (task, N) is bench_history.py's cell of its "base" row (seed 0) in the setting `--demos N
--val_episodes 5 --train_starts 50 --steps S --init ...`, so the rows compared at N* later
(`bench_history.py --demos N* ...`) share it: 5 more demonstrations are held out and their loss recorded
as training goes (does it need more steps?), and the policy is evaluated on 50 held-out starts and on 50
of the starts it was trained on (memorising or generalising?). Cells run in order of N, every task's
before the next N, and resume as bench_history's do.

N* is the smallest N at which the learner's held-out success is within 10 points of the one-frame expert.
Writes benchmarks/results/scaling.json, scaling.png and the "Scaling" section of BENCHMARKS.md
(`scaling_full` with `--lora_rank 0`, every weight fine-tuned; `scaling_lora<r>` for another rank).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_history  # noqa: E402
from common import RESULTS_ROOT, ROOT, record, run  # noqa: E402

from stvla.benchmark.protocol import int_list  # noqa: E402
from stvla.envs.variants import VARIANTS  # noqa: E402

VAL_EPISODES = 5  # demonstrations held out beside the N trained on, for the validation loss
TRAIN_STARTS = 50  # training starts each policy is also evaluated on
WITHIN = 0.10  # N*: held-out success within this of the one-frame expert's


def cell_args(task: str, demos: int, steps: int, args: argparse.Namespace) -> argparse.Namespace:
    """bench_history's arguments for the no-history row at one N."""
    return bench_history.parse_args([
        "--task", task, "--rows", "base", "--seeds", "0", "--demos", str(demos), "--val_episodes", str(VAL_EPISODES),
        "--train_starts", str(TRAIN_STARTS), "--steps", str(steps), "--episodes", str(args.episodes),
        "--max_steps", str(args.max_steps), "--lora_rank", str(args.lora_rank), *(["--init", args.init] if args.init else []),
        *(["--report_only"] if args.report_only else [])])


def one_frame_expert(task: str) -> float | None:
    """The scripted expert's success given the current frame only (bench_variants.py's recorded figure)."""
    path = ROOT / "benchmarks" / "results" / "variants.json"
    figures = json.loads(path.read_text()) if path.is_file() else {}
    return figures.get(task, {}).get("current_state_only", {}).get("success_rate")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default="reach-moving-v3,reach-moving-hidden-v3", help="history tasks, comma-separated")
    parser.add_argument("--demos", default="50,200,800", help="numbers of demonstrations trained on, comma-separated")
    parser.add_argument("--steps", default="2000,4000,8000", help="training steps at each of --demos")
    parser.add_argument("--init", default="checkpoints/base-mt10", help="the checkpoint every cell is LoRA "
                        "fine-tuned from ('' = from scratch)")
    parser.add_argument("--lora_rank", type=int, default=bench_history.DEFAULT_LORA_RANK, help="the LoRA rank of "
                        "the fine-tunes; 0 fine-tunes every weight")
    parser.add_argument("--episodes", type=int, default=50, help="held-out evaluation episodes")
    parser.add_argument("--max_steps", type=int, default=0, help="steps before an episode fails (default: each "
                        "variant's own)")
    parser.add_argument("--report_only", action="store_true", help="run nothing: report the cells finished so far")
    args = parser.parse_args()
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in VARIANTS]
    if unknown:
        parser.error(f"--tasks {unknown} are not history-needing variants; valid: {', '.join(VARIANTS)}")
    demos, steps = int_list(args.demos, "--demos"), int_list(args.steps, "--steps")
    if len(demos) != len(steps):
        parser.error(f"--steps gives {len(steps)} values for {len(demos)} --demos; one per number of demonstrations")
    curves: dict[str, list[dict]] = {}
    for n, s in zip(demos, steps):  # every task's curve grows together
        for task in tasks:
            settings = cell_args(task, n, s, args)
            cell = bench_history.run_rows(settings).get("base", {}).get(0)
            if cell is not None:
                curves.setdefault(task, []).append({"demos": n, "steps": s, "max_steps": settings.max_steps,
                                                    "setting": bench_history.setting_name(settings), **cell})
    report(curves, args)


def report(curves: dict[str, list[dict]], args: argparse.Namespace) -> None:
    if not curves:
        print("bench_scaling: no cell has finished yet; nothing to report")
        return
    rows, figures = [], {"setting": {"init": args.init, "episodes": args.episodes, "val_episodes": VAL_EPISODES,
                                     "train_starts": TRAIN_STARTS, "within": WITHIN}, "tasks": {}}
    for task, points in curves.items():
        expert = one_frame_expert(task)
        reached = [p["demos"] for p in points if expert is not None and p["overall"]["success_rate"] >= expert - WITHIN]
        figures["tasks"][task] = {"one_frame_expert": expert, "n_star": min(reached) if reached else None,
                                  "points": points}
        for p in points:
            held, starts = p["overall"], p.get("train_starts")
            curve = p.get("val_loss") or []
            lowest = min(curve, key=lambda c: c[1]) if curve else None
            rows.append((f"{task}, N = {p['demos']} ({p['steps']} steps): success on held-out / training starts (95% CI); "
                         f"validation loss at the end / lowest (step)",
                         f"{bench_history.percent(held['successes'], held['episodes'])} / "
                         + (bench_history.percent(starts['successes'], starts['episodes']) if starts else "not measured")
                         + (f"; {curve[-1][1]:.3f} / {lowest[1]:.3f} ({lowest[0]})" if curve else "")))
        level = "not measured" if expert is None else f"{100 * expert:.0f}%"
        rows.append((f"{task}: the one-frame expert (bench_variants.py); N*, the smallest N within "
                     f"{100 * WITHIN:.0f} points of it", f"{level}; " + (f"N* = {min(reached)}" if reached else
                                                                         f"none up to N = {max(p['demos'] for p in points)}")))
    name = "scaling" + ("" if args.lora_rank == bench_history.DEFAULT_LORA_RANK or not args.init
                        else "_full" if args.lora_rank == 0 else f"_lora{args.lora_rank}")
    plot(curves, figures, RESULTS_ROOT / "benchmarks" / "results" / f"{name}.png")
    markdown = ["![held-out and training-start success against the number of demonstrations]"
                f"(benchmarks/results/{name}.png)"]
    how = "from scratch" if not args.init else (f"every weight fine-tuned from {args.init}" if args.lora_rank == 0
                                                else f"LoRA (rank {args.lora_rank}) fine-tuned from {args.init}")
    figures["setting"]["lora_rank"] = args.lora_rank
    record(name, figures, rows, f"Scaling: the no-history learner against the number of demonstrations "
                                     f"({how}, {args.episodes} held-out episodes per point, seed 0)", markdown=markdown)


def plot(curves: dict[str, list[dict]], figures: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(5 * len(curves), 3.6), squeeze=False)
    for ax, (task, points) in zip(axes[0], curves.items()):
        n = [p["demos"] for p in points]
        for key, label, style in (("overall", "held-out starts", "o-"), ("train_starts", "training starts", "s--")):
            measured = [(x, p[key]) for x, p in zip(n, points) if p.get(key)]
            if measured:
                xs = [x for x, _ in measured]
                ys = [100 * m["success_rate"] for _, m in measured]
                low = [100 * (m["success_rate"] - m["ci95"][0]) for _, m in measured]
                high = [100 * (m["ci95"][1] - m["success_rate"]) for _, m in measured]
                ax.errorbar(xs, ys, yerr=[low, high], fmt=style, capsize=3, label=f"no history, {label}")
        expert = figures["tasks"][task]["one_frame_expert"]
        if expert is not None:
            ax.axhline(100 * expert, color="grey", linestyle=":", label="expert given one frame")
        ax.set_xscale("log")
        ax.set_xticks(n, [str(x) for x in n])
        ax.set_ylim(0, 100)
        ax.set_xlabel("demonstrations trained on")
        ax.set_ylabel("success, % (95% CI)")
        ax.set_title(task)
        ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    run(main)
