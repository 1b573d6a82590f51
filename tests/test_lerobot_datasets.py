"""Datasets as LeRobot 0.6.1's own writer makes them (tests/fixtures/lerobot-0.6.1, read as they are):
packed files, AV1 video, depth as 12-bit HEVC video or float TIFF images, another camera name, 7-D
actions, no intrinsics. Every frame is checked against what the fixture script wrote."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stvla import features as F
from stvla.cli import main
from stvla.data.roles import DataConfig
from stvla.data.store import DatasetError, EpisodeStore
from stvla.envs import make_env
from stvla.policies.registry import load_policy

FIXTURES = Path(__file__).parent / "fixtures" / "lerobot-0.6.1"
CAMERA, DEPTH_KEY = "observation.images.front", "observation.images.front_depth"
EPISODES, FRAMES, SIZE = 3, 20, 96
TASKS = ["pick up the red block", "open the drawer", "pick up the red block"]


def written_frames() -> dict[str, np.ndarray]:
    """What make_fixtures_writer.py gave LeRobot, frame by frame (the same random draws, in order)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    out: dict[str, list] = {"rgb": [], "box": [], "state": [], "action": []}
    for episode in range(EPISODES):
        position = np.array([0.4, 0.0, 0.3, 0, 0, 0, 1.0], np.float32)
        for i in range(FRAMES):
            image = np.zeros((SIZE, SIZE, 3), np.uint8)
            image[..., 0], image[..., 1], image[..., 2] = (xx * 2) % 256, (yy * 2) % 256, 60
            box = (abs(xx - (20 + 2 * i + 5 * episode)) < 8) & (abs(yy - (30 + i)) < 8)
            image[box] = 255
            action = np.concatenate([rng.normal(0, 0.01, 3), rng.normal(0, 0.05, 3),
                                     [1.0 if i < 10 else -1.0]]).astype(np.float32)
            out["rgb"].append(image), out["box"].append(box), out["state"].append(position.copy())
            out["action"].append(action)
            position = position + np.concatenate([action[:6], [0]]).astype(np.float32)
    return {key: np.stack(values) for key, values in out.items()}


@pytest.mark.parametrize("name", ["rgb_7d", "depth_video", "depth_image"])
def test_every_frame_reads_back_as_written(name):
    store = EpisodeStore(FIXTURES / name, DataConfig())
    truth = written_frames()
    assert store.num_episodes == EPISODES and store.num_frames == EPISODES * FRAMES
    assert store.stored_key(F.RGB) == CAMERA
    keys = [F.RGB, F.STATE, F.ACTION, F.TASK_INDEX] + ([F.DEPTH] if name != "rgb_7d" else [])
    read = {key: np.concatenate([store.episode(e, keys)[key] for e in range(EPISODES)]) for key in keys}
    np.testing.assert_array_equal(read[F.STATE], truth["state"])
    np.testing.assert_array_equal(read[F.ACTION], truth["action"])
    assert [store.tasks[t] for t in read[F.TASK_INDEX][::FRAMES]] == TASKS
    # AV1 at crf 30 is lossy: close on average, the square white where it was drawn, and every frame
    # nearer to what was written for it than to its neighbours (none shifted or swapped).
    error = np.abs(read[F.RGB].astype(int)[:, None] - truth["rgb"][None]).mean(axis=(2, 3, 4))  # (read, written)
    assert error.diagonal().max() < 4.0, error.diagonal().max()
    assert np.array_equal(error.argmin(axis=1), np.arange(len(error)))
    assert all(rgb[box].mean() > 240 for rgb, box in zip(read[F.RGB], truth["box"]))
    if name != "rgb_7d":
        depth = np.load(FIXTURES / f"{name}_depth_truth.npz")["depth_m"]
        assert read[F.DEPTH].dtype == np.float32 and read[F.DEPTH].shape == depth.shape
        # The video holds 12-bit log codes (about 0.8 mm apart here); the TIFF images hold the floats.
        tolerance = 1e-3 if name == "depth_video" else 0.0
        assert np.abs(read[F.DEPTH] - depth).max() <= tolerance
    store.verify()


def test_camera_depth_and_intrinsics_are_chosen_by_name(tmp_path):
    store = EpisodeStore(FIXTURES / "depth_video", DataConfig(camera=CAMERA, depth=DEPTH_KEY, fov=90))
    assert store.stored_key(F.DEPTH) == DEPTH_KEY and store.features[F.DEPTH]["shape"] == [SIZE, SIZE]
    intrinsics = store.episode(2, [F.INTRINSICS])[F.INTRINSICS]
    assert intrinsics.shape == (FRAMES, 3, 3)
    np.testing.assert_allclose(intrinsics[0], [[48, 0, 47.5], [0, 48, 47.5], [0, 0, 1]], atol=1e-4)  # centre of a 96-px image
    given = EpisodeStore(FIXTURES / "depth_video", DataConfig(intrinsics="100,101,47.5,48.5"))
    np.testing.assert_array_equal(given.frame(0, 0, [F.INTRINSICS])[F.INTRINSICS],
                                  [[100, 0, 47.5], [0, 101, 48.5], [0, 0, 1]])
    assert given.source_of(F.INTRINSICS) != store.source_of(F.INTRINSICS)  # caches keep them apart

    with pytest.raises(ValueError, match=r"--camera 'observation.images.top' is not a feature.*\['observation.images.front'\]"):
        EpisodeStore(FIXTURES / "rgb_7d", DataConfig(camera="observation.images.top"))
    with pytest.raises(ValueError, match="--depth 'observation.state' is not a depth feature"):
        EpisodeStore(FIXTURES / "depth_video", DataConfig(depth="observation.state"))
    with pytest.raises(ValueError, match="--intrinsics '1,2': expected four numbers"):
        EpisodeStore(FIXTURES / "rgb_7d", DataConfig(intrinsics="1,2"))
    # Two cameras: the user must choose.
    two = tmp_path / "two"
    shutil.copytree(FIXTURES / "rgb_7d", two)
    info = json.loads((two / "meta/info.json").read_text())
    info["features"]["observation.images.wrist"] = info["features"][CAMERA]
    (two / "meta/info.json").write_text(json.dumps(info))
    with pytest.raises(ValueError, match=r"several camera features \['observation.images.front', "
                                         r"'observation.images.wrist'\]; choose one with --camera KEY"):
        EpisodeStore(two, DataConfig())


