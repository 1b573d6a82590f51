"""Shared by every benchmark script: record figures with their provenance and rebuild BENCHMARKS.md.

Each script calls `record(name, figures, table_rows)`. That writes `benchmarks/results/<name>.json`
holding the figures plus the command that produced them, the date and the machine, then rebuilds
BENCHMARKS.md from every results file, so that no figure in it is ever typed by hand.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "benchmarks" / "results"
REPORT = ROOT / "BENCHMARKS.md"

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("MUJOCO_GL", "egl")


def machine_description() -> str:
    """CPU model, core count and memory of this machine, in one line."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = ""
    try:
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        memory = f", {kib / 2**20:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    return f"{cpu}, {os.cpu_count()} cores{memory}, Python {platform.python_version()}, {platform.system()}"


def invoking_command() -> str:
    """The command line that ran the current script, relative to the repository root."""
    script = Path(sys.argv[0]).resolve()
    try:
        script_name = str(script.relative_to(ROOT))
    except ValueError:
        script_name = str(script)
    return " ".join(["python", shlex.quote(script_name), *map(shlex.quote, sys.argv[1:])])


def record(name: str, figures: dict, table: list[tuple[str, str]], title: str) -> Path:
    """Save `figures` as results/<name>.json with provenance, and rebuild BENCHMARKS.md.

    `table` is a list of (what, value) rows shown in the report under `title`.
    """
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    payload = {
        **figures,
        "command": invoking_command(),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine_description(),
        "report": {"title": title, "rows": [list(row) for row in table]},
    }
    path = RESULTS_DIR / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(tmp, path)
    rebuild_report()
    return path


def rebuild_report() -> None:
    """Write BENCHMARKS.md from every results/*.json (sections in file-name order)."""
    lines = [
        "# Benchmarks",
        "",
        "Every figure here was written by a script under `benchmarks/` (never by hand). Each section",
        "names the command that produced it, when, and on what machine. Re-run a command to refresh",
        "its section.",
        "",
    ]
    for path in sorted(RESULTS_DIR.glob("*.json")):
        result = json.loads(path.read_text())
        report = result.get("report")
        if not report:
            continue
        lines += [
            f"## {report['title']}",
            "",
            f"- command: `{result['command']}`",
            f"- date: {result['date']}",
            f"- machine: {result['machine']}",
            f"- raw figures: `benchmarks/results/{path.name}`",
            "",
            "| what | value |",
            "| --- | --- |",
        ]
        lines += [f"| {what} | {value} |" for what, value in report["rows"]]
        lines.append("")
        for extra in result.get("markdown", []):
            lines += [extra, ""]
    REPORT.write_text("\n".join(lines))
