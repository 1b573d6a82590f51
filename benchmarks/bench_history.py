"""Ways of giving a policy history, side by side, on a task where one frame is not enough
(`reach-moving-v3`: the goal moves; stvla.envs.variants): no history (the SpatialVLA-style base), the
previous frames stacked as extra image input, traces on RGB (TraceVLA), traces in depth (ST-VLA),
each trained from scratch with the same data, steps and seed, and evaluated on the same held-out seeds.

    python benchmarks/bench_history.py [--rows base,stack2,tracevla,st] [--steps 1000] [--episodes 50]

Every row is a cached cell (benchmarks/results/history/<row>.json): a killed run resumes, finished rows
are not re-run. Writes benchmarks/results/history.json and the "History" section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, record  # noqa: E402

from stvla.benchmark.cells import Cell  # noqa: E402
from stvla.config import config_key  # noqa: E402
from stvla.data import CollectConfig, collect  # noqa: E402
from stvla.evaluate import EvalConfig, evaluate  # noqa: E402
from stvla.policies.vla import VLAConfig  # noqa: E402
from stvla.traces import TraceConfig  # noqa: E402
from stvla.train import TrainConfig, train  # noqa: E402

TASK = "reach-moving-v3"
ROWS: dict[str, tuple[str, dict, str]] = {  # row -> (policy type, model changes, what it is)
    "base": ("spatialvla", {}, "no history (SpatialVLA-style: RGB + Ego3D, the current frame)"),
    "stack2": ("spatialvla", {"previous_frames": 2}, "the 2 previous frames stacked as extra image input"),
    "tracevla": ("tracevla", {}, "traces on a second RGB image (TraceVLA)"),
    "st": ("st", {}, "traces in depth (ST-VLA, variant C, b = 30)"),
}
RESULTS = ROOT / "benchmarks" / "results" / "history"


def percent(row: dict) -> str:
    low, high = row["ci95"]
    return f"{100 * row['success_rate']:.0f}% [{100 * low:.0f}, {100 * high:.0f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default=",".join(ROWS), help=f"rows to run: {', '.join(ROWS)}")
    parser.add_argument("--demos", type=int, default=50, help="expert demonstrations")
    parser.add_argument("--steps", type=int, default=1000, help="training steps of every row (batch 32)")
    parser.add_argument("--episodes", type=int, default=50, help="held-out evaluation episodes")
    parser.add_argument("--max_steps", type=int, default=80, help="steps before an episode fails")
    parser.add_argument("--work", default="runs/bench-history", help="directory for data, runs and evaluations")
    args = parser.parse_args()
    work = Path(args.work)
    data = CollectConfig(task=TASK, episodes=args.demos, out=str(work / "data"), resume=True, workers=2,
                         max_steps=args.max_steps)
    Cell("history/data", work / "data.cell.json", config_key(data)).run(lambda: collect(data).as_dict())
    results = {}
    for name in [r.strip() for r in args.rows.split(",") if r.strip()]:
        if name not in ROWS:
            parser.error(f"unknown row {name!r}; valid: {', '.join(ROWS)}")
        policy, changes, _ = ROWS[name]
        config = TrainConfig(policy=policy, dataset=data.out, out=str(work / name), steps=args.steps, seed=0, val_episodes=0,
                             model=dataclasses.replace(VLAConfig(), **changes), traces=TraceConfig())
        key = {"train": {k: v for k, v in config.key().items() if k not in ("dataset", "out")},
               "data": config_key(data), "eval": {"episodes": args.episodes, "max_steps": args.max_steps}}

        def work_(config: TrainConfig = config, name: str = name) -> dict:
            policy_dir = train(config)
            info = evaluate(EvalConfig(policy=str(policy_dir), tasks=TASK, episodes=args.episodes, workers=2,
                                       max_steps=args.max_steps, videos=1, out=str(work / name / "eval")))
            return {"overall": info["overall"]}

        results[name] = Cell(f"history/{name}", RESULTS / f"{name}.json", key).run(work_)
    rows = [(f"{name}: {ROWS[name][2]} - success (95% CI)", percent(result["overall"]))
            for name, result in results.items()]
    rows += [(f"{name}: steps with traces; action change without them (mean L2) of the actions' mean L2",
              f"{100 * result['overall']['trace_step_share']:.0f}%; {result['overall']['trace_sensitivity']:.4f} of "
              f"{result['overall']['action_norm']:.3f}")
             for name, result in results.items() if result["overall"].get("trace_sensitivity") is not None]
    record("history", {name: result for name, result in results.items()}, rows,
           f"History ({TASK}: {args.demos} demonstrations, {args.steps} training steps per row from scratch, "
           f"{args.episodes} held-out episodes of at most {args.max_steps} steps)")


if __name__ == "__main__":
    main()
