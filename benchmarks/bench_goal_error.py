"""Where a policy's reach ends against where the goal was: what limits the MT10 base on reach-v3?

Reach-v3's goal is shown only by a small marker (about 3 x 3 px at 128 px). For every episode of an
evaluation on reach-v3 (its `episodes.jsonl`, which records the end effector's final position), the
goal of the same seed is read back from the simulator, and this reports the final error per axis
(median, successes and failures apart) and, per axis, the slope of the final position on the goal's
(least squares over all episodes): 1 when the policy follows the goal along that axis, 0 when it
ignores it and goes to the same place every time.

    python benchmarks/bench_goal_error.py [--eval runs/base-trials/steps20k/eval]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import record, run  # noqa: E402

from stvla.envs import make_env  # noqa: E402

TASK = "reach-v3"
AXES = ("x", "y", "z")


def goals_and_ends(episodes: list[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(goal positions, final end-effector positions, successes) of the reach-v3 episodes."""
    env = make_env(TASK, image_size=64)  # the goal depends on the seed only
    goals, ends, successes = [], [], []
    try:
        for episode in episodes:
            env.reset(seed=episode["seed"])
            goals.append(np.array(env.unwrapped._mw._target_pos, dtype=float))
            ends.append(np.array(episode["final_ee_position"], dtype=float))
            successes.append(bool(episode["success"]))
    finally:
        env.close()
    return np.array(goals), np.array(ends), np.array(successes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--eval", default="runs/base-trials/steps20k/eval",
                        help="an evaluation directory holding episodes.jsonl (default: the kept base's, 50 per task)")
    args = parser.parse_args()
    path = Path(args.eval) / "episodes.jsonl"
    if not path.is_file():
        sys.exit(f"error: {path} not found: evaluate a policy on {TASK} first (stvla eval --tasks {TASK})")
    episodes = [e for e in map(json.loads, path.read_text().splitlines()) if e["task"] == TASK]
    if not episodes or "final_ee_position" not in episodes[0]:
        sys.exit(f"error: {path} holds no {TASK} episodes with final_ee_position")
    goals, ends, successes = goals_and_ends(episodes)
    error = np.abs(ends - goals) * 100  # cm
    slopes = [float(np.polyfit(goals[:, axis], ends[:, axis], 1)[0]) for axis in range(3)]
    spread = goals.max(axis=0) - goals.min(axis=0)
    rows = []
    for name, mask in (("successes", successes), ("failures", ~successes)):
        if mask.any():
            median = np.median(error[mask], axis=0)
            rows.append((f"{name} ({int(mask.sum())} of {len(episodes)}): median final error x / y / z, cm",
                         " / ".join(f"{v:.1f}" for v in median)
                         + f"; distance {np.median(np.linalg.norm(ends[mask] - goals[mask], axis=1)) * 100:.1f}"))
    rows.append(("slope of the final position on the goal's, x / y / z (1 = follows it, 0 = ignores it); "
                 "the goals' spread, cm",
                 " / ".join(f"{s:.2f}" for s in slopes) + "; " + " / ".join(f"{v * 100:.0f}" for v in spread)))
    figures = {"eval": str(args.eval), "episodes": len(episodes), "successes": int(successes.sum()),
               "median_error_cm": {name: np.median(error[mask], axis=0).tolist()
                                   for name, mask in (("successes", successes), ("failures", ~successes)) if mask.any()},
               "slopes": dict(zip(AXES, slopes)), "goal_spread_cm": dict(zip(AXES, (spread * 100).tolist()))}
    record("goal_error", figures, rows, f"Where the reach ends ({TASK}, {args.eval})")
    print("\n".join(f"{what}: {value}" for what, value in rows))


if __name__ == "__main__":
    run(main)
