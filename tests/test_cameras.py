"""Any LeRobot robot's cameras: images of any size and aspect fitted to the model's square input (with the
intrinsics and the depth moved alike), the same fit in training and at control; and several cameras."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from stvla import features as F
from stvla.cli import main
from stvla.data.roles import DataConfig
from stvla.data.store import EpisodeStore, EpisodeWriter
from stvla.geometry import intrinsics_from_fov, project_camera_points
from stvla.image_fit import fit_depth, fit_intrinsics, fit_rgb
from stvla.policies.processor import CONTRACT_FILE
from stvla.policies.registry import load_policy
from stvla.policies.vla import SmallVLA
from stvla.train.samples import TrainingSamples
from stvla.train.trainer import camera_of, fit_model_to_dataset
from test_processor import TINY, tiny_policy

FIXTURES = Path(__file__).parent / "fixtures" / "lerobot-0.6.1"  # written by LeRobot 0.6.1 (see its README)
FRANKA = FIXTURES / "franka_640x480_depth"
SO101 = FIXTURES / "so101_joints_2cam"
FRONT, FRONT_DEPTH, WRIST = "observation.images.front", "observation.images.front_depth", "observation.images.wrist"
TINY_FLAGS = ["--steps", "2", "--batch_size", "4", "--val_episodes", "0", "--model.width", "32",
              "--model.image.channels", "8,16", "--model.image.width", "32", "--model.trunk.width", "32",
              "--model.trunk.depth", "1", "--model.trunk.heads", "2"]


# --- the transform ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("height, width, side, fit", [
    (480, 640, 128, "crop"), (480, 640, 128, "pad"), (640, 480, 96, "crop"), (640, 480, 96, "pad"),
    (100, 60, 128, "crop"), (100, 60, 128, "pad"), (64, 64, 128, "crop")])
def test_a_point_lands_on_the_same_content_with_the_moved_intrinsics(height, width, side, fit):
    """Each pixel holds its own (u, v) (a linear image, which area averaging and bilinear sampling keep):
    3D points projected with K onto the image and with the moved K onto the fitted image see the same."""
    v, u = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.stack([u, v, np.ones_like(u)], axis=-1)
    K = intrinsics_from_fov(60, height, width)
    moved = fit_intrinsics(K, (height, width), side, fit)
    fitted = fit_rgb(image, side, fit)
    assert fitted.shape == (side, side, 3)
    rng = np.random.default_rng(0)
    points = np.stack([rng.uniform(-0.4, 0.4, 500), rng.uniform(-0.4, 0.4, 500), rng.uniform(1, 2, 500)], -1)
    uv, fitted_uv = project_camera_points(points, K), project_camera_points(points, moved)
    inside = np.all((uv > 2) & (uv < [width - 3, height - 3]), axis=1) \
        & np.all((fitted_uv > 1) & (fitted_uv < side - 2), axis=1)
    assert inside.sum() > 50
    seen = cv2.remap(fitted, *fitted_uv[inside].astype(np.float32).T[:, None], cv2.INTER_LINEAR)[0]
    assert (seen[:, 2] > 0.999).all()  # the image, not the padding
    np.testing.assert_allclose(seen[:, :2], uv[inside], atol=0.05)
    if fit == "crop":  # every fitted pixel shows the image
        assert (fitted[..., 2] > 0.999).all()
    else:  # the whole image is there, the rest is padding
        assert fitted[..., 2].min() < 0.5 or height == width


@pytest.mark.parametrize("fit", ["crop", "pad"])
def test_fitted_depth_mixes_no_depths_and_pads_with_no_reading(fit):
    rng = np.random.default_rng(1)
    depth = rng.uniform(0.3, 3.0, (2, 48, 80)).astype(np.float32)
    depth[:, :, 40:] += 5.0  # a discontinuity: averaging across it would make depths of neither side
    depth[0, 5, 5] = np.nan
    fitted = fit_depth(depth, 32, fit)
    assert fitted.shape == (2, 32, 32) and fitted.dtype == np.float32
    values = fitted[np.isfinite(fitted)]
    assert np.isin(values, np.concatenate([depth.ravel(), [0.0]])).all()
    assert (((values >= 0.3) & (values <= 3.0)) | (values >= 5.3) | (values == 0)).all()
    assert np.isnan(fitted).sum() <= 1 and ((values > 0).all() if fit == "crop" else (values == 0).any())
    if fit == "pad":  # 80 wide: the 48 rows sit in the middle of an 80 square, 0 above and below
        assert (fitted[:, :6] == 0).all() and (fitted[:, -6:] == 0).all() and (fitted[:, 12:20] > 0).all()
    with pytest.raises(ValueError, match="--image_fit 'stretch': expected one of crop, pad"):
        DataConfig(image_fit="stretch")


# --- the store -------------------------------------------------------------------------------------------
def test_the_store_reads_a_640x480_camera_at_the_models_size():
    data = DataConfig(fov=60)
    raw, store = EpisodeStore(FRANKA, data), EpisodeStore(FRANKA, data, image_size=128)
    assert raw.features[F.RGB]["shape"] == [480, 640, 3] and raw.features[F.DEPTH]["shape"] == [480, 640]
    assert store.features[F.RGB]["shape"] == [128, 128, 3] and store.features[F.DEPTH]["shape"] == [128, 128]
    keys = [F.RGB, F.DEPTH, F.INTRINSICS]
    before, after = raw.episode(1, keys), store.episode(1, keys)
    np.testing.assert_array_equal(after[F.RGB], fit_rgb(before[F.RGB], 128, "crop"))
    np.testing.assert_array_equal(after[F.DEPTH], fit_depth(before[F.DEPTH], 128, "crop"))
    # 60 degrees over 480 rows: fy = 415.7 px; the centred 480x480 square shrunk 3.75 times.
    np.testing.assert_allclose(after[F.INTRINSICS][0], [[415.6922 / 3.75, 0, 63.5], [0, 415.6922 / 3.75, 63.5],
                                                         [0, 0, 1]], rtol=1e-5)
    assert after[F.INTRINSICS].dtype == np.float32
    # Caches are keyed on the fit: another size or fit never reads this one's files.
    pad = EpisodeStore(FRANKA, DataConfig(fov=60, image_fit="pad"), image_size=128)
    small = EpisodeStore(FRANKA, data, image_size=64)
    for key in keys:
        names = {raw.source_of(key), store.source_of(key), pad.source_of(key), small.source_of(key)}
        assert len(names) == 4, names
    np.testing.assert_allclose(pad.frame(0, 0, [F.INTRINSICS])[F.INTRINSICS][1, 2], (239.5 + 80 + 0.5) * 0.2 - 0.5)


def test_a_depth_of_another_aspect_than_the_camera_is_refused_before_fitting(tmp_path):
    """Depth that does not show what the camera shows (another aspect) cannot be fitted with it: one line
    naming both, instead of a depth misaligned with the image and its intrinsics."""
    import shutil

    copy = Path(shutil.copytree(FRANKA, tmp_path / "franka"))
    info_path = copy / "meta" / "info.json"
    info = json.loads(info_path.read_text())
    info["features"][FRONT_DEPTH]["shape"] = [480, 480, 1]
    info_path.write_text(json.dumps(info))
    EpisodeStore(copy, DataConfig(fov=60))  # read as stored: nothing is fitted
    with pytest.raises(ValueError, match=r"depth 'observation.images.front_depth' is 480x480 and camera "
                                         r"'observation.images.front' 480x640"):
        EpisodeStore(copy, DataConfig(fov=60), image_size=128)


# --- training equals control -----------------------------------------------------------------------------
def sent_at_camera_size(raw: EpisodeStore, keys: list[str], episode: int, with_intrinsics: bool) -> list[dict]:
    """An episode's frames as a robot client sends them: the camera's own size, the dataset's names."""
    frames = raw.episode(episode, keys)
    instruction = raw.episode_meta(episode)["tasks"][0]
    names = [raw.stored_key(key) if key != F.INTRINSICS else F.OBS_INTRINSICS for key in keys]
    return [{name: frames[key][index] for name, key in zip(names, keys)
             if key != F.INTRINSICS or with_intrinsics} | {F.TASK: instruction}
            for index in range(raw.episode_length(episode))]


