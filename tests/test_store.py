"""Episode store: LeRobot v3 layout, exact round trips, clear errors on damaged files, resume."""

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from stvla.data import CollectConfig, DatasetError, EpisodeStore, EpisodeWriter, collect
from stvla.data.cache import DecodedCache
from stvla.envs import episode_seed

FEATURES = {
    "observation.images.rgb": {"dtype": "video", "shape": [32, 32, 3], "names": ["height", "width", "channels"]},
    "observation.depth": {"dtype": "float32", "shape": [32, 32], "names": ["height", "width"]},
    "observation.camera.pose": {"dtype": "float32", "shape": [4, 4], "names": None},
    "action": {"dtype": "float32", "shape": [4], "names": ["dx", "dy", "dz", "gripper"]},
    "next.success": {"dtype": "bool", "shape": [1], "names": None},
}


def make_episode(rng, length):
    depth = rng.uniform(0.3, 4.0, size=(length, 32, 32)).astype(np.float32)
    depth[0, 0, 0] = np.float32(1.2345678)  # a value whose float32 bits must survive exactly
    return {
        "observation.images.rgb": rng.integers(0, 256, size=(length, 32, 32, 3), dtype=np.uint8),
        "observation.depth": depth,
        "observation.camera.pose": rng.normal(size=(length, 4, 4)).astype(np.float32),
        "action": rng.uniform(-1, 1, size=(length, 4)).astype(np.float32),
        "next.success": rng.random(length) < 0.5,
    }


@pytest.fixture()
def written(tmp_path):
    rng = np.random.default_rng(0)
    writer = EpisodeWriter.create_or_resume(tmp_path / "ds", fps=10, features=FEATURES, robot_type="sawyer")
    episodes = [make_episode(rng, n) for n in (5, 9)]
    for i, episode in enumerate(episodes):
        writer.add_episode(episode, f"task {i % 2}", {"seed": 100 + i})
    return tmp_path / "ds", episodes


def test_write_read_round_trip(written):
    root, episodes = written
    store = EpisodeStore(root)
    assert (store.num_episodes, store.num_frames, store.tasks) == (2, 14, ["task 0", "task 1"])
    for index, original in enumerate(episodes):
        loaded = store.episode(index)
        for key in ("observation.depth", "observation.camera.pose", "action", "next.success"):
            assert loaded[key].dtype == original[key].dtype
            np.testing.assert_array_equal(loaded[key], original[key])  # bit-exact, depth included
        # RGB is stored as lossless h264 by default, so it round-trips exactly too.
        np.testing.assert_array_equal(loaded["observation.images.rgb"], original["observation.images.rgb"])
        np.testing.assert_array_equal(loaded["frame_index"], np.arange(len(original["action"])))
    assert store.episode_meta(1)["seed"] == 101
    window = store.frames(1, 2, 6, ["observation.depth"])
    np.testing.assert_array_equal(window["observation.depth"], episodes[1]["observation.depth"][2:6])
    np.testing.assert_array_equal(store.frame(1, 8)["action"], episodes[1]["action"][8])
    with pytest.raises(IndexError, match="outside episode 1"):
        store.frames(1, 5, 10)


