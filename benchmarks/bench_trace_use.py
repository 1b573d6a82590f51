"""Does a traced policy read its traces? The main job's ST-VLA policy evaluated twice on the same held-out
seeds: as trained, and with its traces removed at test time (same weights, raw depth in place of the
traced); with the trace diagnostics of `stvla eval` (share of steps with traces, share of depth pixels
they change, and how far the decoded action chunk moves when they are removed).

    make demo && python benchmarks/bench_trace_use.py [--policy runs/demo/st/policy] [--episodes 20]

Writes benchmarks/results/trace_use.json and the "Trace use" section of BENCHMARKS.md. Each evaluation
resumes from its finished episodes (`--work`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import record, run  # noqa: E402

from stvla.evaluate import EvalConfig, evaluate  # noqa: E402
from stvla.policies.base import checkpoint_fingerprint  # noqa: E402


def percent(row: dict) -> str:
    low, high = row["ci95"]
    return f"{100 * row['success_rate']:.0f}% [{100 * low:.0f}, {100 * high:.0f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", default="runs/demo/st/policy", help="a traced policy (st or tracevla)")
    parser.add_argument("--tasks", default="button-press-wall-v3,door-close-v3", help="evaluation tasks (default: the main job's)")
    parser.add_argument("--episodes", type=int, default=20, help="held-out episodes per task")
    parser.add_argument("--workers", type=int, default=2, help="evaluation processes")
    parser.add_argument("--work", default="runs/bench-trace-use", help="directory for the evaluations")
    args = parser.parse_args()
    runs = {}
    for name, removed in (("with traces", False), ("traces removed at test time", True)):
        runs[name] = evaluate(EvalConfig(policy=args.policy, tasks=args.tasks, episodes=args.episodes,
                                         workers=args.workers, videos=0, remove_traces=removed,
                                         out=str(Path(args.work) / ("removed" if removed else "traced"))))
    traced, removed = runs["with traces"], runs["traces removed at test time"]
    rows = []
    for task in [*traced["per_task"], "overall"]:
        a = traced["overall"] if task == "overall" else traced["per_task"][task]
        b = removed["overall"] if task == "overall" else removed["per_task"][task]
        rows.append((f"{task}: success with traces / traces removed at test time", f"{percent(a)} / {percent(b)}"))
        tokens = a.get("trace_token_change")
        rows.append((f"{task}: steps with traces; share of depth pixels they change; share of the image tokens they "
                     f"change (relative L2); action change without them (mean L2 per action, robot units) against "
                     f"the actions' own mean L2",
                     f"{100 * a['trace_step_share']:.0f}%; {100 * (a['traced_pixel_share'] or 0):.2f}%; "
                     + ("n/a; " if tokens is None else f"{100 * tokens:.2f}%; ")
                     + ("n/a" if a["trace_sensitivity"] is None else
                        f"{a['trace_sensitivity']:.4f} of {a['action_norm']:.3f}")))
    figures = {name: {"per_task": run["per_task"], "overall": run["overall"]} for name, run in runs.items()}
    record("trace_use", {"policy": checkpoint_fingerprint(args.policy), "tasks": args.tasks, **figures}, rows,
           f"Trace use (the main job's ST-VLA policy, {args.episodes} held-out episodes per task)")


if __name__ == "__main__":
    run(main)
