"""Rebuild BENCHMARKS.md and every figures block of README.md and docs/ from benchmarks/results/ (runs
nothing: after editing a document's blocks, or pulling results measured elsewhere).

    python benchmarks/report.py
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS_ROOT, run  # noqa: E402

from stvla.benchmark.record import rebuild_report, refresh_figure_blocks  # noqa: E402


def main() -> None:
    changed = refresh_figure_blocks(RESULTS_ROOT)  # first, so that a broken block is an error here
    rebuild_report(RESULTS_ROOT)
    print(f"rebuilt {RESULTS_ROOT / 'BENCHMARKS.md'}; figures blocks refreshed in "
          f"{', '.join(str(path.relative_to(RESULTS_ROOT)) for path in changed) or 'no document (all current)'}")


if __name__ == "__main__":
    run(main)