def test_a_packed_data_file_that_lost_rows_names_it(tmp_path):
    import pyarrow.parquet as pq

    root = tmp_path / "cut"
    shutil.copytree(FIXTURES / "rgb_7d", root)
    path = root / "data/chunk-000/file-000.parquet"
    pq.write_table(pq.read_table(path).slice(0, 50), path)
    store = EpisodeStore(root, DataConfig())
    assert store.episode(1)[F.ACTION].shape == (FRAMES, 7)
    with pytest.raises(ValueError, match=r"file-000.parquet holds 10 rows of episode 2, expected 20"):
        store.episode(2)


def test_train_reads_lerobot_datasets_as_they_are(tmp_path, monkeypatch):
    """tracevla on RGB-only 7-D data (no model flags), st on HEVC depth with a field of view; the
    dataset is read-only and stays untouched (caches go to the cache folder)."""
    tiny = ["--steps", "2", "--batch_size", "4", "--model.width", "32", "--model.image.channels", "8,16",
            "--model.image.width", "32", "--model.trunk.width", "32", "--model.trunk.depth", "1",
            "--model.trunk.heads", "2"]
    data = tmp_path / "rgb_7d"
    shutil.copytree(FIXTURES / "rgb_7d", data)
    for path in [data, *data.rglob("*")]:
        path.chmod(0o555 if path.is_dir() else 0o444)
    try:
        before = sorted(p.relative_to(data) for p in data.rglob("*"))
        cache = tmp_path / "cache"
        assert main(["train", "--policy", "tracevla", "--dataset", str(data), "--out", str(tmp_path / "tv"),
                     "--cache_dir", str(cache), *tiny]) == 0
        assert sorted(p.relative_to(data) for p in data.rglob("*")) == before
        assert any(cache.glob("rgb_7d-*/decoded/observation.images.front.npy"))
    finally:
        for path in [data, *data.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
    policy = load_policy(tmp_path / "tv" / "policy")
    vla = policy.config.vla
    assert (vla.action_dim, vla.state_dim, vla.image_size, vla.use_ego3d) == (7, 7, SIZE, False)
    assert vla.grid.has_rotation and vla.grid.gripper_dim == 6 and vla.grid.rotation_dims == (3, 4, 5)

    assert main(["train", "--policy", "st", "--dataset", str(FIXTURES / "depth_video"), "--out",
                 str(tmp_path / "st"), "--fov", "60", *tiny]) == 0
    assert load_policy(tmp_path / "st" / "policy").config.vla.use_ego3d


def test_depth_policies_on_rgb_only_data_say_what_to_do(tmp_path, capsys):
    assert main(["train", "--policy", "st", "--dataset", str(FIXTURES / "rgb_7d"), "--out", str(tmp_path / "x"),
                 "--steps", "1"]) == 2
    message = capsys.readouterr().err.strip()
    assert len(message.splitlines()) == 1 and "has no depth: policy 'st' needs it" in message and "is_depth_map" in message
    assert main(["train", "--policy", "st", "--dataset", str(FIXTURES / "depth_image"), "--out", str(tmp_path / "y"),
                 "--steps", "1"]) == 2
    message = capsys.readouterr().err.strip()
    assert "has no observation.camera.intrinsics" in message and "--fov" in message


def test_packed_rewrite_and_every_depth_format_read_back(small_dataset, tmp_path):
    """An `stvla collect` dataset rewritten with several episodes per file reads back equal; depth written
    as LeRobot's 12-bit video is within 0.5 mm of the exact float images, and a float column too."""
    from stvla.data import CollectConfig, collect
    from stvla.data.store import pack

    root, _ = small_dataset
    packed = pack(root, tmp_path / "packed", episodes_per_file=3)
    original, rewritten = EpisodeStore(root), EpisodeStore(packed)
    assert rewritten.episodes["data/file_index"].tolist() == [0, 0, 0, 1]
    assert rewritten.tasks == original.tasks and rewritten.num_frames == original.num_frames
    for episode in range(original.num_episodes):
        a, b = original.episode(episode), rewritten.episode(episode)
        assert sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a), episode
        assert rewritten.episode_meta(episode)["seed"] == original.episode_meta(episode)["seed"]

    depth = {}
    for depth_format in ("video", "image", "float"):
        out = tmp_path / depth_format
        collect(CollectConfig(task="reach-v3", episodes=1, image_size=64, out=str(out), depth_format=depth_format),
                progress=False)
        store = EpisodeStore(out)
        feature = store.info["features"][F.DEPTH]
        assert (feature.get("info") or {}).get("is_depth_map", False) == (depth_format != "float")
        depth[depth_format] = store.episode(0, [F.DEPTH])[F.DEPTH]
    assert np.array_equal(depth["image"], depth["float"])
    assert 0 < np.abs(depth["video"] - depth["float"]).max() <= 0.0005 + 1e-6
    # What was stored is the simulator's depth in metres, as rendered (not cast to another type on the way).
    env = make_env("reach-v3", image_size=64)
    rendered, _ = env.reset(seed=EpisodeStore(tmp_path / "image").episode_meta(0)["seed"])
    env.close()
    assert np.array_equal(depth["image"][0], rendered[F.OBS_DEPTH].astype(np.float32))


def test_view_renders_a_lerobot_episode_with_or_without_depth(tmp_path):
    from stvla.data.video import read_video

    assert main(["view", str(FIXTURES / "rgb_7d"), "--episode", "2", "--out", str(tmp_path / "rgb.mp4")]) == 0
    assert main(["view", str(FIXTURES / "depth_image"), "--episode", "2", "--out", str(tmp_path / "rgbd.mp4")]) == 0
    assert read_video(tmp_path / "rgb.mp4").shape == (FRAMES, 256, 256, 3)  # RGB alone
    assert read_video(tmp_path / "rgbd.mp4").shape == (FRAMES, 256, 512, 3)  # RGB | depth


