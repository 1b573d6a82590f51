"""Outputs that go wrong: an --out inside the input it reads, a path the writer cannot create, a full disk,
a run that fails before it finished anything. Each is one line naming the file or value (exit code 2),
the inputs are untouched, and a failed run leaves nothing it made behind.

The full disks are small tmpfs mounts in a user and mount namespace (`unshare`, no root needed); those
tests are skipped where the system does not allow one.
"""

from __future__ import annotations

import errno
import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from stvla.cli import main
from stvla.train import train
from test_train import tiny_config

RGB_VIDEO = "videos/observation.images.rgb/chunk-000/file-000.mp4"
TINY_FLAGS = ["--steps", "2", "--batch_size", "4", "--val_episodes", "0", "--model.width", "32",
              "--model.image.channels", "8,16", "--model.image.width", "32", "--model.trunk.width", "32",
              "--model.trunk.depth", "1", "--model.trunk.heads", "2"]


def one_line_error(code: int, err: str, command: str, *needles: str) -> str:
    """Exit code 2 and one line `stvla <command>: error: ...` on stderr holding every needle, no traceback."""
    assert code == 2, err
    errors = [line for line in err.splitlines() if line.startswith(f"stvla {command}: error:")]
    assert "Traceback" not in err and len(errors) == 1, err
    for needle in needles:
        assert needle in errors[0], err
    return errors[0]


def refused(capsys, argv: list[str], *needles: str) -> str:
    """Run the CLI in this process; it must refuse in one line holding every needle."""
    code = main([str(part) for part in argv])
    return one_line_error(code, capsys.readouterr().err, argv[0], *needles)


def contents(folder: Path) -> dict[str, str]:
    """Every file under `folder` by relative path, with a digest of its bytes."""
    return {str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file()}


@pytest.fixture
def dataset_copy(small_dataset, tmp_path):
    """A copy of the small dataset: a broken check must not damage the one every test shares."""
    return Path(shutil.copytree(small_dataset[0], tmp_path / "data"))


# --- an --out inside the input ---------------------------------------------------------------------------
def test_view_and_trace_refuse_an_out_inside_the_dataset_they_read(dataset_copy, tmp_path, capsys):
    before = contents(dataset_copy)
    (tmp_path / "link").symlink_to(dataset_copy)  # the dataset under another name
    for command, dataset, out in [("view", dataset_copy, dataset_copy / "meta" / "view.mp4"),
                                  ("trace", dataset_copy, dataset_copy / "videos" / "trace.mp4"),
                                  ("view", dataset_copy, dataset_copy / RGB_VIDEO),  # its own video, replaced
                                  ("trace", dataset_copy, dataset_copy / RGB_VIDEO),
                                  ("view", tmp_path / "link", dataset_copy / "meta" / "view.mp4")]:
        refused(capsys, [command, dataset, "--out", out], f"--out {out} is inside the dataset {dataset}",
                "write it elsewhere")
    assert contents(dataset_copy) == before, "nothing written into the dataset, none of its files replaced"


def test_trace_refuses_an_out_that_is_the_video_it_reads(dataset_copy, tmp_path, capsys):
    video = tmp_path / "recording.mp4"
    shutil.copy(dataset_copy / RGB_VIDEO, video)
    (tmp_path / "hard_link.mp4").hardlink_to(video)  # the same file under another name
    original = video.read_bytes()
    for out in (video, tmp_path / "hard_link.mp4"):
        refused(capsys, ["trace", video, "--out", out, "--traces.selection.num_traces", "2"],
                f"--out {out} is the video {video} it reads")
    assert video.read_bytes() == original
    assert sorted(path.name for path in tmp_path.iterdir()) == ["data", "hard_link.mp4", "recording.mp4"]


# --- paths the writer cannot use ---------------------------------------------------------------------------
@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs /proc, a folder that takes no new files")
def test_a_video_the_writer_cannot_create_is_named(small_dataset, capsys):
    refused(capsys, ["view", small_dataset[0], "--out", "/proc/view.mp4"],
            "/proc/view.mp4: No such file or directory")


