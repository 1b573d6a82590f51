"""Ways of giving a policy history, side by side, on a task where one frame is not enough
(stvla.envs.variants: `reach-moving-v3`, the goal moves; `reach-moving-hidden-v3`, it is also hidden
for a while): no history (the SpatialVLA-style base), the previous frames stacked as extra image
input, traces on RGB (TraceVLA), traces in depth (ST-VLA), and traces in depth with the adaptive
selection that keeps slow motion (ours) or drawn wider, each trained with the same data, steps and
training seeds (from scratch, or LoRA fine-tuned from a pre-trained base with `--init`, as the papers
fine-tune), and evaluated on the same held-out episodes.

    python benchmarks/bench_history.py [--task reach-moving-v3] [--seeds 0,1,2] [--steps 1000]
        [--init checkpoints/base-mt10] [--rows base,stack2,tracevla,st,st-adaptive,st-thick6]
        [--demos 50] [--val_episodes 0] [--train_starts 0] [--no_state] [--episodes 50] [--report_only]

Rows: the six above (the default), and `stack4` (4 stacked frames), `tokens3d` and `tokens2d` (traces
handed to the trunk as tokens, their points in 3D or in pixels: the tracetokens policy).

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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS_ROOT, ROOT, record, run  # noqa: E402

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
from stvla.train.trainer import LoraSettings  # noqa: E402
from stvla.train.monitor import LOG_FILE, read_log  # noqa: E402

DEFAULT_TASK = "reach-moving-v3"
DEFAULT_STEPS = 1000
DEFAULT_DEMOS = 50
DEFAULT_LORA_RANK = LoraSettings().rank  # stage 2's adapters, as `stvla train` makes them
@dataclass(frozen=True)
class Row:
    """One way of giving a policy history (or none): what it trains, and what it is."""

    policy: str  # policy type
    what: str  # what it is, for the report
    model: dict = dataclasses.field(default_factory=dict)  # VLAConfig fields it changes
    traces: TraceConfig = dataclasses.field(default_factory=TraceConfig)  # its trace settings
    train: dict = dataclasses.field(default_factory=dict)  # TrainConfig fields it changes


ROWS: dict[str, Row] = {
    "base": Row("spatialvla", "no history (SpatialVLA-style: RGB + Ego3D, the current frame)"),
    "stack2": Row("spatialvla", "the 2 previous frames stacked as extra image input", {"previous_frames": 2}),
    "stack4": Row("spatialvla", "the 4 previous frames stacked as extra image input", {"previous_frames": 4}),
    "tracevla": Row("tracevla", "traces on a second RGB image (TraceVLA)"),
    "st": Row("st", "traces in depth (ST-VLA, variant C, b = 30)"),
    "st-adaptive": Row("st", "traces in depth, adaptive selection (slow motion kept; ours)",
                       traces=TraceConfig(selection=SelectionConfig(adaptive=True))),
    # Ego3D reads depth as sub-cell means (8 x 8 px at 128 px), where a 2 px trace moves the mean by a
    # quarter of its depth change at most: do wider traces get read?
    "st-thick6": Row("st", "traces in depth, 6 px wide instead of 2 (ST-VLA, variant C, b = 30)",
                     traces=TraceConfig(depth=DepthDrawConfig(thickness=6.0))),
    "tokens3d": Row("tracetokens", "traces as tokens, their points lifted to 3D (ours, b = 30)",
                    train={"trace_space": "3d"}),
    "tokens2d": Row("tracetokens", "traces as tokens, their points in pixels (ours, b = 30)",
                    train={"trace_space": "2d"}),
}
DEFAULT_ROWS = ("base", "stack2", "tracevla", "st", "st-adaptive", "st-thick6")  # the rows every setting so far ran


def percent(successes: int, episodes: int) -> str:
    low, high = wilson_interval(successes, episodes)
    return f"{100 * successes / episodes:.0f}% [{100 * low:.0f}, {100 * high:.0f}]"


def results_name(task: str, init: str = "", steps: int = DEFAULT_STEPS, use_state: bool = True,
                 demos: int = DEFAULT_DEMOS, val_episodes: int = 0, lora_rank: int = DEFAULT_LORA_RANK) -> str:
    """The results' name: `history` for the default setting (as before there were others), then what
    differs from it: the task, the demonstrations (and validation episodes held out beside them), the
    checkpoint fine-tuned from (and how: every weight, or LoRA of another rank), the training steps, the
    inputs."""
    tuning = [] if not init or lora_rank == DEFAULT_LORA_RANK else ["full" if lora_rank == 0 else f"lora{lora_rank}"]
    parts = ["history"] + ([task] if task != DEFAULT_TASK else []) \
        + ([f"{demos}demos"] if demos != DEFAULT_DEMOS else []) + ([f"val{val_episodes}"] if val_episodes else []) \
        + ([f"from-{Path(init).name}"] if init else []) + tuning \
        + ([f"{steps}steps"] if steps != DEFAULT_STEPS else []) + ([] if use_state else ["no-state"])
    return "_".join(parts)


def data_config(task: str, demos: int = DEFAULT_DEMOS, val_episodes: int = 0, max_steps: int = 80,
                work: str = "") -> CollectConfig:
    """The expert demonstrations of a setting: `demos` to train on and `val_episodes` more held out; they
    depend on the task and their number only, so every row and steps count of a task shares them."""
    name = "bench-history" + (f"-{task}" if task != DEFAULT_TASK else "") \
        + (f"-{demos + val_episodes}demos" if demos + val_episodes != DEFAULT_DEMOS else "")
    return CollectConfig(task=task, episodes=demos + val_episodes, out=str(Path(work or f"runs/{name}") / "data"),
                         resume=True, workers=2, max_steps=max_steps)


def cell_file(results: str, name: str, seed: int) -> Path:
    """The first seed keeps the name the cells had before there were seeds."""
    return RESULTS_ROOT / "benchmarks" / "results" / results / (f"{name}.json" if seed == 0 else f"{name}-s{seed}.json")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default=",".join(DEFAULT_ROWS), help=f"rows to run: {', '.join(ROWS)}")
    parser.add_argument("--seeds", default="0", help="training seeds of every row, comma-separated")
    parser.add_argument("--demos", type=int, default=DEFAULT_DEMOS, help="expert demonstrations trained on")
    parser.add_argument("--val_episodes", type=int, default=0, help="demonstrations collected beyond --demos and held "
                        "out of training, their loss recorded every 250 steps (does training need more steps?)")
    parser.add_argument("--train_starts", type=int, default=0, help="also evaluate each row on this many of the "
                        "starts it was trained on (memorising or generalising; cached beside the row's cell)")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="training steps of every row (batch 32)")
    parser.add_argument("--init", default="", help="a pre-trained checkpoint every row is LoRA fine-tuned from "
                        "(e.g. checkpoints/base-mt10, the kept base); default: every row trains from scratch")
    parser.add_argument("--lora_rank", type=int, default=DEFAULT_LORA_RANK, help="with --init: the LoRA rank of "
                        "the fine-tune; 0 fine-tunes every weight")
    parser.add_argument("--episodes", type=int, default=50, help="held-out evaluation episodes")
    parser.add_argument("--max_steps", type=int, default=0, help="steps before an episode fails (default: the "
                        "variant's own, 80 for the reach variants)")
    parser.add_argument("--task", default=DEFAULT_TASK, help="a history-needing task (stvla.envs.variants)")
    parser.add_argument("--work", default="", help="directory for data, runs and evaluations (default: "
                        "runs/bench-<the results' name>)")
    parser.add_argument("--no_state", action="store_true", help="the papers' inputs: no proprio state token")
    parser.add_argument("--report_only", action="store_true", help="run nothing: report the cells finished so far")
    args = parser.parse_args(argv)
    if args.task in VARIANTS:
        args.max_steps = args.max_steps or VARIANTS[args.task].max_steps
    args.row_names = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [name for name in args.row_names if name not in ROWS]
    if unknown:
        parser.error(f"unknown row(s) {unknown}; valid: {', '.join(ROWS)}")
    args.seed_list = int_list(args.seeds, "--seeds")
    if args.task not in VARIANTS:
        parser.error(f"--task {args.task!r} is not a history-needing variant; valid: {', '.join(VARIANTS)}")
    if args.train_starts > args.demos:
        parser.error(f"--train_starts {args.train_starts} is more than the {args.demos} starts trained on (--demos)")
    least = {"demos": 1, "steps": 1, "episodes": 1, "max_steps": 1, "val_episodes": 0, "train_starts": 0, "lora_rank": 0}
    for name, minimum in least.items():
        if getattr(args, name) < minimum:
            parser.error(f"--{name} must be >= {minimum}, got {getattr(args, name)}")
    return args


def setting_name(args: argparse.Namespace) -> str:
    return results_name(args.task, args.init, args.steps, not args.no_state, args.demos, args.val_episodes,
                        args.lora_rank)


def run_rows(args: argparse.Namespace) -> dict[str, dict[int, dict]]:
    """Every (row, seed) cell of a setting, run (or, with --report_only, read) in order: every row's first
    seed before any row's second. Rows whose cells have not run are left out."""
    results_dir = setting_name(args)
    # Runs of one setting never resume another's; the demonstrations depend on the task and their number only.
    work = Path(args.work or f"runs/bench-{results_dir}")
    data = data_config(args.task, args.demos, args.val_episodes, args.max_steps, args.work)
    if not args.report_only:
        Cell("history/data", Path(data.out).parent / "data.cell.json", config_key(data)).run(
            lambda: collect(data).as_dict())
    results: dict[str, dict[int, dict]] = {name: {} for name in args.row_names}
    for seed in args.seed_list:
        for name in args.row_names:
            run_dir = work / (name if seed == 0 else f"{name}-s{seed}")
            record_file = cell_file(results_dir, name, seed)
            cell, work_ = row_cell(name, seed, data, run_dir, record_file, args)
            result = cell.finished() if args.report_only else cell.run(work_)
            if result is None:
                continue
            if args.train_starts:
                starts = train_starts_cell(cell, run_dir, record_file, args)
                result = {**result, "train_starts": starts.finished() if args.report_only else starts.run(
                    lambda: train_starts_success(run_dir, args))}
            results[name][seed] = result
    return {name: by_seed for name, by_seed in results.items() if by_seed}


