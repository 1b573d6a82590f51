"""Do the traces carry what the history tasks need? On each history-needing variant (stvla.envs.variants)
the history that matters is the moving goal's or object's motion; a trace can only carry it if the
tracker follows the thing and the selection picks one of its points among the arm's. This runs the
scripted expert with history (the motion a good policy makes) at 128 px, steps the online tracer with
each trace setting as a policy would, and counts the steps on which a trace follows the moving thing
(`stvla.evaluate.rollout.TargetTraces`: ends on it and kept its offset from it), while it is shown and
while it is hidden.

    python benchmarks/bench_target_traces.py [--episodes 20]

Writes benchmarks/results/target_traces.json and its section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import record, run  # noqa: E402

from stvla import features as F  # noqa: E402
from stvla.envs import episode_seed, make_env  # noqa: E402
from stvla.envs.variants import VARIANTS  # noqa: E402
from stvla.evaluate.rollout import TargetTraces  # noqa: E402
from stvla.traces import OnlineTracer, SelectionConfig, TraceConfig  # noqa: E402

SETTINGS: dict[str, TraceConfig] = {  # trace setting -> its config
    "default (K = 5)": TraceConfig(),
    "adaptive (K = 5)": TraceConfig(selection=SelectionConfig(adaptive=True)),
    "adaptive, K = 20": TraceConfig(selection=SelectionConfig(adaptive=True, num_traces=20)),
}


def coverage(task: str, traces: TraceConfig, episodes: int) -> TargetTraces:
    """The steps, shown and hidden, and those on which a trace followed the moving thing, over `episodes`
    held-out episodes of the expert with history."""
    variant = VARIANTS[task]
    env = make_env(task, image_size=128, max_episode_steps=variant.max_steps)
    total = TargetTraces()
    for attempt in range(episodes):
        obs, _ = env.reset(seed=episode_seed(task, attempt, "eval"))
        tracer, counter = OnlineTracer(traces), TargetTraces()
        tracer.reset()
        for _ in range(variant.max_steps):
            counter.observe(env, obs, tracer.step(obs[F.OBS_RGB], obs[F.OBS_DEPTH]))
            obs, _, _, _, info = env.step(env.expert_action(lead=True))
            if info["success"]:
                break
        for hidden in (False, True):
            total.steps[hidden] += counter.steps[hidden]
            total.traced[hidden] += counter.traced[hidden]
    env.close()
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=20, help="held-out episodes per variant and trace setting")
    args = parser.parse_args()
    if args.episodes < 1:
        parser.error(f"--episodes must be >= 1, got {args.episodes}")
    figures, rows = {}, []
    for task, variant in VARIANTS.items():
        figures[task] = {}
        for name, traces in SETTINGS.items():
            counted = coverage(task, traces, args.episodes)
            figures[task][name] = {"steps": {"shown": counted.steps[False], "hidden": counted.steps[True]},
                                   "followed": {"shown": counted.traced[False], "hidden": counted.traced[True]}}
            shares = counted.summary()
            hidden = shares["hidden_target_trace_share"]
            rows.append((f"{task}, {name}: steps on which a trace follows the moving {variant.thing}, while it is shown"
                         + (" / hidden" if hidden is not None else ""),
                         f"{100 * shares['target_trace_share']:.0f}% of {counted.steps[False]}"
                         + (f" / {100 * hidden:.0f}% of {counted.steps[True]}" if hidden is not None else "")))
    record("target_traces", figures, rows, f"Do the traces carry the moving goal or object? (the expert with history, "
                                           f"{args.episodes} held-out episodes per variant, 128 px)")


if __name__ == "__main__":
    run(main)
