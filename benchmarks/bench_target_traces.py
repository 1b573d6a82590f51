"""Do the traces carry what the history tasks need? On each history-needing variant (stvla.envs.variants)
the history that matters is the moving goal's or object's motion; a trace can only carry it if the
tracker follows the thing and the selection picks one of its points among the arm's. This runs the
scripted expert with history (the motion a good policy makes) at 128 px, steps the online tracer with
each trace setting as a policy would, and counts the steps on which a trace follows the moving thing
(`stvla.evaluate.rollout.TargetTraces`: ends on it and kept its offset from it), while it is shown and
while it is hidden: per episode, then the mean over episodes, as `stvla eval` reports it. The first row
gives every point the tracker holds, before any selection: what a selection could pick at best. (While
the thing is hidden, what "follows" it are points left where it vanished, counted until it has moved
TargetTraces.TOLERANCE away: the tracker has nothing to follow then.)

    python benchmarks/bench_target_traces.py [--episodes 20]

Writes benchmarks/results/target_traces.json and its section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np  # noqa: E402
from common import record, run  # noqa: E402

from stvla import features as F  # noqa: E402
from stvla.envs import episode_seed, make_env  # noqa: E402
from stvla.envs.variants import VARIANTS  # noqa: E402
from stvla.evaluate.rollout import TargetTraces  # noqa: E402
from stvla.traces import OnlineTracer, SelectionConfig, TraceConfig  # noqa: E402
from stvla.traces.selection import Trace  # noqa: E402

EVERY_POINT = "every tracked point (no selection)"
SETTINGS: dict[str, TraceConfig] = {  # trace setting -> its config
    EVERY_POINT: TraceConfig(),
    "default (K = 5)": TraceConfig(),
    "adaptive (K = 5)": TraceConfig(selection=SelectionConfig(adaptive=True)),
    "adaptive, K = 20": TraceConfig(selection=SelectionConfig(adaptive=True, num_traces=20)),
}


def every_tracked_point(output):
    """The tracer's output with every point of its tracker window as a trace (the history each slot's current
    point has, if it spans two frames or more), instead of the K selected."""
    state = output.state
    frames = len(state.positions)
    traces = [Trace(points=state.positions[frames - seen:, slot].astype(np.float32),
                    frame_index=np.arange(frames - seen, frames), point_id=slot)
              for slot, seen in enumerate(min(int(age), frames) for age in state.age) if seen >= 2]
    return dataclasses.replace(output, traces=traces)


def coverage(task: str, traces: TraceConfig, episodes: int, every_point: bool = False) -> list[TargetTraces]:
    """Per held-out episode of the expert with history, its steps, shown and hidden, and those on which a
    trace (with `every_point`, any tracked point) followed the moving thing."""
    variant = VARIANTS[task]
    env = make_env(task, image_size=128, max_episode_steps=variant.max_steps)
    counted = []
    for attempt in range(episodes):
        obs, _ = env.reset(seed=episode_seed(task, attempt, "eval"))
        tracer, counter = OnlineTracer(traces), TargetTraces()
        tracer.reset()
        for _ in range(variant.max_steps):
            output = tracer.step(obs[F.OBS_RGB], obs[F.OBS_DEPTH])
            counter.observe(env, obs, every_tracked_point(output) if every_point else output)
            obs, _, _, _, info = env.step(env.expert_action(lead=True))
            if info["success"]:
                break
        counted.append(counter)
    env.close()
    return counted


def mean_share(counted: list[TargetTraces], hidden: bool) -> float | None:
    """The mean over episodes of the share of their shown (or hidden) steps with a trace on the thing."""
    key = "hidden_target_trace_share" if hidden else "target_trace_share"
    shares = [c.summary()[key] for c in counted if c.summary()[key] is not None]
    return sum(shares) / len(shares) if shares else None


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
            counted = coverage(task, traces, args.episodes, every_point=name == EVERY_POINT)
            steps = {hidden: sum(c.steps[hidden] for c in counted) for hidden in (False, True)}
            shown, hidden = mean_share(counted, False), mean_share(counted, True)
            figures[task][name] = {"steps": {"shown": steps[False], "hidden": steps[True]},
                                   "followed": {"shown": sum(c.traced[False] for c in counted),
                                                "hidden": sum(c.traced[True] for c in counted)},
                                   "mean_share": {"shown": shown, "hidden": hidden}}
            rows.append((f"{task}, {name}: steps on which a trace follows the moving {variant.thing}, while it is shown"
                         + (" / hidden" if hidden is not None else "") + " (mean over episodes; steps in all)",
                         f"{100 * shown:.0f}% of {steps[False]}"
                         + (f" / {100 * hidden:.0f}% of {steps[True]}" if hidden is not None else "")))
    record("target_traces", figures, rows, f"Do the traces carry the moving goal or object? (the expert with history, "
                                           f"{args.episodes} held-out episodes per variant, 128 px)")


if __name__ == "__main__":
    run(main)