def model_inputs_at_control(policy, messages: list[dict]) -> list[dict]:
    """The model inputs `select_action` builds from each message (caught where they enter the model)."""
    seen, predict_chunk = [], policy.model.predict_chunk

    def catch(batch):
        seen.append(batch)
        return predict_chunk(batch)

    policy.model.predict_chunk = catch
    policy.reset()
    for message in messages:
        policy.select_action(message)
    policy.model.predict_chunk = predict_chunk
    return seen


def assert_same_inputs(trained: dict, controlled: list[dict]) -> None:
    keys = [key for key in trained if key not in (F.ACTION, F.ACTION_IS_PAD)]
    assert len(controlled) == len(trained[F.RGB])
    for step, inputs in enumerate(controlled):
        assert sorted(inputs) == sorted(keys)
        for key in keys:
            assert torch.equal(inputs[key][0], trained[key][step]), (key, step)


def policy_for(name: str, store: EpisodeStore, **changes):
    """A tiny policy of type `name` shaped for the (fitted) dataset, with its cameras as the trainer keeps them."""
    policy = tiny_policy(name)
    vla = dataclasses.replace(fit_model_to_dataset(policy.config.vla, store.features, str(store.root)), **changes)
    return type(policy)(dataclasses.replace(policy.config, vla=vla, camera=camera_of(store)))


