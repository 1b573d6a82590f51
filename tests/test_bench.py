"""`stvla bench` on a miniature configuration: every stage runs, the report is written, finished cells
are skipped on a second call and a deleted one is re-run."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from stvla.benchmark.protocol import Bench, BenchConfig, quick_preset
from stvla.benchmark.cells import Cell
from stvla.locks import FolderInUse, FolderLock
from stvla.policies.base import checkpoint_fingerprint, read_checkpoint_config
from stvla.policies.image_encoder import ImageEncoderConfig
from stvla.policies.trunk import TrunkConfig
from stvla.policies.vla import VLAConfig

TINY = VLAConfig(image_size=64, width=32, image=ImageEncoderConfig(channels=(8, 16), width=32),
                 trunk=TrunkConfig(width=32, depth=1, heads=2))


def test_cell_runs_once_per_configuration(tmp_path):
    calls = []
    cell = Cell("x", tmp_path / "x.json", {"a": 1})
    assert cell.run(lambda: calls.append(1) or {"value": 3}, log=lambda _: None) == {"value": 3}
    assert cell.run(lambda: calls.append(1) or {"value": 4}, log=lambda _: None) == {"value": 3}
    assert len(calls) == 1
    other = Cell("x", tmp_path / "x.json", {"a": 2})  # another configuration: not the stored result
    assert other.finished() is None
    (tmp_path / "x.json").write_text("{\"config_hash\": ")  # cut off mid-write: no result
    assert cell.finished() is None


@pytest.fixture(scope="module")
def miniature(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    config = dataclasses.replace(
        quick_preset(), out=str(root / "out"), repo=str(root / "repo"), pretrain_tasks="reach-v3,drawer-close-v3",
        pretrain_episodes=2, stage1_steps=8, pretrain_more_tasks="reach-v3", pretrain_more_episodes=3,
        stage1_more_steps=4, stage1_no_state_steps=4, selection_episodes=1, num_targets=1, finetune_episodes=2,
        stage2_steps=4, eval_episodes=2, max_steps=12, workers=1, videos=1, image_size=64, model=TINY,
        llarva_pretrain_tasks="reach-v3", llarva_pretrain_episodes=2, llarva_pretrain_steps=4,
        keep_base="checkpoints/base",
        rows="base-zero-shot,base-finetuned,st-C-b30,zero-shot-traces,st-A-b30,llarva,llarva-no-pretrain,"
             "st-C-b30-traces-removed,base-finetuned-no-state")
    logs: list[str] = []
    return config, run_bench_logged(config, logs), logs


def run_bench_logged(config: BenchConfig, logs: list[str]):
    return Bench(config, log=logs.append).run()  # writes the report as the cells finish


def test_quick_miniature_runs_every_stage(miniature):
    config, results, logs = miniature
    assert len(results["targets"]) == 1 and results["targets"][0] in ("reach-v3", "drawer-close-v3")
    assert set(results["cells"]) == {"base-zero-shot", "base-finetuned", "st-C-b30", "zero-shot-traces", "st-A-b30",
                                     "llarva", "llarva-no-pretrain", "st-C-b30-traces-removed",
                                     "base-finetuned-no-state"}
    for by_seed in results["cells"].values():
        (cell,) = by_seed.values()
        assert len(cell["episodes"]) == 2 and cell["per_task"][results["targets"][0]]["episodes"] == 2
    report = (config.results_dir.parent.parent.parent / "BENCHMARKS.md").read_text()
    assert "Paper-reproduction benchmark, reduced" in report and "**Main table**" in report
    assert "ST-VLA > SpatialVLA-style base" in report and "LLARVA: instruction pre-training helps" in report
    assert "| evaluation cells finished (a row and a training seed each) | 9 of 9 |" in report
    minutes = json.loads((Path(config.repo) / config.keep_base / "cell.json").read_text())["result"]["minutes"]
    assert f"| stage-1 pre-training of the base: minutes | {minutes:.1f} |" in report
    recorded = [cell["minutes"] for by_seed in results["cells"].values() for cell in by_seed.values()]
    recorded.append(results["selection"]["minutes"])
    assert all(m > 0 for m in recorded)
    assert f"| {sum(recorded):.1f} (10 of 10 cells recorded a time) |" in report
    assert "**Trace use**" in report  # the traced rows' diagnostics (steps with traces, sensitivity)
    trace_rows = report.split("**Trace use**")[1].split("\n\n")[1].splitlines()[2:]
    assert trace_rows and all(line.count("|") == 8 for line in trace_rows)
    llarva_line = next(line for line in report.splitlines() if line.startswith("| LLARVA (instruction"))
    assert llarva_line.rstrip(" |").split("|")[-1].strip() != "-"  # a measured trace error
    stored = json.loads((config.results_dir.parent / "bench_quick.json").read_text())
    assert stored["targets"] == results["targets"] and stored["command"]
    assert stored["cells"]["st-C-b30"]["0"] == {k: results["cells"]["st-C-b30"][0][k] for k in ("per_task", "overall")}
    assert (config.results_dir.parent / "bench_quick.png").is_file()


def test_second_call_skips_finished_cells_and_reruns_a_deleted_one(miniature):
    config, first, _ = miniature
    logs: list[str] = []
    again = run_bench_logged(config, logs)
    assert not [line for line in logs if line.endswith(": running")]
    assert again["cells"] == first["cells"]
    (config.results_dir / "st-A-b30-s0.json").unlink()
    logs.clear()
    run_bench_logged(config, logs)
    assert [line for line in logs if line.endswith(": running")] == ["[bench] eval/st-A-b30-s0: running"]


def test_report_only_runs_nothing_and_reports_the_finished_cells(miniature, tmp_path):
    config, first, _ = miniature
    logs: list[str] = []
    (config.results_dir / "st-A-b30-s0.json").rename(tmp_path / "st-A-b30-s0.json")  # as if still running
    try:
        report = run_bench_logged(dataclasses.replace(config, report_only=True), logs)
    finally:
        (tmp_path / "st-A-b30-s0.json").rename(config.results_dir / "st-A-b30-s0.json")
    assert not [line for line in logs if line.endswith(": running")]
    assert set(report["cells"]) == set(first["cells"]) - {"st-A-b30"}
    text = (config.results_dir.parent.parent.parent / "BENCHMARKS.md").read_text()
    assert "| evaluation cells finished (a row and a training seed each) | 8 of 9 |" in text
    assert "| wall time of this call (cached cells not re-run): minutes | - (written by --report_only, or by a --share " \
           "process from every process's cells) |" in text
    with pytest.raises(RuntimeError, match="nothing to report yet"):
        Bench(dataclasses.replace(config, report_only=True, repo=str(tmp_path / "empty"), out=str(tmp_path / "o")),
              log=logs.append).run()


def test_shared_table_skips_the_cells_another_process_runs_and_waits_for_them(miniature, tmp_path):
    """With --share, a cell whose lock another process holds is put off, the cells after it run, and the
    put-off one is taken from its record once the other process has written it; without, it is refused."""
    config, first, _ = miniature
    busy, missing = config.results_dir / "base-finetuned-s0.json", config.results_dir / "st-A-b30-s0.json"
    busy.rename(tmp_path / busy.name)  # the other process is running this cell...
    missing.rename(tmp_path / missing.name)  # ...and nobody has run this one yet
    other = FolderLock(config.results_dir, "stvla bench (cell eval/base-finetuned-s0)", name=f".{busy.name}.lock")
    other.__enter__()
    logs: list[str] = []

    def log(line: str) -> None:
        logs.append(line)
        if line.startswith("[bench] waiting for"):  # the other process finishes while this one waits
            (tmp_path / busy.name).rename(busy)
            other.__exit__(None, None, None)

    try:
        with pytest.raises(FolderInUse, match="base-finetuned-s0"):
            Bench(dataclasses.replace(config, report=False), log=lambda _: None).run()
        shared = Bench(dataclasses.replace(config, share=True, share_poll_seconds=0.01), log=log).run()
    finally:
        other.__exit__(None, None, None)
        for name in (busy.name, missing.name):
            if (tmp_path / name).exists():
                (tmp_path / name).rename(config.results_dir / name)
    ran = [line for line in logs if line.endswith(": running")]
    assert ran == ["[bench] eval/st-A-b30-s0: running"]  # after the busy cell was put off, not after it finished
    put_off = next(i for i, line in enumerate(logs) if "back to it later" in line)
    assert "base-finetuned" in logs[put_off] and put_off < logs.index(ran[0])
    assert shared["cells"]["base-finetuned"] == first["cells"]["base-finetuned"]
    assert set(shared["cells"]) == set(first["cells"])
    report = (config.results_dir.parent.parent.parent / "BENCHMARKS.md").read_text()
    assert "| evaluation cells finished (a row and a training seed each) | 9 of 9 |" in report


def test_another_machine_resumes_from_the_kept_base_and_the_committed_results(miniature, tmp_path):
    """What a fresh clone has: the repository (kept base, per-cell results), nothing under `out`."""
    config, first, _ = miniature
    kept = Path(config.repo) / config.keep_base
    assert (kept / "model.safetensors").is_file() and (kept / "config.json").is_file()
    assert json.loads((kept / "cell.json").read_text())["result"]["policy"] == config.keep_base
    logs: list[str] = []
    again = run_bench_logged(dataclasses.replace(config, out=str(tmp_path / "empty")), logs)
    assert not [line for line in logs if line.endswith(": running")]
    assert again["targets"] == first["targets"] and set(again["cells"]) == set(first["cells"])
    assert not (tmp_path / "empty").exists()  # no dataset collected, no checkpoint trained


def test_traces_removed_at_test_time_and_rows_without_state(miniature):
    """"Traces removed" evaluates the ST-VLA row's own checkpoint with raw depth in place of the traced; the
    rows without state fine-tune a base without the state token, made from the base (the token dropped,
    every weight trained on the extended pre-training set) and kept beside it."""
    config, results, _ = miniature
    stage2 = sorted(p.name.rsplit("-", 1)[0] for p in (Path(config.out) / "stage2").iterdir())
    assert "st-C-b30-s0" in stage2 and not [name for name in stage2 if "removed" in name]  # no second fine-tune
    removed = json.loads((Path(config.out) / "eval" / config.name / "st-C-b30-traces-removed-s0" / "eval_config.json")
                         .read_text())
    assert removed["remove_traces"] is True and removed["policy"].startswith(str(Path(config.out) / "stage2" / "st-C-b30-s0-"))
    no_state_base = Path(config.repo) / f"{config.keep_base}-no-state"
    assert read_checkpoint_config(no_state_base)[1]["vla"]["use_state"] is False
    record = json.loads((no_state_base / "cell.json").read_text())
    made = record["config"]
    assert made["from"] == checkpoint_fingerprint(Path(config.repo) / config.keep_base)
    assert made["train"]["steps"] == config.stage1_no_state_steps and made["data"]["more"]["tasks"] == "reach-v3"
    assert read_checkpoint_config(Path(config.repo) / config.keep_base)[1]["vla"].get("use_state", True) is True
    (tuned,) = (Path(config.out) / "stage2").glob("base-finetuned-no-state-s0-*")
    assert read_checkpoint_config(tuned / "policy")[1]["vla"]["use_state"] is False
    report = (config.results_dir.parent.parent.parent / "BENCHMARKS.md").read_text()
    assert f"| the base without state (the rows with the papers' inputs): minutes | {record['result']['minutes']:.1f} |" in report
    assert "**Without state**" in report and "| ST-VLA reads its traces (as trained > traces removed at test time) |" in report


def test_difference_interval_and_verdicts():
    from stvla.benchmark.report import difference, verdict

    diff, low, high = difference((40, 50), (10, 50))
    assert diff == pytest.approx(0.6) and 0.4 < low < 0.6 < high < 0.8 and verdict(low, high) == "supported"
    diff, low, high = difference((0, 50), (0, 50))  # both at the floor: an interval, not a point
    assert diff == 0.0 and low < 0 < high and verdict(low, high) == "inside the noise"
    assert verdict(*difference((5, 50), (30, 50))[1:]) == "contradicted"


def test_points_text_keeps_the_side_of_zero():
    from stvla.benchmark.report import points_text

    assert points_text(0.07, -0.05, 0.19) == "+7 [-5, +19]"
    assert points_text(0.12, -0.003, 0.24) == "+12 [-0.3, +24]"  # not "-0": the bound is below zero
    assert points_text(0.0, -0.09, 0.09) == "+0 [-9, +9]"  # a zero difference stays a plain zero
    assert points_text(0.097, 0.04, 0.152, 1) == "+9.7 [+4.0, +15.2]"


def test_claims_compare_fine_tuned_rows_on_their_common_seeds():
    from stvla.benchmark.protocol import ROWS
    from stvla.benchmark.report import claims_table

    def cell(successes: int) -> dict:
        return {"episodes": [{"task": "t", "success": i < successes} for i in range(10)]}

    results = {"rows": [dataclasses.asdict(r) for r in ROWS], "targets": ["t"], "cells": {
        "base-finetuned": {0: cell(5), 1: cell(0)},  # seed 1 finished, ST-VLA's seed 1 still running
        "st-C-b30": {0: cell(5)},
        "zero-shot-traces": {0: cell(5)},
    }}
    _, verdicts = claims_table(results)
    by_claim = {v["claim"]: v for v in verdicts}
    assert set(by_claim) == {"ST-VLA > SpatialVLA-style base (both fine-tuned)",
                             "zero-shot traces >= fine-tuned without traces"}
    tuned = by_claim["ST-VLA > SpatialVLA-style base (both fine-tuned)"]
    assert tuned["seeds"] == "0 / 0" and tuned["difference"] == 0.0  # seed 1 of the base is not weighed
    zero_shot = by_claim["zero-shot traces >= fine-tuned without traces"]  # no training seed: every seed of the other
    assert zero_shot["seeds"] == "0 / 0,1" and zero_shot["difference"] == pytest.approx(0.5 - 0.25)


@pytest.mark.parametrize("field, value, needle", [
    ("seeds", "0,x", "--seeds '0,x': expected comma-separated integers"),
    ("rows", "st-C-b30,nope", "unknown bench row(s) ['nope']"),
])
def test_bad_seeds_or_rows_are_refused_before_any_cell_runs(tmp_path, field, value, needle):
    config = dataclasses.replace(BenchConfig(), out=str(tmp_path / "out"), repo=str(tmp_path), **{field: value})
    with pytest.raises(ValueError) as refused:
        Bench(config, log=lambda _: None)
    assert needle in str(refused.value)
    assert list(tmp_path.iterdir()) == []  # nothing made: no data, no base, no results folder


def test_every_claim_compares_rows_the_protocol_runs():
    """A claim naming a row the bench never runs would never appear in the table: no error, no verdict."""
    from stvla.benchmark.protocol import ROWS
    from stvla.benchmark.report import CLAIMS

    names = {r.key for r in ROWS}
    assert [(c, b, w) for c, b, w, _ in CLAIMS if b not in names or w not in names] == []
    assert len({c for c, *_ in CLAIMS}) == len(CLAIMS)
    assert ("base-finetuned-no-state", "base-finetuned") in {(b, w) for _, b, w, _ in CLAIMS}


def test_stage1_trains_on_with_more_episodes_of_some_tasks(miniature):
    """The second phase of stage 1: the pre-training set copied and extended (new starts of the named
    tasks only), every weight trained on from the first phase; the kept base is the second phase's."""
    from stvla.data.collect import dataset_summary

    def episodes_per_task(dataset: str) -> dict[str, int]:
        return {task: row["episodes"] for task, row in dataset_summary(dataset)["per_task"].items()}

    config, _, _ = miniature
    bench = Bench(config)
    first, kept = bench.stage1()
    more = bench.stage1_more(first)
    assert more.init == str(Path(first.out) / "policy") and more.lora.rank == 0 and more.steps == 4
    assert episodes_per_task(first.dataset) == {"reach-v3": 2, "drawer-close-v3": 2}
    assert episodes_per_task(more.dataset) == {"reach-v3": 3, "drawer-close-v3": 2}
    assert kept.config["more"]["tasks"] == "reach-v3" and kept.finished() is not None
    weights = (Path(config.repo) / config.keep_base / "model.safetensors").read_bytes()
    assert weights == (Path(more.out) / "policy" / "model.safetensors").read_bytes()
    one_phase = Bench(dataclasses.replace(config, stage1_more_steps=0)).stage1()[1]
    assert "more" not in one_phase.config and one_phase.config != kept.config


