"""Ways of giving a policy history, side by side, on a task where one frame is not enough
(stvla.envs.variants: `reach-moving-v3`, the goal moves; `reach-moving-hidden-v3`, it is also hidden
for a while): no history (the SpatialVLA-style base), the previous frames stacked as extra image
input, traces on RGB (TraceVLA), traces in depth (ST-VLA), and traces in depth with the adaptive
selection that keeps slow motion (ours) or drawn wider, each trained with the same data, steps and
training seeds (from scratch, or LoRA fine-tuned from a pre-trained base with `--init`, as the papers
fine-tune), and evaluated on the same held-out episodes.

    python benchmarks/bench_history.py [--task reach-moving-v3] [--seeds 0,1,2] [--steps 1000]
        [--init checkpoints/base-mt10] [--rows base,stack2,tracevla,st,st-adaptive,st-thick6]
        [--no_state] [--episodes 50] [--report_only]

`--no_state` trains every row on the papers' inputs (image, depth and instruction, no proprio state):
where the gripper is and how it moves must then be read from the images, the traces among them. With
`--init`, a base that has a state token loses it (best: a base without state, checkpoints/base-mt10-no-state).

Every (row, seed) is a cached cell (benchmarks/results/history[_<task>][_from-<init>][_<steps>steps]/
<row>[-s<seed>].json, the task named unless it is reach-moving-v3, the steps unless 1000, then
`_no-state` with --no_state): a killed
run resumes, finished cells are not re-run; every
row's first seed runs before any row's second. Success is pooled over a row's finished seeds (Wilson
95% interval), and each row is compared with "no history" on the seeds both have (Newcombe 95%
interval of the difference). Writes benchmarks/results/<that name>.json and its section of
BENCHMARKS.md (`--report_only`: from the cells finished so far, running nothing, e.g. beside a
running one).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, record, run  # noqa: E402

from stvla.benchmark.cells import Cell  # noqa: E402
from stvla.benchmark.protocol import int_list  # noqa: E402
from stvla.benchmark.report import difference, points_text  # noqa: E402
from stvla.config import config_key  # noqa: E402
from stvla.data import CollectConfig, collect  # noqa: E402
from stvla.evaluate import EvalConfig, evaluate  # noqa: E402
from stvla.envs.variants import VARIANTS  # noqa: E402
from stvla.evaluate.stats import wilson_interval  # noqa: E402
from stvla.policies.base import checkpoint_fingerprint  # noqa: E402
from stvla.policies.vla import VLAConfig  # noqa: E402
from stvla.traces import TraceConfig  # noqa: E402
from stvla.traces.drawing import DepthDrawConfig  # noqa: E402
from stvla.traces.selection import SelectionConfig  # noqa: E402
from stvla.train import TrainConfig, train  # noqa: E402

DEFAULT_TASK = "reach-moving-v3"
DEFAULT_STEPS = 1000
ROWS: dict[str, tuple[str, dict, TraceConfig, str]] = {  # row -> (policy type, model changes, traces, what it is)
    "base": ("spatialvla", {}, TraceConfig(), "no history (SpatialVLA-style: RGB + Ego3D, the current frame)"),
    "stack2": ("spatialvla", {"previous_frames": 2}, TraceConfig(), "the 2 previous frames stacked as extra image input"),
    "tracevla": ("tracevla", {}, TraceConfig(), "traces on a second RGB image (TraceVLA)"),
    "st": ("st", {}, TraceConfig(), "traces in depth (ST-VLA, variant C, b = 30)"),
    "st-adaptive": ("st", {}, TraceConfig(selection=SelectionConfig(adaptive=True)),
                    "traces in depth, adaptive selection (slow motion kept; ours)"),
    # Ego3D reads depth as sub-cell means (8 x 8 px at 128 px), where a 2 px trace moves the mean by a
    # quarter of its depth change at most: do wider traces get read?
    "st-thick6": ("st", {}, TraceConfig(depth=DepthDrawConfig(thickness=6.0)),
                  "traces in depth, 6 px wide instead of 2 (ST-VLA, variant C, b = 30)"),
}


def percent(successes: int, episodes: int) -> str:
    low, high = wilson_interval(successes, episodes)
    return f"{100 * successes / episodes:.0f}% [{100 * low:.0f}, {100 * high:.0f}]"


def results_name(task: str, init: str = "", steps: int = DEFAULT_STEPS, use_state: bool = True) -> str:
    """The results' name: `history` for the default setting (as before there were others), then what
    differs from it: the task, the checkpoint fine-tuned from, the training steps, the inputs."""
    parts = ["history"] + ([task] if task != DEFAULT_TASK else []) + ([f"from-{Path(init).name}"] if init else []) \
        + ([f"{steps}steps"] if steps != DEFAULT_STEPS else []) + ([] if use_state else ["no-state"])
    return "_".join(parts)


def cell_file(results: str, name: str, seed: int) -> Path:
    """The first seed keeps the name the cells had before there were seeds."""
    return ROOT / "benchmarks" / "results" / results / (f"{name}.json" if seed == 0 else f"{name}-s{seed}.json")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default=",".join(ROWS), help=f"rows to run: {', '.join(ROWS)}")
    parser.add_argument("--seeds", default="0", help="training seeds of every row, comma-separated")
    parser.add_argument("--demos", type=int, default=50, help="expert demonstrations")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="training steps of every row (batch 32)")
    parser.add_argument("--init", default="", help="a pre-trained checkpoint every row is LoRA fine-tuned from "
                        "(e.g. checkpoints/base-mt10, the kept base); default: every row trains from scratch")
    parser.add_argument("--episodes", type=int, default=50, help="held-out evaluation episodes")
    parser.add_argument("--max_steps", type=int, default=80, help="steps before an episode fails")
    parser.add_argument("--task", default=DEFAULT_TASK, help="a history-needing task (stvla.envs.variants)")
    parser.add_argument("--work", default="", help="directory for data, runs and evaluations (default: "
                        "runs/bench-<the results' name>)")
    parser.add_argument("--no_state", action="store_true", help="the papers' inputs: no proprio state token")
    parser.add_argument("--report_only", action="store_true", help="run nothing: report the cells finished so far")
    args = parser.parse_args()
    names = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [name for name in names if name not in ROWS]
    if unknown:
        parser.error(f"unknown row(s) {unknown}; valid: {', '.join(ROWS)}")
    seeds = int_list(args.seeds, "--seeds")
    if args.task not in VARIANTS:
        parser.error(f"--task {args.task!r} is not a history-needing variant; valid: {', '.join(VARIANTS)}")
    results_dir = results_name(args.task, args.init, args.steps, not args.no_state)
    # Runs of one setting never resume another's; the demonstrations depend on the task only.
    work = Path(args.work or f"runs/bench-{results_dir}")
    data_dir = Path(args.work or ("runs/bench-history" if args.task == DEFAULT_TASK else f"runs/bench-history-{args.task}"))
    init = {"init_weights": checkpoint_fingerprint(args.init)} if args.init else {}
    data = CollectConfig(task=args.task, episodes=args.demos, out=str(data_dir / "data"), resume=True, workers=2,
                         max_steps=args.max_steps)
    if not args.report_only:
        Cell("history/data", data_dir / "data.cell.json", config_key(data)).run(lambda: collect(data).as_dict())
    results: dict[str, dict[int, dict]] = {name: {} for name in names}
    for seed in seeds:
        for name in names:
            policy, model_changes, traces, _ = ROWS[name]
            run_dir = work / (name if seed == 0 else f"{name}-s{seed}")
            config = TrainConfig(policy=policy, dataset=data.out, out=str(run_dir), steps=args.steps, seed=seed,
                                 val_episodes=0, model=dataclasses.replace(VLAConfig(), **model_changes,
                                                                           use_state=not args.no_state),
                                 traces=copy.deepcopy(traces), init=args.init)
            # The init's path is where it lies; its weights' fingerprint is what it is.
            exclude = ("dataset", "out", "init") if args.init else ("dataset", "out")
            key = {"train": {k: v for k, v in config.key().items() if k not in exclude}, **init,
                   "data": config_key(data), "eval": {"episodes": args.episodes, "max_steps": args.max_steps}}

            def work_(config: TrainConfig = config, run_dir: Path = run_dir) -> dict:
                policy_dir = train(config)
                info = evaluate(EvalConfig(policy=str(policy_dir), tasks=args.task, episodes=args.episodes, workers=2,
                                           max_steps=args.max_steps, videos=1, out=str(run_dir / "eval")))
                return {"overall": info["overall"]}

            cell = Cell(f"{results_dir}/{name}-s{seed}", cell_file(results_dir, name, seed), key)
            result = cell.finished() if args.report_only else cell.run(work_)
            if result is not None:
                results[name][seed] = result
    results = {name: by_seed for name, by_seed in results.items() if by_seed}
    report(results, args)


def pooled(cells: list[dict]) -> tuple[int, int]:
    return sum(c["overall"]["successes"] for c in cells), sum(c["overall"]["episodes"] for c in cells)


def report(results: dict[str, dict[int, dict]], args) -> None:
    rows = []
    for name, by_seed in results.items():
        cells = list(by_seed.values())
        line = f"{percent(*pooled(cells))} ({len(cells)} seed{'s' if len(cells) > 1 else ''})"
        if name != "base" and "base" in results:
            common = [s for s in by_seed if s in results["base"]]
            diff, low, high = difference(pooled([by_seed[s] for s in common]),
                                         pooled([results["base"][s] for s in common]))
            line += f"; minus no history: {points_text(diff, low, high)} points"
        rows.append((f"{name}: {ROWS[name][3]} - success (95% CI)", line))
    for name, by_seed in results.items():
        measured = [c["overall"] for c in by_seed.values() if c["overall"].get("trace_sensitivity") is not None]
        if measured:
            mean = {k: sum(m[k] for m in measured) / len(measured)
                    for k in ("trace_step_share", "trace_sensitivity", "action_norm")}
            rows.append((f"{name}: steps with traces; action change without them (mean L2) of the actions' mean L2",
                         f"{100 * mean['trace_step_share']:.0f}%; {mean['trace_sensitivity']:.4f} of "
                         f"{mean['action_norm']:.3f}"))
    figures = {name: {str(seed): cell for seed, cell in by_seed.items()} for name, by_seed in results.items()}
    figures["setting"] = {"task": args.task, "init": args.init, "steps": args.steps, "demos": args.demos,
                          "episodes": args.episodes, "max_steps": args.max_steps, "use_state": not args.no_state}
    how = (f"LoRA fine-tuned from {args.init}" if args.init else "from scratch") + ("" if not args.no_state else
                                                                                 ", no proprio state")
    record(results_name(args.task, args.init, args.steps, not args.no_state), figures, rows,
           f"History ({args.task}: {args.demos} demonstrations, {args.steps} training steps per row {how}, "
           f"{args.episodes} held-out episodes of at most {args.max_steps} steps, training seeds {args.seeds})")


if __name__ == "__main__":
    run(main)