def trained_and_sent(policy, store: EpisodeStore, episode: int):
    samples = TrainingSamples(store, policy, progress=False)
    policy.fit_statistics(samples.actions, samples.states)
    span = samples.decoded.episode_slice(episode)
    return samples.batch(np.arange(span.start, span.stop)), list(policy.processor.sent_features())


@pytest.mark.parametrize("name, fit", [("st", "crop"), ("tracevla", "pad"), ("spatialvla", "pad")])
def test_frames_sent_at_the_camera_size_give_the_trained_inputs(name, fit):
    data = DataConfig(fov=60, image_fit=fit)
    raw, store = EpisodeStore(FRANKA, data), EpisodeStore(FRANKA, data, image_size=TINY.image_size)
    policy = policy_for(name, store)
    trained, keys = trained_and_sent(policy, store, episode=2)
    # The trained intrinsics when the client sends none; its own (at the camera's size) when it does.
    for with_intrinsics in (False, True):
        assert_same_inputs(trained, model_inputs_at_control(policy, sent_at_camera_size(raw, keys, 2, with_intrinsics)))
    # The model's own square passes through as it is.
    fitted = sent_at_camera_size(store, keys, 2, with_intrinsics=True)
    assert_same_inputs(trained, model_inputs_at_control(policy, fitted))
    with pytest.raises(ValueError, match=r"'observation.images.rgb' has shape \[480, 480, 3\]; policy .* reads "
                                         r"\[480, 640, 3\] or \[64, 64, 3\]"):
        policy.processor.observation_frame(sent_at_camera_size(raw, keys, 2, False)[0]
                                           | {FRONT: np.zeros((480, 480, 3), np.uint8)})


