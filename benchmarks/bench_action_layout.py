"""Per-dimension action bins against SpatialVLA's adaptive grid, closed loop, on the same data.

A robot whose action is not an end effector's x y z (roll pitch yaw) gripper (joint positions, two arms)
gets per-dimension quantile bins (`--action_layout joint`, stvla.policies.action_layout) instead of the
grid. Meta-World has no joint-controlled robot; what can be measured here is what the tokenizer alone
costs or gains: the same 4-D end-effector demonstrations, the same policy type, steps, data order and
training seeds, trained once with the grid (the default) and once with per-dimension bins (256 bins for
dx, dy, dz, 2 for the gripper), both from scratch (the kept base has the grid's heads), and evaluated on
the same held-out starts.

    python benchmarks/bench_action_layout.py [--tasks reach-v3,button-press-topdown-v3] [--demos 25]
        [--steps 2000] [--seeds 0,1] [--episodes 50] [--policy spatialvla] [--root DIR] [--report_only]

Every (row, seed) is a cached cell (benchmarks/results/<name>/<row>[-s<seed>].json under --root, the name
`action_layout` plus what differs from the default setting): a killed run resumes, finished cells are not
re-run, every row's first seed runs before any row's second. Success is pooled over a row's finished seeds
(Wilson 95% interval), and per-dimension bins are compared with the grid on the seeds both have (Newcombe
95% interval of the difference). Writes <root>/benchmarks/results/<name>.json and its section of
<root>/BENCHMARKS.md (`--root` elsewhere: a trial run that leaves the repository's results alone).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS_ROOT, record, run  # noqa: E402

from stvla.benchmark.cells import Cell  # noqa: E402
from stvla.benchmark.protocol import int_list  # noqa: E402
from stvla.benchmark.report import difference, points_text, verdict  # noqa: E402
from stvla.config import config_key  # noqa: E402
from stvla.data import CollectConfig, collect  # noqa: E402
from stvla.evaluate import EvalConfig, evaluate  # noqa: E402
from stvla.evaluate.stats import wilson_interval  # noqa: E402
from stvla.policies.registry import POLICIES  # noqa: E402
from stvla.train import TrainConfig, train  # noqa: E402

# row -> (--action_layout, what it is)
ROWS = {"grid": ("", "SpatialVLA's adaptive grid (translation as direction x length, gripper)"),
        "joint": ("joint", "per-dimension quantile bins (256 per dimension, 2 for the gripper)")}
DEFAULTS = {"tasks": "reach-v3,button-press-topdown-v3", "demos": 25, "steps": 2000, "policy": "spatialvla"}


def percent(successes: int, episodes: int) -> str:
    low, high = wilson_interval(successes, episodes)
    return f"{100 * successes / episodes:.0f}% [{100 * low:.0f}, {100 * high:.0f}]"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default=DEFAULTS["tasks"], help="Meta-World tasks trained on together and evaluated")
    parser.add_argument("--demos", type=int, default=DEFAULTS["demos"], help="expert demonstrations per task")
    parser.add_argument("--steps", type=int, default=DEFAULTS["steps"], help="training steps of every run (batch 32)")
    parser.add_argument("--seeds", default="0,1", help="training seeds of both rows, comma-separated")
    parser.add_argument("--episodes", type=int, default=50, help="held-out evaluation episodes per task")
    parser.add_argument("--max_steps", type=int, default=EvalConfig.max_steps, help="steps before an episode fails")
    parser.add_argument("--policy", default=DEFAULTS["policy"], help=f"policy type: {', '.join(POLICIES)}")
    parser.add_argument("--root", default=str(RESULTS_ROOT), help="where results, BENCHMARKS.md and (unless --work) runs go")
    parser.add_argument("--work", default="", help="directory for data and runs (default: <root>/runs/bench-<name>)")
    parser.add_argument("--report_only", action="store_true", help="run nothing: report the cells finished so far")
    args = parser.parse_args(argv)
    args.seed_list = int_list(args.seeds, "--seeds")
    if args.policy not in POLICIES:
        parser.error(f"unknown --policy {args.policy!r}; valid: {', '.join(POLICIES)}")
    for name in ("demos", "steps", "episodes", "max_steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    return args


def setting_name(args: argparse.Namespace) -> str:
    """`action_layout`, then what differs from the default setting."""
    changed = [f"{value}{name}" if isinstance(value, int) else str(value).replace(",", "+")
               for name, value in ((n, getattr(args, n)) for n in DEFAULTS) if value != DEFAULTS[name]]
    return "_".join(["action_layout", *changed])


def run_rows(args: argparse.Namespace) -> dict[str, dict[int, dict]]:
    """Every (row, seed) cell, run (or, with --report_only, read): every row's first seed before any second."""
    name = setting_name(args)
    root = Path(args.root)
    work = Path(args.work or root / "runs" / f"bench-{name}")
    data = CollectConfig(task=args.tasks, episodes=args.demos, out=str(work / "data"), resume=True, workers=2)
    if not args.report_only:
        Cell("action_layout/data", work / "data.cell.json", config_key(data)).run(lambda: collect(data).as_dict())
    results: dict[str, dict[int, dict]] = {row: {} for row in ROWS}
    for seed in args.seed_list:
        for row, (layout, _) in ROWS.items():
            run_dir = work / f"{row}-s{seed}"
            config = TrainConfig(policy=args.policy, dataset=data.out, out=str(run_dir), steps=args.steps, seed=seed,
                                 val_episodes=0, action_layout=layout)
            evaluation = EvalConfig(policy=str(run_dir / "policy"), tasks=args.tasks, episodes=args.episodes,
                                    workers=2, max_steps=args.max_steps, videos=0, out=str(run_dir / "eval"))
            key = {"train": {k: v for k, v in config.key().items() if k not in ("dataset", "out")},
                   "data": {k: v for k, v in config_key(data).items() if k != "out"},
                   "eval": {"episodes": args.episodes, "max_steps": args.max_steps}}
            record_file = root / "benchmarks" / "results" / name / f"{row}-s{seed}.json"
            cell = Cell(f"{name}/{row}-s{seed}", record_file, key)

            def work_(config: TrainConfig = config, evaluation: EvalConfig = evaluation) -> dict:
                train(config)
                info = evaluate(evaluation)
                return {"overall": info["overall"], "per_task": info["per_task"]}

            result = cell.finished() if args.report_only else cell.run(work_)
            if result is not None:
                results[row][seed] = result
    return {row: by_seed for row, by_seed in results.items() if by_seed}


