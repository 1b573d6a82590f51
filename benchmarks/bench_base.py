"""Trials for a stronger stage-1 base: each trial pre-trains a `spatialvla` base on MT10 x 50 expert
episodes with one change, and evaluates it closed loop on the ten MT10 tasks; a trial that changes
only how the policy acts (temporal ensembling) evaluates the kept base itself.

    python benchmarks/bench_base.py --trials shift4 [--episodes 20] [--work runs/base-trials]
    python benchmarks/bench_base.py --trials steps20k --episodes 50   # a closer look at a leader
    python benchmarks/bench_base.py --report_only
    python benchmarks/bench_base.py --keep steps20k   # a finished trial's checkpoint becomes the kept base

Every trial is cached: the dataset is the one `stvla bench` collects (same directory and key; goal200
copies it and collects more episodes of three tasks into the copy, as stage 1's second phase does), the
training resumes from its checkpoint, the evaluation keeps finished episodes, and a finished trial's
result lands in benchmarks/results/base_trials/<trial>.json (<trial>-<N>ep.json evaluated on N episodes
per task instead of 20; the evaluation extends the 20 it has; commit them: the table resumes anywhere).
The reference row is the first (10,000-step) base's own target selection (`stvla bench`, the same 20
held-out seeds per task). Each trial changes the kept base's first phase: since steps20k became the kept
base, a trial run from then on starts from 20,000 steps. goal200-continue13k is the kept base since it
reached the issue's goal (82% [78, 85] over MT10 at 50 episodes per task, no task below 40%): stage 1
is its two phases, and steps20k's checkpoint stays in checkpoints/base-mt10-steps20k. Writes benchmarks/results/base_trials.json
and the "Base trials" section of BENCHMARKS.md, trials that lost included.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS_ROOT, ROOT, record, run  # noqa: E402

from stvla.benchmark.cells import Cell  # noqa: E402
from stvla.benchmark.protocol import Bench, BenchConfig  # noqa: E402
from stvla.evaluate import EvalConfig, evaluate  # noqa: E402
from stvla.policies.base import checkpoint_fingerprint  # noqa: E402
from stvla.policies.ego3d import Ego3DConfig  # noqa: E402
from stvla.policies.vla import VLAConfig  # noqa: E402
from stvla.train import LoraSettings, TrainConfig, train  # noqa: E402
from stvla.train.augment import AugmentConfig  # noqa: E402

# Each trial: what it changes in the kept base's stage-1 TrainConfig, in its EvalConfig, and why.
TRIALS: dict[str, tuple[dict, dict, str]] = {
    "shift4": ({"augment": AugmentConfig(shift_px=4)}, {}, "random shift of +-4 px (DrQ) on every image-like input"),
    "ema999": ({"ema": 0.999}, {}, "a moving average of the weights (decay 0.999) exported"),
    "steps20k": ({"steps": 20000}, {}, "twice the steps (20,000 of 32)"),
    "ensemble": ({}, {"temporal_ensemble": 0.01}, "the base of the time (10,000 steps) acting with ACT's temporal ensembling (m = 0.01): "
                                                  "a chunk every step, the overlapping actions averaged"),
    "steps20k-ensemble": ({"steps": 20000}, {"temporal_ensemble": 0.01}, "the steps20k base acting with temporal "
                                                                         "ensembling (m = 0.01)"),
    "size192": ({}, {}, "images of 192 px (the reach and push goals are 1-2 px markers at 128 px): MT10 x 50 "
                        "collected again at 192 px, 144 image tokens instead of 64"),
    "ego3d-r4": ({"model": VLAConfig(ego3d=Ego3DConfig(samples_per_side=4))}, {},
                 "Ego3D with 4 x 4 depth sub-cells per patch instead of 2 x 2: the goal marker (3 x 3 px at 128 px, "
                 "the only cue to the goal's height) fills half a sub-cell instead of a seventh"),
    "jitter0.2": ({"augment": AugmentConfig(color_jitter=0.2)}, {},
                  "colour jitter: RGB brightness and contrast scaled by factors in [0.8, 1.2] per sample"),
    "chunk8-ensemble": ({"model": VLAConfig(chunk_size=8)}, {"temporal_ensemble": 0.01},
                        "chunks of 8 actions (4 executed) and, acting, temporal ensembling over 8 chunks"),
    "dart0.2": ({}, {}, "DART demonstrations: the expert's moves executed with Gaussian noise (std 0.2 per "
                        "translation axis), its clean actions recorded, MT10 x 50 collected again"),
    "kept": ({}, {}, "the steps20k base evaluated again on the code goal200 ran on, after the fix of the "
                     "first frame's goal marker (aa0d9b0), which came after steps20k's first 20 episodes per task"),
    "goal200": ({}, {}, "four times the demonstrations (200) of the three tasks whose goal is drawn anew per "
                        "episode (reach, push, pick-place; MT10 x 50 otherwise): the steps20k base succeeds on the starts "
                        "it was trained on and fails on new ones (bench_memorization.py)"),
    "goal200-steps33k": ({"steps": 33000}, {}, "goal200's data with the steps scaled to its frames (62,296 against "
                                                "37,814: 33,000 steps), so the other seven tasks are seen as often "
                                                "as by the kept base"),
    "goal200-continue13k": ({"init": "checkpoints/base-mt10-steps20k", "lora": LoraSettings(rank=0), "steps": 13000}, {},
                            "the steps20k base trained on (every weight, a new warm-up and cosine from 3e-4) for 13,000 "
                            "more steps on goal200's data: goal200-steps33k's 33,000 steps in all, 20,000 of them "
                            "already made"),
}
# Trials trained on a dataset collected otherwise: the BenchConfig fields of its collection.
TRIAL_DATA = {"size192": {"image_size": 192}, "dart0.2": {"action_noise": 0.2}}
# Trials trained on the pre-training set extended with more episodes of some tasks: (tasks, episodes per task).
TRIAL_MORE_EPISODES = {"goal200": ("reach-v3,push-v3,pick-place-v3", 200)}
TRIAL_MORE_EPISODES["goal200-steps33k"] = TRIAL_MORE_EPISODES["goal200"]
TRIAL_MORE_EPISODES["goal200-continue13k"] = TRIAL_MORE_EPISODES["goal200"]
TRAINED_AS = {"steps20k-ensemble": "steps20k"}  # trials that only act differently from another trial's checkpoint
RESULTS = RESULTS_ROOT / "benchmarks" / "results" / "base_trials"


def trial_config(name: str, dataset: Path, work: Path) -> TrainConfig:
    base, _ = Bench(BenchConfig(repo=str(RESULTS_ROOT))).stage1()  # the kept base's own settings
    return dataclasses.replace(base, dataset=str(dataset), out=str(work / TRAINED_AS.get(name, name)), **TRIALS[name][0])


def run_trial(name: str, make_dataset: Callable[[], Path], work: Path, episodes: int, workers: int) -> dict:
    """The trial's cell: its data are collected (`make_dataset`) only when the cell has to run."""
    config = trial_config(name, Path(), work)  # the dataset's place is not part of the key
    acting = TRIALS[name][1]
    data = {"tasks": "mt10", "episodes": 50, **TRIAL_DATA.get(name, {}),
            **({"more_episodes": TRIAL_MORE_EPISODES[name]} if name in TRIAL_MORE_EPISODES else {})}
    # A trial trained on from a checkpoint is keyed on that checkpoint's weights, not on where it lies.
    init = {"init_weights": checkpoint_fingerprint(ROOT / config.init)} if config.init else {}
    key = {"train": {k: v for k, v in config.key().items() if k not in ("dataset", "out", "init")}, **init,
           "data": data, "eval": {"episodes": episodes, "max_steps": 200, **acting}}

    def work_() -> dict:
        config.dataset = str(make_dataset())
        resumed = (Path(config.out) / "checkpoint").exists()  # then this call's training time is not the run's
        started = time.perf_counter()
        # A trial of acting only evaluates the kept base (trained with exactly `config`, on the same data).
        acting_only = not TRIALS[name][0] and not own_data(name)
        bench = Bench(BenchConfig(repo=str(RESULTS_ROOT)))
        if acting_only and bench.stage1_more(config) is not None:
            raise SystemExit(f"trial {name!r} acts with a base of one phase, trained as its key says; the kept base "
                             f"has a second phase since goal200-continue13k was kept: its record stands as made")
        policy = bench.base_checkpoint() if acting_only else train(config)
        trained = time.perf_counter()
        info = evaluate(EvalConfig(policy=str(policy), tasks="mt10", episodes=episodes, workers=workers,
                                   max_steps=200, videos=1, out=str(work / name / "eval"), **acting))
        return {"checkpoint": checkpoint_fingerprint(policy),
                "train_minutes": None if resumed or acting_only else (trained - started) / 60,
                "eval_minutes": (time.perf_counter() - trained) / 60,
                "per_task": {t: {k: r[k] for k in ("episodes", "success_rate", "ci95")} for t, r in info["per_task"].items()},
                "overall": {k: info["overall"][k] for k in ("episodes", "success_rate", "ci95")}}

    return Cell(f"base-trial/{name}", result_path(name, episodes), key).run(work_)