def test_a_policy_trained_on_the_640x480_camera_keeps_it_and_acts_on_its_frames(tmp_path):
    """spatialvla and st with a field of view, tracevla on RGB: one `stvla train` each; the policy's
    contract says what the camera sends, and the reloaded policy acts on frames at the camera's size."""
    cache = ["--cache_dir", str(tmp_path / "cache")]
    for name, extra in (("spatialvla", ["--fov", "60"]), ("st", ["--fov", "60"]), ("tracevla", [])):
        out = tmp_path / name
        assert main(["train", "--policy", name, "--dataset", str(FRANKA), "--out", str(out), *extra, *cache,
                     *TINY_FLAGS]) == 0, name
        contract = json.loads((out / "policy" / CONTRACT_FILE).read_text())
        intrinsics = [415.6922, 415.6922, 319.5, 239.5] if extra else None
        camera = contract["camera"]
        assert {k: v for k, v in camera.items() if k != "intrinsics"} == {
            "height": 480, "width": 640, "image_size": 128, "image_fit": "crop",
            "features": {F.RGB: FRONT, F.DEPTH: FRONT_DEPTH}}, name
        assert camera["intrinsics"] == intrinsics or np.allclose(camera["intrinsics"], intrinsics)
        assert contract["input_features"][F.RGB]["shape"] == [480, 640, 3]
        assert (contract["input_features"].get(F.DEPTH) or {}).get("shape", [480, 640]) == [480, 640]
        policy = load_policy(out / "policy")
        assert policy.processor.contract() == {k: v for k, v in contract.items() if k != "fps"}
        raw = EpisodeStore(FRANKA, DataConfig(fov=60))
        messages = sent_at_camera_size(raw, [k for k in policy.processor.sent_features() if k != F.INTRINSICS],
                                       0, with_intrinsics=False)
        policy.reset()
        first = [policy.select_action(message) for message in messages[:3]]
        again = load_policy(out / "policy")
        again.reset()
        assert all(np.array_equal(a, again.select_action(m)) for a, m in zip(first, messages[:3])), name


# --- several cameras -------------------------------------------------------------------------------------
def write_two_camera_dataset(root: Path) -> Path:
    """Two cameras (front 64x64, wrist 48x64) of a moving square, 4-D end-effector actions, no depth."""
    features = {
        FRONT: {"dtype": "video", "shape": [64, 64, 3], "names": ["height", "width", "channels"]},
        WRIST: {"dtype": "video", "shape": [48, 64, 3], "names": ["height", "width", "channels"]},
        F.STATE: {"dtype": "float32", "shape": [4], "names": ["x", "y", "z", "gripper"]},
        F.ACTION: {"dtype": "float32", "shape": [4], "names": ["x", "y", "z", "gripper"]},
    }
    writer = EpisodeWriter.create_or_resume(root, 10, features, "two_cameras")
    rng = np.random.default_rng(0)
    for episode in range(3):
        length = 12
        front = np.full((length, 64, 64, 3), 40, np.uint8)
        wrist = np.full((length, 48, 64, 3), 90, np.uint8)
        for t in range(length):
            front[t, 10 + t:20 + t, 8 + 2 * t:18 + 2 * t] = (250, 30, 30)
            wrist[t, 20:34, 4 + 3 * t:14 + 3 * t] = (30, 250, 30)
        actions = rng.normal(0, 0.3, (length, 4)).astype(np.float32)
        states = np.cumsum(actions, axis=0).astype(np.float32)
        writer.add_episode({FRONT: front, WRIST: wrist, F.STATE: states, F.ACTION: actions},
                           ["push the block", "open the drawer"][episode % 2])
    return root


@pytest.fixture(scope="module")
def two_cameras(tmp_path_factory):
    return write_two_camera_dataset(tmp_path_factory.mktemp("two") / "two_cameras")


def test_a_one_camera_model_is_unchanged_and_a_second_camera_adds_one_embedding():
    torch.manual_seed(0)
    one = SmallVLA(TINY).state_dict()
    torch.manual_seed(0)
    two = SmallVLA(dataclasses.replace(TINY, cameras=2)).state_dict()
    assert "camera_index" not in one and sorted(set(two) - set(one)) == ["camera_index"]
    assert two["camera_index"].shape == (1, 1, TINY.width)
    assert all(torch.equal(one[key], two[key]) for key in one)  # created after every other parameter


