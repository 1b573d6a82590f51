"""Watching a run: the training log and its TensorBoard events and loss.png, the held-out validation
episodes and their loss, closed-loop success during training, and the best checkpoint beside the last."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from stvla.data import CollectConfig, EpisodeStore, collect
from stvla.policies.registry import load_policy
from stvla.report import write_report
from stvla.train import TrainConfig, train
from stvla.train.monitor import read_log
from stvla.train.samples import TrainingSamples
from stvla.train.validation import held_out_episodes
from test_train import tiny_config


@pytest.fixture(scope="module")
def six_reach_episodes(tmp_path_factory):
    """Six reach episodes: enough for one to be held out for validation (a task keeps four to train on)."""
    root = tmp_path_factory.mktemp("six") / "reach"
    collect(CollectConfig(task="reach-v3", episodes=6, image_size=64, out=str(root)), progress=False)
    return root


def test_the_log_tensorboard_and_loss_plot_of_a_run(small_dataset, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    root, _ = small_dataset
    out = tmp_path / "run"
    train(tiny_config(root, out, steps=20, log=dataclasses.replace(TrainConfig().log, every=5)), progress=False)
    records = read_log(out / "train_log.jsonl")
    assert [r["step"] for r in records if r["split"] == "train"] == [5, 10, 15, 20]
    assert all(np.isfinite(r["loss"]) and r["samples_per_s"] > 0 for r in records)
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [5, 10, 15, 20]
    assert (out / "loss.png").stat().st_size > 5000
    assert not (out / "best").exists(), "two episodes per task: nothing is held out, no best to keep"
    assert json.loads((out / "run.json").read_text())["validation_episodes"] == []


def test_validation_holds_out_episodes_and_keeps_the_best_checkpoint(six_reach_episodes, tmp_path):
    store = EpisodeStore(six_reach_episodes)
    assert held_out_episodes(store, 1) == [5] and held_out_episodes(store, 3) == [], "a task keeps 4 to train on"
    config = tiny_config(six_reach_episodes, tmp_path / "run", steps=30, val_every=10)
    policy_dir = train(config, progress=False)
    records = read_log(tmp_path / "run" / "train_log.jsonl")
    val = [r for r in records if r["split"] == "val"]
    assert [r["step"] for r in val] == [10, 20, 30] and all(np.isfinite(r["loss"]) for r in val)
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    best = min(val, key=lambda r: r["loss"])
    assert run["best"] == {"directory": "best", "metric": "val_loss", "value": best["loss"], "step": best["step"]}
    assert run["validation_episodes"] == [5] and "last step" in run["policy"]
    load_policy(tmp_path / "run" / "best")  # a whole checkpoint that reloads
    assert load_policy(policy_dir).config == load_policy(tmp_path / "run" / "best").config
    # Training never draws a held-out frame.
    samples = TrainingSamples(store, load_policy(policy_dir), progress=False, held_out=[5])
    drawn = np.concatenate([samples.indices_for_step(s, 8, 0) for s in range(40)])
    assert len(samples.val_frames) == store.episode_length(5) and not np.isin(drawn, samples.val_frames).any()


def test_closed_loop_success_during_training_picks_the_best(six_reach_episodes, tmp_path):
    config = tiny_config(six_reach_episodes, tmp_path / "run", steps=12, val_every=6, eval_every=6, eval_episodes=1)
    watched = train(config, progress=False)
    unwatched = train(dataclasses.replace(config, out=str(tmp_path / "quiet"), val_every=1000, eval_every=0),
                      progress=False)
    a, b = load_file(str(watched / "model.safetensors")), load_file(str(unwatched / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a), "validating and evaluating change no weight"
    evals = [r for r in read_log(tmp_path / "run" / "train_log.jsonl") if r["split"] == "eval"]
    assert [r["step"] for r in evals] == [6, 12] and all(0 <= r["success_rate"] <= 1 for r in evals)
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["best"]["metric"] == "success_rate" and run["best"]["step"] in (6, 12)
    info = json.loads((tmp_path / "run" / "evals" / "step-0000006" / "eval" / "eval_info.json").read_text())
    assert info["overall"]["episodes"] == 1, "the same evaluation as stvla eval, its outputs kept"
    page = write_report(tmp_path / "run").read_text()  # the run's page links a page per evaluation
    assert 'href="evals/step-0000006/eval/report.html"' in page and "<code>best/</code>: step" in page
    assert (tmp_path / "run" / "evals" / "step-0000012" / "eval" / "report.html").is_file()


def test_validation_settings_and_run_keys(small_dataset, tmp_path):
    root, _ = small_dataset
    assert "val_episodes" not in TrainConfig(val_episodes=0).key(), "holding nothing out is what runs did before"
    assert TrainConfig().key()["val_episodes"] == 1
    with pytest.raises(ValueError, match="--val_every must be >= 1"):
        TrainConfig(val_every=0)
    with pytest.raises(ValueError, match="env_task"):
        store = EpisodeStore(root)
        from stvla.train.validation import simulator_tasks

        simulator_tasks(_without_env_task(store))


def _without_env_task(store):
    class Recorded:  # a store whose episodes were recorded outside the simulator
        root = store.root
        num_episodes = store.num_episodes

        @staticmethod
        def episode_meta(episode):
            return {k: v for k, v in store.episode_meta(episode).items() if k != "env_task"}

    return Recorded()


def test_weights_and_biases_logs_offline_without_a_network(small_dataset, tmp_path, monkeypatch):
    pytest.importorskip("wandb")  # a test extra: `pip install -e .[test]` has it
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    root, _ = small_dataset
    log = dataclasses.replace(TrainConfig().log, wandb=True, every=5)
    train(tiny_config(root, tmp_path / "run", steps=10, log=log), progress=False)
    (run,) = (tmp_path / "run" / "wandb").glob("offline-run-*")
    (records,) = run.glob("run-*.wandb")
    assert records.stat().st_size > 0, "the run's records are on disk for `wandb sync`"


def test_a_run_saved_before_validation_existed_resumes_as_it_was(small_dataset, tmp_path):
    """Its train_config.json has no val_episodes: it held nothing out, and reads back so (not as the default)."""
    from stvla.train.trainer import load_train_config

    root, _ = small_dataset
    config = tiny_config(root, tmp_path / "run", steps=20, val_episodes=0)
    train(config, progress=False, stop_after=10)
    path = tmp_path / "run" / "train_config.json"
    saved = json.loads(path.read_text())
    del saved["val_episodes"]
    path.write_text(json.dumps(saved))
    assert load_train_config(path).val_episodes == 0
    assert train(config, progress=False).name == "policy"  # the same settings: it resumes, not refused
