"""Collection speed: expert episodes with RGB + depth at 128 x 128, frames per second, 1 and 2 workers.

    python benchmarks/bench_collect.py [--episodes 6]

Writes benchmarks/results/collect.json and the "Collection speed" section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import record, run  # noqa: E402

from stvla.data import CollectConfig, collect  # noqa: E402

TASKS = "pick-place-v3,push-v3,drawer-open-v3"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--episodes", type=int, default=6, help="episodes per task and run")
    args = parser.parse_args()
    figures, rows = {}, []
    for workers in (1, 2):
        with tempfile.TemporaryDirectory() as tmp:
            summary = collect(CollectConfig(task=TASKS, episodes=args.episodes, out=f"{tmp}/d", workers=workers,
                                            image_size=128), progress=False)
        fps = summary.frames / summary.seconds
        key = "collect_fps_1worker" if workers == 1 else "collect_fps_2workers"
        figures[key] = round(fps, 1)
        rows.append((f"frames/s, {workers} worker{'s' * (workers > 1)} ({summary.frames} frames, "
                     f"{summary.seconds:.1f} s, writing included)", f"{fps:.1f}"))
        print(rows[-1])
    figures["tasks"] = TASKS
    figures["episodes_per_task"] = args.episodes
    rows.append(("tasks", TASKS))
    record("collect", figures, rows, title="Collection speed: RGB + depth at 128 x 128 (issue 2)")


if __name__ == "__main__":
    run(main)