def own_data(name: str) -> bool:
    """Whether the trial trains on other data than the protocol's pre-training set."""
    return name in TRIAL_DATA or name in TRIAL_MORE_EPISODES


def trial_dataset(name: str, workers: int) -> Path:
    """The data a trial trains on: the protocol's pre-training set (in the directory its collection settings
    give it), extended for the trials of TRIAL_MORE_EPISODES."""
    if name in TRIAL_MORE_EPISODES:
        return extended_dataset(name, workers)
    bench = Bench(BenchConfig(repo=str(RESULTS_ROOT), workers=workers, **TRIAL_DATA.get(name, {})))
    return bench.collect_cell(bench.pretrain_name, "mt10", 50, 0)


def extended_dataset(name: str, workers: int) -> Path:
    """The protocol's pre-training set extended with more episodes of some tasks (TRIAL_MORE_EPISODES),
    as stage 1's second phase collects it (Bench.extended_pretrain_set)."""
    tasks, episodes = TRIAL_MORE_EPISODES[name]
    config = BenchConfig(repo=str(RESULTS_ROOT), workers=workers, pretrain_more_tasks=tasks, pretrain_more_episodes=episodes)
    return Bench(config).extended_pretrain_set()


def result_path(name: str, episodes: int) -> Path:
    return RESULTS / (f"{name}.json" if episodes == 20 else f"{name}-{episodes}ep.json")


