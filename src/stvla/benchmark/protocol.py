"""`stvla bench`: the paper-reproduction protocol, end to end, as cached cells.

    collect pre-training set (MT10 x 50)  ->  stage 1: spatialvla base  ->  target selection: the
    base fine-tuned once on 13 demonstrations of each candidate task outside the pre-training set
    (or, `--target_selection pretrained`, its zero-shot success on the pre-training tasks); the 4
    closest to 50% are the targets  ->  collect fine-tuning set (4 x 13, other seeds)  ->  every row:
    stage-2 LoRA fine-tune (or the base, zero-shot)  ->  evaluate on held-out seeds  ->  tables and
    claims (stvla.benchmark.report)

Large things (datasets, checkpoints, videos) live under `out`; the small result of every selection
and evaluation cell lives under `results` (committed to the repository), so the table resumes on
another machine without re-running what has finished there. Cells are keyed by their configuration:
the checkpoint a cell starts from enters by the hash of its weights and config, not its path.

Several processes can work on one table (`--share`): on one machine (the small models' training does not
keep two cores busy, so two processes finish sooner than one) or on machines sharing `out` and `repo`. Each skips the cells another is running and comes back to them once it has run out of others.
"""

from __future__ import annotations

import copy
import dataclasses
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from stvla.benchmark.cells import Cell, config_hash
from stvla.benchmark.record import RESULTS_SUBDIR
from stvla.benchmark.report import write_report
from stvla.config import KEY_NEUTRAL, config_from_dict, config_key
from stvla.data import CollectConfig, collect
from stvla.evaluate import EvalConfig, evaluate
from stvla.evaluate.rollout import EPISODE_FIGURES
from stvla.locks import FolderInUse
from stvla.policies.base import WEIGHTS_FILE, checkpoint_fingerprint, read_checkpoint_config
from stvla.policies.registry import make_policy, policy_class
from stvla.policies.vla import VLAConfig
from stvla.traces import TraceConfig, TrackerConfig
from stvla.train import LoraSettings, TrainConfig, train
from stvla.train.augment import AugmentConfig
from stvla.train.trainer import flat_trace_key

FINETUNE_FIRST_ATTEMPT = 1000  # fine-tuning episodes start here: other starts than the pre-training set's
TARGET_SELECTIONS = ("pretrained", "finetuned")
# Meta-World tasks outside MT10 that reuse its skills on new objects or layouts (pressing, pulling,
# opening, pushing): the candidate targets of the "finetuned" selection. The last four were added once
# the first seven, fine-tuned, all landed at 80-100%: harder pushes and turns, so that four candidates
# can land near 50%.
NEW_TASK_CANDIDATES = ("button-press-v3", "button-press-wall-v3", "coffee-button-v3", "door-close-v3",
                       "faucet-open-v3", "faucet-close-v3", "handle-press-v3", "lever-pull-v3", "plate-slide-v3",
                       "reach-wall-v3", "push-wall-v3", "push-back-v3",
                       "sweep-into-v3", "coffee-push-v3", "door-lock-v3", "dial-turn-v3")


@dataclass(frozen=True)
class Row:
    """One line of the tables: a policy type, its trace setting, and whether it is fine-tuned."""

    key: str  # file-name-safe identifier
    label: str  # what the table shows
    policy: str  # registered policy type
    finetuned: bool  # stage-2 LoRA on the fine-tuning set; False = the base as it is (zero-shot)
    traces: TraceConfig = field(default_factory=TraceConfig)  # trace settings (traced policies)
    main: bool = False  # a main-table row: fine-tuned with every seed of `seeds`
    init: str = "base"  # fine-tuned from: "base" (stage 1), "llarva" / "llarva-no-traces" (LLARVA's instruction
    #                     pre-training with / without trace prediction), or "" (from scratch, every weight trained)
    trace_points: int = -1  # llarva: future trace points (-1: the policy's default; 0: no trace prediction)
    traces_removed_from: str = ""  # evaluate that row's checkpoints (same weights) with the traces removed at test time
    use_state: bool = True  # False: the papers' inputs (image, depth, instruction), from a base pre-trained without state

    def identity(self) -> dict[str, Any]:
        """The row's settings as cache keys spell them (the trace settings flat, as before they were nested;
        a field added later only where it is set, so the cells recorded before it keep their keys)."""
        identity: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in ("traces_removed_from", "use_state") and value == f.default:
                continue
            identity.update(flat_trace_key(self.traces) if f.name == "traces" else {f.name: value})
        return identity


def traced(variant: str = "C", buffer: int = 30) -> TraceConfig:
    """The default trace settings with another depth-drawing variant or buffer length b."""
    return TraceConfig(variant=variant, tracker=TrackerConfig(buffer_length=buffer))