def test_layout_matches_lerobot_v3(written):
    root, _ = written
    info = json.loads((root / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["robot_type"] == "sawyer"
    assert (info["total_episodes"], info["total_frames"], info["total_tasks"]) == (2, 14, 2)
    for key in ("timestamp", "frame_index", "episode_index", "index", "task_index"):
        assert key in info["features"]
    assert info["features"]["observation.images.rgb"]["info"]["video.height"] == 32
    episodes = pq.read_table(root / "meta/episodes/chunk-000/file-000.parquet").to_pandas()
    for column in ("episode_index", "tasks", "length", "data/chunk_index", "data/file_index", "dataset_from_index",
                   "dataset_to_index", "videos/observation.images.rgb/from_timestamp", "stats/action/q99",
                   "meta/episodes/chunk_index"):
        assert column in episodes.columns, column
    assert list(episodes["dataset_to_index"]) == [5, 14]
    tasks = pd.read_parquet(root / "meta/tasks.parquet")
    assert tasks.index.name == "task" and list(tasks["task_index"]) == [0, 1]
    data = pq.read_table(root / info["data_path"].format(chunk_index=0, file_index=1))
    assert data.num_rows == 9 and b"huggingface" in data.schema.metadata
    assert (root / info["video_path"].format(video_key="observation.images.rgb", chunk_index=0, file_index=1)).is_file()
    stats = json.loads((root / "meta/stats.json").read_text())
    all_actions = np.concatenate([ep["action"] for ep in written[1]])
    np.testing.assert_allclose(stats["action"]["mean"], all_actions.mean(0), rtol=1e-5)
    np.testing.assert_allclose(stats["action"]["std"], all_actions.std(0), rtol=1e-5)
    assert stats["action"]["count"] == [14]


def test_lossy_video_setting_round_trips_approximately(tmp_path):
    from stvla.data.video import VideoSettings, read_video, write_video

    y, x = np.mgrid[0:32, 0:32]
    frames = np.stack([np.stack([127 + 60 * np.sin(x / 6 + t / 3) * np.cos(y / 7)] * 3, -1) for t in range(6)])
    frames = frames.astype(np.uint8)
    write_video(tmp_path / "v.mp4", frames, 10, VideoSettings(codec="libx264", pix_fmt="yuv420p", crf=18))
    assert np.abs(read_video(tmp_path / "v.mp4", expected_frames=6).astype(int) - frames).mean() < 2.0
    with pytest.raises(ValueError, match="holds 6 frames, expected 7"):
        read_video(tmp_path / "v.mp4", expected_frames=7)


def test_missing_and_truncated_files_name_the_file(written):
    root, _ = written
    data_file = root / "data/chunk-000/file-001.parquet"
    data_file.write_bytes(data_file.read_bytes()[:200])
    store = EpisodeStore(root)
    with pytest.raises(DatasetError, match="file-001.parquet"):
        store.episode(1)
    with pytest.raises(DatasetError, match="file-001.parquet"):
        store.verify()
    video = root / "videos/observation.images.rgb/chunk-000/file-000.mp4"
    video.unlink()
    with pytest.raises(DatasetError, match="video file missing: .*file-000.mp4"):
        EpisodeStore(root).episode(0)
    (root / "meta/info.json").unlink()
    with pytest.raises(DatasetError, match="info.json is missing"):
        EpisodeStore(root)


@pytest.mark.parametrize("damage", ["truncated", "moov renamed", "empty"])
def test_a_damaged_video_container_names_the_file_its_size_and_ffmpegs_reason(written, damage):
    """FFmpeg's own message ("Invalid data found when processing input") says neither which file nor why."""
    root, _ = written
    video = root / "videos/observation.images.rgb/chunk-000/file-001.mp4"
    data = video.read_bytes()
    if damage == "truncated":  # an mp4's index (moov) is written last
        data = data[:len(data) * 2 // 3]
    elif damage == "moov renamed":
        data = data.replace(b"moov", b"moox", 1)
    else:
        data = b""
    video.write_bytes(data)
    store = EpisodeStore(root)
    assert store.episode(0)["observation.images.rgb"].shape == (5, 32, 32, 3)
    with pytest.raises(DatasetError, match=rf"video file {video} \({len(data)} bytes\) cannot be opened as a video "
                                           rf"container \(damaged, truncated or not a video\): Invalid data found"):
        store.episode(1)


def test_bad_episode_shape_is_refused(tmp_path):
    writer = EpisodeWriter.create_or_resume(tmp_path / "ds", fps=10, features=FEATURES, robot_type="sawyer")
    episode = make_episode(np.random.default_rng(1), 4)
    episode["observation.depth"] = episode["observation.depth"][:, :16]
    with pytest.raises(ValueError, match="observation.depth.*expected shape"):
        writer.add_episode(episode, "task")
    with pytest.raises(FileExistsError):
        writer.add_episode(make_episode(np.random.default_rng(1), 4), "task")
        EpisodeWriter.create_or_resume(tmp_path / "ds", fps=10, features=FEATURES, robot_type="sawyer")


def test_decoded_cache_matches_store_and_is_reused(written):
    """One decoded cache per dataset: each feature decoded once, whatever list later asks for it."""
    root, episodes = written
    cache = DecodedCache(EpisodeStore(root), progress=False)
    arrays = cache.require(["observation.depth", "observation.images.rgb"])
    assert len(cache) == 14
    np.testing.assert_array_equal(arrays["observation.depth"][cache.episode_slice(1)],
                                  episodes[1]["observation.depth"])
    depth_file = cache.directory / "observation.depth.npy"
    built_at = depth_file.stat().st_mtime_ns
    again = DecodedCache(EpisodeStore(root), progress=False)
    more = again.require(["action", "observation.depth"])  # another list: only the new key is decoded
    assert again.directory == cache.directory and depth_file.stat().st_mtime_ns == built_at
    np.testing.assert_array_equal(more["action"][cache.episode_slice(0)], episodes[0]["action"])
    assert sorted(p.name for p in cache.directory.iterdir()) == [
        "action.npy", "action.npy.json", "observation.depth.npy", "observation.depth.npy.json",
        "observation.images.rgb.npy", "observation.images.rgb.npy.json"]
    with pytest.raises(KeyError, match="unknown features"):
        again.require(["observation.nothing"])


def test_collected_dataset_contents(small_dataset):
    root, summary = small_dataset
    store = EpisodeStore(root)
    assert store.num_episodes == 4 and summary.frames == store.num_frames
    assert [store.episode_meta(i)["env_task"] for i in range(4)] == ["reach-v3"] * 2 + ["pick-place-v3"] * 2
    assert store.episode_meta(2)["seed"] == episode_seed("pick-place-v3", 0)
    frames = store.episode(2)
    assert frames["observation.depth"].shape[1:] == (64, 64)
    assert frames["next.success"][-1] and not frames["next.success"][:-1].any()
    # The recorded end-effector pixel is the recorded end-effector position through the recorded camera.
    from stvla import geometry

    uv = geometry.project_world_points(frames["observation.ee.position"].astype(np.float64),
                                       frames["observation.camera.intrinsics"][0], frames["observation.camera.pose"][0])
    np.testing.assert_allclose(uv, frames["observation.ee.pixel"], atol=1e-3)


def test_train_and_eval_seeds_never_overlap():
    train = {episode_seed(t, a) for t in ("reach-v3", "push-v3") for a in range(0, 50_000, 97)}
    evaluation = {episode_seed(t, a, "eval") for t in ("reach-v3", "push-v3") for a in range(0, 50_000, 97)}
    assert not train & evaluation


def test_killed_collection_keeps_finished_episodes_and_resumes(tmp_path):
    root = tmp_path / "killed"
    command = [sys.executable, "-m", "stvla.cli", "collect", "--task", "reach-v3", "--episodes", "30",
               "--image_size", "64", "--out", str(root)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    episodes_file = root / "meta/episodes/chunk-000/file-000.parquet"
    deadline = time.time() + 120
    while time.time() < deadline:
        if episodes_file.exists() and pq.read_metadata(episodes_file).num_rows >= 2:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    store = EpisodeStore(root)
    store.verify()
    finished = store.num_episodes
    assert 2 <= finished < 30
    summary = collect(CollectConfig(task="reach-v3", episodes=finished + 2, image_size=64, out=str(root), resume=True),
                      progress=False)
    resumed = EpisodeStore(root)
    resumed.verify()
    assert resumed.num_episodes == finished + 2 and summary.tasks["reach-v3"].kept == 2
    seeds = [resumed.episode_meta(i)["seed"] for i in range(resumed.num_episodes)]
    assert len(set(seeds)) == len(seeds)


def test_existing_dataset_needs_resume(small_dataset):
    root, _ = small_dataset
    with pytest.raises(FileExistsError, match="resume"):
        collect(CollectConfig(task="reach-v3", episodes=1, image_size=64, out=str(root)), progress=False)
    with pytest.raises(Exception, match="other settings"):
        collect(CollectConfig(task="reach-v3", episodes=3, image_size=96, out=str(root), resume=True), progress=False)


@pytest.mark.parametrize("value", ["int", "empty", "upper", "null"])
def test_a_frames_checksum_that_is_not_one_is_refused_and_a_null_one_means_none(written, value):
    """An episode's frames_sha256 that is no SHA-256 (a number, an empty string, upper case) was taken for "no
    checksum" and the check skipped (or said the file damaged); now it is refused naming the column and the
    episode. A null one, as an episode appended by a writer that records none has, still means none."""
    import re

    root, episodes = written
    path = root / "meta/episodes/chunk-000/file-000.parquet"
    column = "videos/observation.images.rgb/frames_sha256"
    table = pq.read_table(path).to_pandas()
    if value == "int":
        table[column] = [12345, 67890]
    else:
        table.loc[0, column] = {"empty": "", "upper": table[column][0].upper(), "null": None}[value]
    table.to_parquet(path)
    store = EpisodeStore(root)
    if value == "null":
        store.check_video_files()
        np.testing.assert_array_equal(store.episode(0)["observation.images.rgb"], episodes[0]["observation.images.rgb"])
        return
    stored = 12345 if value == "int" else table[column][0]
    message = re.escape(f"meta/episodes: episode 0's {column} is {stored!r}, not a SHA-256 of 64 lowercase hex "
                        f"digits (or null for no checksum)")
    with pytest.raises(DatasetError, match=message):
        store.check_video_files()  # what `stvla info` and `stvla train` check first
    with pytest.raises(DatasetError, match=message):
        store.episode(0)