def test_a_bench_with_other_stage1_settings_never_replaces_the_kept_base(miniature):
    """The kept base is committed: a run whose stage 1 differs is refused before it trains, naming the way
    to keep its own base elsewhere, and the kept weights stay as they were."""
    config, _, _ = miniature
    kept = Path(config.repo) / config.keep_base
    weights = (kept / "model.safetensors").read_bytes()
    other = Bench(dataclasses.replace(config, stage1_steps=config.stage1_steps + 1))
    with pytest.raises(ValueError, match=r"keeps a base made with other settings .* --keep_base"):
        other.base_checkpoint()
    assert (kept / "model.safetensors").read_bytes() == weights


def test_the_committed_base_still_matches_the_protocol():
    """A new field in TrainConfig or VLAConfig changes stage 1's key: the kept base (and every
    row evaluated from it) would silently be re-made. Such a field must not change the default protocol."""
    root = Path(__file__).resolve().parent.parent
    config = BenchConfig(repo=str(root))
    bench = Bench(config)
    _, cell = bench.stage1()
    assert cell.record == root / config.keep_base / "cell.json" and cell.record.is_file()
    assert cell.finished() is not None, f"{cell.record} no longer matches stage 1's configuration"
    # The base without state, made from that base: its key holds the base's weights and its own settings.
    _, no_state = bench.stage1_dropping_state(cell.record.parent)
    assert no_state.record == root / f"{config.keep_base}-no-state" / "cell.json" and no_state.record.is_file()
    assert no_state.finished() is not None, f"{no_state.record} no longer matches its configuration"


