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
