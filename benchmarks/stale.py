"""Which committed results the current code would make differently.

    python benchmarks/stale.py [--all]

Every result (benchmarks/results/*.json, and each cached cell of a table under benchmarks/results/*/)
records the code that made it: a hash of each stvla module and benchmark script the process had run
(`stvla.benchmark.record.code_fingerprint`). A result whose files have changed since is stale: re-run the
command it names. Results recorded before code was recorded are listed as unknown. Exit status 1 when
any result is stale or unknown, 0 when every one matches the current code (so it can gate a release).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, run  # noqa: E402

from stvla.benchmark.record import RESULTS_SUBDIR, changed_code  # noqa: E402


def status_of(path: Path) -> tuple[str, list[str]]:
    """("current" | "stale" | "unknown", the changed files) of one results file."""
    try:
        payload = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return "unknown", ["not readable JSON"]
    code = payload.get("code") if isinstance(payload, dict) else None
    if not isinstance(code, dict) or not code:
        return "unknown", []
    changed = changed_code(code, ROOT)
    return ("stale" if changed else "current"), changed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--all", action="store_true", help="list every result, the current ones too")
    args = parser.parse_args()
    results = ROOT / RESULTS_SUBDIR
    by_status: dict[str, list[tuple[Path, list[str]]]] = defaultdict(list)
    for path in sorted(results.rglob("*.json")):
        status, changed = status_of(path)
        by_status[status].append((path.relative_to(ROOT), changed))
    for path, changed in by_status["stale"]:
        more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
        print(f"stale    {path}: {', '.join(changed[:3])}{more} changed since")
    for path, _ in by_status["unknown"]:
        print(f"unknown  {path}: recorded before results named their code")
    if args.all:
        for path, _ in by_status["current"]:
            print(f"current  {path}")
    print(f"{len(by_status['current'])} current, {len(by_status['stale'])} stale, "
          f"{len(by_status['unknown'])} unknown (of {sum(map(len, by_status.values()))} results)")
    return 1 if by_status["stale"] or by_status["unknown"] else 0


if __name__ == "__main__":
    run(main)