def test_rgb_stored_as_images_reads_back_exactly(tmp_path):
    """An RGB camera kept as an image feature (PNG bytes in the data files, as LeRobot stores `image`
    features) is a camera like a video one, and reads back pixel for pixel."""
    from stvla.data.store import EpisodeWriter

    rng = np.random.default_rng(0)
    features = {"observation.images.wrist": {"dtype": "image", "shape": [32, 32, 3], "names": ["height", "width", "channels"]},
                F.STATE: {"dtype": "float32", "shape": [4], "names": None},
                F.ACTION: {"dtype": "float32", "shape": [4], "names": None}}
    writer = EpisodeWriter.create_or_resume(tmp_path / "ds", 10, features, "arm", episodes_per_file=2)
    episodes = [{"observation.images.wrist": rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
                 F.STATE: rng.normal(size=(n, 4)).astype(np.float32),
                 F.ACTION: rng.normal(size=(n, 4)).astype(np.float32)} for n in (5, 7)]
    for episode in episodes:
        writer.add_episode(episode, "wave")
    writer.flush()
    store = EpisodeStore(tmp_path / "ds", DataConfig())
    assert store.stored_key(F.RGB) == "observation.images.wrist"
    for index, episode in enumerate(episodes):
        np.testing.assert_array_equal(store.episode(index, [F.RGB])[F.RGB], episode["observation.images.wrist"])


@pytest.mark.parametrize("damage, message", [
    ("reversed", r"episode 1's rows are not in time order: row 0 has frame_index 19, expected 0"),
    ("timestamps", r"episode 1: timestamps are not 1/fps = 0.1 s apart .*info.json's fps"),
    ("task_index", r"episode 1, row 0 has task_index 7, but meta/tasks.parquet holds \d task\(s\)"),
    ("timestamp_nan", r"file-000.parquet: episode 1, row 5 has timestamp nan: timestamps are finite seconds"),
    ("timestamp_start", r"file-000.parquet: episode 1, row 0 has timestamp -1, not 0: timestamps are seconds from"),
    ("episode_index", r"file-000.parquet: episode 1, row 19 \(index 39\) has episode_index 2, but "
                      r".*meta/episodes places it in episode 1"),
])
def test_rows_out_of_time_order_or_task_are_refused_naming_file_and_episode(tmp_path, damage, message):
    """An episode whose rows are stored out of order would pair every action with another frame's image; a
    task_index outside the tasks file has no instruction; a NaN timestamp passes every comparison, and rows
    labelled another episode than meta/episodes places them in belong to neither for sure."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = Path(shutil.copytree(FIXTURES / "rgb_7d", tmp_path / "reordered"))
    path = root / "data/chunk-000/file-000.parquet"
    table = pq.read_table(path)
    rows = np.flatnonzero(table.column("episode_index").to_numpy() == 1)
    if damage == "reversed":  # rows and their index values as they were, frame_index and data reversed
        order = np.arange(table.num_rows)
        order[rows] = rows[::-1]
        table = table.take(order).set_column(table.schema.get_field_index("index"), "index", table.column("index"))
    else:
        column = {"task_index": "task_index", "episode_index": "episode_index"}.get(damage, "timestamp")
        values = table.column(column).to_numpy().copy()
        if damage == "task_index":  # a task the tasks file does not have
            values[rows] = 7
        elif damage == "timestamps":  # recorded at another rate than info.json says
            values[rows] *= 2
        elif damage == "timestamp_nan":
            values[rows[5]] = np.nan
        elif damage == "timestamp_start":  # not seconds from the episode's start
            values[rows] -= 1
        else:  # the episode's last row labelled the next episode
            values[rows[-1]] = 2
        table = table.set_column(table.schema.get_field_index(column), column,
                                 pa.array(values, table.schema.field(column).type))
    pq.write_table(table, path)
    store = EpisodeStore(root, DataConfig())
    assert store.episode(0)[F.ACTION].shape == (FRAMES, 7)
    with pytest.raises(ValueError, match=message):
        store.episode(1, [F.ACTION, F.TASK_INDEX])


@pytest.mark.parametrize("damage, message", [
    ("index_shifted", r"meta/episodes says episode 1 is index \[20, 40\) \(dataset_from_index, dataset_to_index\) "
                      r"but .*file-000.parquet's index column holds \[120, 140\) for its rows"),
    ("length", r"meta/episodes says episode 1 has length 20 but is index \[20, 38\) \(dataset_from_index, "
               r"dataset_to_index\), 18 rows"),
    ("span_shifted", r"file-000.parquet: episode 1, row 0 \(index 18\) has episode_index 0, but "
                     r".*meta/episodes places it in episode 1"),
])
def test_index_spans_that_disagree_with_meta_episodes_say_which(tmp_path, damage, message):
    """meta/episodes' dataset_from_index..dataset_to_index and the data file's `index` column locate an
    episode's rows in a packed file: where they disagree, the line says what each holds."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = Path(shutil.copytree(FIXTURES / "rgb_7d", tmp_path / "spans"))
    if damage == "index_shifted":
        path = root / "data/chunk-000/file-000.parquet"
        table = pq.read_table(path)
        index = table.column("index").to_numpy().copy()
        index[table.column("episode_index").to_numpy() == 1] += 100
        pq.write_table(table.set_column(table.schema.get_field_index("index"), "index",
                                        pa.array(index, table.schema.field("index").type)), path)
    else:
        path = root / "meta/episodes/chunk-000/file-000.parquet"
        episodes = pq.read_table(path).to_pandas()
        edges = ["dataset_to_index"] if damage == "length" else ["dataset_from_index", "dataset_to_index"]
        for edge in edges:
            episodes.loc[1, edge] -= 2
        episodes.to_parquet(path)
    store = EpisodeStore(root, DataConfig())
    assert store.episode(0)[F.ACTION].shape == (FRAMES, 7)
    with pytest.raises(ValueError, match=message):
        store.episode(1, [F.ACTION])


def test_depth_in_millimetres_is_refused_by_info_as_by_train(tmp_path, capsys):
    """A depth stream quantised in millimetres (codes 0..4095 for 10..10000): training refuses it as it decodes
    the depth; `stvla info` decodes the first episode's and refuses with training's own line."""
    root = edited_copy(tmp_path, "depth_video", lambda info: info["features"][DEPTH_KEY]["info"].update(
        {"video.depth_min": 10.0, "video.depth_max": 10000.0, "video.use_log": False}))
    refusal = rf"{root} episode 0 feature '{DEPTH_KEY}': depth's median is \d+: that looks like millimetres"
    assert main(["info", str(root), "--fov", "60"]) == 2
    info_error = capsys.readouterr().err
    assert re.search(refusal, info_error) and len(info_error.strip().splitlines()) == 1
    assert main(["train", "--policy", "st", "--dataset", str(root), "--fov", "60", "--out", str(tmp_path / "run"),
                 "--steps", "1", "--cache_dir", str(tmp_path / "cache")]) == 2
    train_error = capsys.readouterr().err.strip().splitlines()[-1]
    assert train_error.removeprefix("stvla train: error: ") in info_error


