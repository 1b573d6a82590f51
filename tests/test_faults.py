"""Fault injection: what a careless user or a hostile file does to stvla, and what must come out.

Every case either gets a one-line error naming the file, field or value (exit code 2 on the command
line, never a traceback), or recovers without losing finished work.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from stvla.cli import main
from stvla.policies.base import WEIGHTS_FILE
from stvla.policies.registry import load_policy
from stvla.train import train
from test_train import tiny_config


def one_line_error(capsys, argv: list[str], *needles: str) -> str:
    """Run the CLI and check it refused with exit code 2 and one line on stderr holding every needle."""
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    errors = [line for line in err.splitlines() if line.startswith(f"stvla {argv[0]}: error:")]
    assert "Traceback" not in err and len(errors) == 1, err  # beside progress bars, one line says what is wrong
    for needle in needles:
        assert needle in errors[0], err
    return errors[0]


@pytest.fixture(scope="module")
def saved_policy(small_dataset, tmp_path_factory):
    root, _ = small_dataset
    return train(tiny_config(root, tmp_path_factory.mktemp("faults"), steps=4), progress=False)


def copy_of(policy_dir, tmp_path):
    copy = tmp_path / "policy"
    copy.mkdir()
    for item in policy_dir.iterdir():
        (copy / item.name).write_bytes(item.read_bytes())
    return copy


# --- checkpoints ---------------------------------------------------------------------------------------
def truncate(weights):
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])


# What pickle.dumps({"model": [1, 2, 3]}) writes (protocol 4): a pickle saved under the weights' name.
PICKLED = b"\x80\x04\x95\x16\x00\x00\x00\x00\x00\x00\x00}\x94\x8c\x05model\x94]\x94(K\x01K\x02K\x03es."


def pickle_instead(weights):
    weights.write_bytes(PICKLED)


def drop_a_tensor(weights):
    state = load_file(str(weights))
    state.pop(sorted(state)[0])
    save_file(state, str(weights))


def add_a_tensor(weights):
    save_file({**load_file(str(weights)), "stranger.weight": torch.zeros(3)}, str(weights))


def nan_in_a_bias(weights):
    state = load_file(str(weights))
    bias = next(k for k in sorted(state) if k.endswith(".bias") and state[k].is_floating_point())
    state[bias] = state[bias].clone()
    state[bias][0] = float("nan")
    save_file(state, str(weights))


def stored_as(dtype):
    def damage(weights):
        state = load_file(str(weights))
        name = next(k for k in sorted(state) if state[k].is_floating_point())
        state[name] = state[name].to(dtype)
        save_file(state, str(weights))
    damage.__name__ = f"stored_as_{dtype}"
    return damage


def a_directory_instead(weights):
    weights.unlink()
    weights.mkdir()


def a_device_instead(weights):
    weights.unlink()
    weights.symlink_to("/dev/zero")


def set_buffer(name, change):
    def damage(weights):
        state = load_file(str(weights))
        state[name] = change(state[name].clone())
        save_file(state, str(weights))
    damage.__name__ = f"set_{name}"
    return damage


@pytest.mark.parametrize("damage, message", [
    (set_buffer("state_normalizer.std", lambda std: std * -1), "state_normalizer.std is -"),
    (set_buffer("action_normalizer.fitted", lambda fitted: fitted.to(torch.uint8) * 2),
     "is stored as torch.uint8, the policy holds torch.bool"),
    (set_buffer("state_normalizer.std", torch.zeros_like), "a fitted standard deviation is at least"),
    (set_buffer("action_normalizer.high", lambda high: high - 1e3), "action_normalizer.high is below .low"),
    (set_buffer("action_normalizer.low", lambda low: low - 1e30), "action_normalizer.low is -1e+30 at dimension 0"),
    (set_buffer("state_normalizer.mean", lambda mean: mean + 1e12), "no fit gives a value beyond"),
    (truncate, "not a readable safetensors file"),
    (stored_as(torch.int32), "is stored as torch.int32, the policy holds torch.float32"),
    (stored_as(torch.bool), "is stored as torch.bool, the policy holds torch.float32"),
    (a_directory_instead, "is a directory, not a file"),
    (a_device_instead, "is a device, pipe or socket, not a file"),
    (pickle_instead, "not a readable safetensors file"),
    (drop_a_tensor, "weights missing from the checkpoint"),
    (add_a_tensor, "weights this policy does not have: ['stranger.weight']"),
    (nan_in_a_bias, "non-finite value"),
])
def test_damaged_checkpoints_are_refused_by_name(saved_policy, tmp_path, capsys, damage, message):
    policy_dir = copy_of(saved_policy, tmp_path)
    damage(policy_dir / WEIGHTS_FILE)
    with pytest.raises(ValueError, match="model.safetensors"):
        load_policy(policy_dir)
    one_line_error(capsys, ["eval", "--policy", str(policy_dir), "--tasks", "reach-v3", "--episodes", "1",
                            "--out", str(tmp_path / "eval")], message, str(policy_dir))
    assert not (tmp_path / "eval").exists(), "a refused evaluation leaves no folder behind"


def test_a_policy_never_fitted_reloads_but_does_not_act(saved_policy, tmp_path, capsys):
    """A checkpoint whose normaliser was never fitted (saved before training) reloads as saved, but
    evaluating or serving it is refused before any step, in one line."""
    from stvla.serve import PolicyServer, ServeConfig

    policy_dir = copy_of(saved_policy, tmp_path)
    set_buffer("action_normalizer.fitted", torch.zeros_like)(policy_dir / WEIGHTS_FILE)
    assert not bool(load_policy(policy_dir).model.action_normalizer.fitted)
    one_line_error(capsys, ["eval", "--policy", str(policy_dir), "--tasks", "reach-v3", "--episodes", "1",
                            "--out", str(tmp_path / "eval")], "its action_normalizer was never fitted")
    assert not (tmp_path / "eval").exists()
    with pytest.raises(ValueError, match="its action_normalizer was never fitted"):
        PolicyServer(ServeConfig(policy=str(policy_dir), port=0))


def test_a_broken_config_json_is_refused_by_name(saved_policy, tmp_path, capsys):
    policy_dir = copy_of(saved_policy, tmp_path)
    (policy_dir / "config.json").write_text('{"type": "spatialvla", "config": ')
    one_line_error(capsys, ["eval", "--policy", str(policy_dir), "--tasks", "reach-v3", "--episodes", "1",
                            "--out", str(tmp_path / "eval")], "config.json", "not valid JSON")


@pytest.mark.parametrize("field, value, needle", [
    ("image_size", "abc", "config.json.vla.image_size must be an integer"),
    ("use_state", "yes", "config.json.vla.use_state must be true or false"),
])
def test_a_config_value_of_the_wrong_type_is_refused_by_name(saved_policy, tmp_path, capsys, field, value, needle):
    policy_dir = copy_of(saved_policy, tmp_path)
    config = json.loads((policy_dir / "config.json").read_text())
    config["config"]["vla"][field] = value
    (policy_dir / "config.json").write_text(json.dumps(config))
    one_line_error(capsys, ["eval", "--policy", str(policy_dir), "--tasks", "reach-v3", "--episodes", "1",
                            "--out", str(tmp_path / "eval")], "config.json", needle)


def test_a_checkpoint_on_a_full_disk_is_one_line_and_keeps_the_previous_one(saved_policy, tmp_path, monkeypatch):
    """safetensors raises SafetensorError when the disk fills: the temporary folder goes, the previous
    checkpoint stays whole, and the error says where, how much is needed and how much is free."""
    from safetensors import SafetensorError

    from stvla.policies.registry import load_policy
    from stvla.train import trainer

    policy = load_policy(saved_policy)
    optimizer = torch.optim.AdamW(policy.model.parameters())
    checkpoint = tmp_path / "checkpoint"
    trainer.save_training_state(checkpoint, policy, optimizer, step=10)
    before = {p.name: p.read_bytes() for p in checkpoint.iterdir()}

    def disk_full(tensors, path, *args, **kwargs):
        Path(path).write_bytes(b"\0" * 100)  # a partial file, as a full disk leaves it
        raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull })")

    monkeypatch.setattr(trainer, "save_file", disk_full)
    with pytest.raises(OSError) as refused:
        trainer.save_training_state(checkpoint, policy, optimizer, step=20)
    message = str(refused.value)
    assert "\n" not in message and str(checkpoint) in message and "MiB are free" in message
    assert "StorageFull" in message and "the previous one is kept" in message
    assert not (tmp_path / "checkpoint.tmp").exists()
    assert {p.name: p.read_bytes() for p in checkpoint.iterdir()} == before


# --- training flags --------------------------------------------------------------------------------------
@pytest.mark.parametrize("flags, needle", [
    (["--steps", "0"], "--steps must be >= 1"),
    (["--steps", "-5"], "--steps must be >= 1"),
    (["--batch_size", "0"], "--batch_size must be >= 1"),
    (["--save_every", "0"], "--save_every must be >= 1"),
    (["--model.patch_size", "0"], "model.patch_size must be in [1, 512], got 0"),
    (["--model.image_size", "100"], "image_size 100 is not a multiple of patch_size 16"),  # (96: the images are fitted)
    (["--ema", "1.5"], "--ema must be in [0, 1)"),
    (["--lr", "inf"], "--lr must be a finite number >= 0, got inf"),
    (["--lora.rank", "-1"], "--lora.rank must be >= 0"),
    (["--lora.alpha", "nan"], "--lora.alpha must be a positive number, got nan"),
    (["--model.trace_loss_weight", "nan"], "model.trace_loss_weight must be a finite number >= 0, got nan"),
])
def test_bad_training_flags_are_refused_before_anything_runs(small_dataset, tmp_path, capsys, flags, needle):
    root, _ = small_dataset
    out = tmp_path / "run"
    one_line_error(capsys, ["train", "--policy", "spatialvla", "--dataset", str(root), "--out", str(out), *flags], needle)
    assert not out.exists(), "a refused run leaves no folder behind (no lock, no config)"


def test_outputs_are_never_written_into_their_inputs(small_dataset, saved_policy, tmp_path, capsys):
    """A run, a cache or an evaluation written inside the dataset or checkpoint it reads is refused before
    anything is written there."""
    root, _ = small_dataset
    before = sorted(path.relative_to(root) for path in root.rglob("*"))
    for option, folder in [("--out", root), ("--out", root / "runs" / "x"), ("--cache_dir", root / "cache")]:
        argv = ["train", "--policy", "st", "--dataset", str(root), "--steps", "2", option, str(folder)]
        one_line_error(capsys, argv if option == "--out" else [*argv, "--out", str(tmp_path / "run")],
                       f"{option} {folder} is inside the dataset")
    one_line_error(capsys, ["collect", "--task", "reach-v3", "--episodes", "1", "--out", str(root / "meta" / "sub")],
                   f"{root / 'meta' / 'sub'} is inside the dataset {root}")
    assert sorted(path.relative_to(root) for path in root.rglob("*")) == before
    one_line_error(capsys, ["eval", "--policy", str(saved_policy), "--out", str(saved_policy)],
                   "is inside the checkpoint")
    assert not (Path(saved_policy) / ".stvla.lock").exists()
    for flags, needle in [(["--videos", "-1"], "--videos must be >= 0"),
                          (["--temporal_ensemble", "nan"], "--temporal_ensemble must be a finite number"),
                          (["--server", "http://x"], "--server must be a websocket address")]:
        one_line_error(capsys, ["eval", "--policy", str(saved_policy), "--out", str(tmp_path / "e"), *flags], needle)
        assert not (tmp_path / "e").exists()


def test_an_output_folder_that_cannot_be_made_is_one_line(small_dataset, tmp_path, capsys):
    root, _ = small_dataset
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    one_line_error(capsys, ["train", "--policy", "spatialvla", "--dataset", str(root), "--out", str(blocker / "run"),
                            "--steps", "2"], str(blocker), "a file stands where a folder is needed")
    one_line_error(capsys, ["train", "--policy", "spatialvla", "--dataset", str(root), "--out", str(blocker),
                            "--steps", "2"], str(blocker), "a file stands where a folder is needed")
    assert blocker.read_text() == "not a folder"
    one_line_error(capsys, ["train", "--policy", "spatialvla", "--dataset", str(root), "--out", "/proc/stvla_run",
                            "--steps", "2"], "/proc/stvla_run", "a folder on the way is missing or takes no new files")


@pytest.mark.parametrize("command", [["collect", "--task", "reach-v3", "--episodes", "1"],
                                     ["train", "--policy", "st", "--dataset", "d"], ["eval", "--policy", "p"]])
def test_an_empty_out_is_refused(capsys, command):
    """`--out ""` wrote into the working directory as if it were the run's folder."""
    one_line_error(capsys, [*command, "--out", ""], "--out is empty")


