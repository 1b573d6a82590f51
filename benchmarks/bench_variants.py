"""Does the task need history? The scripted expert on each history-needing variant (stvla.envs.variants),
leading the moving goal or object (which needs its velocity, i.e. more than one frame) and following it
while it is hidden, against the same expert given only the current frame (the goal or object where it
is now; nothing while it is hidden). Each variant's episodes last its own `max_steps` (80 for the reach
variants, 90 for button-press-topdown-moving-v3) unless --max_steps sets one for all.

    python benchmarks/bench_variants.py [--episodes 50] [--max_steps N]

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
    parser.add_argument("--max_steps", type=int, default=None,
                        help="steps before an episode fails, for every variant (default: each variant's own max_steps)")
    args = parser.parse_args()
    figures, rows = {}, []
    for task, variant in VARIANTS.items():
        max_steps = args.max_steps or variant.max_steps
        led, current = (expert_success(task, lead, args.episodes, max_steps) for lead in (True, False))
        figures[task] = {"leading": led, "current_state_only": current, "speed_m_per_s": variant.speed,
                         "max_steps": max_steps}

        def text(row: dict) -> str:
            low, high = row["ci95"]
            return f"{100 * row['success_rate']:.0f}% [{100 * low:.0f}, {100 * high:.0f}]"

        hidden = f", hidden on steps {variant.hidden[0]}-{variant.hidden[1] - 1}" if variant.hidden[1] else ""
        rows.append((f"{task} ({variant.thing} at {variant.speed} m/s{hidden}, at most {max_steps} steps): the expert "
                     f"with history / given the current frame only", f"{text(led)} / {text(current)}"))
    record("variants", figures, rows, f"History-needing tasks (scripted expert, {args.episodes} held-out episodes)")


if __name__ == "__main__":
    run(main)