ROWS: tuple[Row, ...] = (
    Row("base-zero-shot", "base zero-shot", "spatialvla", finetuned=False, main=True),
    Row("base-finetuned", "base fine-tuned (no traces)", "spatialvla", finetuned=True, main=True),
    Row("tracevla", "TraceVLA-style fine-tuned", "tracevla", finetuned=True, main=True),
    Row("st-C-b30", "ST-VLA fine-tuned (C, b=30)", "st", finetuned=True, traces=traced("C", 30), main=True),
    # Does the policy read its traces? The ST-VLA row's own checkpoints, the traces removed at test time (next, as it
    # trains nothing).
    Row("st-C-b30-traces-removed", "ST-VLA fine-tuned, traces removed at test time", "st", finetuned=True,
        traces=traced("C", 30), main=True, traces_removed_from="st-C-b30"),
    Row("zero-shot-traces", "zero-shot traces (base + C, b=30)", "st", finetuned=False, traces=traced("C", 30),
        main=True),
    Row("st-A-b30", "ST-VLA variant A (own depth)", "st", finetuned=True, traces=traced("A")),
    Row("st-B-b30", "ST-VLA variant B (constant)", "st", finetuned=True, traces=traced("B")),
    Row("st-C-b7", "ST-VLA b=7", "st", finetuned=True, traces=traced(buffer=7)),
    Row("st-C-b15", "ST-VLA b=15", "st", finetuned=True, traces=traced(buffer=15)),
    Row("llarva", "LLARVA (instruction pre-training, trace prediction)", "llarva", finetuned=True, init="llarva"),
    Row("llarva-no-traces", "LLARVA without trace prediction", "llarva", finetuned=True, init="llarva-no-traces",
        trace_points=0),
    Row("llarva-no-pretrain", "LLARVA without instruction pre-training", "llarva", finetuned=True, init=""),
    # The papers' inputs: no proprio state, so where the gripper is must be read from the image. Last, as
    # they need a base of their own (stage 1 again, without state).
    Row("base-finetuned-no-state", "base fine-tuned, no state", "spatialvla", finetuned=True, main=True,
        use_state=False),
    Row("tracevla-no-state", "TraceVLA-style fine-tuned, no state", "tracevla", finetuned=True, main=True,
        use_state=False),
    Row("st-C-b30-no-state", "ST-VLA fine-tuned (C, b=30), no state", "st", finetuned=True, traces=traced("C", 30),
        main=True, use_state=False),
)
ROW_BY_KEY = {row.key: row for row in ROWS}
# LLARVA's instruction pre-training checkpoints, by the trace points they predict.
LLARVA_PRETRAINING = {"llarva": -1, "llarva-no-traces": 0}


def int_list(text: str, flag: str) -> list[int]:
    """Comma-separated integers, as `--seeds 0,1,2` takes them; anything else names the flag and the value."""
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"{flag} {text!r}: expected comma-separated integers, e.g. 0,1,2") from None