def test_a_folder_where_a_cache_file_goes_is_named_by_that_file(small_dataset, tmp_path, capsys):
    """The error names the cache file a folder stands in place of, not the temporary file renamed onto it."""
    from stvla.data.cache import DecodedCache
    from stvla.data.store import EpisodeStore

    root, _ = small_dataset
    decoded = DecodedCache(EpisodeStore(root), progress=False, cache_dir=str(tmp_path / "cache")).directory
    in_the_way = decoded / "task_index.npy"
    in_the_way.mkdir(parents=True)
    line = one_line_error(capsys, ["train", "--policy", "spatialvla", "--dataset", str(root), "--steps", "2",
                                   "--cache_dir", str(tmp_path / "cache"), "--out", str(tmp_path / "run")],
                          f"{in_the_way}: Is a directory", "a folder stands where a file is needed")
    assert ".tmp-" not in line and not list(decoded.glob("*.tmp-*")), "no temporary file is named or left"


def test_view_into_a_directory_is_refused_and_leaves_nothing(small_dataset, tmp_path, capsys):
    root, _ = small_dataset
    one_line_error(capsys, ["view", str(root), "--episode", "0", "--out", str(tmp_path)], "is a directory")
    assert list(tmp_path.iterdir()) == [], "no half-written video is left behind"


