"""The provenance of benchmark figures: BENCHMARKS.md says which command measured them, when and where."""

import json

from stvla.benchmark import record as record_module
from stvla.benchmark.record import record


def test_a_report_rebuilt_from_the_same_figures_keeps_when_and_where_they_were_measured(tmp_path, monkeypatch):
    rows = [("success", "50% [30, 70]")]
    monkeypatch.setattr(record_module, "machine_description", lambda: "machine A")
    path = record("trial", {"success": 0.5}, rows, "Trial", root=tmp_path)
    first = json.loads(path.read_text())
    assert first["machine"] == "machine A"

    monkeypatch.setattr(record_module, "machine_description", lambda: "machine B")
    monkeypatch.setattr(record_module, "invoking_command", lambda root: "python trial.py --report_only")
    record("trial", {"success": 0.5}, rows, "Trial", root=tmp_path)  # same figures, another machine
    again = json.loads(path.read_text())
    assert {k: again[k] for k in ("command", "date", "machine")} == {k: first[k] for k in ("command", "date", "machine")}
    assert "- machine: machine A" in (tmp_path / "BENCHMARKS.md").read_text()

    record("trial", {"success": 0.6}, [("success", "60% [40, 78]")], "Trial", root=tmp_path)  # new figures
    changed = json.loads(path.read_text())
    assert changed["machine"] == "machine B" and changed["command"] == "python trial.py --report_only"
    assert "- machine: machine B" in (tmp_path / "BENCHMARKS.md").read_text()


def test_a_result_names_its_code_and_goes_stale_when_that_code_changes(tmp_path, monkeypatch):
    """The fingerprint lists the stvla modules the process ran; a changed file makes the result stale."""
    from pathlib import Path

    from stvla.benchmark.record import changed_code

    path = record("trial", {"success": 0.5}, [("success", "50%")], "Trial", root=tmp_path)
    code = json.loads(path.read_text())["code"]
    assert "stvla/benchmark/record.py" in code and changed_code(code, tmp_path) == []
    altered = dict(code, **{"stvla/benchmark/record.py": "0" * 16})
    assert changed_code(altered, tmp_path) == ["stvla/benchmark/record.py"]
    assert changed_code({"stvla/no_such_module.py": "0" * 16}, Path(tmp_path)) == ["stvla/no_such_module.py"]


def test_figures_blocks_are_filled_from_their_results_and_a_broken_one_is_named(tmp_path):
    import pytest

    from stvla.benchmark.record import refresh_figure_blocks

    record("trial", {"success": 0.5}, [("success", "50% [30, 70]"), ("steps", "100")], "Trial", root=tmp_path,
           markdown=["![plot](benchmarks/results/trial.png)"])
    (tmp_path / "docs").mkdir()
    page = tmp_path / "docs" / "page.md"
    page.write_text("<!-- figures: trial rows=steps -->\nstale text\n<!-- /figures -->\n"
                    "<!-- figures: trial markdown=1 -->\n<!-- /figures -->\n")
    assert refresh_figure_blocks(tmp_path) == [page]
    text = page.read_text()
    assert "| steps | 100 |" in text and "50%" not in text and "stale text" not in text
    assert "![plot](../benchmarks/results/trial.png)" in text  # a block's links made relative to the page
    assert refresh_figure_blocks(tmp_path) == []  # filled blocks stay as they are
    page.write_text("<!-- figures: nothing -->\n<!-- /figures -->\n")
    with pytest.raises(ValueError, match=r"docs/page.md: figures block 'nothing'"):
        refresh_figure_blocks(tmp_path)


def test_a_benchmark_run_outside_the_checkout_leaves_its_figures_alone(tmp_path):
    """A script of the checkout run from another folder writes benchmarks/results and BENCHMARKS.md there."""
    import subprocess
    import sys
    from pathlib import Path

    checkout = Path(__file__).resolve().parent.parent
    before = (checkout / "BENCHMARKS.md").stat().st_mtime_ns
    done = subprocess.run([sys.executable, str(checkout / "benchmarks" / "report.py")], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "BENCHMARKS.md").is_file()
    assert (checkout / "BENCHMARKS.md").stat().st_mtime_ns == before