def keep_trial(name: str, work: Path) -> Path:
    """Make a finished trial's checkpoint the kept base (checkpoints/base-mt10), without training it again.

    Only a trial that IS the protocol's stage 1 qualifies: BenchConfig's defaults must already hold its
    settings (its training config and data equal to what `stvla bench` would pre-train; a trial trained
    on from a checkpoint (`init`) is stage 1's second phase, and that checkpoint must be the protocol's
    first), so the kept cell's key, which `stvla bench` and the main job check, tells the truth about
    the weights."""
    bench = Bench(BenchConfig(repo=str(RESULTS_ROOT)))
    first, kept = bench.stage1()
    more = bench.stage1_more(first)
    trial = trial_config(name, Path(first.dataset), work)
    protocol = more if trial.init else first  # the protocol's run that the trial made
    differs = sorted(k for k, v in trial.key().items() if k not in ("dataset", "out", "init") and protocol.key().get(k) != v)
    c = bench.config
    data = TRIAL_MORE_EPISODES.get(name) != ((c.pretrain_more_tasks, c.pretrain_more_episodes) if more else None)
    first_minutes = 0.0
    if trial.init:
        if Path(trial.init) == Path(c.keep_base):
            raise SystemExit(f"trial {name!r} starts from {trial.init}, which keeping it overwrites: copy that "
                             f"checkpoint elsewhere and start the trial from the copy")
        # As JSON spells it (tuples become lists), to compare with the record.
        one_phase = json.loads(json.dumps(Bench(dataclasses.replace(c, stage1_more_steps=0)).stage1()[1].config))
        started = json.loads((Path(ROOT) / trial.init / "cell.json").read_text())
        differs += ["init (not the protocol's first phase)"] if started["config"] != one_phase else []
        first_minutes = started["result"]["minutes"]
    elif more:
        differs.append("phases (the protocol has a second)")
    if differs or TRIALS[name][1] or data or name in TRIAL_DATA:
        raise SystemExit(f"trial {name!r} is not the protocol's stage 1 (it differs in {differs or 'data or acting'}): "
                         f"set BenchConfig's defaults to its settings first")
    record = json.loads((RESULTS / f"{name}.json").read_text())["result"]
    policy = work / TRAINED_AS.get(name, name) / "policy"
    if checkpoint_fingerprint(policy) != record["checkpoint"]:
        raise SystemExit(f"{policy} is not the checkpoint trial {name!r} evaluated (its weights changed since)")
    kept.record.parent.mkdir(parents=True, exist_ok=True)
    for file in policy.iterdir():
        shutil.copyfile(file, kept.record.parent / file.name)
    parts = (first_minutes, record["train_minutes"])  # None where a run was resumed: its time is not known
    kept.run(lambda: {"policy": bench.config.keep_base, "minutes": None if None in parts else sum(parts),
                      "kept_from": f"base trial {name} ({policy})"})
    return kept.record.parent


