"""The headline figures the README shows first, composed from the results the other benchmarks wrote (it runs
nothing): the main job (`make demo`), the paper-reproduction table's main rows pooled over their tasks
and training seeds, with 95% intervals, and the evidence's answers in three lines.

    python benchmarks/headline.py

Sources: benchmarks/results/demo.json (bench_demo.py), bench.json (`stvla bench`), evidence.json
(evidence.py). Writes benchmarks/results/headline.json and the "Headline" section of BENCHMARKS.md; the
README's `<!-- figures: headline -->` block shows it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, record, run  # noqa: E402

from stvla.benchmark.protocol import ROW_BY_KEY  # noqa: E402
from stvla.benchmark.report import MAIN_ROWS, rate_text  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
# The evidence's answers the headline repeats, each the row of evidence.json's report that starts so (the
# last such row: the settings come in the order they were measured).
EVIDENCE_ANSWERS = ("Does the policy read its traces?", "Is history needed on reach-moving-hidden-v3?",
                    "Issue 42's goal")


def read(name: str) -> dict:
    path = RESULTS / f"{name}.json"
    if not path.is_file():
        raise ValueError(f"{path} is missing: run the benchmark that writes it first")
    return json.loads(path.read_text())


def pooled_row(cells: dict) -> tuple[int, int]:
    """(successes, episodes) of a row over its training seeds and tasks."""
    tasks = [task for seed in cells.values() for task in seed["per_task"].values()]
    return sum(task["successes"] for task in tasks), sum(task["episodes"] for task in tasks)


def headline_rows() -> list[tuple[str, str]]:
    """The headline's (what, value) rows from the results files as they are now."""
    demo, bench, evidence = read("demo"), read("bench"), read("evidence")
    rows = [("Main job, `make demo` (collect, fine-tune ST-VLA from the kept base, evaluate): minutes on this machine",
             f"{demo['demo_minutes']:.1f}"),
            ("Main job: the fine-tuned ST-VLA's success, 100 held-out episodes [95% CI]",
             f"{100 * demo['overall']['success_rate']:.0f}% [{100 * demo['overall']['ci95'][0]:.0f}, "
             f"{100 * demo['overall']['ci95'][1]:.0f}] (the base before: "
             f"{100 * demo['base_zero_shot']['overall']['success_rate']:.0f}%)")]
    targets = ", ".join(bench["targets"])
    for key in MAIN_ROWS:
        if key in bench["cells"]:
            cells = bench["cells"][key]
            rows.append((f"Reproduction table ({targets}): {ROW_BY_KEY[key].label}, seeds {','.join(sorted(cells))}",
                         rate_text(*pooled_row(cells))))
    for prefix in EVIDENCE_ANSWERS:
        found = [(what, value) for what, value in evidence["report"]["rows"] if what.startswith(prefix)]
        if not found:
            raise ValueError(f"{RESULTS / 'evidence.json'} has no row starting {prefix!r}")
        rows.append(found[-1])
    return rows


def main() -> None:
    rows = headline_rows()
    record("headline", {"rows": rows}, rows,
           title="Headline: the main job, the reproduction table's main rows, the evidence (composed; runs nothing)")


if __name__ == "__main__":
    run(main)
