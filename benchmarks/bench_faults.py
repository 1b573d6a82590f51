"""Fault injection at scale: a catalogue of bad inputs, damaged files, concurrent and killed runs, each
run as a user would (a `stvla` command in its own process, or a Python call), and its outcome counted.

    python benchmarks/bench_faults.py [--work runs/bench-faults]

Outcome of a case that must be refused: "clear" (exit code 2 and one line on stderr naming what is
wrong, `stvla info`'s with training's refusal among them, or a one-line ValueError from Python),
"vague" (refused, but the message does not name the needle), "traceback", or "silent wrong"
(accepted). A case that must work (a resume after kill -9, a second writer refused while the first
finishes, a rebuilt cache, a full disk) is "ok" or "lost" (finished work missing or wrong). Video damage
in a dataset with no reference hash that decodes without a decoder error is "undetectable": nothing
can tell those frames from right ones (BENCHMARKS.md "Video damage"). Full disks are tmpfs mounts in a
user namespace (`unshare`, no root needed).
Writes benchmarks/results/faults.json (every case with its outcome and message) and the "Faults"
section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402
from common import record, run  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

STVLA = [sys.executable, "-m", "stvla.cli"]
# What pickle.dumps({"a": 1}) writes (protocol 4): a pickle saved under the weights' name.
PICKLED = b"\x80\x04\x95\n\x00\x00\x00\x00\x00\x00\x00}\x94\x8c\x01a\x94K\x01s."


@dataclass
class Case:
    name: str  # what is done
    run: Callable[[Path], tuple[str, str]]  # -> (outcome, message)


def stvla(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([*STVLA, *map(str, args)], capture_output=True, text=True, timeout=timeout)


def refused(*args: str, needle: str) -> Callable[[Path], tuple[str, str]]:
    """A command that must be refused with one line holding `needle` ({work} is replaced)."""
    def run(work: Path) -> tuple[str, str]:
        done = stvla(*(str(a).format(work=work) for a in args))
        return judge(done.returncode, done.stderr, needle.format(work=work))
    return run


def judge(code: int, stderr: str, needle: str) -> tuple[str, str]:
    lines = [line for line in stderr.strip().splitlines() if line.strip() and "it/s]" not in line and "ep/s]" not in line]
    last = lines[-1] if lines else ""
    if "Traceback" in stderr:
        return "traceback", last
    if code == 0:
        return "silent wrong", "exit code 0"
    errors = [line for line in lines if ": error:" in line]
    if code == 2 and len(errors) == 1 and needle in errors[0]:
        return "clear", errors[0]
    return "vague", last


def python_refused(call: Callable[[Path], object], needle: str) -> Callable[[Path], tuple[str, str]]:
    def run(work: Path) -> tuple[str, str]:
        try:
            call(work)
        except ValueError as error:
            text = str(error)
            return ("clear" if needle in text and "\n" not in text else "vague"), text
        except Exception as error:  # noqa: BLE001 - what the case measures
            return "traceback", f"{type(error).__name__}: {error}"
        return "silent wrong", "accepted"
    return run


# --- what the cases work on ------------------------------------------------------------------------------
def prepare(work: Path) -> None:
    """A tiny dataset and a policy trained on it, copied by the cases that damage them; a user's folder."""
    (work / "copies" / "users-folder").mkdir(parents=True, exist_ok=True)
    (work / "copies" / "users-folder" / "thesis.txt").write_text("a user's own file")
    if not (work / "data" / "meta" / "info.json").is_file():
        done = stvla("collect", "--task", "reach-v3", "--episodes", 2, "--max_steps", 150, "--image_size", 64,
                     "--out", work / "data")
        assert done.returncode == 0, done.stderr
    if not (work / "policy" / "model.safetensors").is_file():
        done = stvla("train", "--policy", "st", "--dataset", work / "data", "--out", work / "train", "--steps", 3,
                     "--batch_size", 4, "--cache_dir", work / "cache")
        assert done.returncode == 0, done.stderr
        shutil.copytree(work / "train" / "policy", work / "policy")


def dataset_copy(work: Path, name: str) -> Path:
    target = work / "copies" / name
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(work / "data", target)
    return target


def policy_copy(work: Path, name: str) -> Path:
    target = work / "copies" / name
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(work / "policy", target)
    return target


def damaged_dataset(name: str, damage: Callable[[Path], None], *command: str, needle: str) -> Case:
    def run(work: Path) -> tuple[str, str]:
        root = dataset_copy(work, name)
        damage(root)
        args = [a.format(root=root, work=work) for a in command]
        done = stvla(*args)
        return judge(done.returncode, done.stderr, needle.format(root=root))
    return Case(f"{' '.join(command[:1])} on a dataset with {name}", run)


def damaged_policy(name: str, damage: Callable[[Path], None], needle: str) -> Case:
    def run(work: Path) -> tuple[str, str]:
        policy = policy_copy(work, name)
        damage(policy)
        done = stvla("eval", "--policy", policy, "--tasks", "reach-v3", "--episodes", 1, "--max_steps", 5,
                     "--out", work / "copies" / f"eval-{name}")
        return judge(done.returncode, done.stderr, needle)
    return Case(f"eval of a checkpoint with {name}", run)


def set_info(path_change: Callable[[dict], None]) -> Callable[[Path], None]:
    def damage(root: Path) -> None:
        info = json.loads((root / "meta" / "info.json").read_text())
        path_change(info)
        (root / "meta" / "info.json").write_text(json.dumps(info))
    return damage


def first(root: Path, pattern: str) -> Path:
    return sorted(root.rglob(pattern))[0]