@dataclass
class BenchConfig:
    out: str = "runs/bench"  # working directory: datasets, checkpoints, videos (large; not committed)
    repo: str = "."  # holds benchmarks/results/ (small per-cell results: commit them, the table resumes anywhere) and BENCHMARKS.md
    report: bool = True  # write the tables into BENCHMARKS.md and benchmarks/results/<name>.json (after every evaluation cell)
    report_only: bool = False  # run nothing: write the tables from the cells finished so far (e.g. beside a running bench)
    quick: bool = False  # the reduced protocol (fewer tasks, episodes and steps; under 20 minutes)
    pretrain_tasks: str = "mt10"  # pre-training tasks, also the candidates for the targets
    pretrain_episodes: int = 50  # expert episodes per pre-training task
    base: str = ""  # a stage-1 checkpoint to start from instead of pre-training one here (the rows without state pre-train their own)
    keep_base: str = "checkpoints/base-mt10"  # the pre-trained base is kept here, inside `repo` (committed: the table and the main job resume from it on any machine); "" keeps it under `out` only
    stage1_steps: int = 20000  # stage-1 optimiser steps (batch 32; about 17 epochs of MT10 x 50; 20,000 beat 10,000 in the base trials)
    pretrain_more_tasks: str = "reach-v3,push-v3,pick-place-v3"  # stage 1's second phase: these pre-training tasks (the three whose goal is drawn anew per episode) collected up to pretrain_more_episodes each ("" = no second phase)
    pretrain_more_episodes: int = 200  # expert episodes per task named by pretrain_more_tasks in the extended pre-training set
    stage1_more_steps: int = 13000  # steps of the second phase (0 = none): every weight trained on from the first phase's, on the extended set (new warm-up and cosine; base trial goal200-continue13k)
    stage1_no_state_steps: int = 6000  # the base without state (the rows with the papers' inputs): the base's weights, its state token dropped, every weight trained this many steps more on the last pre-training set (0 = pre-trained from scratch, both phases, as the base)
    selection_episodes: int = 20  # evaluation episodes per candidate task when choosing the targets
    num_targets: int = 4  # target tasks: the candidates whose base success is closest to 50%
    targets: str = ""  # fixed comma-separated target tasks instead of the selection
    target_selection: str = field(default="finetuned", metadata=KEY_NEUTRAL)  # "finetuned": the base fine-tuned once on each of `target_candidates` (outside the pre-training set, as the papers fine-tune on a new setting); "pretrained": the base zero-shot on the pre-training tasks
    target_candidates: str = field(default=",".join(NEW_TASK_CANDIDATES), metadata=KEY_NEUTRAL)  # "finetuned" selection: candidate tasks, none of them a pre-training task
    llarva_pretrain_tasks: str = "all"  # LLARVA's instruction pre-training: tasks ("all": every task whose expert succeeds)
    llarva_pretrain_episodes: int = 10  # expert episodes per LLARVA pre-training task
    llarva_pretrain_steps: int = 3000  # LLARVA pre-training optimiser steps (batch 32)
    finetune_episodes: int = 13  # fine-tuning episodes per target task (4 x 13 = 52 as the paper)
    stage2_steps: int = 2000  # stage-2 optimiser steps per fine-tuned row (batch 32)
    eval_episodes: int = 50  # evaluation episodes per target task, row and seed
    max_steps: int = 200  # steps before an evaluation episode counts as failed
    seeds: str = "0,1,2"  # training seeds of the main-table rows; the other rows use the first
    rows: str = ""  # comma-separated row keys to run (default: all)
    workers: int = 2  # simulator processes for collection and evaluation
    videos: int = 1  # evaluation videos saved per task and cell
    image_size: int = 128  # camera image side for every dataset and evaluation
    action_noise: float = field(default=0.0, metadata=KEY_NEUTRAL)  # DART noise of every collected demonstration (see CollectConfig.action_noise)
    model: VLAConfig = field(default_factory=VLAConfig)  # the stage-1 model (image_size comes from image_size)
    augment: AugmentConfig = field(default_factory=AugmentConfig, metadata=KEY_NEUTRAL)  # training-time augmentation of every run
    ema: float = field(default=0.0, metadata=KEY_NEUTRAL)  # every run exports a moving average of its weights with this decay (0 = off)
    share: bool = field(default=False, metadata=KEY_NEUTRAL)  # other processes work on this table too: skip the cells they are running, come back to them after the others
    share_poll_seconds: float = field(default=60.0, metadata=KEY_NEUTRAL)  # with share: how often to look again at the cells another process is running

    def seed_list(self) -> list[int]:
        return int_list(self.seeds, "--seeds")

    def row_list(self) -> list[Row]:
        if not self.rows:
            return list(ROWS)
        wanted = [r.strip() for r in self.rows.split(",") if r.strip()]
        unknown = [key for key in wanted if key not in ROW_BY_KEY]
        if unknown:
            raise ValueError(f"unknown bench row(s) {unknown}; valid rows: {', '.join(ROW_BY_KEY)}")
        return [ROW_BY_KEY[key] for key in wanted]

    @property
    def name(self) -> str:
        """The results file and report section: `bench` (`bench_quick` for --quick) with the protocol's own
        target selection ("finetuned"; the quick preset's small base selects "pretrained"), and
        `bench_<selection>_targets` with the other, a table of its own."""
        own = "pretrained" if self.quick else "finetuned"
        name = "bench" if self.target_selection == own else f"bench_{self.target_selection}_targets"
        return f"{name}_quick" if self.quick else name

    @property
    def results_dir(self) -> Path:
        """Where each selection / evaluation cell keeps its small result file."""
        return Path(self.repo) / RESULTS_SUBDIR / self.name


def quick_preset() -> BenchConfig:
    """The reduced protocol of `stvla bench --quick`: every step of the full one, on a small scale."""
    return BenchConfig(out="runs/bench-quick", quick=True, target_selection="pretrained",
                       pretrain_tasks="reach-v3,drawer-open-v3,button-press-topdown-v3,window-open-v3",
                       pretrain_episodes=10, stage1_steps=500, selection_episodes=6, num_targets=2,
                       finetune_episodes=6, stage2_steps=150, eval_episodes=8, max_steps=120, seeds="0",
                       llarva_pretrain_tasks="reach-v3,drawer-open-v3,button-press-topdown-v3,window-open-v3",
                       llarva_pretrain_episodes=6, llarva_pretrain_steps=200, keep_base="",
                       pretrain_more_tasks="", stage1_more_steps=0, stage1_no_state_steps=200)