def test_a_symbolic_link_that_leads_back_to_itself_is_named(small_dataset, tmp_path, capsys):
    loop = tmp_path / "cache"
    loop.symlink_to(loop)  # resolve() raised RuntimeError('Symlink loop ...'): a traceback
    out = tmp_path / "run"
    refused(capsys, ["train", "--policy", "st", "--dataset", small_dataset[0], "--out", out, "--cache_dir", loop,
                     *TINY_FLAGS], f"{loop}: a symbolic link that leads back to itself")
    refused(capsys, ["view", small_dataset[0], "--out", loop / "view.mp4"], str(loop),
            "a symbolic link that leads back to itself")
    assert not out.exists()


# --- validation that holds nothing out ----------------------------------------------------------------------
def test_val_episodes_that_hold_nothing_out_are_refused(small_dataset, tmp_path, capsys):
    """Two episodes per task: --val_episodes 2 would leave none to train on, so none was held out, and the run
    trained with no validation and said nothing."""
    root = small_dataset[0]
    out = tmp_path / "run"
    refused(capsys, ["train", "--policy", "st", "--dataset", root, "--out", out, *TINY_FLAGS, "--val_episodes", "2"],
            "--val_episodes 2 holds out nothing", "a task needs 6 episodes", f"dataset {root} have at most 2",
            "--val_episodes 0")
    assert not out.exists()


def test_the_default_validation_on_a_small_dataset_says_it_holds_nothing_out(small_dataset):
    from stvla.data.store import EpisodeStore
    from stvla.train import TrainConfig
    from stvla.train.trainer import no_validation_note

    root = small_dataset[0]
    note = no_validation_note(TrainConfig(dataset=str(root)), EpisodeStore(root), held_out=[])
    assert note == (f"dataset {root}: no task has 5 episodes (1 to hold out, 4 to train on): none is held out, "
                    f"and the run has no validation loss")
    assert no_validation_note(TrainConfig(dataset=str(root), val_episodes=0), EpisodeStore(root), held_out=[]) == ""


