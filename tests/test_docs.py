"""The documentation cannot rot: every `stvla` command line in README.md and docs/ parses with the CLI as it
is, every `python <script>` it shows exists, every relative link and image resolves, and every figures
block shows what its results file holds now."""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest

from stvla.benchmark.record import FIGURES_BLOCK, documents, refresh_figure_blocks
from stvla.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = documents(ROOT)
FENCE = re.compile(r"^```.*?$(.*?)^```", re.S | re.M)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def command_lines(text: str) -> list[str]:
    """The command lines of a document's code blocks (a `$ ` prompt and trailing comments dropped)."""
    lines = []
    for block in FENCE.findall(text):
        for line in block.replace("\\\n", " ").splitlines():  # a line continued with a backslash is one
            line = line.strip().removeprefix("$ ")
            if line.startswith(("stvla ", "python benchmarks/", "python scripts/", "torchrun ")):
                lines.append(line)
    return lines


def stvla_arguments(line: str) -> list[str] | None:
    """The arguments after `stvla` (also after `torchrun ... $(which stvla)` or `python -m stvla.cli`), or None
    for a line that runs a script."""
    words = shlex.split(line, comments=True)
    for index, word in enumerate(words):
        if word in ("stvla", "stvla)", "stvla.cli") or word.endswith("/stvla"):
            return words[index + 1:]
    return None


def test_the_documents_exist():
    names = {path.relative_to(ROOT).as_posix() for path in DOCUMENTS}
    assert "README.md" in names and len(names) > 1, names


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: path.relative_to(ROOT).as_posix())
def test_every_command_shown_parses(document):
    parser = build_parser()
    failures = []
    for line in command_lines(document.read_text()):
        arguments = stvla_arguments(line)
        if arguments is not None:
            try:
                parser.parse_args(arguments)
            except SystemExit:  # argparse's refusal of an option or value that no longer exists
                failures.append(line)
        else:
            script = next(word for word in shlex.split(line, comments=True)[1:] if word.endswith(".py"))
            if not (ROOT / script).is_file():
                failures.append(line)
    assert not failures, f"{document.name}: these command lines do not run as shown: {failures}"


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: path.relative_to(ROOT).as_posix())
def test_every_relative_link_resolves(document):
    broken = []
    for target in LINK.findall(FENCE.sub("", document.read_text())):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue  # a web address or a heading of the same page
        if not (document.parent / target.split("#")[0]).exists():
            broken.append(target)
    assert not broken, f"{document.name}: broken links {broken}"


def test_every_figures_block_shows_its_results_file_as_it_is(tmp_path):
    """Refilling every block from benchmarks/results/ changes nothing: no figure was typed or left behind."""
    copy = tmp_path / "repo"
    for path in DOCUMENTS:
        target = copy / path.relative_to(ROOT)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)
    (copy / "benchmarks").mkdir()
    (copy / "benchmarks" / "results").symlink_to(ROOT / "benchmarks" / "results")
    blocks = sum(len(FIGURES_BLOCK.findall(path.read_text())) for path in DOCUMENTS)
    changed = refresh_figure_blocks(copy)
    assert blocks > 0
    assert not changed, f"figures blocks out of date (run any benchmark's record, or refresh): {changed}"


def test_a_renamed_option_and_a_broken_link_are_caught(tmp_path):
    """The checks above fail on what they guard against."""
    page = tmp_path / "page.md"
    page.write_text("```\nstvla train --no_such_option 3\n```\n[gone](missing.md)\n")
    with pytest.raises(AssertionError, match="do not run as shown"):
        test_every_command_shown_parses(page)
    with pytest.raises(AssertionError, match="broken links"):
        test_every_relative_link_resolves(page)


def test_the_headline_is_composed_from_the_results_as_they_are():
    """benchmarks/headline.py composes the README's first figures from other results: re-run after them."""
    import json
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from headline import headline_rows

    recorded = json.loads((ROOT / "benchmarks" / "results" / "headline.json").read_text())["report"]["rows"]
    assert [list(row) for row in headline_rows()] == recorded, "run python benchmarks/headline.py"