class Bench:
    """The protocol's cells for one BenchConfig; `run()` executes what is missing and returns every result."""

    def __init__(self, config: BenchConfig, log=print):
        config.seed_list(), config.row_list()  # a bad --seeds or --rows ends the bench here, not after pre-training
        self.config = config
        self.out = Path(config.out)
        self.results = config.results_dir
        self.log = log
        self.stage1_minutes: float | None = None  # wall time of the base's pre-training, where this bench made it
        self.stage1_kept_from: str | None = None  # what made the kept base, when not this bench (its cell says)
        self.no_state_base_minutes: float | None = None  # wall time of making the base without state, once made

    def train_config(self, **fields: Any) -> TrainConfig:
        """A training run of the protocol: `fields`, and what every run of it shares (model, augmentation,
        weight average, and every episode trains: the protocol's budget, 52 in stage 2, holds none out)."""
        c = self.config
        return TrainConfig(**{"model": c.model, "augment": copy.deepcopy(c.augment), "ema": c.ema, "val_episodes": 0,
                              **fields})

    def each(self, jobs: list[tuple[Any, Callable[[], Any]]]) -> Iterator[tuple[Any, Any]]:
        """(label, job()) for each job, in order. With `share`, a job that finds its cell, or a cell it
        needs, running in another process (FolderInUse) is put off; the put-off ones are tried again every
        `share_poll_seconds` until each has finished here or there (a killed holder frees its lock)."""
        pending = jobs
        while pending:
            busy = []
            for label, job in pending:
                try:
                    yield label, job()
                except FolderInUse as error:
                    if not self.config.share:
                        raise
                    self.log(f"[bench] {label}: another process is running what it needs ({error}); back to it later")
                    busy.append((label, job))
            if busy:
                self.log(f"[bench] waiting for {len(busy)} job(s) another process is running")
                time.sleep(self.config.share_poll_seconds)
            pending = busy

    def once(self, label: str, job: Callable[[], Any]) -> Any:
        """job(), waiting with `share` while another process runs what it needs."""
        return next(self.each([(label, job)]))[1]

    # --- data and stage 1 ----------------------------------------------------------------------------
    def dataset_dir(self, name: str) -> Path:
        """Where the dataset `name` is collected: collected at another image size or with DART noise, it
        has a directory of its own, so that resuming one never extends another."""
        c = self.config
        size = f"-{c.image_size}px" if c.image_size != BenchConfig.image_size else ""
        noise = f"-dart{c.action_noise:g}" if c.action_noise else ""
        return self.out / "data" / f"{name}{size}{noise}"

    def collect_cell(self, name: str, tasks: str, episodes: int, first_attempt: int) -> Path:
        c = self.config
        out = self.dataset_dir(name)
        collect_config = CollectConfig(task=tasks, episodes=episodes, out=str(out), resume=True,
                                       workers=c.workers, image_size=c.image_size, first_attempt=first_attempt,
                                       action_noise=c.action_noise)
        cell = Cell(f"data/{out.name}", out.with_name(f"{out.name}.cell.json"), config_key(collect_config))
        cell.run(lambda: collect(collect_config).as_dict(), self.log)
        return Path(collect_config.out)

    @property
    def pretrain_name(self) -> str:
        """The pre-training set's name: its tasks (a list of several, by their hash)."""
        tasks = self.config.pretrain_tasks
        return f"pretrain-{tasks if ',' not in tasks else config_hash({'tasks': tasks})[:8]}"

    def stage1(self, use_state: bool = True) -> tuple[TrainConfig, Cell]:
        """Stage 1's training config, and the cell of the base kept in the repository (`keep_base`; the
        base without state, for the rows with the papers' inputs, beside it with the suffix -no-state).

        The cell is keyed by what makes the weights, not by where they were written, so the key holds on
        any machine; it also holds every field of TrainConfig and VLAConfig, so a new field there
        invalidates the kept base (a test guards the committed one)."""
        c = self.config
        dataset = self.dataset_dir(self.pretrain_name)
        model = c.model if use_state else dataclasses.replace(c.model, use_state=False)
        train_config = self.train_config(policy="spatialvla", dataset=str(dataset), out="", steps=c.stage1_steps, seed=0,
                                         model=model)
        key = {"train": {k: v for k, v in train_config.key().items() if k not in ("dataset", "out")},
               "data": self.pretrain_data_key()}
        # One directory per configuration: another base's settings never try to resume this one's run.
        train_config.out = str(self.out / f"stage1-s0-{config_hash(key)[:8]}")
        more = self.stage1_more(train_config)
        if more is not None:  # the second phase enters the key; a base of one phase keeps the key it had
            key["more"] = {"tasks": c.pretrain_more_tasks, "episodes": c.pretrain_more_episodes,
                           "train": {k: v for k, v in more.key().items() if k not in ("dataset", "out", "init")}}
        name = "stage1" if use_state else "stage1-no-state"
        return train_config, Cell(f"{name} (kept)", Path(c.repo) / self.kept_base(use_state) / "cell.json", key)

    def pretrain_data_key(self) -> dict[str, Any]:
        """What the pre-training set is made of, as the stage-1 keys spell it."""
        c = self.config
        return {"tasks": c.pretrain_tasks, "episodes": c.pretrain_episodes, "image_size": c.image_size,
                **({"action_noise": c.action_noise} if c.action_noise else {})}

    def stage1_dropping_state(self, base: Path) -> tuple[TrainConfig, Cell]:
        """The base without state as `stage1_no_state_steps` makes it: `base`'s weights, its state token
        dropped, every weight trained on the last pre-training set (the extended one where stage 1 has a
        second phase), so that the policy learns to read the gripper from the image; and its kept cell,
        keyed by `base`'s weights. Far cheaper than both phases of stage 1 again from scratch."""
        c = self.config
        dataset = self.dataset_dir(self.more_name if self.stage1_extends else self.pretrain_name)
        train_config = self.train_config(policy="spatialvla", dataset=str(dataset), init=str(base), out="",
                                          lora=LoraSettings(rank=0), steps=c.stage1_no_state_steps, seed=0,
                                          model=dataclasses.replace(c.model, use_state=False))
        key = {"from": checkpoint_fingerprint(base),
               "train": {k: v for k, v in train_config.key().items() if k not in ("dataset", "out", "init")},
               "data": {**self.pretrain_data_key(), **({"more": self.more_data()} if self.stage1_extends else {})}}
        train_config.out = str(self.out / f"stage1-no-state-{config_hash(key)[:8]}")
        return train_config, Cell("stage1-no-state (kept)", Path(c.repo) / self.kept_base(False) / "cell.json", key)

    @property
    def stage1_extends(self) -> bool:
        """Stage 1 has a second phase, on the pre-training set extended with more episodes of some tasks."""
        return bool(self.config.stage1_more_steps and self.config.pretrain_more_tasks)

    def stage1_more(self, first: TrainConfig) -> TrainConfig | None:
        """Stage 1's second phase after the run `first` (None without one): every weight trained on from
        `first`'s, on the pre-training set extended with more episodes of some tasks."""
        c = self.config
        if not self.stage1_extends:
            return None
        return dataclasses.replace(first, init=str(Path(first.out) / "policy"), lora=LoraSettings(rank=0),
                                   steps=c.stage1_more_steps, dataset=str(self.dataset_dir(self.more_name)),
                                   out=f"{first.out}-more-{config_hash(self.more_data())[:8]}")

    def more_data(self) -> dict[str, Any]:
        return {"tasks": self.config.pretrain_more_tasks, "episodes": self.config.pretrain_more_episodes}

    @property
    def more_name(self) -> str:
        """The extended pre-training set's name: the pre-training set's, and what it adds (by hash)."""
        return f"{self.pretrain_name}-more-{config_hash(self.more_data())[:8]}"

    def pretrain_set(self) -> Path:
        """The pre-training set, collected (or resumed)."""
        c = self.config
        return self.collect_cell(self.pretrain_name, c.pretrain_tasks, c.pretrain_episodes, 0)

    def extended_pretrain_set(self) -> Path:
        """The pre-training set copied, then collected up to `pretrain_more_episodes` of each of
        `pretrain_more_tasks`: the added episodes continue each task's attempts, so they are new starts,
        never held-out ones."""
        c = self.config
        dataset = self.pretrain_set()
        extended = self.dataset_dir(self.more_name)
        if not extended.exists():  # copied whole, then renamed: a killed copy leaves no half dataset behind
            partial = extended.with_name(extended.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            shutil.copytree(dataset, partial, ignore=shutil.ignore_patterns("cache", ".stvla.lock"))
            partial.rename(extended)
        return self.collect_cell(self.more_name, c.pretrain_more_tasks, c.pretrain_more_episodes, 0)

    def kept_base(self, use_state: bool = True) -> str:
        """Where a base is kept, relative to the repository: `keep_base`, the base without state beside it."""
        return self.config.keep_base + ("" if use_state else "-no-state")

    def base_checkpoint(self, use_state: bool = True) -> Path | None:
        """The stage-1 base: given by `base`, kept in the repository by an earlier run (`keep_base`), or
        pre-trained here on the pre-training set (and then kept). The base without state is always the
        protocol's own (made from the base by `stage1_dropping_state`, or, with `stage1_no_state_steps`
        0, pre-trained without state from scratch); with report_only it is None until it has been made."""
        c = self.config
        if c.base and use_state:
            return Path(c.base)
        # Each phase: the dataset it trains on (collected when it runs), and its training run.
        phases: list[tuple[Callable[[], Path], TrainConfig]]
        if use_state or not c.stage1_no_state_steps:
            first, kept = self.stage1(use_state)
            more = self.stage1_more(first)
            phases = [(self.pretrain_set, first)] + ([(self.extended_pretrain_set, more)] if more else [])
        else:
            dropping, kept = self.stage1_dropping_state(self.base_checkpoint())
            phases = [(self.extended_pretrain_set if self.stage1_extends else self.pretrain_set, dropping)]
        kept_result = kept.finished() if c.keep_base else None
        if kept_result is not None:
            self.log(f"[bench] {kept.name.removesuffix(' (kept)')}: kept in {kept.record.parent}")
            if use_state:
                self.stage1_minutes = kept_result["minutes"]
                self.stage1_kept_from = kept_result.get("kept_from")
            else:
                self.no_state_base_minutes = kept_result["minutes"]
            return kept.record.parent
        if c.keep_base and kept.record.is_file():  # never replace a kept (committed) base made otherwise
            raise ValueError(f"{kept.record.parent} keeps a base made with other settings ({kept.record.name}); "
                             f"give --keep_base DIR to keep this run's base elsewhere, or --keep_base \"\" to keep "
                             f"it under --out only")

        def pretrain() -> dict[str, Any]:
            runs = []
            for collect_dataset, train_config in phases:
                collect_dataset()
                runs.append(self._train(train_config))
            return {"policy": runs[-1]["policy"], "minutes": sum(run["minutes"] for run in runs)}

        last = phases[-1][1]
        trained = Cell(kept.name.removesuffix(" (kept)"), Path(last.out) / "cell.json", kept.config)
        if c.report_only and trained.finished() is None:
            if not use_state:
                return None
            raise RuntimeError(f"report_only: no finished stage-1 base ({kept.record}, {trained.record}); nothing to report yet")
        result = trained.run(pretrain, self.log)
        if use_state:
            self.stage1_minutes = result["minutes"]
        else:
            self.no_state_base_minutes = result["minutes"]
        policy = Path(result["policy"])
        if not c.keep_base:
            return policy
        # Keep a copy (two small files) where the repository commits it, with the record of what made it.
        kept.record.parent.mkdir(parents=True, exist_ok=True)
        for file in policy.iterdir():
            shutil.copyfile(file, kept.record.parent / file.name)
        kept.run(lambda: {**result, "policy": self.kept_base(use_state)}, self.log)
        return kept.record.parent

    @staticmethod
    def _train(train_config: TrainConfig) -> dict[str, Any]:
        started = time.perf_counter()
        policy_dir = train(train_config)
        return {"policy": str(policy_dir), "minutes": (time.perf_counter() - started) / 60}

    # --- target selection ------------------------------------------------------------------------------
    def targets(self, base: Path) -> tuple[list[str], dict[str, Any] | None]:
        """The target tasks, fixed by `targets` or chosen as the candidates whose base success (no
        traces) is closest to 50%; and the selection's evaluation result (None when fixed)."""
        c = self.config
        if c.targets:
            return [t.strip() for t in c.targets.split(",") if t.strip()], None
        if c.target_selection not in TARGET_SELECTIONS:
            raise ValueError(f"unknown target_selection {c.target_selection!r}; valid: {', '.join(TARGET_SELECTIONS)}")
        if c.target_selection == "finetuned":
            candidates = CollectConfig(task=c.target_candidates).task_list()
            result = self.finetuned_selection(base, candidates)
        else:
            candidates = CollectConfig(task=c.pretrain_tasks).task_list()
            result = self.evaluation_cell("selection", base, candidates, c.selection_episodes)
        if result is None:
            raise RuntimeError(f"report_only: the target selection has not finished ({self.results / 'selection.json'}); "
                               "nothing to report yet")
        if result.get("pending"):  # report_only: no targets until every candidate has finished
            return [], result
        rates = {task: row["success_rate"] for task, row in result["per_task"].items()}
        # Closest to 50% first; ties by task order, so the choice is reproducible.
        ranked = sorted(candidates, key=lambda task: (abs(rates[task] - 0.5), candidates.index(task)))
        return sorted(ranked[: c.num_targets], key=candidates.index), result

    def finetuned_selection(self, base: Path, candidates: list[str]) -> dict[str, Any] | None:
        """The base fine-tuned (stage 2, no traces) once on each candidate's own demonstrations, and its
        success there: the papers fine-tune on a new setting, so the targets are tasks the base has not
        been pre-trained on. One cached cell per candidate; with report_only, the ones not finished yet are
        listed under "pending"."""
        c = self.config
        overlap = sorted(set(candidates) & set(CollectConfig(task=c.pretrain_tasks).task_list()))
        if overlap:
            raise ValueError(f"target_candidates {overlap} are pre-training tasks: the finetuned selection wants new ones")

        def candidate(task: str) -> Callable[[], dict[str, Any] | None]:
            train_config = self.train_config(policy="spatialvla", init=str(base), steps=c.stage2_steps, seed=0,
                                             dataset=str(self.dataset_dir(f"finetune-{task}")),
                                             # one directory per base: another base's run never resumes this one
                                             out=str(self.out / "selection" / f"{task}-{checkpoint_fingerprint(base)[:8]}"))

            def checkpoint() -> Path:
                self.collect_cell(f"finetune-{task}", task, c.finetune_episodes, FINETUNE_FIRST_ATTEMPT)
                return Path(self._train(train_config)["policy"])

            identity = {"train": {k: v for k, v in train_config.key().items() if k not in ("dataset", "out", "init")},
                        "base": checkpoint_fingerprint(base), "finetune": {"task": task, "episodes": c.finetune_episodes}}
            return lambda: self.evaluation_cell(f"selection-{task}", None, [task], c.selection_episodes,
                                                make_checkpoint=checkpoint, identity=identity)

        per_task, minutes = {}, 0.0
        for task, result in self.each([(task, candidate(task)) for task in candidates]):
            if result is not None:  # None: report_only, and this candidate has not finished
                per_task[task] = result["per_task"][task]
                minutes += result.get("minutes") or 0.0
        # In candidate order, whoever finished first.
        selection = {"per_task": {task: per_task[task] for task in candidates if task in per_task},
                     "minutes": minutes, "method": "finetuned"}
        pending = [task for task in candidates if task not in per_task]
        return {**selection, "pending": pending} if pending else selection

    # --- rows ------------------------------------------------------------------------------------------
    def finetune_data(self, targets: list[str]) -> Path:
        """The fine-tuning set (other starts than the pre-training set's), collected when a row first needs it."""
        return self.collect_cell("finetune-" + "-".join(targets), ",".join(targets), self.config.finetune_episodes,
                                 FINETUNE_FIRST_ATTEMPT)

    def row_checkpoint(self, row: Row, seed: int, base: Path, targets: list[str]) -> Path:
        """The checkpoint a row evaluates: a stage-2 fine-tune from `base`, the base itself (with traces for
        zero-shot traces), or the checkpoint of the row whose traces it removes at test time."""
        c = self.config
        if row.traces_removed_from:
            return self.row_checkpoint(ROW_BY_KEY[row.traces_removed_from], seed, base, targets)
        if not row.finetuned:
            if row.policy == "spatialvla":
                return base
            return self._zero_shot_traced(row, base)
        init = base if row.init == "base" else (self.llarva_checkpoint(row.init) if row.init else None)
        init_id = checkpoint_fingerprint(init) if init else None
        train_config = self.train_config(
            policy=row.policy, dataset=str(self.finetune_data(targets)), init=str(init or ""),
            traces=copy.deepcopy(row.traces), trace_points=row.trace_points, steps=c.stage2_steps, seed=seed,
            # One directory per target set and starting point: another selection or base never resumes this one.
            out=str(self.out / "stage2" / f"{row.key}-s{seed}-{config_hash({'targets': targets, 'init': init_id})[:8]}"))
        key = {**train_config.key(), "init": init_id}
        cell = Cell(f"stage2/{row.key}-s{seed}", Path(train_config.out) / "cell.json", key)
        return Path(cell.run(lambda: self._train(train_config), self.log)["policy"])

    def llarva_checkpoint(self, name: str) -> Path:
        """LLARVA's instruction pre-training on many tasks (with or without trace prediction)."""
        c = self.config
        tasks = c.llarva_pretrain_tasks if "," not in c.llarva_pretrain_tasks else \
            config_hash({"tasks": c.llarva_pretrain_tasks})[:8]
        dataset = self.collect_cell(f"llarva-pretrain-{tasks}", c.llarva_pretrain_tasks, c.llarva_pretrain_episodes, 0)
        train_config = self.train_config(policy="llarva", dataset=str(dataset), out=str(self.out / f"{name}-pretrain-s0"),
                                         trace_points=LLARVA_PRETRAINING[name], steps=c.llarva_pretrain_steps, seed=0)
        cell = Cell(f"{name}-pretrain", Path(train_config.out) / "cell.json", train_config.key())
        return Path(cell.run(lambda: self._train(train_config), self.log)["policy"])

    def _zero_shot_traced(self, row: Row, base: Path) -> Path:
        """The base's weights in a traced policy (no fine-tuning): "zero-shot traces"."""
        directory = self.out / "zero-shot" / f"{row.key}-{checkpoint_fingerprint(base)}"
        if not (directory / WEIGHTS_FILE).is_file():
            config = policy_class(row.policy).config_class()  # the type's defaults, without building a policy
            _, base_config = read_checkpoint_config(base)
            config.vla = config_from_dict(VLAConfig, base_config["vla"], f"{base}/config.json")
            config.traces = copy.deepcopy(row.traces)  # the rows are shared: a policy gets its own copy
            policy = make_policy(row.policy, config, backbone_weights=False)  # every weight comes from the base
            policy.load_weights(base, strict=True)
            policy.save_pretrained(directory)
        return directory

    def evaluation_cell(self, name: str, checkpoint: Path | None, tasks: list[str], episodes: int,
                        make_checkpoint=None, identity: dict[str, Any] | None = None,
                        remove_traces: bool = False) -> dict[str, Any] | None:
        """Evaluate a checkpoint on `tasks` (a traced one with its traces removed, if `remove_traces`); the
        result is kept under `results` (small, committed). With `report_only`, only a finished result is
        returned (None when there is none).

        `identity` is what the checkpoint is and how it is evaluated (for the cache key); `make_checkpoint`
        builds it only when the evaluation has not run yet.
        """
        c = self.config
        key = {"name": name, "tasks": tasks, "episodes": episodes, "max_steps": c.max_steps,
               "image_size": c.image_size,
               "checkpoint": identity if identity is not None else checkpoint_fingerprint(checkpoint)}
        cell = Cell(f"eval/{name}", self.results / f"{name}.json", key)
        if c.report_only:
            return cell.finished()

        def work() -> dict[str, Any]:
            started = time.perf_counter()
            path = checkpoint if checkpoint is not None else make_checkpoint()
            info = evaluate(EvalConfig(policy=str(path), tasks=",".join(tasks), episodes=episodes,
                                       max_steps=c.max_steps, workers=c.workers, videos=c.videos,
                                       remove_traces=remove_traces, out=str(self.out / "eval" / c.name / name)))
            keep = ("task", "attempt", "seed", "success", "subgoal", "steps", *EPISODE_FIGURES)
            return {"per_task": info["per_task"], "overall": info["overall"],
                    "episodes": [{k: e[k] for k in keep if k in e} for e in info["episodes"]],
                    "videos": [e["video"] for e in info["episodes"] if e.get("video")],
                    # What finishing the cell cost in this call: its training (when not cached) and evaluation.
                    "minutes": (time.perf_counter() - started) / 60}

        return cell.run(work, self.log)

    def run(self) -> dict[str, Any]:
        """Every cell, in protocol order; returns {"targets", "selection", "cells": {row: {seed: result}}}.

        With `report`, the tables are rewritten after every evaluation cell, so BENCHMARKS.md shows a
        long run's finished rows while the rest is still running."""
        c = self.config
        started = time.perf_counter()
        base = self.once("stage 1", self.base_checkpoint)
        targets, selection = self.once("target selection", lambda: self.targets(base))
        if not targets:  # report_only, during the selection: report the candidates finished so far
            self.log(f"[bench] target selection: {len(selection['pending'])} candidate(s) not finished yet")
            if c.report:
                write_report({"config": config_key(c), "targets": [], "selection": selection, "cells": {},
                              "rows": [r.identity() for r in c.row_list()], "stage1_minutes": self.stage1_minutes,
                              "stage1_kept_from": self.stage1_kept_from}, c)
            return {"targets": [], "selection": selection, "cells": {}}
        self.log(f"[bench] target tasks: {', '.join(targets)}")
        seeds = c.seed_list()
        cells: dict[str, dict[int, Any]] = {}
        bases = {True: base}  # by use_state; the base without state is made when its first row needs it

        def results() -> dict[str, Any]:
            return {"config": config_key(c), "targets": targets, "selection": selection,
                    "cells": cells, "rows": [r.identity() for r in c.row_list()],
                    "minutes_this_call": (time.perf_counter() - started) / 60, "stage1_minutes": self.stage1_minutes,
                    "stage1_kept_from": self.stage1_kept_from, "no_state_base_minutes": self.no_state_base_minutes,
                    "config_hash": config_hash(config_key(c))}

        def cell(row: Row, seed: int) -> dict[str, Any] | None:
            if row.use_state not in bases:
                bases[row.use_state] = self.base_checkpoint(use_state=row.use_state)
            row_base = bases[row.use_state]
            if row_base is None:  # report_only, and the base without state has not been made
                return None
            llarva = row.init.startswith("llarva")
            identity = {"row": row.identity(), "seed": seed if row.finetuned else None,
                        "base": checkpoint_fingerprint(row_base) if row.init == "base" else None,
                        "llarva_pretrain": {"tasks": c.llarva_pretrain_tasks, "episodes": c.llarva_pretrain_episodes,
                                            "steps": c.llarva_pretrain_steps} if llarva else None,
                        "stage2_steps": c.stage2_steps if row.finetuned else None,
                        "finetune": {"tasks": targets, "episodes": c.finetune_episodes} if row.finetuned else None}
            return self.evaluation_cell(
                f"{row.key}-s{seed}", None, targets, c.eval_episodes,
                make_checkpoint=lambda: self.row_checkpoint(row, seed, row_base, targets),
                identity=identity, remove_traces=bool(row.traces_removed_from))

        # Every row's first seed before any row's second: a complete one-seed table comes early.
        jobs = [((row.key, seed), lambda row=row, seed=seed: cell(row, seed))
                for position, seed in enumerate(seeds) for row in c.row_list()
                if position == 0 or (row.main and row.finetuned)]
        for (key, seed), result in self.each(jobs):
            if result is None:  # report_only, and this cell has not finished
                continue
            cells.setdefault(key, {})[seed] = result
            if c.report and not c.report_only:  # a long run shows its finished rows as it goes
                if c.share:  # the table holds every process's cells: read them back from their records
                    Bench(dataclasses.replace(c, report_only=True), log=lambda _: None).run()
                else:
                    write_report(results(), c)
        if c.report and c.report_only:
            write_report(results(), c)  # once: nothing changes between cells here
        return results()


def run_bench(config: BenchConfig) -> dict[str, Any]:
    """Run (or resume) the protocol; with `report`, the tables are written as the cells finish."""
    return Bench(config).run()