def random_bytes_in_video(root: Path) -> None:
    video = first(root / "videos", "*.mp4")
    data = bytearray(video.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = np.random.default_rng(0).integers(0, 256, 64, dtype=np.uint8).tobytes()
    video.write_bytes(bytes(data))


def nan_action(root: Path) -> None:
    path = first(root / "data", "*.parquet")
    table = pq.read_table(path)
    values = table.column("action").to_pylist()
    values[3][0] = float("nan")
    index = table.column_names.index("action")
    pq.write_table(table.set_column(index, "action", pa.array(values, type=table.column("action").type)), path)


def edit_episode_rows(change: Callable[[pa.Table, np.ndarray], pa.Table]) -> Callable[[Path], None]:
    """Rewrite the first data file with `change(table, rows of episode 0)`."""
    def damage(root: Path) -> None:
        path = first(root / "data", "*.parquet")
        table = pq.read_table(path)
        pq.write_table(change(table, np.flatnonzero(table.column("episode_index").to_numpy() == 0)), path)
    return damage


def replaced_column(table: pa.Table, name: str, values: np.ndarray) -> pa.Table:
    return table.set_column(table.schema.get_field_index(name), name, pa.array(values, table.schema.field(name).type))


def rows_reversed(table: pa.Table, rows: np.ndarray) -> pa.Table:
    """Episode 0's rows stored last frame first, their `index` values left as they were."""
    order = np.arange(table.num_rows)
    order[rows] = rows[::-1]
    return replaced_column(table.take(order), "index", table.column("index").to_numpy())


def index_gap(table: pa.Table, rows: np.ndarray) -> pa.Table:
    index = table.column("index").to_numpy().copy()
    index[rows[len(rows) // 2]:] += 5
    return replaced_column(table, "index", index)


def timestamps_doubled(table: pa.Table, rows: np.ndarray) -> pa.Table:
    stamps = table.column("timestamp").to_numpy().copy()
    stamps[rows] *= 2
    return replaced_column(table, "timestamp", stamps)


def task_index_7(table: pa.Table, rows: np.ndarray) -> pa.Table:
    tasks = table.column("task_index").to_numpy().copy()
    tasks[rows] = 7
    return replaced_column(table, "task_index", tasks)


def timestamp_nan(table: pa.Table, rows: np.ndarray) -> pa.Table:
    stamps = table.column("timestamp").to_numpy().copy()
    stamps[rows[7]] = np.nan
    return replaced_column(table, "timestamp", stamps)


def timestamps_from_minus_one(table: pa.Table, rows: np.ndarray) -> pa.Table:
    stamps = table.column("timestamp").to_numpy().copy()
    stamps[rows] -= 1.0
    return replaced_column(table, "timestamp", stamps)


def timestamps_drifting(table: pa.Table, rows: np.ndarray) -> pa.Table:
    """Each step 0.9 ms too long: inside the step tolerance, adding up past half a frame."""
    stamps = table.column("timestamp").to_numpy().copy()
    stamps[rows] += 0.0009 * np.arange(len(rows))
    return replaced_column(table, "timestamp", stamps)


def episode_index_says(other: int, rows_changed: slice) -> Callable[[pa.Table, np.ndarray], pa.Table]:
    """Episode 0's `episode_index` column saying `other` on the rows `rows_changed` of it."""
    def change(table: pa.Table, rows: np.ndarray) -> pa.Table:
        episodes = table.column("episode_index").to_numpy().copy()
        episodes[rows[rows_changed]] = other
        return replaced_column(table, "episode_index", episodes)
    return change


def index_shifted(table: pa.Table, rows: np.ndarray) -> pa.Table:
    """Episode 0's `index` column 100 rows on from where meta/episodes says it is."""
    index = table.column("index").to_numpy().copy()
    index[rows] += 100
    return replaced_column(table, "index", index)


def intrinsics_of(matrix: list) -> Callable[[pa.Table, np.ndarray], pa.Table]:
    def change(table: pa.Table, rows: np.ndarray) -> pa.Table:
        name = "observation.camera.intrinsics"
        values = table.column(name).to_pylist()
        for row in rows:
            values[row] = matrix
        return table.set_column(table.schema.get_field_index(name), name, pa.array(values, table.schema.field(name).type))
    return change


def extra_row(table: pa.Table, rows: np.ndarray) -> pa.Table:
    """Episode 0's last row stored twice (meta/episodes does not count it)."""
    order = np.concatenate([np.arange(rows[-1] + 1), [rows[-1]], np.arange(rows[-1] + 1, table.num_rows)])
    return table.take(order)


def edit_meta_episodes(change: Callable[[pa.Table], pa.Table]) -> Callable[[Path], None]:
    def damage(root: Path) -> None:
        path = first(root / "meta" / "episodes", "*.parquet")
        pq.write_table(change(pq.read_table(path)), path)
    return damage


def frames_checksum_as_int(table: pa.Table) -> pa.Table:
    name = next(n for n in table.column_names if n.endswith("/frames_sha256"))
    return table.set_column(table.column_names.index(name), name, pa.array(range(table.num_rows), pa.int64()))


def episode_0_task_renamed(table: pa.Table) -> pa.Table:
    tasks = table.column("tasks").to_pylist()
    tasks[0] = ["open the drawer"]
    return table.set_column(table.column_names.index("tasks"), "tasks", pa.array(tasks, table.schema.field("tasks").type))


def video_start_nan(table: pa.Table) -> pa.Table:
    name = next(n for n in table.column_names if n.endswith("/from_timestamp"))
    starts = table.column(name).to_numpy().copy()
    starts[0] = np.nan
    return table.set_column(table.column_names.index(name), name, pa.array(starts, table.schema.field(name).type))


def truncated_video(root: Path) -> None:
    """The first RGB video cut to two thirds (its container's index, at the end, lost)."""
    truncate_to(first(root / "videos" / "observation.images.rgb", "*.mp4"), 2 / 3)


def depth_in_millimetres(root: Path) -> None:
    """LeRobot's depth video said to span 0..4000 (millimetres) instead of metres."""
    set_info(lambda i: i["features"]["observation.depth"]["info"].update({"video.depth_max": 4000.0}))(root)


def downloaded_from_the_hub(root: Path) -> None:
    """huggingface_hub's download metadata beside every video (commit, etag = the file's SHA-256, time), as
    LeRobot's `snapshot_download(local_dir=...)` leaves it, and no frame checksums of ours."""
    without_frame_checksums(root)
    for video in (root / "videos").rglob("*.mp4"):
        metadata = root / ".cache" / "huggingface" / "download" / f"{video.relative_to(root)}.metadata"
        metadata.parent.mkdir(parents=True, exist_ok=True)
        metadata.write_text(f"{'0' * 40}\n{hashlib.sha256(video.read_bytes()).hexdigest()}\n{time.time()}\n")


def without_frame_checksums(root: Path) -> None:
    """Drop the frame checksums stvla's writer stores: a dataset as LeRobot's writer leaves it."""
    for path in (root / "meta" / "episodes").rglob("*.parquet"):
        table = pq.read_table(path)
        pq.write_table(table.drop([name for name in table.column_names if name.endswith("/frames_sha256")]), path)


def truncate(path: Path) -> None:
    truncate_to(path, 1 / 2)


def truncate_to(path: Path, share: float) -> None:
    path.write_bytes(path.read_bytes()[: int(path.stat().st_size * share)])


def edit_weights(change: Callable[[dict], None]) -> Callable[[Path], None]:
    def damage(policy: Path) -> None:
        state = load_file(str(policy / "model.safetensors"))
        change(state)
        save_file(state, str(policy / "model.safetensors"))
    return damage


def nan_bias(state: dict) -> None:
    name = next(k for k in sorted(state) if k.endswith(".bias"))
    state[name] = state[name].clone()
    state[name][0] = float("nan")


def stored_as(dtype: torch.dtype) -> Callable[[dict], None]:
    """The first float tensor stored as `dtype` (values cast: other weights under the right names)."""
    def change(state: dict) -> None:
        name = next(k for k in sorted(state) if state[k].is_floating_point())
        state[name] = state[name].to(dtype)
    return change


def buffer_set(name: str, change: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[dict], None]:
    """A normaliser's buffer in the weights changed (values no fit gives)."""
    def edit(state: dict) -> None:
        state[name] = change(state[name].clone())
    return edit


def weights_replaced_by(kind: str) -> Callable[[Path], None]:
    def damage(policy: Path) -> None:
        weights = policy / "model.safetensors"
        weights.unlink()
        weights.mkdir() if kind == "directory" else weights.symlink_to("/dev/zero")
    return damage


def set_config(change: Callable[[dict], None], file: str = "config.json") -> Callable[[Path], None]:
    """A checkpoint's JSON file (config.json, processor.json) changed by `change`."""
    def damage(policy: Path) -> None:
        config = json.loads((policy / file).read_text())
        change(config)
        (policy / file).write_text(json.dumps(config))
    return damage


# --- Python calls at the policy boundary --------------------------------------------------------------------
_POLICY = {}


def observation_with(work: Path, **changes) -> tuple[object, dict]:
    from stvla.policies.registry import load_policy
    from stvla.data import EpisodeStore
    from stvla import features as F

    if "policy" not in _POLICY:
        _POLICY["policy"] = load_policy(work / "policy")
        store = EpisodeStore(work / "data")
        keys = list(_POLICY["policy"].processor.input_features())
        frame = store.frame(0, 0, keys)
        _POLICY["obs"] = {F.FEATURE_OF_OBSERVATION[k]: np.array(frame[k]) for k in keys} | {"instruction": "reach"}
    obs = dict(_POLICY["obs"])
    for key, change in changes.items():
        obs[key.replace("__", ".")] = change(obs.get(key.replace("__", ".")))
    if "drop" in obs:
        obs.pop(obs.pop("drop"))
    return _POLICY["policy"], obs


def act_with(**changes) -> Callable[[Path], object]:
    def call(work: Path) -> object:
        policy, obs = observation_with(work, **changes)
        policy.reset()
        return policy.select_action(obs)
    return call


def draw(**kwargs) -> Callable[[Path], object]:
    def call(work: Path) -> object:
        from stvla.traces import DepthDrawConfig, draw_traces_depth, draw_traces_rgb

        if "rgb" in kwargs:
            return draw_traces_rgb(np.zeros((128, 128, 3), np.uint8), kwargs["traces"], **kwargs["rgb"])
        return draw_traces_depth(np.ones((128, 128), np.float32), kwargs["traces"], "C",
                                 DepthDrawConfig(**kwargs.get("config", {})))
    return call


# --- runs that must lose nothing ------------------------------------------------------------------------------
def two_collects_at_once(work: Path) -> tuple[str, str]:
    out = work / "copies" / "concurrent-collect"
    shutil.rmtree(out, ignore_errors=True)
    args = ["collect", "--task", "reach-v3", "--episodes", 10, "--max_steps", 150, "--image_size", 64, "--out", out]
    first_run = subprocess.Popen([*STVLA, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while not (out / ".stvla.lock").is_file() and first_run.poll() is None:
        time.sleep(0.1)  # until the first holds the folder
    second = stvla(*args)
    first_out, first_err = first_run.communicate(timeout=600)
    if first_run.returncode != 0:
        return "lost", first_err.strip().splitlines()[-1]
    verdict, message = judge(second.returncode, second.stderr, "is in use by `stvla collect`")
    info = stvla("info", out, "--json")
    episodes = json.loads(info.stdout)["episodes"] if info.returncode == 0 else -1
    if episodes != 10:
        return "lost", f"the dataset holds {episodes} episodes after the race, not 10"
    return ("ok" if verdict == "clear" else verdict), message


def kill_and_resume_training(work: Path) -> tuple[str, str]:
    out = work / "copies" / "killed-train"
    shutil.rmtree(out, ignore_errors=True)
    args = ["train", "--policy", "spatialvla", "--dataset", work / "data", "--out", out, "--steps", 40,
            "--batch_size", 4, "--save_every", 10, "--cache_dir", work / "cache"]
    run = subprocess.Popen([*STVLA, *map(str, args)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (out / "checkpoint" / "state.json").is_file() and time.time() < deadline:
        time.sleep(0.5)
    os.kill(run.pid, signal.SIGKILL)
    run.wait()
    saved = json.loads((out / "checkpoint" / "state.json").read_text())["step"]
    resumed = stvla(*args)
    if resumed.returncode != 0 or not (out / "policy" / "model.safetensors").is_file():
        return "lost", resumed.stderr.strip().splitlines()[-1] if resumed.stderr.strip() else "no policy"
    return "ok", f"killed after the checkpoint of step {saved}; the resumed run finished"


def video_damage_without_any_hash(work: Path) -> tuple[str, str]:
    """64 random bytes at 5 offsets of each video (lossless h264 RGB, LeRobot's HEVC depth), in a dataset with
    neither our frame checksums nor the Hub's hash: the decoder's error detection is all there is
    (BENCHMARKS.md "Video damage" measures it per codec)."""
    root = dataset_copy(work, "no hash at all")
    without_frame_checksums(root)
    rng = np.random.default_rng(0)
    refused, missed = Counter(), Counter()
    for video in sorted((root / "videos").rglob("*.mp4")):
        stream = video.relative_to(root / "videos").parts[0]
        clean = video.read_bytes()
        for offset in np.linspace(len(clean) * 0.2, len(clean) * 0.9, 5).astype(int):
            data = bytearray(clean)
            data[offset:offset + 64] = rng.integers(0, 256, 64, dtype=np.uint8).tobytes()
            video.write_bytes(bytes(data))
            shutil.rmtree(work / "copies" / "nohash-cache", ignore_errors=True)
            done = stvla("train", "--policy", "st", "--dataset", root, "--out", work / "copies" / f"t-nohash-{offset}",
                         "--steps", 1, "--batch_size", 2, "--cache_dir", work / "copies" / "nohash-cache")
            verdict, _ = judge(done.returncode, done.stderr, str(video))
            (refused if verdict == "clear" else missed)[stream] += 1
        video.write_bytes(clean)
    counts = ", ".join(f"{stream} {refused[stream]} of {refused[stream] + missed[stream]}"
                       for stream in sorted(refused.keys() | missed.keys()))
    if not missed:
        return "clear", f"every damaged copy refused naming its video ({counts})"
    return "undetectable", (f"refused: {counts}; the rest decode to wrong frames that nothing can tell from right "
                            f"ones without a reference hash")


def bytes_overwritten(path: Path) -> None:
    """147 KB in the middle of the file overwritten with random bytes."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 147_000] = np.random.default_rng(0).integers(0, 256, 147_000, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))


def header_retyped(path: Path) -> None:
    """The .npy header's dtype edited in place: the same bytes read as other values."""
    data = path.read_bytes()
    path.write_bytes(data.replace(b"'|u1'", b"'|i1'", 1) if b"'|u1'" in data[:128] else data.replace(b"'<f4'", b"'<i4'", 1))


def swapped_with_the_state(path: Path) -> None:
    """The file and its manifest exchanged with the state's cache file and manifest (each consistent)."""
    other = path.with_name("observation.state.npy")
    for suffix in ("", ".json"):
        spare = path.with_name("swap")
        os.replace(f"{path}{suffix}", spare)
        os.replace(f"{other}{suffix}", f"{path}{suffix}")
        os.replace(spare, f"{other}{suffix}")


def cache_damaged(damage: Callable[[Path], None], file: str = "", restore_time: bool = True
                  ) -> Callable[[Path], tuple[str, str]]:
    """The cache file `file` (else the largest) damaged by `damage`, its time restored (a damage that keeps
    the size), found, said once, built again (the file ends as it was before the damage)."""
    def run(work: Path) -> tuple[str, str]:
        cache = work / "copies" / f"cache-{damage.__name__}"
        shutil.rmtree(cache, ignore_errors=True)
        shutil.rmtree(work / "copies" / "t-cache-build", ignore_errors=True)
        built = stvla("train", "--policy", "st", "--dataset", work / "data", "--out", work / "copies" / "t-cache-build",
                      "--steps", 1, "--batch_size", 4, "--cache_dir", cache)  # a cache as this version writes it
        if built.returncode != 0:
            return "lost", built.stderr.strip().splitlines()[-1] if built.stderr.strip() else "the cache was not built"
        target = (next(cache.rglob(file)) if file else max(cache.rglob("*.npy"), key=lambda path: path.stat().st_size))
        clean, stat = target.read_bytes(), target.stat()
        damage(target)
        if restore_time:
            os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        out = work / "copies" / f"t-{cache.name}"
        shutil.rmtree(out, ignore_errors=True)
        done = stvla("train", "--policy", "st", "--dataset", work / "data", "--out", out, "--steps", 2,
                     "--batch_size", 4, "--cache_dir", cache)
        said = [line for line in done.stderr.splitlines() if str(target) in line and "building it again" in line]
        if done.returncode != 0:
            return "lost", done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit code {done.returncode}"
        if target.read_bytes() != clean:
            return "silent wrong", f"training read the damaged {target.name}"
        if len(said) != 1:
            return ("silent wrong", "rebuilt without a word") if not said else ("vague", f"said {len(said)} times")
        return "ok", said[0]
    return run


def in_small_filesystem(work: Path, name: str, size_kib: int, *runs: tuple[int, list]) -> list[dict]:
    """Run `stvla` commands with `work/copies/<name>` a tmpfs of `size_kib` (a full disk, in a user and mount
    namespace: no root needed); each run is (the tmpfs size for it in KiB, its arguments, {mnt} replaced). Gives
    each run's exit code, stderr and the files left in the tmpfs after it."""
    mount = work / "copies" / name
    shutil.rmtree(mount, ignore_errors=True)
    mount.mkdir(parents=True)
    logs = work / "copies" / f"{name}.logs"
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir()
    script = [f"mount -t tmpfs -o size={size_kib}k tmpfs {mount} || exit 97"]
    for index, (size, args) in enumerate(runs):
        command = " ".join(f"'{part}'" for part in [*STVLA, *(str(a).format(mnt=mount) for a in args)])
        script += [f"mount -o remount,size={size}k {mount}", f"{command} > /dev/null 2> {logs}/{index}.err",
                   f"echo $? > {logs}/{index}.code", f"find {mount} > {logs}/{index}.files"]
    done = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", "\n".join(script)],
                          capture_output=True, text=True, timeout=1200)
    if done.returncode == 97 or not (logs / "0.code").is_file():
        raise RuntimeError(f"cannot mount a tmpfs in a user namespace here: {done.stderr.strip()}")
    return [{"code": int((logs / f"{i}.code").read_text()), "stderr": (logs / f"{i}.err").read_text(),
             "files": (logs / f"{i}.files").read_text().split()} for i in range(len(runs))]


def refused_on_a_full_disk(run: dict, needle: str) -> tuple[str, str]:
    """A run on a full disk: refused in one line holding `needle`, with no temporary file left behind."""
    verdict, message = judge(run["code"], run["stderr"], needle)
    left = [path for path in run["files"] if ".tmp" in path]
    return ("lost", f"temporary files left: {left}") if verdict == "clear" and left else (verdict, message)


def checkpoint_on_a_full_disk(work: Path) -> tuple[str, str]:
    """Room for one checkpoint and not two: the second is refused in one line, the first kept, and the same
    command after space is freed resumes from it."""
    checkpoint = sum(path.stat().st_size for path in (work / "train" / "checkpoint").rglob("*") if path.is_file())
    room = int(1.5 * checkpoint / 1024)
    args = ["train", "--policy", "st", "--dataset", work / "data", "--out", "{mnt}/run", "--steps", 20,
            "--save_every", 10, "--batch_size", 4, "--cache_dir", work / "cache"]
    full, freed = in_small_filesystem(work, "full-disk-checkpoint", room, (room, args), (8 * room, args))
    verdict, message = refused_on_a_full_disk(full, "checkpoint")
    if verdict != "clear":
        return verdict, message
    if not any(path.endswith("checkpoint/model.safetensors") for path in full["files"]):
        return "lost", "the earlier checkpoint is gone"
    if freed["code"] != 0 or "10/20" not in freed["stderr"]:
        return "lost", f"the rerun after space was freed did not resume from step 10: exit code {freed['code']}"
    return "clear", message


def cache_on_a_full_disk(work: Path) -> tuple[str, str]:
    """--cache_dir on a full disk: one line naming the cache file, no file left, no Bus error; a rerun with
    room trains."""
    args = ["train", "--policy", "st", "--dataset", work / "data", "--out", work / "copies" / "t-cache-full",
            "--steps", 2, "--batch_size", 4, "--cache_dir", "{mnt}"]
    full, freed = in_small_filesystem(work, "full-disk-cache", 512, (512, args), (256 * 1024, args))
    verdict, message = refused_on_a_full_disk(full, "cache file")
    if verdict != "clear":
        return verdict, message
    if freed["code"] != 0:
        return "lost", f"the rerun with room failed: {freed['stderr'].strip().splitlines()[-1:]}"
    return "clear", message


def refused_train_leaves_no_folder(work: Path) -> tuple[str, str]:
    """A train refused after it took its --out (a NaN action found while decoding) removes the folder it
    made; a folder that existed before is left as it was."""
    root = dataset_copy(work, "nan-for-out")
    nan_action(root)
    out = work / "copies" / "t-refused-out"
    shutil.rmtree(out, ignore_errors=True)
    done = stvla("train", "--policy", "st", "--dataset", root, "--out", out, "--steps", 2, "--cache_dir",
                 work / "copies" / "nan-cache")
    verdict, message = judge(done.returncode, done.stderr, "non-finite")
    if verdict != "clear":
        return verdict, message
    return ("lost", f"left behind: {sorted(p.name for p in out.iterdir())}") if out.exists() else ("ok", message)


def serve_on_port_0(work: Path) -> tuple[str, str]:
    """`stvla serve --port 0`: the line it prints names the port it bound, and that port answers."""
    import urllib.request

    served = subprocess.Popen([*STVLA, "serve", "--policy", str(work / "policy"), "--port", "0"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = served.stdout.readline().strip()
        port = int(line.split("ws://127.0.0.1:")[1].split(";")[0]) if "ws://127.0.0.1:" in line else 0
        if port == 0:
            return "silent wrong", line
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=30) as reply:
            return ("ok", line) if reply.status == 200 else ("silent wrong", f"{line}: /healthz {reply.status}")
    finally:
        served.terminate()
        served.wait(timeout=60)


def serve_refused(policy_damage: Callable[[Path], None], name: str, needle: str) -> Callable[[Path], tuple[str, str]]:
    def run(work: Path) -> tuple[str, str]:
        policy = policy_copy(work, name)
        policy_damage(policy)
        try:
            done = stvla("serve", "--policy", policy, "--port", 0, timeout=120)
        except subprocess.TimeoutExpired:
            return "silent wrong", "served the damaged checkpoint"
        return judge(done.returncode, done.stderr, needle.format(policy=policy))
    return run


def a_folder_where_a_cache_file_goes(work: Path) -> tuple[str, str]:
    """A folder standing where a decoded cache file is renamed to: the line names that file, not the
    temporary one, and no temporary file is left."""
    from stvla.data.cache import DecodedCache
    from stvla.data.store import EpisodeStore

    cache = work / "copies" / "cache-folder-in-the-way"
    shutil.rmtree(cache, ignore_errors=True)
    decoded = DecodedCache(EpisodeStore(work / "data"), progress=False, cache_dir=str(cache)).directory
    (decoded / "task_index.npy").mkdir(parents=True)
    done = stvla("train", "--policy", "st", "--dataset", work / "data", "--out", work / "copies" / "t-folder-in-the-way",
                 "--steps", 2, "--cache_dir", cache)
    verdict, message = judge(done.returncode, done.stderr, f"{decoded / 'task_index.npy'}: Is a directory")
    if verdict == "clear" and (".tmp-" in message or list(decoded.glob("*.tmp-*"))):
        return "vague", f"a temporary file named or left: {message}"
    return verdict, message


def zoedepth_with_pickled_weights(work: Path) -> object:
    from transformers import BeitConfig, ZoeDepthConfig, ZoeDepthForDepthEstimation
    from transformers.models.zoedepth.image_processing_pil_zoedepth import ZoeDepthImageProcessorPil

    from stvla.envs.depth_model import ZoeDepthEstimator

    directory = work / "copies" / "zoedepth-pickle"
    shutil.rmtree(directory, ignore_errors=True)
    backbone = BeitConfig(image_size=64, patch_size=16, hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                          intermediate_size=64, out_indices=[1, 2, 3, 4], reshape_hidden_states=False)
    config = ZoeDepthConfig(backbone_config=backbone, neck_hidden_sizes=[16, 32, 32, 32], fusion_hidden_size=16,
                            reassemble_factors=[4, 2, 1, 0.5], bottleneck_features=16, num_attractors=[4, 4, 4, 4],
                            bin_embedding_dim=16, num_relative_features=8, backbone_hidden_size=32, patch_size=16)
    ZoeDepthForDepthEstimation(config).save_pretrained(directory)
    ZoeDepthImageProcessorPil(size={"height": 64, "width": 64}).save_pretrained(directory)
    (directory / "model.safetensors").unlink()
    (directory / "pytorch_model.bin").write_bytes(PICKLED)
    return ZoeDepthEstimator(directory)


def cases() -> list[Case]:
    F_STATE, F_DEPTH, F_K, F_RGB = "proprio", "depth", "camera__intrinsics", "rgb"
    nan_first = lambda x: np.where(np.arange(np.size(x)).reshape(np.shape(x)) == 0, np.nan, x)  # noqa: E731
    listed = [
        # collect
        Case("collect --episodes 0", refused("collect", "--task", "reach-v3", "--episodes", 0, "--out", "{work}/c0",
                                             needle="episodes")),
        Case("collect --task nope", refused("collect", "--task", "nope-v3", "--episodes", 1, "--out", "{work}/c1",
                                            needle="nope-v3")),
        Case("collect --image_size 0", refused("collect", "--task", "reach-v3", "--image_size", 0, "--out", "{work}/c2",
                                               needle="image_size")),
        Case("collect --image_size abc", refused("collect", "--image_size", "abc", needle="image_size")),
        Case("collect --workers 0", refused("collect", "--task", "reach-v3", "--workers", 0, "--out", "{work}/c3",
                                            needle="workers")),
        Case("collect --out under a file", refused("collect", "--task", "reach-v3", "--episodes", 1, "--out",
                                                   "{work}/data/meta/info.json/x", needle="info.json")),
        # info / view on bad paths
        Case("info on a missing folder", refused("info", "{work}/nothing", needle="nothing")),
        Case("info on a file", refused("info", "{work}/data/meta/info.json", needle="info.json")),
        Case("view --out DIR", refused("view", "{work}/data", "--episode", 0, "--out", "{work}", needle="is a directory")),
        Case("view --episode 99", refused("view", "{work}/data", "--episode", 99, "--out", "{work}/v.mp4", needle="99")),
        # damaged datasets
        damaged_dataset("info.json not JSON", lambda r: (r / "meta" / "info.json").write_text("{"), "info", "{root}",
                        needle="info.json"),
        damaged_dataset("the episode table missing", lambda r: shutil.rmtree(r / "meta" / "episodes"), "info", "{root}",
                        needle="episodes"),
        damaged_dataset("a truncated data file", lambda r: truncate(first(r / "data", "*.parquet")), "train",
                        "--policy", "st", "--dataset", "{root}", "--out", "{work}/copies/t-trunc", "--steps", "2",
                        needle=".parquet"),
        damaged_dataset("random bytes in a video", random_bytes_in_video, "train", "--policy", "st", "--dataset",
                        "{root}", "--out", "{work}/copies/t-video", "--steps", "2", needle=".mp4"),
        damaged_dataset("a NaN action", nan_action, "train", "--policy", "st", "--dataset", "{root}", "--out",
                        "{work}/copies/t-nan", "--steps", "2", needle="non-finite"),
        damaged_dataset("info.json action dtype int64", set_info(lambda i: i["features"]["action"].update(dtype="int64")),
                        "train", "--policy", "st", "--dataset", "{root}", "--out", "{work}/copies/t-int", "--steps", "2",
                        needle="int64"),
        damaged_dataset("info.json action dtype float16",
                        set_info(lambda i: i["features"]["action"].update(dtype="float16")), "train", "--policy", "st",
                        "--dataset", "{root}", "--out", "{work}/copies/t-f16", "--steps", "2", needle="float16"),
        damaged_dataset("info.json action dtype float99",
                        set_info(lambda i: i["features"]["action"].update(dtype="float99")), "train", "--policy", "st",
                        "--dataset", "{root}", "--out", "{work}/copies/t-f99", "--steps", "2", needle="float99"),
        damaged_dataset("a feature in info.json missing from the data", set_info(lambda i: i["features"].update(
            {"observation.extra": {"dtype": "float32", "shape": [2], "names": None}})), "train", "--policy", "st",
                        "--dataset", "{root}", "--out", "{work}/copies/t-col", "--steps", "2", needle="observation.extra"),
        # rows, timing and tasks (issue 46): each refused by `stvla info` as by `stvla train`
        *[damaged_dataset(name, damage, command, *args, needle=needle)
          for name, damage, needle in [
              ("episode 0's rows stored in reverse", edit_episode_rows(rows_reversed), "not in time order"),
              ("a gap in the index column", edit_episode_rows(index_gap), "index"),
              ("timestamps at half the fps", edit_episode_rows(timestamps_doubled), "timestamps"),
              ("a task_index the tasks file lacks", edit_episode_rows(task_index_7), "task_index 7"),
              ("info.json fps 15 over 80 fps videos", set_info(lambda i: i.update(fps=15)), "fps"),
              ("info.json camera shape 32x32 over 64x64 video", set_info(lambda i: i["features"][
                  "observation.images.rgb"].update(shape=[32, 32, 3])), "shape")]
          for command, *args in [("info", "{root}"),
                                 ("train", "--policy", "st", "--dataset", "{root}", "--out",
                                  f"{{work}}/copies/t-{name.replace(' ', '-')}", "--steps", "2")]],
        # the outside probe's classes (issue 46, second round), each through `stvla info` and `stvla train`
        *[damaged_dataset(name, damage, command, *args, needle=needle)
          for name, damage, needle in [
              ("a NaN timestamp", edit_episode_rows(timestamp_nan), "timestamp"),
              ("timestamps starting at -1 s", edit_episode_rows(timestamps_from_minus_one), "timestamp"),
              ("episode 0's rows saying episode 1", edit_episode_rows(episode_index_says(1, slice(None))),
               "episode_index"),
              ("one row of episode 0 saying episode 1", edit_episode_rows(episode_index_says(1, slice(-1, None))),
               "episode_index"),
              ("the index column 100 rows from meta/episodes", edit_episode_rows(index_shifted), "dataset_from_index"),
              ("NaN camera intrinsics", edit_episode_rows(intrinsics_of([[np.nan, 0, 31.5], [0, 77, 31.5], [0, 0, 1]])),
               "intrinsics"),
              ("zero camera intrinsics", edit_episode_rows(intrinsics_of([[0.0] * 3] * 3)), "intrinsics"),
              ("info.json fps 0", set_info(lambda i: i.update(fps=0)), "fps"),
              ("info.json fps 80.5", set_info(lambda i: i.update(fps=80.5)), "fps"),
              ("a truncated video container", truncated_video, ".mp4"),
              ("depth said to be in millimetres", depth_in_millimetres, "millimetres"),
              ("a row meta/episodes does not count", edit_episode_rows(extra_row), "holds 33 rows"),
              ("info.json total_frames -69", set_info(lambda i: i.update(total_frames=-69)), "total_frames"),
              ("meta/episodes naming another task for episode 0", edit_meta_episodes(episode_0_task_renamed),
               "tasks are"),
              ("info.json data_path leading outside the dataset",
               set_info(lambda i: i.update(data_path="../../" + i["data_path"])), "leads outside the dataset"),
              ("info.json data_path that does not format",
               set_info(lambda i: i.update(data_path="data/chunk-{chunk:03d}/file-{file_index:03d}.parquet")),
               "data_path"),
              ("frames_sha256 stored as integers", edit_meta_episodes(frames_checksum_as_int), "frames_sha256"),
              ("info.json chunks_size 0", set_info(lambda i: i.update(chunks_size=0)), "chunks_size"),
              ("a NaN start of episode 0's video span", edit_meta_episodes(video_start_nan), "span"),
              ("timestamps drifting 0.9 ms a step", edit_episode_rows(timestamps_drifting), "drift"),
              # the third probe's
              ("info.json total_tasks 5 with 1 task", set_info(lambda i: i.update(total_tasks=5)), "total_tasks"),
              ("a camera's video.fps 40 in info.json, fps 80",
               set_info(lambda i: i["features"]["observation.images.rgb"]["info"].update({"video.fps": 40})),
               "video.fps"),
              # the fourth probe's
              ("depth's video.use_log null in info.json", set_info(lambda i: i["features"]["observation.depth"][
                  "info"].update({"video.use_log": None})), "video.use_log"),
              ("depth's depth_unit \"cm\" in info.json", set_info(lambda i: i["features"]["observation.depth"][
                  "info"].update(depth_unit="cm")), "depth_unit"),
              ("frame_index missing from info.json", set_info(lambda i: i["features"].pop("frame_index")),
               "frame_index"),
              ("a feature's info \"abc\" in info.json",
               set_info(lambda i: i["features"]["observation.images.rgb"].update(info="abc")), "'info' is"),
              ("info.json fps 79 (and every video.fps) over 80 fps videos", set_info(lambda i: [
                  i.update(fps=79), *[f["info"].update({"video.fps": 79}) for f in i["features"].values()
                                      if f.get("dtype") == "video"]]), "fps")]
          for command, *args in [("info", "{root}"),
                                 ("train", "--policy", "st", "--dataset", "{root}", "--out",
                                  f"{{work}}/copies/t-{name.replace(' ', '-')}", "--steps", "2")]],
        Case("train refused after taking a new --out", refused_train_leaves_no_folder),
        damaged_dataset("the Hub's hashes and random bytes in a video",
                        lambda r: (downloaded_from_the_hub(r), random_bytes_in_video(r)), "train", "--policy", "st",
                        "--dataset", "{root}", "--out", "{work}/copies/t-video-hub", "--steps", "2", needle="SHA-256"),
        Case("train on datasets with no hash at all and 64 random bytes in a video (5 places in each)", video_damage_without_any_hash),
        damaged_dataset("a NaN action", nan_action, "info", "{root}", needle="non-finite"),
        # caches and full disks
        Case("train on a decoded cache with 147 KB overwritten, file time restored", cache_damaged(bytes_overwritten)),
        Case("train on a decoded cache whose .npy header dtype was edited, file time restored",
             cache_damaged(header_retyped)),
        Case("train on a decoded cache whose action and state files were swapped with their manifests",
             cache_damaged(swapped_with_the_state, "action.npy", restore_time=False)),
        Case("train whose second checkpoint does not fit on the disk", checkpoint_on_a_full_disk),
        Case("train with --cache_dir on a full disk", cache_on_a_full_disk),
        # training flags
        *[Case(f"train {flag} {value}", refused("train", "--policy", "st", "--dataset", "{work}/data", "--out",
                                                f"{{work}}/copies/flag-{flag[2:]}-{value}", flag, value, needle=needle))
          for flag, value, needle in [("--steps", 0, "--steps"), ("--steps", -5, "--steps"),
                                      ("--batch_size", 0, "--batch_size"), ("--save_every", 0, "--save_every"),
                                      ("--model.patch_size", 0, "patch_size"), ("--model.image_size", 100, "image_size"),
                                      ("--model.image_size", "abc", "image_size"), ("--lr", -1, "--lr"),
                                      ("--ema", 1.5, "--ema"), ("--policy", "nope", "nope"),
                                      ("--init", "{work}/nothing", "nothing"), ("--traces.variant", "D", "variant"),
                                      ("--traces.tracker.buffer_length", 1, "buffer_length"), ("--lr", "inf", "--lr"),
                                      ("--lora.rank", -1, "--lora.rank"), ("--lora.alpha", "nan", "--lora.alpha"),
                                      ("--model.trace_loss_weight", "nan", "trace_loss_weight")]],
        Case("train --dataset missing", refused("train", "--policy", "st", "--dataset", "{work}/nothing", "--out",
                                                "{work}/copies/t-miss", needle="nothing")),
        Case("train --out under a file", refused("train", "--policy", "st", "--dataset", "{work}/data", "--out",
                                                 "{work}/data/meta/info.json/run", "--steps", 2, needle="info.json")),
        # damaged checkpoints
        damaged_policy("truncated weights", lambda p: truncate(p / "model.safetensors"), "model.safetensors"),
        damaged_policy("a pickle as the weights", lambda p: (p / "model.safetensors").write_bytes(PICKLED),
                       "model.safetensors"),
        damaged_policy("a tensor missing", edit_weights(lambda s: s.pop(sorted(s)[0])), "weights missing"),
        damaged_policy("an extra tensor", edit_weights(lambda s: s.update(extra=torch.zeros(2))), "extra"),
        damaged_policy("a NaN bias", edit_weights(nan_bias), "non-finite"),
        damaged_policy("a float tensor stored as int32", edit_weights(stored_as(torch.int32)), "torch.int32"),
        damaged_policy("a float tensor stored as bool", edit_weights(stored_as(torch.bool)), "torch.bool"),
        damaged_policy("a directory as the weights", weights_replaced_by("directory"), "is a directory"),
        damaged_policy("/dev/zero as the weights", weights_replaced_by("device"), "is a device"),
        damaged_policy("an action normaliser never fitted", edit_weights(buffer_set("action_normalizer.fitted",
                                                                                    torch.zeros_like)), "fitted"),
        damaged_policy("the fitted flag stored as uint8 2", edit_weights(buffer_set(
            "action_normalizer.fitted", lambda fitted: fitted.to(torch.uint8) * 2)), "torch.uint8"),
        damaged_policy("a state std of 0", edit_weights(buffer_set("state_normalizer.std", torch.zeros_like)),
                       "state_normalizer.std"),
        damaged_policy("action normaliser high below low", edit_weights(buffer_set("action_normalizer.high",
                                                                                   lambda high: high - 1e3)),
                       "action_normalizer.high"),
        damaged_policy("an unknown policy type in config.json", set_config(lambda c: c.update(type="ST")),
                       "unknown policy type 'ST'"),
        damaged_policy("\"config\": [] in config.json", set_config(lambda c: c.update(config=[])), "config.json"),
        damaged_policy("chunk_size 10**12 in config.json", set_config(
            lambda c: c["config"]["vla"].update(chunk_size=10**12)), "chunk_size"),
        damaged_policy("config.json not JSON", lambda p: (p / "config.json").write_text("{"), "config.json"),
        damaged_policy("no config.json", lambda p: (p / "config.json").unlink(), "config.json"),
        damaged_policy("image_size \"abc\" in config.json", set_config(
            lambda c: c["config"]["vla"].update(image_size="abc")), "image_size"),
        damaged_policy("patch_size -3 in config.json", set_config(
            lambda c: c["config"]["vla"].update(patch_size=-3)), "patch_size"),
        damaged_policy("an action normaliser low of -1e30", edit_weights(buffer_set("action_normalizer.low",
                                                                                     lambda low: low - 1e30)),
                       "beyond"),
        *[Case(f"serve a checkpoint whose processor.json {name}", serve_refused(damage, f"serve-{index}", needle))
          for index, (name, damage, needle) in enumerate([
              ("says chunk_size \"4\"", set_config(lambda c: c.update(chunk_size="4"), "processor.json"),
               "chunk_size"),
              ("says 32 px images", set_config(lambda c: c["camera"].update(image_size=32), "processor.json"),
               "'camera.image_size' is 32"),
              ("lacks the camera input", set_config(lambda c: c["input_features"].pop("observation.images.rgb"),
                                                    "processor.json"), "input_features.observation.images.rgb"),
              ("says 7-D actions", set_config(lambda c: c["output_features"]["action"].update(shape=[7]),
                                              "processor.json"), "output_features.action.shape"),
              ("is missing", lambda p: (p / "processor.json").unlink(), "processor.json is missing")])],
        damaged_policy("a processor.json that is not JSON", lambda p: (p / "processor.json").write_text("{"),
                       "processor.json is not readable JSON"),
        damaged_policy("a processor.json saying 7-D actions", set_config(
            lambda c: c["output_features"]["action"].update(shape=[7]), "processor.json"), "output_features"),
        Case("depth --out inside the dataset", refused("depth", "{work}/data", "--depth_model", "{work}/nothing",
                                                       "--out", "{work}/data/meta/with-depth",
                                                       needle="inside the dataset")),
        Case("info --intrinsics 80,80,nan,48", refused("info", "{work}/data", "--intrinsics", "80,80,nan,48",
                                                       needle="finite")),
        Case("serve a checkpoint whose processor.json is not JSON", serve_refused(
            lambda p: (p / "processor.json").write_text("{"), "serve-processor", "processor.json")),
        Case("serve a checkpoint with a pickle as the weights", serve_refused(
            lambda p: (p / "model.safetensors").write_bytes(PICKLED), "serve-pickle", "model.safetensors")),
        Case("ZoeDepth with a pickle as pytorch_model.bin", python_refused(zoedepth_with_pickled_weights,
                                                                          "could not be loaded")),
        Case("eval --episodes 0", refused("eval", "--policy", "{work}/policy", "--tasks", "reach-v3", "--episodes", 0,
                                          "--out", "{work}/copies/e0", needle="episodes")),
        Case("eval --tasks nope", refused("eval", "--policy", "{work}/policy", "--tasks", "nope-v3", "--out",
                                          "{work}/copies/e1", needle="nope-v3")),
        # the policy boundary (Python)
        Case("select_action, NaN proprio", python_refused(act_with(**{F_STATE: nan_first}), "non-finite")),
        Case("select_action, NaN intrinsics", python_refused(act_with(**{F_K: nan_first}), "intrinsics")),
        Case("select_action, zero intrinsics", python_refused(act_with(**{F_K: np.zeros_like}), "intrinsics")),
        Case("select_action, depth all NaN", python_refused(act_with(**{F_DEPTH: lambda d: np.full_like(d, np.nan)}),
                                                            "no valid value")),
        Case("select_action, depth all zero", python_refused(act_with(**{F_DEPTH: np.zeros_like}), "no valid value")),
        Case("select_action, negative depth", python_refused(act_with(**{F_DEPTH: lambda d: d - 10}), "negative")),
        Case("select_action, depth in millimetres", python_refused(act_with(**{F_DEPTH: lambda d: d * 1000}),
                                                                   "millimetres")),
        Case("select_action, a grey image", python_refused(act_with(**{F_RGB: lambda x: x[..., 0]}), "shape")),
        Case("select_action, a float image", python_refused(act_with(**{F_RGB: lambda x: x / 255.0}), "uint8")),
        Case("select_action, proprio of length 3", python_refused(act_with(**{F_STATE: lambda x: x[:3]}), "shape")),
        Case("select_action, instruction None", python_refused(act_with(instruction=lambda x: None), "instruction")),
        Case("select_action, no depth key", python_refused(act_with(drop=lambda x: "depth"), "'depth'")),
        Case("select_action, not a dict", python_refused(lambda w: observation_with(w)[0].select_action([1, 2]), "dict")),
        # trace drawing
        Case("depth trace (0, 0) -> (1e6, 1e6)", lambda w: ("ok", "") if draw(traces=[np.array([[0, 0], [1e6, 1e6]])])(w)
             is not None else ("silent wrong", "")),
        Case("RGB trace across +-5e8", lambda w: ("ok", "") if draw(rgb={}, traces=[np.array([[-5e8, 64], [5e8, 64]])])(w)
             [64].any() else ("silent wrong", "nothing drawn")),
        Case("depth trace width 1e9", python_refused(draw(traces=[], config={"thickness": 1e9}), "thickness")),
        Case("RGB trace width 10**6", python_refused(draw(rgb={"thickness": 10**6}, traces=[]), "thickness")),
        Case("a trace with a NaN vertex", python_refused(draw(traces=[np.array([[0, 0], [np.nan, 1]])]), "finite")),
        Case("a trace of shape (3,)", python_refused(draw(traces=[np.zeros(3)]), "(L, 2)")),
        # runs that must lose nothing
        Case("two collects into one --out at once", two_collects_at_once),
        Case("kill -9 of training, then the same command", kill_and_resume_training),
        # one spelling of each setting (the old `stvla trace` spellings are aliases for one release)
        Case("trace --traces.variant E", refused("trace", "{work}/data", "--out", "{work}/copies/tr.mp4",
                                                 "--traces.variant", "E", needle="variant")),
        Case("eval --episode 3 (a prefix of --episodes)", refused("eval", "--policy", "{work}/policy", "--episode", 3,
                                                             needle="--episode")),
        Case("trace --variant A --traces.variant C", refused("trace", "{work}/data", "--out", "{work}/copies/tr.mp4",
                                                             "--variant", "A", "--traces.variant", "C",
                                                             needle="one setting")),
        Case("train --cache_dir A --data.cache_dir B", refused("train", "--policy", "st", "--dataset", "{work}/data",
                                                               "--cache_dir", "a", "--data.cache_dir", "b",
                                                               needle="one setting")),
        Case("serve --port 0", serve_on_port_0),
        Case("serve --port 70000", refused("serve", "--policy", "{work}/policy", "--port", 70000, needle="--port")),
        Case("serve --idle_timeout nan", refused("serve", "--policy", "{work}/policy", "--idle_timeout", "nan",
                                                 needle="--idle_timeout")),
        Case("eval --server http://x", refused("eval", "--policy", "{work}/policy", "--server", "http://x", "--out",
                                               "{work}/copies/e-http", needle="--server")),
        Case("eval --out inside the checkpoint", refused("eval", "--policy", "{work}/policy", "--out",
                                                         "{work}/policy/eval", needle="inside the checkpoint")),
        Case("train --out inside the dataset", refused("train", "--policy", "st", "--dataset", "{work}/data", "--out",
                                                       "{work}/data/runs/x", needle="inside the dataset")),
        Case("collect --out inside a dataset", refused("collect", "--task", "reach-v3", "--episodes", 1, "--out",
                                                      "{work}/data/meta/sub", needle="inside the dataset")),
        Case("train --out /proc/x (cannot be made)", refused("train", "--policy", "st", "--dataset", "{work}/data",
                                                             "--out", "/proc/stvla_run", "--steps", 2,
                                                             needle="a folder on the way")),
        Case("train with a folder where a cache file goes", a_folder_where_a_cache_file_goes),
        # the fifth probe's
        Case("train --out ''", refused("train", "--policy", "st", "--dataset", "{work}/data", "--out", "",
                                       needle="--out is empty")),
        Case("eval --tasks reach-v3,reach-v3", refused("eval", "--policy", "{work}/policy", "--tasks", "reach-v3,reach-v3",
                                                       "--out", "{work}/copies/e-twice", needle="given twice")),
        Case("train --variant C --traces.variant C --variant A", refused(
            "train", "--policy", "st", "--dataset", "{work}/data", "--variant", "C", "--traces.variant", "C",
            "--variant", "A", needle="one setting")),
        Case("train --lora.rank 4 without --init", refused("train", "--policy", "st", "--dataset", "{work}/data",
                                                           "--out", "{work}/copies/t-lora", "--lora.rank", 4,
                                                           needle="--init")),
        Case("train --threads 100000", refused("train", "--policy", "st", "--dataset", "{work}/data", "--out",
                                               "{work}/copies/t-threads", "--threads", 100000, needle="--threads")),
        Case("collect into a folder of other files", refused("collect", "--task", "reach-v3", "--episodes", 1,
                                                             "--out", "{work}/copies/users-folder",
                                                             needle="no dataset's")),
        Case("train --out an existing file", refused("train", "--policy", "st", "--dataset", "{work}/data", "--out",
                                                     "{work}/policy/config.json", needle="a file stands where")),
        Case("trace --variant E (the old spelling)", refused("trace", "{work}/data", "--out", "{work}/copies/tr.mp4",
                                                            "--variant", "E", needle="variant")),
    ]
    return listed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="runs/bench-faults", help="scratch folder")
    args = parser.parse_args()
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    prepare(work)
    results = []
    for case in cases():
        started = time.perf_counter()
        outcome, message = case.run(work)
        results.append({"case": case.name, "outcome": outcome, "message": message,
                        "seconds": round(time.perf_counter() - started, 1)})
        print(f"{outcome:13s} {case.name}: {message}", flush=True)
    counts = Counter(r["outcome"] for r in results)
    figures = {"cases": len(results), **{k: counts.get(k, 0) for k in
                                         ("clear", "ok", "vague", "traceback", "silent wrong", "lost", "undetectable")},
               "results": results}
    rows = [("cases tried (commands in their own process, Python calls, concurrent and killed runs)", str(len(results))),
            ("refused with a clear one-line error naming the file, field or value", str(counts.get("clear", 0))),
            ("worked as they must (resume after kill -9, second writer refused, huge traces drawn)", str(counts.get("ok", 0))),
            ("vague errors / tracebacks / silently wrong / finished work lost",
             " / ".join(str(counts.get(k, 0)) for k in ("vague", "traceback", "silent wrong", "lost"))),
            ("damage nothing can detect without a reference hash (said in the README)", str(counts.get("undetectable", 0)))]
    rows += [(f"not yet right: {r['case']}" if r["outcome"] != "undetectable" else
              f"cannot be told without a reference hash: {r['case']}", f"{r['outcome']}: {r['message'][:120]}")
             for r in results if r["outcome"] not in ("clear", "ok")]
    record("faults", figures, rows, title="Faults: bad input, damaged files, full disks, concurrent and killed runs (issues 19 and 46)")


if __name__ == "__main__":
    run(main)