def test_two_cameras_train_as_they_act(two_cameras, tmp_path):
    data = DataConfig(camera=f"{FRONT},{WRIST}")
    raw, store = EpisodeStore(two_cameras, data), EpisodeStore(two_cameras, data, image_size=TINY.image_size)
    wrist = F.camera_feature(1)
    assert store.stored_key(wrist) == WRIST and store.features[wrist]["shape"] == [64, 64, 3]
    policy = policy_for("tracevla", store, use_ego3d=False)
    assert policy.config.vla.cameras == 2
    trained, keys = trained_and_sent(policy, store, episode=1)
    assert keys == [F.RGB, wrist, F.STATE]
    assert policy.processor.sent_features()[wrist]["shape"] == [48, 64, 3]
    assert_same_inputs(trained, model_inputs_at_control(policy, sent_at_camera_size(raw, keys, 1, False)))
    loss, _ = policy(trained)
    assert torch.isfinite(loss)
    with torch.no_grad():  # the wrist camera reaches the outputs
        base = policy.model(trained)
        other = policy.model(trained | {wrist: trained[wrist].flip(0)})
    assert any(not torch.equal(base[key], other[key]) for key in base)
    # Saved and reloaded, it acts the same on the camera-size frames.
    policy.save_pretrained(tmp_path / "two")
    again = load_policy(tmp_path / "two")
    contract = json.loads((tmp_path / "two" / CONTRACT_FILE).read_text())
    assert contract["input_features"][wrist]["shape"] == [48, 64, 3]
    assert contract["observation_keys"][wrist] == "rgb1"
    assert contract["camera"]["features"] == {F.RGB: FRONT, wrist: WRIST}
    messages = sent_at_camera_size(raw, keys, 0, False)
    policy.reset(), again.reset()
    for message in messages:
        assert np.array_equal(policy.select_action(message), again.select_action(message))


def test_stvla_train_reads_a_camera_list(two_cameras, tmp_path):
    assert main(["train", "--policy", "tracevla", "--dataset", str(two_cameras), "--out", str(tmp_path / "tv"),
                 "--camera", f"{FRONT},{WRIST}", *TINY_FLAGS]) == 0
    policy = load_policy(tmp_path / "tv" / "policy")
    assert policy.config.vla.cameras == 2 and policy.config.vla.image_size == 64
    assert policy.processor.contract()["input_features"][F.camera_feature(1)]["shape"] == [48, 64, 3]
    with pytest.raises(ValueError, match="--camera 'observation.images.front,observation.images.front': expected"):
        EpisodeStore(two_cameras, DataConfig(camera=f"{FRONT},{FRONT}"))


def test_the_so101_two_camera_fixture_trains_tracevla(tmp_path):
    """Two square 224 px cameras (read as they are, no fit), 6-D joint actions, no depth."""
    assert main(["train", "--policy", "tracevla", "--dataset", str(SO101), "--out", str(tmp_path / "so"),
                 "--camera", f"{FRONT},{WRIST}", *TINY_FLAGS]) == 0
    policy = load_policy(tmp_path / "so" / "policy")
    assert policy.config.vla.cameras == 2 and policy.config.vla.image_size == 224
    camera = policy.processor.contract()["camera"]
    assert (camera["height"], camera["width"]) == (224, 224)
    assert camera["features"] == {F.RGB: FRONT, F.camera_feature(1): WRIST}
    raw = EpisodeStore(SO101, DataConfig(camera=f"{FRONT},{WRIST}"))
    policy.reset()
    message = sent_at_camera_size(raw, list(policy.processor.sent_features()), 0, False)[0]
    assert np.isfinite(policy.select_action(message)).all()


# --- served to a robot that sends its own formats ---------------------------------------------------------
def robot_message(message: dict) -> dict:
    """A message as a robot's drivers give it: RGB as floats in [0, 1] channels-first, depth as uint16
    millimetres (H, W, 1) (RealSense), the dataset's own names; and the canonical message it stands for
    (uint8 RGB, float metres depth: those millimetres, as the client converts them)."""
    robot, canonical = {}, {}
    for key, value in message.items():
        value = np.asarray(value) if key != F.TASK else value
        if key != F.TASK and value.ndim == 3 and value.dtype == np.uint8:  # a camera
            robot[key], canonical[key] = np.moveaxis(value / np.float32(255), -1, 0), value
        elif key != F.TASK and value.ndim == 2 and value.dtype.kind == "f":  # depth in metres
            millimetres = np.rint(value * 1000).astype(np.uint16)
            robot[key] = millimetres[..., None]
            canonical[key] = (millimetres.astype(np.float64) * 0.001).astype(np.float32)
        else:
            robot[key] = canonical[key] = value
    return robot, canonical


