"""Benchmark figures with their provenance, and BENCHMARKS.md rebuilt from them.

Every benchmark (the scripts under `benchmarks/` and `stvla bench`) calls `record(name, figures, rows,
title)`. That writes `benchmarks/results/<name>.json` holding the figures plus the command that
produced them, the date and the machine, then rebuilds BENCHMARKS.md from every results file, so that
no figure in it is ever typed by hand.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import re
import shlex
import sys
from pathlib import Path

RESULTS_SUBDIR = Path("benchmarks") / "results"
PROVENANCE = ("command", "date", "machine")  # where, when and how the figures were measured
# The code that made them: a rebuild that gives the same figures shows the current code still makes them.
CODE = "code"


def code_fingerprint() -> dict[str, str]:
    """The code this process has run, as {file: short SHA-256}: every module of the stvla package it has
    imported ("stvla/..."), and the benchmark scripts ("benchmarks/...") when it runs one. Saved with a
    result, it tells later whether the current code would make that result differently
    (`python benchmarks/stale.py`)."""
    files = {}
    for module in list(sys.modules.values()):
        source = getattr(module, "__file__", None)
        name = _code_name(Path(source)) if source else None
        if name is not None:
            files[name] = _file_hash(Path(source))
    return dict(sorted(files.items()))


def changed_code(fingerprint: dict[str, str], root: Path) -> list[str]:
    """The files of a recorded code fingerprint that differ now in the repository at `root` (or are gone)."""
    return [name for name, digest in fingerprint.items() if _file_hash(_code_path(name, root)) != digest]


def _package_directory() -> Path:
    return Path(__file__).resolve().parent.parent


def _code_name(path: Path) -> str | None:
    main = getattr(sys.modules.get("__main__"), "__file__", None)
    scripts = Path(main).resolve().parent if main else None
    path = path.resolve()
    for base, prefix in ((_package_directory(), "stvla"), (scripts, "benchmarks")):
        if base is not None and (prefix == "stvla" or base.name == "benchmarks") and path.is_relative_to(base) \
                and path.suffix == ".py":
            return f"{prefix}/{path.relative_to(base).as_posix()}"
    return None


def _code_path(name: str, root: Path) -> Path:
    prefix, _, rest = name.partition("/")
    return (_package_directory() if prefix == "stvla" else root / "benchmarks") / rest


def _file_hash(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    except OSError:
        return "missing"


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
        CODE: code_fingerprint(),
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
    return {key: value for key, value in payload.items() if key not in (*PROVENANCE, CODE)}


# A block of README.md or docs/*.md that quotes a result, filled from it (never typed):
#   <!-- figures: NAME -->             the "what | value" table of benchmarks/results/NAME.json
#   <!-- figures: NAME rows=A;B -->    only its rows whose "what" starts with A or B
#   <!-- figures: NAME markdown=K -->  its K-th markdown block (1-based)
# ending at <!-- /figures -->.
FIGURES_BLOCK = re.compile(r"(?P<open><!-- figures: (?P<spec>[^>]*?) -->\n)(?P<body>.*?)(?P<close><!-- /figures -->)", re.S)
DOCUMENTS = ("README.md", "docs/*.md")  # the files whose figures blocks are kept current


def documents(root: Path) -> list[Path]:
    return [path for pattern in DOCUMENTS for path in sorted(root.glob(pattern))]


def refresh_figure_blocks(root: str | Path = ".") -> list[Path]:
    """Fill every figures block of the documents from the results they name; the documents changed."""
    root = Path(root)
    changed = []
    for path in documents(root):
        text = path.read_text()
        filled = FIGURES_BLOCK.sub(lambda match: match["open"] + figures_text(root, path, match["spec"]) +
                                   match["close"], text)
        if filled != text:
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(filled)
            os.replace(tmp, path)
            changed.append(path)
    return changed


def figures_text(root: Path, document: Path, spec: str) -> str:
    """What a figures block `spec` shows, ending with where it comes from (a line: command, date, file)."""
    name, _, option = spec.strip().partition(" ")
    path = root / RESULTS_SUBDIR / f"{name}.json"
    result = _read_json(path)
    where = f"{document.relative_to(root)}: figures block {spec!r}"
    if result is None or "report" not in result:
        raise ValueError(f"{where}: {path.relative_to(root)} is missing or holds no report")
    key, _, value = option.partition("=")
    if key == "markdown":
        blocks = result.get("markdown", [])
        if not value.isdigit() or not 1 <= int(value) <= len(blocks):
            raise ValueError(f"{where}: {name} has {len(blocks)} markdown block(s)")
        body = _relinked(blocks[int(value) - 1], root, document)
    elif key in ("rows", ""):
        prefixes = [prefix for prefix in value.split(";") if prefix] if key else []
        rows = [row for row in result["report"]["rows"] if not prefixes or any(row[0].startswith(p) for p in prefixes)]
        if not rows or len(rows) < len(prefixes):
            raise ValueError(f"{where}: some of the rows {prefixes} are not in {name}'s report")
        body = "\n".join(["| what | value |", "| --- | --- |", *(f"| {what} | {figure} |" for what, figure in rows)])
    else:
        raise ValueError(f"{where}: the option is rows=PREFIX;... or markdown=K, not {option!r}")
    source = os.path.relpath(path, document.parent)
    return f"{body}\n\n<sub>measured by `{result['command']}`, {result['date']} ([figures]({source}))</sub>\n"


def _relinked(markdown: str, root: Path, document: Path) -> str:
    """A markdown block's relative links (written relative to the repository root) made relative to `document`."""
    prefix = os.path.relpath(root, document.parent)
    if prefix == ".":
        return markdown
    return re.sub(r"\]\((?!https?:|#|/)([^)]+)\)", lambda m: f"]({prefix}/{m[1]})", markdown)


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
    try:
        refresh_figure_blocks(root)
    except ValueError as error:  # the results are written; a document's broken block is its own fault
        print(f"warning: {error}", file=sys.stderr)