def percent(row: dict) -> str:
    low, high = row["ci95"]
    return f"{100 * row['success_rate']:.0f}% [{100 * low:.0f}, {100 * high:.0f}]"


def report() -> None:
    selection = json.loads((ROOT / "benchmarks/results/archive/bench-base10k/selection.json").read_text())["result"]
    rows_by_name = {"base10k (reference)": ("the first base (10,000 steps), its own target selection", selection)}
    for name, (_, _, what) in TRIALS.items():
        for episodes in (20, 50):
            path = result_path(name, episodes)
            if path.is_file():
                label = name if episodes == 20 else f"{name} ({episodes} ep)"
                rows_by_name[label] = (what, json.loads(path.read_text())["result"])
    tasks = list(selection["per_task"])
    rows = [(f"{name}: {what} - mean success over MT10 (95% CI)", percent(result["overall"]))
            for name, (what, result) in rows_by_name.items()]
    names = list(rows_by_name)
    per_task = ["Success per task (20 held-out episodes each; 50 where a column says so):", "",
                "| task | " + " | ".join(names) + " |", "| --- |" + " --- |" * len(names)]
    per_task += [f"| {task} | " + " | ".join(f"{100 * rows_by_name[n][1]['per_task'][task]['success_rate']:.0f}%"
                                            for n in names) + " |" for task in tasks]
    figures = {name: result for name, (_, result) in rows_by_name.items()}
    record("base_trials", figures, rows, "Base trials (stage 1 on MT10 x 50, closed loop on MT10, 20 held-out episodes per task unless said)",
           markdown=["\n".join(per_task)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", default="", help=f"comma-separated trials to run: {', '.join(TRIALS)}")
    parser.add_argument("--episodes", type=int, default=20, help="evaluation episodes per MT10 task")
    parser.add_argument("--workers", type=int, default=2, help="processes for collection and evaluation")
    parser.add_argument("--work", default="runs/base-trials", help="directory for checkpoints and evaluations")
    parser.add_argument("--report_only", action="store_true", help="write the table from the finished trials only")
    parser.add_argument("--keep", default="", help="make this finished trial's checkpoint the kept base")
    args = parser.parse_args()
    if args.keep:
        print(f"kept base: {keep_trial(args.keep, Path(args.work))}")
        return
    if not args.report_only:
        names = [t.strip() for t in args.trials.split(",") if t.strip()]
        unknown = [t for t in names if t not in TRIALS]
        if unknown:
            parser.error(f"unknown trial(s) {unknown}; valid: {', '.join(TRIALS)}")
        for name in names:
            run_trial(name, functools.partial(trial_dataset, name, args.workers), Path(args.work), args.episodes,
                      args.workers)
            report()
    report()


if __name__ == "__main__":
    run(main)