def test_fixture_policies_serve_a_robot_its_own_formats(tmp_path):
    """One `stvla train` on each LeRobot 0.6.1 fixture (st on the 640x480 camera with depth and --fov 60,
    tracevla on the two-camera SO-101 with 6-D joint actions), then `stvla serve`: a client sending what
    the robot's drivers give, at the camera's size, under the dataset's names, without intrinsics, gets to
    the bit the actions the local policy takes on the canonical frames."""
    from stvla.serve import PolicyClient, PolicyServer, ServeConfig

    runs = [("st", FRANKA, ["--fov", "60"], DataConfig(fov=60)),
            ("tracevla", SO101, ["--camera", f"{FRONT},{WRIST}"], DataConfig(camera=f"{FRONT},{WRIST}"))]
    for name, dataset, extra, data in runs:
        out = tmp_path / name
        assert main(["train", "--policy", name, "--dataset", str(dataset), "--out", str(out),
                     "--cache_dir", str(tmp_path / "cache"), *extra, *TINY_FLAGS]) == 0, name
        policy = load_policy(out / "policy")
        raw = EpisodeStore(dataset, data)
        sent = [k for k in policy.processor.sent_features() if k != F.INTRINSICS]
        messages = [robot_message(m) for m in sent_at_camera_size(raw, sent, 1, with_intrinsics=False)[:6]]
        policy.reset()
        local = [policy._predict_chunk(policy.processor.observation_frame(canonical)) for _, canonical in messages]
        server = PolicyServer(ServeConfig(policy=str(out / "policy"), port=0, idle_timeout=30))
        server.start_in_thread()
        try:
            with PolicyClient(f"ws://127.0.0.1:{server.port}") as client:
                served = [client.step(robot)["actions"] for robot, _ in messages]
        finally:
            server.stop()
        assert all(np.array_equal(s, l) for s, l in zip(served, local)), name


def test_a_depth_at_a_lower_resolution_than_its_camera_is_traced_at_the_cameras(tmp_path):
    """A depth stream of the camera's aspect at half its resolution (a RealSense depth at 320x240 beside
    640x480 colour): `stvla trace` reads it at the camera's size by nearest pixel (the tracer draws into
    depth pixel for pixel), as training fits each to the model's square; another aspect is named."""
    from stvla.data.video import read_video

    features = {FRONT: {"dtype": "image", "shape": [32, 48, 3], "names": ["height", "width", "channels"]},
                FRONT_DEPTH: {"dtype": "image", "shape": [16, 24, 1], "names": ["height", "width", "channels"],
                              "info": {"is_depth_map": True}},
                F.STATE: {"dtype": "float32", "shape": [4], "names": None},
                F.ACTION: {"dtype": "float32", "shape": [4], "names": None}}
    rng = np.random.default_rng(0)
    writer = EpisodeWriter.create_or_resume(tmp_path / "half", 10, features, "arm")
    writer.add_episode({FRONT: rng.integers(0, 256, (6, 32, 48, 3), dtype=np.uint8),
                        FRONT_DEPTH: rng.uniform(0.5, 2.0, (6, 16, 24)).astype(np.float32),
                        F.STATE: np.zeros((6, 4), np.float32), F.ACTION: np.zeros((6, 4), np.float32)}, "look")
    assert main(["trace", str(tmp_path / "half"), "--out", str(tmp_path / "t.mp4"), "--fov", "60"]) == 0
    assert len(read_video(tmp_path / "t.mp4")) == 6
    from stvla.data.view import _depth_at_camera_size

    store = EpisodeStore(tmp_path / "half", DataConfig())
    depth = store.episode(0, [F.DEPTH])[F.DEPTH]
    np.testing.assert_array_equal(_depth_at_camera_size(store, depth, (32, 48)), depth.repeat(2, 1).repeat(2, 2))
    with pytest.raises(ValueError, match=r"depth 'observation.images.front_depth' is 16x24 and camera "
                                         r"'observation.images.front' 32x32"):
        _depth_at_camera_size(store, depth, (32, 32))
