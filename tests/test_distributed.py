"""`torchrun ... stvla train`: two CPU processes (gloo) train what one process trains, stage 1 and LoRA
stage 2, replicated (DDP) or sharded (FSDP2); a killed two-process run resumes with one; the caches
are built once, by rank 0.

Equal "to float tolerance" means: after 20 AdamW steps every weight within 1e-5 of the one-process
run's, except a handful whose gradient is zero in exact arithmetic (a bias before a normalisation),
where Adam scales float noise up to steps of the learning rate; those stay within steps x lr."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file
from test_paligemma import tiny_paligemma  # noqa: F401  (a fixture: the tiny PaliGemma2 backbone on disk)

TINY = ["--model.width", "32", "--model.image.channels", "8,16", "--model.image.width", "32",
        "--model.trunk.width", "32", "--model.trunk.depth", "2", "--model.trunk.heads", "2",
        "--batch_size", "8", "--warmup_steps", "5", "--threads", "1"]
DEADLINE_S = 240  # a hung rank fails the test instead of CI


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stvla_train(args: list[str], processes: int, env: dict) -> list[str]:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
                "--master_port", str(free_port()), "-m", "stvla.cli"] if processes > 1 else \
        [sys.executable, "-m", "stvla.cli"]
    return [*launcher, "train", *args]


def run(args: list[str], processes: int, env: dict) -> None:
    done = subprocess.run(stvla_train(args, processes, env), env=env, capture_output=True, text=True,
                          timeout=DEADLINE_S)
    assert done.returncode == 0, done.stderr[-3000:]


def assert_same_weights(a: Path, b: Path, steps: int, lr: float = 3e-4) -> None:
    first, second = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert sorted(first) == sorted(second)
    differences = np.concatenate([(first[k].double() - second[k].double()).abs().flatten().numpy() for k in first])
    assert differences.max() <= steps * lr
    assert (differences > 1e-5).mean() < 1e-3, (differences > 1e-5).sum()


@pytest.fixture(scope="module")
def setting(small_dataset, tmp_path_factory):
    root, _ = small_dataset
    env = {**os.environ, "STVLA_CACHE": str(tmp_path_factory.mktemp("ddp-cache")), "OMP_NUM_THREADS": "1"}
    return root, env


def test_two_processes_train_what_one_trains_and_build_the_caches_once(setting, tmp_path):
    root, env = setting
    cache = tmp_path / "cache"  # nothing cached yet: both ranks start on a bare dataset
    common = ["--policy", "spatialvla", "--dataset", str(root), "--steps", "20", "--save_every", "10", *TINY]
    run([*common, "--out", str(tmp_path / "one")], 1, env)
    run([*common, "--out", str(tmp_path / "two"), "--cache_dir", str(cache)], 2, env)
    assert_same_weights(tmp_path / "one" / "policy", tmp_path / "two" / "policy", steps=20)
    (decoded,) = cache.glob("*/decoded")
    assert sorted(p.name for p in decoded.iterdir()) == sorted(p.name for p in next(
        Path(env["STVLA_CACHE"]).glob("*/decoded")).iterdir())  # the same features as one process decodes
    assert not [p for p in cache.rglob("*") if ".tmp" in p.name]
    log = (tmp_path / "two" / "train_log.jsonl").read_text().splitlines()
    assert len(log) == 1  # rank 0 alone logs (20 steps: one line)
    # FSDP2: weights, gradients and optimiser state sharded over the two processes, the same result.
    run([*common, "--out", str(tmp_path / "sharded"), "--cache_dir", str(cache), "--fsdp"], 2, env)
    assert_same_weights(tmp_path / "one" / "policy", tmp_path / "sharded" / "policy", steps=20)

    # Stage 2, LoRA on st (traced inputs, their cache too), from the one-process base.
    stage2 = ["--policy", "st", "--dataset", str(root), "--init", str(tmp_path / "one" / "policy"), "--steps", "20",
              "--save_every", "10", "--batch_size", "8", "--warmup_steps", "5", "--threads", "1"]
    run([*stage2, "--out", str(tmp_path / "lora1")], 1, env)
    run([*stage2, "--out", str(tmp_path / "lora2"), "--cache_dir", str(cache)], 2, env)
    assert_same_weights(tmp_path / "lora1" / "policy", tmp_path / "lora2" / "policy", steps=20, lr=1e-3)
    run([*stage2, "--out", str(tmp_path / "lora-sharded"), "--cache_dir", str(cache), "--fsdp"], 2, env)
    assert_same_weights(tmp_path / "lora1" / "policy", tmp_path / "lora-sharded" / "policy", steps=20, lr=1e-3)


def group_alive(pgid: int) -> bool:
    """Whether any process of the group `pgid` still exists (zombies of an exited group do not count)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    states = []
    for status in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = status.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # fields after the name: state, ppid, pgrp
            states.append(fields[0])
    return any(state != "Z" for state in states)