def test_info_checks_the_depth_of_every_episode_as_training_does(tmp_path, capsys):
    """Depth in millimetres in the last episode only: `stvla info` checked the first episode's and passed
    a dataset training refuses; it now decodes every episode's depth and refuses with the same line."""
    import io

    from PIL import Image

    root = Path(shutil.copytree(FIXTURES / "depth_image", tmp_path / "depth_image"))
    path = root / "data/chunk-000/file-000.parquet"
    table = pq.read_table(path)
    last = table.column("episode_index").to_numpy() == table.column("episode_index").to_numpy().max()
    images = table.column(DEPTH_KEY).to_pylist()
    for row in np.flatnonzero(last):
        metres = np.asarray(Image.open(io.BytesIO(images[row]["bytes"]))).astype(np.float32)
        written = io.BytesIO()
        Image.fromarray(metres * 1000, mode="F").save(written, format="TIFF")
        images[row] = {**images[row], "bytes": written.getvalue()}
    pq.write_table(table.set_column(table.schema.get_field_index(DEPTH_KEY), DEPTH_KEY,
                                    pa.array(images, type=table.schema.field(DEPTH_KEY).type)), path)
    assert main(["info", str(root), "--fov", "60"]) == 2
    info_error = capsys.readouterr().err.strip().splitlines()
    assert len(info_error) == 1 and "that looks like millimetres" in info_error[0], info_error
    assert main(["train", "--policy", "st", "--dataset", str(root), "--fov", "60", "--out", str(tmp_path / "run"),
                 "--steps", "1", "--cache_dir", str(tmp_path / "cache")]) == 2
    train_error = capsys.readouterr().err.strip().splitlines()[-1]
    assert train_error.removeprefix("stvla train: error: ") in info_error[0]


def edited_copy(tmp_path: Path, name: str, edit) -> Path:
    """A copy of fixture `name` whose meta/info.json `edit(info)` changed (another shape of a LeRobot dataset)."""
    root = Path(shutil.copytree(FIXTURES / name, tmp_path / name))
    info = json.loads((root / "meta/info.json").read_text())
    edit(info)
    (root / "meta/info.json").write_text(json.dumps(info, indent=4))
    return root


def test_a_channels_first_camera_of_older_lerobot_writers_is_read_as_it_is(tmp_path, capsys):
    """Datasets ported by LeRobot's older writers (v2.0) may declare a camera [3, H, W] with names
    ["channels", "height", "width"]; LeRobot reads the order from the names, and so does the store (a shape
    whose first size cannot be channels is left as it is)."""
    def channels_first(info):
        info["features"][CAMERA].update(shape=[3, SIZE, SIZE], names=["channels", "height", "width"])

    root = edited_copy(tmp_path, "rgb_7d", channels_first)
    store = EpisodeStore(root, DataConfig())
    assert store.stored_key(F.RGB) == CAMERA and store.features[F.RGB]["shape"] == [SIZE, SIZE, 3]
    np.testing.assert_array_equal(store.episode(1, [F.RGB])[F.RGB],
                                  EpisodeStore(FIXTURES / "rgb_7d", DataConfig()).episode(1, [F.RGB])[F.RGB])
    assert main(["info", str(root)]) == 0
    out = capsys.readouterr().out
    assert f"cameras  {CAMERA} {SIZE}x{SIZE}, read as it is" in out and "refused" not in out
    from stvla.data.store import _channels_last

    mislabelled = {"dtype": "video", "shape": [SIZE, SIZE, 3], "names": ["channels", "height", "width"]}
    assert _channels_last(mislabelled) == mislabelled


def test_the_first_cameras_own_depth_is_chosen_among_several_and_never_anothers(tmp_path):
    """Two cameras with a depth each (`<camera>_depth`): the first --camera's depth is read without --depth;
    a dataset whose only depth is another camera's does not silently pair it with the first camera."""
    side, side_depth = "observation.images.side", "observation.images.side_depth"

    def two_depths(info):
        info["features"][side], info["features"][side_depth] = info["features"][CAMERA], info["features"][DEPTH_KEY]

    root = edited_copy(tmp_path, "depth_video", two_depths)
    assert EpisodeStore(root, DataConfig(camera=CAMERA)).stored_key(F.DEPTH) == DEPTH_KEY
    assert EpisodeStore(root, DataConfig(camera=f"{side},{CAMERA}")).stored_key(F.DEPTH) == side_depth
    assert EpisodeStore(root, DataConfig(camera=CAMERA, depth=side_depth)).stored_key(F.DEPTH) == side_depth

    def only_the_side_depth(info):
        info["features"][side], info["features"][side_depth] = info["features"][CAMERA], info["features"].pop(DEPTH_KEY)

    root = edited_copy(tmp_path / "b", "depth_video", only_the_side_depth)
    with pytest.raises(ValueError, match=r"the depth feature 'observation.images.side_depth' is camera "
                                         r"'observation.images.side''s, not the first --camera 'observation.images.front'"):
        EpisodeStore(root, DataConfig(camera=CAMERA))
    assert EpisodeStore(root, DataConfig(camera=side)).stored_key(F.DEPTH) == side_depth
    assert EpisodeStore(root, DataConfig(camera=CAMERA, depth=side_depth)).stored_key(F.DEPTH) == side_depth


TINY_FLAGS = ["--steps", "2", "--batch_size", "4", "--val_episodes", "0", "--model.width", "32",
              "--model.image.channels", "8,16", "--model.image.width", "32", "--model.trunk.width", "32",
              "--model.trunk.depth", "1", "--model.trunk.heads", "2"]