def main() -> None:
    args = parse_args()
    results = run_rows(args)
    report(results, args)


def row_cell(name: str, seed: int, data: CollectConfig, run_dir: Path, record_file: Path,
             args: argparse.Namespace) -> tuple[Cell, Callable[[], dict]]:
    """One row trained with one seed on `data` and evaluated on `args.episodes` held-out starts of
    `args.task`: the cached cell and the work that fills it. With `args.val_episodes`, that many of the
    task's last episodes are held out of training and their loss recorded as it trains (the result's
    "val_loss": [[step, loss], ...])."""
    row = ROWS[name]
    config = TrainConfig(policy=row.policy, dataset=data.out, out=str(run_dir), steps=args.steps, seed=seed,
                         val_episodes=args.val_episodes, model=dataclasses.replace(VLAConfig(), **row.model,
                                                                                   use_state=not args.no_state),
                         traces=copy.deepcopy(row.traces), init=args.init,
                         lora=dataclasses.replace(LoraSettings(), rank=args.lora_rank), **row.train)
    # The init's path is where it lies; its weights' fingerprint is what it is.
    exclude = ("dataset", "out", "init") if args.init else ("dataset", "out")
    key = {"train": {k: v for k, v in config.key().items() if k not in exclude},
           **({"init_weights": checkpoint_fingerprint(args.init)} if args.init else {}),
           "data": config_key(data), "eval": {"episodes": args.episodes, "max_steps": args.max_steps}}

    def work() -> dict:
        policy_dir = train(config)
        info = evaluate(EvalConfig(policy=str(policy_dir), tasks=args.task, episodes=args.episodes, workers=2,
                                   max_steps=args.max_steps, videos=1, out=str(run_dir / "eval")))
        result = {"overall": info["overall"]}
        if args.val_episodes:
            result["val_loss"] = [[r["step"], r["loss"]] for r in read_log(run_dir / LOG_FILE) if r["split"] == "val"]
        return result

    return Cell(f"{record_file.parent.name}/{record_file.stem}", record_file, key), work