@pytest.mark.parametrize("sharded", [False, True], ids=["ddp-resumed-by-one", "fsdp-resumed-by-two"])
def test_a_killed_two_process_run_resumes(setting, tmp_path, sharded):
    """Killed after a checkpoint, a 2-process run resumes (DDP: with 1 process; FSDP: sharded again, which
    splits the saved optimiser state like the parameters) to the uninterrupted one-process weights."""
    root, env = setting
    common = ["--policy", "spatialvla", "--dataset", str(root), "--steps", "30", "--save_every", "5", *TINY]
    run([*common, "--out", str(tmp_path / "whole")], 1, env)
    killed = tmp_path / "killed"
    extra = ["--fsdp"] if sharded else []
    process = subprocess.Popen(stvla_train([*common, "--out", str(killed), *extra], 2, env), env=env,
                               start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + DEADLINE_S
    while not (killed / "checkpoint" / "state.json").is_file() and process.poll() is None:
        assert time.monotonic() < deadline, "no checkpoint was written"
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    gone_by = time.monotonic() + DEADLINE_S  # the workers too (one holds the folder's lock until it is gone)
    while group_alive(process.pid):
        assert time.monotonic() < gone_by, "the killed run's workers did not exit"
        time.sleep(0.02)
    assert not (killed / "policy").exists()  # killed before the end
    run([*common, "--out", str(killed), *extra], 2 if sharded else 1, env)
    assert_same_weights(tmp_path / "whole" / "policy", killed / "policy", steps=30)


def test_a_batch_that_does_not_split_is_refused(setting, tmp_path):
    root, env = setting
    args = stvla_train(["--policy", "spatialvla", "--dataset", str(root), "--out", str(tmp_path / "odd"),
                        "--steps", "2", *TINY[:-6], "--batch_size", "7"], 2, env)
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=DEADLINE_S)
    assert done.returncode != 0 and "--batch_size 7 does not split over 2 processes" in done.stderr


@pytest.mark.parametrize("policy", ["tracevla", "llarva"])
def test_every_policy_type_trains_alike_on_two_processes(setting, tmp_path, policy):
    """TraceVLA (two images, a traced-input cache) and LLARVA (prompts, the trace head's loss over the global
    count of trace targets) on two processes give the weights of one."""
    root, env = setting
    common = ["--policy", policy, "--dataset", str(root), "--steps", "10", "--save_every", "10", *TINY]
    run([*common, "--out", str(tmp_path / "one")], 1, env)
    run([*common, "--out", str(tmp_path / "two")], 2, env)
    assert_same_weights(tmp_path / "one" / "policy", tmp_path / "two" / "policy", steps=10)


def test_fsdp_shards_a_paligemma2_backbone(setting, tiny_paligemma, tmp_path):
    """FSDP2 on the papers' backbone (the tiny PaliGemma2 config): decoder and SigLIP layers sharded over two
    processes train what one process trains."""
    root, env = setting
    common = ["--policy", "spatialvla", "--dataset", str(root), "--model.backbone.kind", "paligemma",
              "--model.backbone.path", str(tiny_paligemma), "--steps", "8", "--batch_size", "4",
              "--warmup_steps", "2", "--save_every", "4", "--threads", "1"]
    run([*common, "--out", str(tmp_path / "one")], 1, env)
    run([*common, "--out", str(tmp_path / "sharded"), "--fsdp"], 2, env)
    assert_same_weights(tmp_path / "one" / "policy", tmp_path / "sharded" / "policy", steps=8)
