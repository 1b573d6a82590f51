"""Does the task need history? The scripted expert on each history-needing variant (stvla.envs.variants),
leading the moving goal (which needs its velocity, i.e. more than one frame) and following it while it
is hidden, against the same expert given only the current frame (the goal where it is now; nothing
while it is hidden).

    python benchmarks/bench_variants.py [--episodes 50] [--max_steps 80]

Writes benchmarks/results/variants.json and the "History-needing tasks" section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import record, run  # noqa: E402

from stvla.envs import episode_seed, make_env  # noqa: E402
from stvla.envs.variants import VARIANTS  # noqa: E402
from stvla.evaluate.stats import rate_summary  # noqa: E402


def expert_success(task: str, lead: bool, episodes: int, max_steps: int) -> dict:
    env = make_env(task, image_size=64, max_episode_steps=max_steps)
    wins = 0
    for attempt in range(episodes):
        env.reset(seed=episode_seed(task, attempt, "eval"))
        for _ in range(max_steps):
            *_, info = env.step(env.expert_action(lead=lead))
            if info["success"]:
                wins += 1
                break
    env.close()
    return rate_summary(wins, episodes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=50, help="held-out episodes per variant and expert")
    parser.add_argument("--max_steps", type=int, default=80, help="steps before an episode fails (the leading expert needs about 53)")
    args = parser.parse_args()
    figures, rows = {}, []
    for task, variant in VARIANTS.items():
        led, current = (expert_success(task, lead, args.episodes, args.max_steps) for lead in (True, False))
        figures[task] = {"leading": led, "current_state_only": current, "speed_m_per_s": variant.speed}

        def text(row: dict) -> str:
            low, high = row["ci95"]
            return f"{100 * row['success_rate']:.0f}% [{100 * low:.0f}, {100 * high:.0f}]"

        hidden = f", hidden on steps {variant.hidden[0]}-{variant.hidden[1] - 1}" if variant.hidden[1] else ""
        rows.append((f"{task} (goal at {variant.speed} m/s{hidden}): the expert with history / given the current "
                     f"frame only", f"{text(led)} / {text(current)}"))
    record("variants", figures, rows, f"History-needing tasks (scripted expert, {args.episodes} held-out episodes, "
                                      f"at most {args.max_steps} steps)")


if __name__ == "__main__":
    run(main)