def pooled(cells: list[dict], task: str | None = None) -> tuple[int, int]:
    parts = [c["per_task"][task] if task else c["overall"] for c in cells]
    return sum(p["successes"] for p in parts), sum(p["episodes"] for p in parts)


def report(results: dict[str, dict[int, dict]], args: argparse.Namespace) -> None:
    rows = []
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    for row, by_seed in results.items():
        cells = list(by_seed.values())
        per_task = "; ".join(f"{task} {percent(*pooled(cells, task))}" for task in tasks) if len(tasks) > 1 else ""
        rows.append((f"{row}: {ROWS[row][1]} - success (95% CI)",
                     f"{percent(*pooled(cells))} ({len(cells)} seed{'s' if len(cells) > 1 else ''})"
                     + (f"; {per_task}" if per_task else "")))
    if "grid" in results and "joint" in results:
        common = [s for s in results["joint"] if s in results["grid"]]
        if common:
            diff, low, high = difference(pooled([results["joint"][s] for s in common]),
                                         pooled([results["grid"][s] for s in common]))
            rows.append((f"per-dimension bins minus the grid (seeds {','.join(map(str, common))})",
                         f"{points_text(diff, low, high)} points: {verdict(low, high)}"))
    figures = {row: {str(seed): cell for seed, cell in by_seed.items()} for row, by_seed in results.items()}
    figures["setting"] = {"tasks": args.tasks, "demos": args.demos, "steps": args.steps, "policy": args.policy,
                          "episodes": args.episodes, "max_steps": args.max_steps, "seeds": args.seeds}
    record(setting_name(args), figures, rows,
           f"Action tokenizers ({args.policy} from scratch on {args.tasks}: {args.demos} demonstrations per task, "
           f"{args.steps} training steps, {args.episodes} held-out episodes per task of at most {args.max_steps} "
           f"steps, training seeds {args.seeds}): the adaptive grid against per-dimension bins on the same "
           f"end-effector data", root=args.root)


def main() -> None:
    args = parse_args()
    report(run_rows(args), args)


if __name__ == "__main__":
    run(main)