def test_a_dataset_without_state_trains_without_the_state_token(tmp_path, capsys):
    """Images, depth and actions, no observation.state (neither in info.json nor in the data file): refused in
    one line naming --model.use_state false, with which it trains, and the policy acts on frames without a state."""
    import pyarrow.parquet as pq

    root = edited_copy(tmp_path, "depth_image", lambda info: info["features"].pop(F.STATE))
    path = root / "data/chunk-000/file-000.parquet"
    pq.write_table(pq.read_table(path).drop([F.STATE]), path)
    assert main(["info", str(root)]) == 0
    assert "state    none: train with --model.use_state false" in capsys.readouterr().out
    out, cache = tmp_path / "st", ["--cache_dir", str(tmp_path / "cache")]
    assert main(["train", "--policy", "st", "--dataset", str(root), "--out", str(out), "--fov", "60", *cache,
                 *TINY_FLAGS]) == 2
    message = capsys.readouterr().err.strip()
    assert len(message.splitlines()) == 1 and "has no 'observation.state' feature" in message \
        and "--model.use_state false" in message
    assert main(["train", "--policy", "st", "--dataset", str(root), "--out", str(out), "--fov", "60", *cache,
                 "--model.use_state", "false", *TINY_FLAGS]) == 0
    policy = load_policy(out / "policy")
    assert not policy.config.vla.use_state and F.STATE not in policy.processor.contract()["input_features"]
    store = EpisodeStore(root, DataConfig())
    frames = store.episode(0, [F.RGB, F.DEPTH])
    policy.reset()
    action = policy.select_action({CAMERA: frames[F.RGB][0], DEPTH_KEY: frames[F.DEPTH][0], F.TASK: TASKS[0]})
    assert np.shape(action) == (7,) and np.isfinite(action).all()
    assert main(["train", "--policy", "llarva", "--dataset", str(root), "--out", str(tmp_path / "llarva"), "--fov",
                 "60", *cache, "--model.use_state", "false", *TINY_FLAGS]) == 2
    assert "reads the proprio state's history" in capsys.readouterr().err


def test_a_one_value_state_and_action_are_vectors(tmp_path):
    """LeRobot stores a feature of shape [1] as a plain column: a one-joint robot's state and action read
    as (T, 1) vectors, as every other size, and train (they were (T,) scalars, which training refused)."""
    from stvla.data.store import EpisodeWriter

    rng = np.random.default_rng(0)
    features = {CAMERA: {"dtype": "image", "shape": [32, 48, 3], "names": ["height", "width", "channels"]},
                F.STATE: {"dtype": "float32", "shape": [1], "names": ["conveyor.pos"]},
                F.ACTION: {"dtype": "float64", "shape": [1], "names": ["conveyor.pos"]}}
    writer = EpisodeWriter.create_or_resume(tmp_path / "one", 15, features, "conveyor", episodes_per_file=3)
    for _ in range(3):
        writer.add_episode({CAMERA: rng.integers(0, 256, (8, 32, 48, 3), dtype=np.uint8),
                            F.STATE: rng.normal(size=8).astype(np.float32), F.ACTION: rng.normal(size=(8, 1))},
                           "move the belt")
    writer.flush()
    frames = EpisodeStore(tmp_path / "one", DataConfig()).episode(1, [F.STATE, F.ACTION])
    assert frames[F.STATE].shape == (8, 1) and frames[F.ACTION].shape == (8, 1)
    assert main(["train", "--policy", "tracevla", "--dataset", str(tmp_path / "one"), "--out", str(tmp_path / "tv"),
                 "--cache_dir", str(tmp_path / "cache"), *TINY_FLAGS]) == 0
    vla = load_policy(tmp_path / "tv" / "policy").config.vla
    assert (vla.state_dim, vla.action_dim, vla.action_layout) == (1, 1, "joint")


def test_task_strings_kept_as_a_column_are_read_and_anything_else_is_named(tmp_path):
    """meta/tasks.parquet as other writers make it (a "task" column beside task_index, no pandas index) gives
    the same instructions; a table without the strings is refused naming the file, never read as numbers."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = Path(shutil.copytree(FIXTURES / "rgb_7d", tmp_path / "rgb_7d"))
    path = root / "meta/tasks.parquet"
    pq.write_table(pa.table({"task_index": pa.array([1, 0], pa.int64()),
                             "task": ["open the drawer", "pick up the red block"]}), path)
    store = EpisodeStore(root)
    assert store.tasks == EpisodeStore(FIXTURES / "rgb_7d").tasks == ["pick up the red block", "open the drawer"]
    pq.write_table(pa.table({"task_index": pa.array([0, 1], pa.int64())}), path)
    with pytest.raises(ValueError, match=r"tasks.parquet: task 0 is not a string"):
        EpisodeStore(root)


def test_an_fps_the_videos_do_not_run_at_is_named(tmp_path, capsys):
    """info.json's fps becomes the policy's control rate (processor.json, stvla serve): one the videos and the
    timestamps contradict is refused, naming the file."""
    def to_30_fps(info):  # everywhere info.json holds it, as one would edit it
        info.update(fps=30)
        info["features"][CAMERA]["info"]["video.fps"] = 30

    root = edited_copy(tmp_path, "rgb_7d", to_30_fps)
    with pytest.raises(ValueError, match=r"file-000.mp4: the video runs at 10 fps, meta/info.json says 30"):
        EpisodeStore(root, DataConfig()).episode(0, [F.RGB])
    assert main(["info", str(root)]) == 2  # the timestamps, read first, say so too
    assert "timestamps are not 1/fps = 0.03333 s apart" in capsys.readouterr().err


def test_a_video_of_another_size_than_info_json_says_is_named(tmp_path, capsys):
    """Videos re-encoded at another size without info.json changed: the frames were returned at their own size,
    with intrinsics and the fit computed from the size info.json gives; now one line names both."""
    root = edited_copy(tmp_path, "rgb_7d", lambda info: info["features"][CAMERA].update(shape=[120, 160, 3]))
    with pytest.raises(ValueError, match=r"file-000.mp4: frames of 'observation.images.front' are 96x96, "
                                         r"meta/info.json says 120x160"):
        EpisodeStore(root, DataConfig(fov=60)).episode(0, [F.RGB, F.INTRINSICS])
    assert main(["info", str(root)]) == 2
    assert "are 96x96, meta/info.json says 120x160" in capsys.readouterr().err


def test_a_task_string_control_would_refuse_is_refused_before_training(tmp_path, capsys):
    """A blank task string (or one with line breaks) trains a policy that could never be given its own
    instruction at control: `stvla train` refuses it in one line naming the file and the task."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = Path(shutil.copytree(FIXTURES / "rgb_7d", tmp_path / "rgb_7d"))
    pq.write_table(pa.table({"task_index": pa.array([0, 1], pa.int64()), "task": ["pick up the red block", " "]}),
                   root / "meta/tasks.parquet")
    assert main(["train", "--policy", "tracevla", "--dataset", str(root), "--out", str(tmp_path / "run"),
                 "--steps", "1", "--cache_dir", str(tmp_path / "cache")]) == 2
    assert "meta/tasks.parquet: task 1 must be a non-empty string" in capsys.readouterr().err