def test_datasets_and_runs_made_otherwise_get_directories_of_their_own(tmp_path):
    """Resuming must never extend or continue another configuration's work: DART data or another image
    size is collected apart, and another stage-1 configuration trains in its own directory."""
    plain = Bench(BenchConfig(out=str(tmp_path)))
    dart = Bench(BenchConfig(out=str(tmp_path), action_noise=0.2))
    larger = Bench(BenchConfig(out=str(tmp_path), image_size=192))
    directories = {bench.dataset_dir("pretrain-mt10") for bench in (plain, dart, larger)}
    assert directories == {tmp_path / "data" / name for name in ("pretrain-mt10", "pretrain-mt10-dart0.2",
                                                                  "pretrain-mt10-192px")}
    longer = Bench(BenchConfig(out=str(tmp_path), stage1_steps=2 * BenchConfig.stage1_steps))
    runs = {bench.stage1()[0].out for bench in (plain, dart, larger, longer)}
    keys = {json.dumps(bench.stage1()[1].config, sort_keys=True) for bench in (plain, dart, larger, longer)}
    assert len(runs) == 4 and len(keys) == 4


def test_targets_chosen_by_fine_tuning_on_new_tasks(miniature, tmp_path):
    """The "finetuned" selection fine-tunes the base once on each candidate outside the pre-training set
    and keeps the candidates closest to 50%; a pre-training task as a candidate is refused."""
    config, _, _ = miniature
    logs: list[str] = []
    chosen = dataclasses.replace(config, target_selection="finetuned", target_candidates="reach-wall-v3,push-back-v3",
                                 rows="base-finetuned", report=False)
    results = Bench(chosen, log=logs.append).run()
    assert results["selection"]["method"] == "finetuned"
    assert set(results["selection"]["per_task"]) == {"reach-wall-v3", "push-back-v3"}
    assert results["targets"][0] in ("reach-wall-v3", "push-back-v3") and len(results["targets"]) == 1
    (selected,) = (Path(chosen.out) / "selection").glob("push-back-v3-*")  # one directory per base
    assert (selected / "policy" / "model.safetensors").is_file()
    # The row's fine-tuning set of a single target is the candidate's own set: collected once.
    assert sum("finetune-" in line and "running" in line for line in logs) == 2
    # While a candidate is still running, --report_only reports the finished ones and chooses no targets.
    running = chosen.results_dir / "selection-push-back-v3.json"
    running.rename(tmp_path / running.name)
    try:
        partial = Bench(dataclasses.replace(chosen, report_only=True, report=True), log=logs.append).run()
    finally:
        (tmp_path / running.name).rename(running)
    assert partial["targets"] == [] and partial["selection"]["pending"] == ["push-back-v3"]
    assert set(partial["selection"]["per_task"]) == {"reach-wall-v3"}
    report = (Path(chosen.repo) / "BENCHMARKS.md").read_text()
    assert "| target tasks | not chosen yet: 1 of 2 candidates finished |" in report
    assert "| push-back-v3 | not finished yet | |" in report
    with pytest.raises(ValueError, match="are pre-training tasks"):
        Bench(dataclasses.replace(chosen, target_candidates="reach-v3"), log=logs.append).run()