# --- failed runs leave nothing they made -------------------------------------------------------------------------
def a_full_disk_on_save(fail_on_call: int = 1):
    """A stand-in for safetensors' save_file that fails as a full disk does, from its `fail_on_call`th call on."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    calls = []

    def save(tensors, path, *args, **kwargs):
        calls.append(path)
        if len(calls) >= fail_on_call:
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        save_file(tensors, path, *args, **kwargs)
    return save


def test_a_training_run_that_fails_before_its_first_checkpoint_leaves_no_folder(small_dataset, tmp_path, capsys,
                                                                                 monkeypatch):
    """It had written train_config.json, train_log.jsonl and tensorboard/ when the checkpoint failed."""
    from stvla.train import trainer

    monkeypatch.setattr(trainer, "save_file", a_full_disk_on_save())
    out = tmp_path / "run"
    line = refused(capsys, ["train", "--policy", "st", "--dataset", small_dataset[0], "--out", out, *TINY_FLAGS],
                   f"cannot write {out / 'checkpoint'}", "No space left on device", "MiB are free there")
    assert "the previous one is kept" not in line, "there was none"
    assert not out.exists()


def test_a_failed_training_run_keeps_a_folder_it_did_not_make_and_one_with_a_checkpoint(small_dataset, tmp_path,
                                                                                        capsys, monkeypatch):
    from stvla.train import trainer

    monkeypatch.setattr(trainer, "save_file", a_full_disk_on_save())
    there_before = tmp_path / "mine"
    there_before.mkdir()
    (there_before / "notes.txt").write_text("the user's")
    refused(capsys, ["train", "--policy", "st", "--dataset", small_dataset[0], "--out", there_before, *TINY_FLAGS],
            "No space left on device")
    assert (there_before / "notes.txt").read_text() == "the user's", "a folder that was there is never removed"

    # The checkpoint of step 1 is written (two files), that of step 2 fails: the first is kept to resume from.
    monkeypatch.setattr(trainer, "save_file", a_full_disk_on_save(fail_on_call=3))
    out = tmp_path / "run"
    refused(capsys, ["train", "--policy", "st", "--dataset", small_dataset[0], "--out", out, *TINY_FLAGS,
                     "--save_every", "1"], f"cannot write {out / 'checkpoint'}", "the previous one is kept")
    assert (out / "checkpoint" / "state.json").is_file() and (out / "train_config.json").is_file()


def test_a_collection_that_finished_no_episode_leaves_no_folder_and_names_it(tmp_path, capsys, monkeypatch):
    """PyArrow's error on a full disk names no file ('Error writing bytes to file'); the videos of the first
    episode were written, its data and meta/ not."""
    from stvla.data import store

    def disk_full(path, *args, **kwargs):
        raise OSError(errno.ENOSPC, "Error writing bytes to file. Detail: [errno 28] No space left on device")

    monkeypatch.setattr(store, "_write_parquet", disk_full)
    out = tmp_path / "new" / "data"
    refused(capsys, ["collect", "--task", "reach-v3", "--episodes", "1", "--max_steps", "20", "--image_size", "64",
                     "--keep_failures", "--out", out],
            f"{out}: No space left on device (the disk is full")
    assert not out.exists()


# --- full disks ----------------------------------------------------------------------------------------------------
def on_a_small_disk(tmp_path: Path, size_kib: int, argv: list[str]) -> tuple[int, str, list[str]]:
    """Run `stvla argv` ({disk} replaced) with tmp_path/disk a tmpfs of `size_kib` KiB, in a user and mount
    namespace; gives its exit code, stderr and what is left on the disk. Skips where no namespace is allowed."""
    if shutil.which("unshare") is None:
        pytest.skip("no `unshare` here to mount a small disk")
    disk, logs = tmp_path / "disk", tmp_path / "logs"
    disk.mkdir()
    logs.mkdir()
    command = " ".join(f"'{part}'" for part in [sys.executable, "-m", "stvla.cli",
                                                *(str(a).format(disk=disk) for a in argv)])
    script = (f"mount -t tmpfs -o size={size_kib}k tmpfs '{disk}' || exit 97\n"
              f"{command} > /dev/null 2> '{logs}/err'\necho $? > '{logs}/code'\nfind '{disk}' > '{logs}/files'")
    done = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script],
                          capture_output=True, text=True, timeout=600)
    if done.returncode == 97 or not (logs / "code").is_file():
        pytest.skip(f"cannot mount a tmpfs in a user namespace here: {done.stderr.strip()[:200]}")
    return (int((logs / "code").read_text()), (logs / "err").read_text(),
            [line for line in (logs / "files").read_text().split() if line != str(disk)])


@pytest.fixture(scope="module")
def tiny_policy_dir(small_dataset, tmp_path_factory):
    return train(tiny_config(small_dataset[0], tmp_path_factory.mktemp("output-faults"), steps=2, val_episodes=0),
                 progress=False)


def test_an_evaluation_on_a_full_disk_names_the_file(tiny_policy_dir, tmp_path):
    code, err, left = on_a_small_disk(tmp_path, 8, ["eval", "--policy", tiny_policy_dir, "--tasks", "reach-v3",
                                                    "--episodes", "1", "--max_steps", "5", "--out", "{disk}/eval"])
    one_line_error(code, err, "eval", f"{tmp_path / 'disk' / 'eval' / 'eval_config.json'}: No space left on device",
                   "the disk is full")
    assert left == []


def test_a_training_run_on_a_full_disk_leaves_nothing(small_dataset, tmp_path):
    """Room for its config and logs (a few KiB), not for its first checkpoint (about 3 MiB)."""
    code, err, left = on_a_small_disk(tmp_path, 512, ["train", "--policy", "st", "--dataset", small_dataset[0],
                                                      "--out", "{disk}/run", *TINY_FLAGS])
    one_line_error(code, err, "train", f"cannot write {tmp_path / 'disk' / 'run' / 'checkpoint'}",
                   "No space left on device")
    assert left == [], "no train_config.json, train_log.jsonl, tensorboard/ or lock without a checkpoint"


def test_a_collection_on_a_full_disk_names_it_and_leaves_nothing(tmp_path):
    code, err, left = on_a_small_disk(tmp_path, 200, ["collect", "--task", "reach-v3", "--episodes", "2",
                                                      "--max_steps", "40", "--image_size", "64", "--keep_failures",
                                                      "--out", "{disk}/data"])
    one_line_error(code, err, "collect", str(tmp_path / "disk" / "data"), "No space left on device",
                   "the disk is full")
    assert left == [], "no half-made dataset (videos of episode 0, a lock, no meta/)"


def test_a_view_on_a_full_disk_names_the_video(small_dataset, tmp_path):
    code, err, left = on_a_small_disk(tmp_path, 64, ["view", small_dataset[0], "--out", "{disk}/view.mp4"])
    one_line_error(code, err, "view", str(tmp_path / "disk" / "view.mp4"), "the disk is full")
    assert left == []