def test_a_benchmark_script_refuses_bad_seeds_in_one_line(tmp_path):
    script = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_history.py"
    done = subprocess.run([sys.executable, str(script), "--seeds", "0,x", "--report_only", "--work", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == ["bench_history.py: error: --seeds '0,x': expected comma-separated integers, e.g. 0,1,2"]


# --- checkpoints by time -------------------------------------------------------------------------------
def test_training_checkpoints_by_time_as_well_as_by_steps(small_dataset, tmp_path):
    """A run whose steps are slow still checkpoints every few minutes (here: every step is late)."""
    root, _ = small_dataset
    config = tiny_config(root, tmp_path / "run", steps=20, save_every=1000, save_every_minutes=1e-9)
    checkpoint = train(config, progress=False, stop_after=7)
    assert json.loads((checkpoint / "state.json").read_text())["step"] == 7


def test_nan_policy_never_returns_an_action(saved_policy, tmp_path):
    """A NaN that gets past the checks (here: set in memory after loading) stops the step with an error."""
    policy = load_policy(saved_policy)
    with torch.no_grad():
        for name, parameter in policy.model.named_parameters():
            if name.endswith("bias"):
                parameter.fill_(float("nan"))
    obs = {"rgb": np.zeros((64, 64, 3), np.uint8), "depth": np.ones((64, 64), np.float32),
           "camera.intrinsics": np.array([[60.0, 0, 32], [0, 60, 32], [0, 0, 1]]), "proprio": np.zeros(4, np.float32),
           "instruction": "reach the goal"}
    policy.reset()
    with pytest.raises(ValueError, match="non-finite .* outputs"):
        policy.select_action(obs)


# --- one writer per output folder ------------------------------------------------------------------------
HOLD_LOCK = """
import sys, time
from stvla.locks import FolderLock
with FolderLock(sys.argv[1], "stvla collect"):
    print("held", flush=True)
    time.sleep(600)
"""


def test_a_second_writer_is_refused_naming_the_first_and_a_killed_holder_frees_the_folder(tmp_path, capsys):
    out = tmp_path / "data"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        argv = ["collect", "--task", "reach-v3", "--episodes", "1", "--max_steps", "150", "--image_size", "64",
                "--out", str(out)]
        one_line_error(capsys, argv, f"{out} is in use by `stvla collect` (pid {holder.pid}")
        assert not (out / "meta").exists(), "the refused run wrote nothing"
    finally:
        holder.kill()  # like kill -9: the operating system drops the lock with the process
        holder.wait()
    assert main(argv) == 0, "a lock left by a killed process is no obstacle"
    capsys.readouterr()


def test_two_evaluations_into_one_folder_cannot_mix(saved_policy, tmp_path):
    from stvla.evaluate import EvalConfig, evaluate
    from stvla.locks import FolderInUse, FolderLock

    config = EvalConfig(policy=str(saved_policy), tasks="reach-v3", episodes=1, max_steps=5, videos=0,
                        out=str(tmp_path / "eval"))
    with FolderLock(config.out, "stvla eval"):  # another evaluation is running there
        with pytest.raises(FolderInUse, match="in use by `stvla eval`"):
            evaluate(config, progress=False)
    assert not (tmp_path / "eval" / "episodes.jsonl").exists()


# --- caches keyed on what they were made from --------------------------------------------------------------
def test_a_cache_on_a_full_disk_is_one_line_and_leaves_no_files(small_dataset, tmp_path, monkeypatch):
    """The cache's space is reserved before its memory map is written: a full disk is an error naming the
    file and the space needed (never a Bus error from a page that cannot be backed), and nothing is left."""
    import errno
    import os

    from stvla.data.cache import DecodedCache
    from stvla.data.store import EpisodeStore

    def disk_full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", disk_full, raising=False)
    cache = DecodedCache(EpisodeStore(small_dataset[0]), progress=False, cache_dir=str(tmp_path / "cache"))
    with pytest.raises(OSError) as refused:
        cache.require(["action", "observation.images.rgb"])
    message = str(refused.value)
    assert "\n" not in message and "No space left on device" in message and "MiB are free there" in message
    assert "cannot make the cache file" in message and "--cache_dir" in message
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()], "no temporary file is left"
    monkeypatch.undo()
    assert cache.require(["action"])["action"].shape[0] == len(cache)  # space freed: the rerun builds it


def decoded_cache_of_a_copy(small_dataset, tmp_path):
    """A copy of the small dataset, and a function that opens its decoded cache (anew each call)."""
    import shutil

    from stvla.data.cache import DecodedCache
    from stvla.data.store import EpisodeStore

    root = Path(shutil.copytree(small_dataset[0], tmp_path / "copy"))
    return lambda: DecodedCache(EpisodeStore(root), progress=False, cache_dir=str(tmp_path / "cache"))


def test_bytes_overwritten_in_a_cache_file_are_found_and_rebuilt(small_dataset, tmp_path, capsys):
    """Bytes changed inside a cache file, its size and modification time restored (what a sampled check
    misses): every episode's rows are checksummed, the change is named, and the file is built again."""
    import os

    open_cache = decoded_cache_of_a_copy(small_dataset, tmp_path)
    cache = open_cache()
    rgb = np.array(cache.require(["observation.images.rgb"])["observation.images.rgb"])
    path = cache.directory / "observation.images.rgb.npy"
    stat = path.stat()
    with path.open("r+b") as handle:  # 64 bytes in the middle of episode 1's rows
        handle.seek(stat.st_size - rgb[cache.episode_slice(1).start:].nbytes + 1000)
        handle.write(bytes(range(64)))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    capsys.readouterr()
    again = open_cache()
    np.testing.assert_array_equal(again.require(["observation.images.rgb"])["observation.images.rgb"], rgb)
    assert capsys.readouterr().err.count("episodes [1] changed since it was written") == 1  # said once


@pytest.mark.parametrize("manifest_edit", [None, {"episode_crc32": 5}, {"episode_crc32": None}])
def test_a_cache_header_or_manifest_changed_in_place_is_rebuilt(small_dataset, tmp_path, capsys, manifest_edit):
    """The same data bytes under another dtype in the .npy header (the time restored) are other values; a
    manifest whose checksums are not a list is no manifest: either way the file is built again."""
    import json
    import os

    open_cache = decoded_cache_of_a_copy(small_dataset, tmp_path)
    cache = open_cache()
    action = np.array(cache.require(["action"])["action"])
    path = cache.directory / "action.npy"
    stat = path.stat()
    if manifest_edit is None:
        path.write_bytes(path.read_bytes().replace(b"'<f4'", b"'<i4'", 1))
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    else:
        manifest = path.with_name(path.name + ".json")
        manifest.write_text(json.dumps({**json.loads(manifest.read_text()), **manifest_edit}))
    capsys.readouterr()
    rebuilt = open_cache().require(["action"])["action"]
    assert rebuilt.dtype == np.float32
    np.testing.assert_array_equal(rebuilt, action)
    if manifest_edit is None:
        assert "its header (dtype, shape) changed since it was written" in capsys.readouterr().err


def test_two_cache_files_swapped_with_their_manifests_are_rebuilt(small_dataset, tmp_path, capsys):
    """The action's and the state's cache files exchanged, each with its manifest (sizes, times and
    checksums all match): a manifest names its file, so each is built again, not read as the other."""
    import os

    open_cache = decoded_cache_of_a_copy(small_dataset, tmp_path)
    cache = open_cache()
    arrays = {key: np.array(value) for key, value in cache.require(["action", "observation.state"]).items()}
    action, state = cache.directory / "action.npy", cache.directory / "observation.state.npy"
    for suffix in ("", ".json"):
        swap = action.with_name("swap")
        os.replace(f"{action}{suffix}", swap)
        os.replace(f"{state}{suffix}", f"{action}{suffix}")
        os.replace(swap, f"{state}{suffix}")
    capsys.readouterr()
    again = open_cache().require(["action", "observation.state"])
    for key, value in arrays.items():
        np.testing.assert_array_equal(again[key], value)
    assert "its manifest is 'observation.state.npy''s: building it again" in capsys.readouterr().err


def test_caches_follow_the_data_files_and_refuse_forged_cache_files(small_dataset, tmp_path, capsys):
    import shutil

    import pyarrow.parquet as pq

    from stvla.data.cache import DecodedCache
    from stvla.data.store import EpisodeStore

    root = tmp_path / "copy"
    shutil.copytree(small_dataset[0], root)
    cache = DecodedCache(EpisodeStore(root), progress=False, cache_dir=str(tmp_path / "cache"))
    actions = np.array(cache.require(["action"])["action"])
    # A forged cache file (same name, other values) is not read: it is rebuilt from the dataset.
    forged = cache.directory / "action.npy"
    np.save(forged, np.full_like(actions, 7.0))
    again = DecodedCache(EpisodeStore(root), progress=False, cache_dir=str(tmp_path / "cache"))
    np.testing.assert_array_equal(again.require(["action"])["action"], actions)
    # An action set to NaN in the data file: the cache is not reused, and decoding names the episode.
    data_file = sorted((root / "data").rglob("*.parquet"))[0]
    table = pq.read_table(data_file)
    values = table.column("action").to_pylist()
    values[3][0] = float("nan")
    pq.write_table(table.set_column(table.column_names.index("action"), "action",
                                    pa_array_like(values, table.column("action").type)), data_file)
    later = DecodedCache(EpisodeStore(root), progress=False, cache_dir=str(tmp_path / "cache"))
    assert later.directory != cache.directory
    with pytest.raises(ValueError, match=r"episode 0 feature 'action': non-finite value at frame 3"):
        later.require(["action"])
    assert not later.dataset_directory.exists(), "a refused build leaves no empty folders in the cache"
    one_line_error(capsys, ["train", "--policy", "spatialvla", "--dataset", str(root), "--out", str(tmp_path / "run"),
                            "--steps", "2", "--cache_dir", str(tmp_path / "cache")], "non-finite value at frame 3")
    assert not (tmp_path / "run").exists(), "refused after its config was written: the new folder is removed"
    kept = tmp_path / "kept"
    (kept / "notes").mkdir(parents=True)
    one_line_error(capsys, ["train", "--policy", "spatialvla", "--dataset", str(root), "--out", str(kept),
                            "--steps", "2", "--cache_dir", str(tmp_path / "cache")], "non-finite value at frame 3")
    assert (kept / "notes").is_dir(), "a folder the run did not make is left as it was"


def pa_array_like(values, arrow_type):
    import pyarrow as pa

    return pa.array(values, type=arrow_type)


# --- content checks -------------------------------------------------------------------------------------------
def without_frame_checksums(root: Path) -> None:
    """Drop the frame checksums our writer stores in meta/episodes: a dataset as LeRobot writes it."""
    import pyarrow.parquet as pq

    for path in (root / "meta" / "episodes").rglob("*.parquet"):
        table = pq.read_table(path)
        pq.write_table(table.drop([name for name in table.column_names if name.endswith("/frames_sha256")]), path)


@pytest.mark.parametrize("checksums", ["with", "without"])
def test_damaged_video_bytes_are_found_when_frames_are_read(small_dataset, tmp_path, capsys, checksums):
    """64 random bytes in the middle of an mp4 once decoded to wrong frames without a word. With our frame
    checksums any change is caught; without them (LeRobot's datasets), the decoder's error detection."""
    import shutil

    from stvla.data.store import DatasetError, EpisodeStore

    root = tmp_path / "copy"
    shutil.copytree(small_dataset[0], root)
    if checksums == "without":
        without_frame_checksums(root)
    store, key = EpisodeStore(root), "observation.images.rgb"
    assert any(name.endswith("frames_sha256") for name in store.episodes.columns) == (checksums == "with")
    video = store.video_path(0, key)
    data = bytearray(video.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = np.random.default_rng(0).integers(0, 256, 64, dtype=np.uint8).tobytes()
    video.write_bytes(bytes(data))
    failures = []
    for episode in range(store.num_episodes):
        if store.video_path(episode, key) == video:
            try:
                store.episode(episode, [key])
            except DatasetError as error:
                failures.append(str(error))
    assert failures and all(str(video) in f for f in failures), failures
    one_line_error(capsys, ["train", "--policy", "spatialvla", "--dataset", str(root), "--out", str(tmp_path / "run"),
                            "--steps", "2", "--cache_dir", str(tmp_path / "cache")], str(video))


@pytest.mark.parametrize("dtype, needle", [
    ("int64", "holds float32 values but meta/info.json says int64"),
    ("float16", "holds float32 values but meta/info.json says float16"),
    ("float99", "'float99', which is not a dtype"),
])
def test_info_dtypes_that_disagree_with_the_data_are_refused(small_dataset, tmp_path, dtype, needle):
    import shutil

    from stvla.data.store import DatasetError, EpisodeStore

    root = tmp_path / "copy"
    shutil.copytree(small_dataset[0], root)
    info_path = root / "meta" / "info.json"
    info = json.loads(info_path.read_text())
    info["features"]["action"]["dtype"] = dtype
    info_path.write_text(json.dumps(info))
    with pytest.raises(DatasetError, match=needle):
        EpisodeStore(root).episode(0, ["action"])


def test_a_feature_info_json_lists_but_the_data_lacks_is_refused_before_training(small_dataset, tmp_path, capsys):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(small_dataset[0], root)
    info_path = root / "meta" / "info.json"
    info = json.loads(info_path.read_text())
    info["features"]["observation.extra"] = {"dtype": "float32", "shape": [2], "names": None}
    info_path.write_text(json.dumps(info))
    one_line_error(capsys, ["train", "--policy", "spatialvla", "--dataset", str(root), "--out", str(tmp_path / "run"),
                            "--steps", "2"], "has no column 'observation.extra'")


def test_a_loss_that_is_not_finite_stops_training_without_saving_a_policy(small_dataset, tmp_path, monkeypatch):
    """A NaN loss once trained on for the rest of the run and saved an all-NaN policy with exit 0."""
    from stvla.policies.base import Policy

    forward = Policy.forward

    def nan_loss(self, batch):
        loss, logs = forward(self, batch)
        return loss * float("nan"), {**logs, "loss": float("nan")}

    monkeypatch.setattr(Policy, "forward", nan_loss)
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=r"step 1: the training loss is nan"):
        train(tiny_config(small_dataset[0], out, steps=5), progress=False)
    assert not (out / "policy").exists()


@pytest.mark.parametrize("fps", [0, None, 80.5, "eighty", True])
def test_an_fps_that_is_not_a_whole_positive_number_is_named(small_dataset, tmp_path, fps):
    import shutil

    from stvla.data.store import DatasetError, EpisodeStore

    root = Path(shutil.copytree(small_dataset[0], tmp_path / "copy"))
    info = json.loads((root / "meta" / "info.json").read_text())
    (root / "meta" / "info.json").write_text(json.dumps({**info, "fps": fps}))
    with pytest.raises(DatasetError, match=r"meta/info.json: field 'fps' must be a positive whole number"):
        EpisodeStore(root)


def test_a_checkpoint_config_of_the_wrong_shape_or_size_is_named(saved_policy, tmp_path):
    import shutil

    policy_dir = Path(shutil.copytree(saved_policy, tmp_path / "policy"))
    config = json.loads((policy_dir / "config.json").read_text())
    (policy_dir / "config.json").write_text(json.dumps({**config, "config": []}))
    with pytest.raises(ValueError, match=r"config.json: 'type' must be a policy name and 'config'"):
        load_policy(policy_dir)
    config["config"]["vla"]["chunk_size"] = 10**12
    (policy_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"config.json: model.chunk_size must be in \[1, 1024\]"):
        load_policy(policy_dir)


def test_info_opens_every_video_as_training_will(small_dataset, tmp_path, capsys):
    """A video whose container is cut short is refused by `stvla info` as by `stvla train`, in the same line
    (its name, its size and FFmpeg's reason), without decoding a frame."""
    import shutil

    root = Path(shutil.copytree(small_dataset[0], tmp_path / "copy"))
    video = sorted((root / "videos").rglob("*.mp4"))[-1]
    video.write_bytes(video.read_bytes()[: video.stat().st_size * 2 // 3])
    said = one_line_error(capsys, ["info", str(root)], str(video), "cannot be opened as a video container")
    trained = one_line_error(capsys, ["train", "--policy", "st", "--dataset", str(root), "--out", str(tmp_path / "run"),
                                      "--steps", "2"], str(video))
    assert said.endswith(trained.split("stvla train: error: ")[1])


def test_a_checkpoint_of_an_unknown_policy_type_names_its_config(saved_policy, tmp_path, capsys):
    policy_dir = copy_of(saved_policy, tmp_path)
    config = json.loads((policy_dir / "config.json").read_text())
    (policy_dir / "config.json").write_text(json.dumps({**config, "type": "ST"}))
    one_line_error(capsys, ["eval", "--policy", str(policy_dir), "--tasks", "reach-v3", "--episodes", "1",
                            "--out", str(tmp_path / "eval")], f"{policy_dir / 'config.json'}: unknown policy type 'ST'")


def test_timestamps_that_drift_past_half_a_frame_are_refused(small_dataset, tmp_path, capsys):
    """Each step 0.9 ms too long stays inside the step tolerance (1 ms), but adds up: past half a frame
    from frame_index / fps the video lookup would read another frame."""
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    root = Path(shutil.copytree(small_dataset[0], tmp_path / "drift"))
    path = sorted((root / "data").rglob("*.parquet"))[0]
    table = pq.read_table(path)
    stamps = table.column("timestamp").to_numpy().copy()
    rows = np.flatnonzero(table.column("episode_index").to_numpy() == 0)
    stamps[rows] += 0.0009 * np.arange(len(rows))
    pq.write_table(table.set_column(table.schema.get_field_index("timestamp"), "timestamp",
                                    pa.array(stamps, table.schema.field("timestamp").type)), path)
    one_line_error(capsys, ["info", str(root)], str(path), "the timestamps drift by more than half a frame")


def test_a_pipe_in_place_of_a_cache_manifest_does_not_block(tmp_path):
    """A FIFO where a cache file's manifest goes made training wait forever on reading it; it is now a cache
    file not known good, built again."""
    import os
    import threading

    from stvla.data.cache import verified, write_manifest

    cache_file = tmp_path / "action.npy"
    np.save(cache_file, np.zeros((4, 2), dtype=np.float32))
    write_manifest(cache_file, [slice(0, 4)])
    assert verified(cache_file, [slice(0, 4)])
    manifest = tmp_path / "action.npy.json"
    manifest.unlink()
    os.mkfifo(manifest)
    answer = []
    reader = threading.Thread(target=lambda: answer.append(verified(cache_file, [slice(0, 4)])), daemon=True)
    reader.start()
    reader.join(timeout=10)
    assert answer == [False], "the check returned at once, with the file not known good"


def test_a_nan_in_any_numeric_feature_training_reads_is_refused(small_dataset):
    """NaN end-effector pixels (what LLARVA learns to predict) were read into training; every float feature a
    run decodes is now checked as actions and states are."""
    from stvla import features as F
    from stvla.data.cache import check_decoded
    from stvla.data.store import DatasetError, EpisodeStore

    root, _ = small_dataset
    store = EpisodeStore(root)
    pixels = store.episode(0, [F.EE_PIXEL])[F.EE_PIXEL].copy()
    check_decoded(store, 0, F.EE_PIXEL, pixels)
    pixels[3, 1] = np.nan
    with pytest.raises(DatasetError, match=r"episode 0 feature 'observation.ee.pixel': non-finite value at frame 3"):
        check_decoded(store, 0, F.EE_PIXEL, pixels)
    pixels[3, 1] = 1e30
    with pytest.raises(DatasetError, match=r"value 1e\+30 at frame 3 is beyond \+-1e\+09"):
        check_decoded(store, 0, F.EE_PIXEL, pixels)


@pytest.mark.parametrize("argv, needle", [
    (["eval", "--policy", "p", "--tasks", "reach-v3,reach-v3"], "task 'reach-v3' is given twice"),
    (["train", "--policy", "st", "--dataset", "d", "--threads", "100000"], "--threads must be at most 1024"),
    (["train", "--policy", "st", "--dataset", "d", "--seed", "-1"], "--seed must be a whole number in [0, 2**32)"),
    (["train", "--policy", "st", "--dataset", "d", "--lora.rank", "4"], "--lora.* settings apply when fine-tuning"),
])
def test_settings_that_would_mislead_are_refused(capsys, tmp_path, argv, needle):
    """A task named twice counted its same-seed episodes as independent; --lora.* without --init was ignored;
    --threads 100000 and --seed -1 ended in tracebacks."""
    one_line_error(capsys, [*argv, "--out", str(tmp_path / "out")], needle)
    assert not (tmp_path / "out").exists()


def test_numpys_short_write_is_said_as_a_full_disk_naming_the_file():
    """np.save on a full disk raises "184320 requested and 51168 written" with no errno nor file; written
    inside naming_the_file it is ENOSPC naming the path, which the CLI says as a full disk."""
    import errno

    from stvla.files import naming_the_file

    with pytest.raises(OSError) as raised:
        with naming_the_file("/data/estimate.npy"):
            raise OSError("184320 requested and 51168 written")
    assert raised.value.errno == errno.ENOSPC and raised.value.filename == "/data/estimate.npy"


def test_a_config_json_that_is_a_symlink_loop_is_named_as_such(saved_policy, tmp_path):
    policy_dir = copy_of(saved_policy, tmp_path)
    (policy_dir / "config.json").unlink()
    (policy_dir / "config.json").symlink_to(policy_dir / "config.json")
    with pytest.raises(ValueError, match=r"config.json is a symbolic link that leads to no file"):
        load_policy(policy_dir)


def test_collect_into_a_folder_of_other_files_is_refused(capsys, tmp_path):
    """A dataset written around a user's own files would be nobody's to delete; refused before any episode."""
    folder = tmp_path / "my_folder"
    folder.mkdir()
    (folder / "thesis.txt").write_text("mine")
    one_line_error(capsys, ["collect", "--task", "reach-v3", "--episodes", "1", "--out", str(folder)],
                   f"{folder} holds files that are no dataset's (thesis.txt)")
    assert sorted(p.name for p in folder.iterdir()) == ["thesis.txt"], "refused before its lock was taken there"