@pytest.mark.parametrize("layout", ["local_dir", "hub_cache"])
def test_a_video_downloaded_from_the_hub_is_checked_against_the_hubs_sha256(tmp_path, layout):
    """LeRobot's datasets carry no frame checksums, but one from the Hub has the Hub's SHA-256 of each file:
    huggingface_hub's download metadata (LeRobot's `snapshot_download(local_dir=...)`) or the Hub cache's
    blob the file links to. A flipped bit, which the decoder may conceal, is then refused naming the file."""
    import hashlib

    from stvla.data.store import DatasetError

    root = Path(shutil.copytree(FIXTURES / "rgb_7d", tmp_path / "from-hub"))
    relative = Path("videos") / CAMERA / "chunk-000" / "file-000.mp4"
    video = root / relative
    sha256 = hashlib.sha256(video.read_bytes()).hexdigest()
    if layout == "local_dir":  # commit hash, etag, download time: what huggingface_hub writes
        metadata = root / ".cache/huggingface/download" / f"{relative}.metadata"
        metadata.parent.mkdir(parents=True)
        metadata.write_text(f"{'0' * 40}\n{sha256}\n{video.stat().st_mtime}\n")
    else:
        blob = tmp_path / "blobs" / sha256
        blob.parent.mkdir()
        shutil.move(video, blob)
        video.symlink_to(blob)
    clean = EpisodeStore(root, DataConfig()).episode(1, [F.RGB])[F.RGB]
    data = bytearray(video.read_bytes())
    data[len(data) // 2] ^= 0x10
    video.resolve().write_bytes(bytes(data))
    with pytest.raises(DatasetError, match=rf"{video}: its SHA-256 differs from the one the Hub gave at download"):
        EpisodeStore(root, DataConfig()).episode(1, [F.RGB])
    assert clean.shape == (FRAMES, SIZE, SIZE, 3)


def test_episodes_whose_video_spans_overlap_are_refused(tmp_path):
    """Episode 1's span shifted by one frame into episode 2's: it would read another episode's frame, and a
    LeRobot dataset carries no hash that would tell."""
    import pyarrow.parquet as pq

    from stvla.data.store import DatasetError

    root = Path(shutil.copytree(FIXTURES / "rgb_7d", tmp_path / "shifted"))
    path = root / "meta/episodes/chunk-000/file-000.parquet"
    table = pq.read_table(path).to_pandas()
    for edge in ("from_timestamp", "to_timestamp"):
        table.loc[1, f"videos/{CAMERA}/{edge}"] += 0.1
    table.to_parquet(path)
    with pytest.raises(DatasetError, match=rf"episodes 1 and 2 overlap in {CAMERA}'s video file"):
        EpisodeStore(root, DataConfig())


def test_a_video_of_another_codec_than_info_says_is_refused(tmp_path):
    """A depth stream (HEVC) copied over an RGB video (AV1, as info.json says): caught without any hash."""
    from stvla.data.store import DatasetError

    root = Path(shutil.copytree(FIXTURES / "depth_video", tmp_path / "swapped"))
    shutil.copy(root / "videos" / DEPTH_KEY / "chunk-000/file-000.mp4", root / "videos" / CAMERA / "chunk-000/file-000.mp4")
    with pytest.raises(DatasetError, match=rf"the video is hevc, meta/info.json says '{CAMERA}' is av1"):
        EpisodeStore(root, DataConfig()).episode(0, [F.RGB])


@pytest.mark.parametrize("edit, message", [
    (lambda info: info.update(total_frames=-60), r"info.json: total_frames is -60 but meta/episodes lists 60 frames"),
    (lambda info: info.update(total_frames=61), r"info.json: total_frames is 61 but meta/episodes lists 60 frames"),
    (lambda info: info.update(total_frames="60"), r"info.json: field 'total_frames' must be a whole number, got '60'"),
    (lambda info: info.update(data_path="../../elsewhere/" + info["data_path"]),
     r"info.json: field 'data_path' '\.\./\.\./elsewhere/data/chunk-\{chunk_index:03d\}/file-\{file_index:03d\}"
     r"\.parquet' leads outside the dataset folder \(\.\./\.\./elsewhere/data/chunk-000/file-000\.parquet\)"),
    (lambda info: info.update(video_path="/tmp/{video_key}/file-{file_index:03d}.mp4"),
     r"info.json: field 'video_path' '/tmp/\{video_key\}/file-\{file_index:03d\}\.mp4' leads outside the dataset"),
    (lambda info: info.update(data_path="data/chunk-{chunk:03d}/file-{file_index:03d}.parquet"),
     r"info.json: field 'data_path' 'data/chunk-\{chunk:03d\}/file-\{file_index:03d\}\.parquet' does not format "
     r"with chunk_index, file_index \(KeyError: 'chunk'\)"),
    (lambda info: info.update(video_path=info["video_path"].replace("{file_index:03d}", "{file_index:zz}")),
     r"info.json: field 'video_path' '.*\{file_index:zz\}\.mp4' does not format with video_key, chunk_index, "
     r"file_index \(ValueError: Unknown format code 'z'"),
    (lambda info: info.update(chunks_size=0), r"info.json: field 'chunks_size' must be a positive whole number .*got 0"),
    (lambda info: info.update(total_tasks=5), r"info.json: total_tasks is 5 but meta/tasks.parquet lists 2 tasks"),
    (lambda info: info["features"][CAMERA].update(info="abc"),
     rf"info.json: feature '{CAMERA}': 'info' is \"abc\", not a mapping"),
    (lambda info: info["features"].update(action=[7]), r"info.json: feature 'action' is \[7\], not an entry"),
    (lambda info: info["features"]["action"].update(shape="7"), r"feature 'action': 'shape' is \"7\", not a list"),
    (lambda info: info["features"]["action"].pop("dtype"), r"feature 'action': 'dtype' is null, not a type name"),
    (lambda info: info["features"][CAMERA]["info"].update({"video.fps": 40}),
     rf"info.json: feature '{CAMERA}' says video.fps 40, but field 'fps' is 10: one of them is not the recording's"),
    (lambda info: info.update(chunks_size="1000"), r"info.json: field 'chunks_size' must be a positive .*got '1000'"),
])
def test_info_json_totals_and_path_templates_that_do_not_hold_are_named(tmp_path, capsys, edit, message):
    """info.json's total_frames must be what meta/episodes lists, its path templates must format into files
    inside the dataset folder (never another dataset's), its chunks_size be a count: else one line names the
    field and its value, where a template gave "error: chunk" and the others were accepted."""
    root = edited_copy(tmp_path, "rgb_7d", edit)
    with pytest.raises(DatasetError, match=message):
        EpisodeStore(root, DataConfig())
    assert main(["info", str(root)]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and re.search(message, error[0]), error


def test_an_info_json_ahead_of_meta_episodes_is_what_a_killed_writer_leaves(tmp_path):
    """The writer writes info.json before meta/episodes: killed between them, info.json counts one more
    episode (and its frames) than meta/episodes lists, which stays the record and is read."""
    root = edited_copy(tmp_path, "rgb_7d", lambda info: info.update(total_episodes=4, total_frames=80))
    store = EpisodeStore(root, DataConfig())
    assert (store.num_episodes, store.num_frames) == (EPISODES, EPISODES * FRAMES)


@pytest.mark.parametrize("damage, message", [
    ("extra_row", r"data/chunk-000/file-000.parquet holds 61 rows but meta/episodes accounts for 60 "
                  r"\(episodes 0..2 placed in it\)"),
    ("episode_tasks", r"meta/episodes: episode 1's tasks are \['pick up the red block'\], but its rows' task_index "
                      r"in .*file-000.parquet give \['open the drawer'\] \(meta/tasks.parquet\)"),
    ("float_episode_index", r"meta/episodes/chunk-000/file-000.parquet: column 'episode_index' holds float64 "
                            r"values \(0.0, ...\), not integers"),
    ("same_task_twice", r"meta/tasks.parquet: tasks 0 and 1 are both 'pick up the red block': a task string names "
                        r"one task"),
])
def test_meta_files_that_disagree_with_the_data_are_refused_by_info_and_train(tmp_path, capsys, damage, message):
    """A row beyond the episodes meta/episodes places in a data file (cheap to see: the parquet footer's row
    count), an episode whose `tasks` are not its rows' tasks, a fractional episode index, a task string twice:
    each was trained on silently; now `stvla info` and `stvla train` refuse it in the same one line."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = Path(shutil.copytree(FIXTURES / "rgb_7d", tmp_path / damage))
    episodes_path = root / "meta/episodes/chunk-000/file-000.parquet"
    if damage == "extra_row":  # a 21st row of the last episode, in time order
        path = root / "data/chunk-000/file-000.parquet"
        table = pq.read_table(path)
        row = table.slice(table.num_rows - 1, 1).to_pylist()[0]
        row.update(index=row["index"] + 1, frame_index=row["frame_index"] + 1, timestamp=row["timestamp"] + 0.1)
        pq.write_table(pa.concat_tables([table, pa.Table.from_pylist([row], schema=table.schema)]), path)
    elif damage == "same_task_twice":  # episode 1's task renamed to episode 0's
        pq.write_table(pa.table({"task_index": pa.array([0, 1], pa.int64()),
                                 "task": ["pick up the red block", "pick up the red block"]}),
                       root / "meta/tasks.parquet")
    else:
        episodes = pq.read_table(episodes_path).to_pandas()
        if damage == "episode_tasks":
            episodes["tasks"] = [["pick up the red block"]] * EPISODES
        else:
            episodes["episode_index"] = episodes["episode_index"].astype(float)
        episodes.to_parquet(episodes_path)
    lines = []
    for command in (["info", str(root)], ["train", "--policy", "st", "--dataset", str(root), "--steps", "1",
                                          "--out", str(tmp_path / "run"), "--cache_dir", str(tmp_path / "cache")]):
        assert main(command) == 2
        error = capsys.readouterr().err.strip().splitlines()
        assert re.search(message, error[-1]), error
        lines.append(error[-1].split(": error: ", 1)[1].removeprefix("stvla train would refuse this dataset: "))
    assert lines[0] == lines[1]


@pytest.mark.parametrize("column, value", [("from_timestamp", float("nan")), ("to_timestamp", float("inf")),
                                           ("file_index", "0")])
def test_a_video_span_that_is_not_one_is_refused_on_open(tmp_path, column, value):
    """An episode's span in a packed video file must be integers for the file and finite times from >= 0
    to a later one: a NaN start would read frames from nowhere in particular."""
    import pyarrow.parquet as pq

    root = Path(shutil.copytree(FIXTURES / "rgb_7d", tmp_path / "span"))
    path = root / "meta/episodes/chunk-000/file-000.parquet"
    episodes = pq.read_table(path).to_pandas()
    name = next(c for c in episodes.columns if c.startswith("videos/") and c.endswith(f"/{column}"))
    if isinstance(value, str):
        episodes[name] = episodes[name].astype(str)
    else:
        episodes.loc[0, name] = value
    episodes.to_parquet(path)
    with pytest.raises(ValueError, match="file_index. holds .* values.*, not integers" if isinstance(value, str) else
                       r"episode 0's span of .* video is \[.*\) s: a span runs from a time >= 0 to a later one"):
        EpisodeStore(root, DataConfig())


def test_an_episode_listed_twice_in_meta_episodes_is_named(tmp_path):
    import pandas as pd

    root = Path(shutil.copytree(FIXTURES / "rgb_7d", tmp_path / "twice"))
    path = root / "meta/episodes/chunk-000/file-000.parquet"
    episodes = pd.read_parquet(path)
    pd.concat([episodes, episodes.iloc[[1]]], ignore_index=True).to_parquet(path)
    with pytest.raises(ValueError, match=r"episode indices are not 0..\d+: episode 1 is listed 2 times"):
        EpisodeStore(root, DataConfig())


def depth_info(**changes):
    def edit(info):
        info["features"][DEPTH_KEY]["info"].update(changes)
    return edit


@pytest.mark.parametrize("fixture, edit, message", [
    ("depth_video", depth_info(**{"video.use_log": None}), r"video.use_log is null, not true or false"),
    ("depth_video", depth_info(**{"video.use_log": "false"}), r"video.use_log is \"false\", not true or false"),
    ("depth_video", depth_info(**{"video.depth_min": None}), r"video.depth_min is null, not a number of metres"),
    ("depth_video", depth_info(**{"video.shift": "abc"}), r"video.shift is \"abc\", not a number of metres"),
    ("depth_video", depth_info(**{"video.depth_max": [10.0]}), r"video.depth_max is \[10.0\], not a number"),
    ("depth_image", depth_info(depth_unit="cm"), r"has depth_unit \"cm\", not one of \['m', 'mm'\]"),
    ("rgb_7d", lambda info: info["features"].pop("frame_index"),
     r"feature 'frame_index' is missing: LeRobot writes it with every row"),
    ("rgb_7d", lambda info: info["features"].pop("timestamp"), r"feature 'timestamp' is missing"),
])
def test_depth_fields_of_another_type_and_missing_order_columns_are_refused(tmp_path, capsys, fixture, edit, message):
    """A null use_log decoded a log-coded depth video linearly (a metre off), an unknown depth_unit was read as
    metres, and a dataset without frame_index / timestamp had no order left to check: each is one line now,
    naming info.json and the field, by `stvla info` as by training."""
    root = edited_copy(tmp_path, fixture, edit)
    with pytest.raises(DatasetError, match=message):
        EpisodeStore(root, DataConfig(fov=60)).episode(0, [F.DEPTH] if "depth" in fixture else [F.RGB])
    assert main(["info", str(root), "--fov", "60"]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "info.json" in error[0] and re.search(message, error[0]), error


def test_meta_episodes_tasks_as_one_string_are_checked_as_a_list(tmp_path):
    """LeRobot writes each episode's tasks as a list; a plain string naming another task is refused as the
    list is (it skipped the check)."""
    root = Path(shutil.copytree(FIXTURES / "rgb_7d", tmp_path / "rgb_7d"))
    path = root / "meta/episodes/chunk-000/file-000.parquet"
    table = pq.read_table(path)
    strings = pa.array(["pick the cube"] * table.num_rows)
    pq.write_table(table.set_column(table.schema.get_field_index("tasks"), "tasks", strings), path)
    with pytest.raises(DatasetError, match=r"episode 0.s tasks are \[.pick the cube.\], but its rows. task_index"):
        EpisodeStore(root, DataConfig()).episode(0, [F.ACTION, "task_index"])


@pytest.mark.parametrize("intrinsics, message", [("80,80,nan,48", "every value must be a finite number"),
                                                 ("inf,80,48,48", "every value must be a finite number")])
def test_non_finite_intrinsics_are_refused_by_every_command(capsys, intrinsics, message):
    """`stvla info` took --intrinsics with a NaN that training refused; the setting is checked where it is made."""
    assert main(["info", str(FIXTURES / "rgb_7d"), "--intrinsics", intrinsics]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and message in error[0] and intrinsics in error[0], error


def test_meta_episodes_in_two_files_name_the_file_at_fault(tmp_path):
    """meta/episodes split over two files (LeRobot starts a new one as it grows): a column of the wrong type,
    or missing, in the second is named with the second file, not the first."""
    root = Path(shutil.copytree(FIXTURES / "rgb_7d", tmp_path / "rgb_7d"))
    first = root / "meta/episodes/chunk-000/file-000.parquet"
    second = first.with_name("file-001.parquet")
    table = pq.read_table(first)
    pq.write_table(table.slice(0, 1), first)
    later = table.slice(1)
    pq.write_table(later.set_column(later.schema.get_field_index("length"), "length",
                                    later.column("length").cast(pa.float64())), second)
    with pytest.raises(DatasetError, match=rf"{second}: column 'length' holds float64 values"):
        EpisodeStore(root, DataConfig())
    pq.write_table(later.drop_columns([later.column_names[-1]]), second)
    with pytest.raises(DatasetError, match=rf"{second}: column '{later.column_names[-1]}' is in one of"):
        EpisodeStore(root, DataConfig())
    pq.write_table(later, second)
    assert EpisodeStore(root, DataConfig()).num_episodes == table.num_rows  # split as it is, it reads


def test_appending_features_again_after_a_stopped_run_writes_this_runs_values(tmp_path):
    """A run of append_features stopped before info.json (as a failed `stvla depth` in place) leaves its column in
    the data files; the next call, perhaps with another depth model, must write its own values, not keep those."""
    from stvla.data.store import append_features

    root = Path(shutil.copytree(FIXTURES / "rgb_7d", tmp_path / "rgb_7d"))
    feature = {"observation.extra": {"dtype": "float32", "shape": [2], "names": None}}
    info = (root / "meta/info.json").read_text()
    lengths = EpisodeStore(root).episodes["length"].tolist()
    append_features(root, feature, lambda e: {"observation.extra": np.full((lengths[e], 2), 1.0, np.float32)})
    (root / "meta/info.json").write_text(info)  # as if stopped before info.json made the column visible
    append_features(root, feature, lambda e: {"observation.extra": np.full((lengths[e], 2), 2.0, np.float32)})
    assert (EpisodeStore(root).episode(0, ["observation.extra"])["observation.extra"] == 2.0).all()


def test_a_colour_image_among_depth_images_is_named(tmp_path):
    """One depth image replaced by an RGB JPEG gave numpy's "cannot reshape array"; now the file, feature and
    row are named."""
    import io

    from PIL import Image

    root = Path(shutil.copytree(FIXTURES / "depth_image", tmp_path / "depth_image"))
    path = root / "data/chunk-000/file-000.parquet"
    table = pq.read_table(path)
    images = table.column(DEPTH_KEY).to_pylist()
    written = io.BytesIO()
    Image.new("RGB", (96, 96), (10, 20, 30)).save(written, format="JPEG")
    images[2] = {**images[2], "bytes": written.getvalue()}
    pq.write_table(table.set_column(table.schema.get_field_index(DEPTH_KEY), DEPTH_KEY,
                                    pa.array(images, type=table.schema.field(DEPTH_KEY).type)), path)
    with pytest.raises(DatasetError, match=rf"file-000.parquet: row 2 of depth feature '{DEPTH_KEY}' is a "
                                           r"\(96, 96, 3\) image \(RGB\), not one channel of depth"):
        EpisodeStore(root, DataConfig(fov=60)).episode(0, [F.DEPTH])
