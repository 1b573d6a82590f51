"""Where a policy's reach ends against where the goal was: what limits a learner on a reach task?

Reach-v3's goal is shown only by a small marker (about 3 x 3 px at 128 px). For every episode of an
evaluation (its `episodes.jsonl`, which records the end effector's final position and the steps taken),
the goal of the same seed is read back from the simulator (on a moving-goal variant, where the goal was
at the episode's last step: it moves on its own, so the seed and the step count replay it), and this
reports the final error per axis (median, successes and failures apart) and, per axis, the slope of the
final position on the goal's (least squares over all episodes): 1 when the policy follows the goal along
that axis, 0 when it ignores it and goes to the same place every time.

    python benchmarks/bench_goal_error.py [--eval runs/base-trials/steps20k/eval]
    python benchmarks/bench_goal_error.py --scaling   # every reach point of bench_scaling.py's curves
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, record, run  # noqa: E402

from stvla.envs import make_env  # noqa: E402

TASK = "reach-v3"
AXES = ("x", "y", "z")


def goals_and_ends(episodes: list[dict], task: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(goal positions at each episode's end, final end-effector positions, successes) of `task`'s episodes."""
    env = make_env(task, image_size=64)  # the goal (and its motion) depends on the seed only
    goals, ends, successes = [], [], []
    try:
        for episode in episodes:
            env.reset(seed=episode["seed"])
            if env.moving_thing() is not None:  # a variant's goal moves on its own: replay its steps
                for _ in range(episode["steps"]):
                    env.step(np.zeros(4, np.float32))
                goals.append(env.moving_thing()[0])
            else:
                goals.append(np.array(env.unwrapped._mw._target_pos, dtype=float))
            ends.append(np.array(episode["final_ee_position"], dtype=float))
            successes.append(bool(episode["success"]))
    finally:
        env.close()
    return np.array(goals), np.array(ends), np.array(successes)


def read_episodes(eval_dir: Path, task: str) -> list[dict]:
    path = eval_dir / "episodes.jsonl"
    if not path.is_file():
        sys.exit(f"error: {path} not found: evaluate a policy on {task} first (stvla eval --tasks {task})")
    episodes = [e for e in map(json.loads, path.read_text().splitlines()) if e["task"] == task]
    if not episodes or "final_ee_position" not in episodes[0]:
        sys.exit(f"error: {path} holds no {task} episodes with final_ee_position")
    return episodes


def goal_error(episodes: list[dict], task: str, label: str) -> tuple[list[tuple[str, str]], dict]:
    """The report rows (each named after `label`) and raw figures of one evaluation's episodes."""
    goals, ends, successes = goals_and_ends(episodes, task)
    error = np.abs(ends - goals) * 100  # cm
    slopes = [float(np.polyfit(goals[:, axis], ends[:, axis], 1)[0]) for axis in range(3)]
    spread = goals.max(axis=0) - goals.min(axis=0)
    rows = []
    for name, mask in (("successes", successes), ("failures", ~successes)):
        if mask.any():
            median = np.median(error[mask], axis=0)
            rows.append((f"{label}{name} ({int(mask.sum())} of {len(episodes)}): median final error x / y / z, cm",
                         " / ".join(f"{v:.1f}" for v in median)
                         + f"; distance {np.median(np.linalg.norm(ends[mask] - goals[mask], axis=1)) * 100:.1f}"))
    rows.append((f"{label}slope of the final position on the goal's, x / y / z (1 = follows it, 0 = ignores it); "
                 "the goals' spread, cm",
                 " / ".join(f"{s:.2f}" for s in slopes) + "; " + " / ".join(f"{v * 100:.0f}" for v in spread)))
    figures = {"episodes": len(episodes), "successes": int(successes.sum()),
               "median_error_cm": {name: np.median(error[mask], axis=0).tolist()
                                   for name, mask in (("successes", successes), ("failures", ~successes)) if mask.any()},
               "slopes": dict(zip(AXES, slopes)), "goal_spread_cm": dict(zip(AXES, (spread * 100).tolist()))}
    return rows, figures


def scaling_points() -> list[tuple[str, int, Path]]:
    """(task, N, evaluation directory) of every reach point of bench_scaling.py's LoRA curves."""
    curves = json.loads((ROOT / "benchmarks" / "results" / "scaling.json").read_text())["tasks"]
    return [(task, point["demos"], ROOT / "runs" / f"bench-{point['setting']}" / "base" / "eval")
            for task, curve in curves.items() if task.startswith("reach") for point in curve["points"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--eval", default="runs/base-trials/steps20k/eval",
                        help="an evaluation directory holding episodes.jsonl (default: the kept base's, 50 per task)")
    parser.add_argument("--scaling", action="store_true",
                        help="every reach point of bench_scaling.py's curves instead (their evaluations in runs/)")
    args = parser.parse_args()
    if not args.scaling:
        rows, figures = goal_error(read_episodes(Path(args.eval), TASK), TASK, "")
        record("goal_error", {"eval": str(args.eval), **figures}, rows, f"Where the reach ends ({TASK}, {args.eval})")
    else:
        rows, figures = [], {}
        for task, demos, eval_dir in scaling_points():
            point_rows, figures[f"{task}/{demos}"] = goal_error(read_episodes(eval_dir, task), task,
                                                                f"{task}, N = {demos}: ")
            rows += point_rows
        record("goal_error_scaling", figures, rows, "Where the reach ends on the history tasks (the no-history "
               "learner of bench_scaling.py, LoRA from checkpoints/base-mt10, 50 held-out episodes per point)")
    print("\n".join(f"{what}: {value}" for what, value in rows))


if __name__ == "__main__":
    run(main)
