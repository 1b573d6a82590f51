"""Benchmark figures with their provenance, and BENCHMARKS.md rebuilt from them.

Every benchmark (the scripts under `benchmarks/` and `stvla bench`) calls `record(name, figures, rows,
title)`. That writes `benchmarks/results/<name>.json` holding the figures plus the command that
produced them, the date and the machine, then rebuilds BENCHMARKS.md from every results file, so that
no figure in it is ever typed by hand.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shlex
import sys
from pathlib import Path

RESULTS_SUBDIR = Path("benchmarks") / "results"
PROVENANCE = ("command", "date", "machine")  # where, when and how the figures were measured


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


def invoking_command(root: Path) -> str:
    """The command line that ran this process: `python <script relative to root> ...` or `stvla ...`."""
    script = Path(sys.argv[0]).resolve()
    if script.suffix != ".py":
        return " ".join([script.name, *map(shlex.quote, sys.argv[1:])])
    try:
        script_name = str(script.relative_to(root.resolve()))
    except ValueError:
        script_name = str(script)
    return " ".join(["python", shlex.quote(script_name), *map(shlex.quote, sys.argv[1:])])


def record(name: str, figures: dict, table: list[tuple[str, str]], title: str, root: str | Path = ".",
           markdown: list[str] | None = None) -> Path:
    """Save `figures` as <root>/benchmarks/results/<name>.json with provenance; rebuild <root>/BENCHMARKS.md.

    `table` is a list of (what, value) rows shown in the report under `title`; `markdown` blocks
    (tables, images) follow it. Figures equal to the ones already recorded keep their command, date and
    machine: a report rebuilt from the same cached cells (elsewhere, later) did not measure them again.
    """
    root = Path(root)
    results_dir = root / RESULTS_SUBDIR
    results_dir.mkdir(parents=True, exist_ok=True)
    payload = {
        **figures,
        "command": invoking_command(root),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine_description(),
        "report": {"title": title, "rows": [list(row) for row in table]},
        "markdown": markdown or [],
    }
    path = results_dir / f"{name}.json"
    previous = _read_json(path)
    if previous is not None and _without_provenance(previous) == _without_provenance(json.loads(json.dumps(payload))):
        payload.update({key: previous[key] for key in PROVENANCE if key in previous})
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(tmp, path)
    rebuild_report(root)
    return path


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None  # none yet, or a damaged file: it is written anew


def _without_provenance(payload: dict) -> dict:
    return {key: value for key, value in payload.items() if key not in PROVENANCE}


def rebuild_report(root: str | Path = ".") -> None:
    """Write <root>/BENCHMARKS.md from every <root>/benchmarks/results/*.json: the reproduction benchmark
    (bench*.json) first, the headline of the file, then the other sections in file-name order, and last
    the superseded results kept as they were measured (archive*.json)."""
    root = Path(root)
    lines = [
        "# Benchmarks",
        "",
        "Every figure here was written by a script under `benchmarks/` (never by hand). Each section",
        "names the command that produced it, when, and on what machine. Re-run a command to refresh",
        "its section.",
        "",
    ]

    def place(path: Path) -> tuple[int, str]:  # the reproduction benchmark first, superseded results last
        return (0 if path.stem.startswith("bench") else 2 if path.stem.startswith("archive") else 1), path.name

    for path in sorted((root / RESULTS_SUBDIR).glob("*.json"), key=place):
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
    (root / "BENCHMARKS.md").write_text("\n".join(lines))