def train_starts_cell(row: Cell, run_dir: Path, record_file: Path, args: argparse.Namespace) -> Cell:
    """The row's success on the first `args.train_starts` starts it was trained on, cached beside the row's
    cell (so a row run without --train_starts keeps its cell)."""
    return Cell(f"{row.name}/train-starts", record_file.with_name(record_file.stem + ".train-starts.json"),
                {"row": row.config, "train_starts": args.train_starts})


def train_starts_success(run_dir: Path, args: argparse.Namespace) -> dict:
    policy_dir = run_dir / "policy"
    if not (policy_dir / "config.json").is_file():
        raise ValueError(f"{policy_dir} is gone (the row's cell finished in an earlier run): delete the row's cell "
                         f"to train it again, or run without --train_starts")
    return evaluate(EvalConfig(policy=str(policy_dir), tasks=args.task, episodes=args.train_starts, split="train",
                               workers=2, max_steps=args.max_steps, videos=0,
                               out=str(run_dir / "eval-train-starts")))["overall"]


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
        rows.append((f"{name}: {ROWS[name].what} - success (95% CI)", line))
        starts = [c["train_starts"] for c in cells if c.get("train_starts")]
        if starts:
            rows.append((f"{name}: success on {args.train_starts} of its training starts (95% CI)",
                         f"{percent(sum(s['successes'] for s in starts), sum(s['episodes'] for s in starts))}"))
        curves = [c["val_loss"] for c in cells if c.get("val_loss")]
        if curves:
            rows.append((f"{name}: validation loss ({args.val_episodes} held-out demonstrations): at the end / lowest "
                         f"(at step)", "; ".join(f"{curve[-1][1]:.3f} / {min(l for _, l in curve):.3f} "
                                                 f"({min(curve, key=lambda c: c[1])[0]})" for curve in curves)))
        # Cells evaluated since episodes record it: how far from the moving thing the episodes end.
        errors = [c["overall"]["final_goal_error_cm"] for c in cells if c["overall"].get("final_goal_error_cm") is not None]
        if errors:
            rows.append((f"{name}: final distance of the hand to the moving {VARIANTS[args.task].thing}, cm (mean "
                         f"over episodes, per seed)", "; ".join(f"{e:.1f}" for e in errors)))
    for name, by_seed in results.items():
        measured = [c["overall"] for c in by_seed.values() if c["overall"].get("trace_sensitivity") is not None]
        if measured:
            mean = {k: sum(m[k] for m in measured) / len(measured)
                    for k in ("trace_step_share", "trace_sensitivity", "action_norm")}
            rows.append((f"{name}: steps with traces; action change without them (mean L2) of the actions' mean L2",
                         f"{100 * mean['trace_step_share']:.0f}%; {mean['trace_sensitivity']:.4f} of "
                         f"{mean['action_norm']:.3f}"))
        # Cells evaluated since the evaluation counts them: does a trace follow the moving thing?
        on_target = [c["overall"] for c in by_seed.values() if c["overall"].get("target_trace_share") is not None]
        if on_target:
            thing = VARIANTS[args.task].thing
            hidden = [m["hidden_target_trace_share"] for m in on_target if m.get("hidden_target_trace_share") is not None]
            rows.append((f"{name}: steps on which a trace follows the moving {thing}, while it is shown"
                         + (" / hidden" if hidden else ""),
                         f"{100 * sum(m['target_trace_share'] for m in on_target) / len(on_target):.0f}%"
                         + (f" / {100 * sum(hidden) / len(hidden):.0f}%" if hidden else "")))
    figures = {name: {str(seed): cell for seed, cell in by_seed.items()} for name, by_seed in results.items()}
    figures["setting"] = {"task": args.task, "init": args.init, "steps": args.steps, "demos": args.demos,
                          **({"val_episodes": args.val_episodes} if args.val_episodes else {}),
                          "episodes": args.episodes, "max_steps": args.max_steps, "use_state": not args.no_state}
    how = (f"LoRA fine-tuned from {args.init}" if args.init else "from scratch") + ("" if not args.no_state else
                                                                                 ", no proprio state")
    record(setting_name(args), figures, rows,
           f"History ({args.task}: {args.demos} demonstrations, {args.steps} training steps per row {how}, "
           f"{args.episodes} held-out episodes of at most {args.max_steps} steps, training seeds {args.seeds})")


if __name__ == "__main__":
    run(main)
