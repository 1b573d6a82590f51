"""ZoeDepth as the depth source, on a tiny randomly initialised ZoeDepth of the real architecture (BEiT
backbone, metric bins head) saved with its image processor the way transformers saves
Intel/zoedepth-nyu-kitti: frame-sized metric depth, ZoeDepth's mirror averaging, and environments whose
depth comes from the model."""

from __future__ import annotations

import dataclasses

from pathlib import Path

import numpy as np
import pytest
import torch

from stvla.envs import make_env
from stvla.envs.depth_model import ZoeDepthEstimator


@pytest.fixture(scope="module")
def tiny_zoedepth(tmp_path_factory):
    from transformers import BeitConfig, ZoeDepthConfig, ZoeDepthForDepthEstimation
    from transformers.models.zoedepth.image_processing_pil_zoedepth import ZoeDepthImageProcessorPil

    backbone = BeitConfig(image_size=64, patch_size=16, hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                          intermediate_size=64, out_indices=[1, 2, 3, 4], use_relative_position_bias=True,
                          reshape_hidden_states=False)
    config = ZoeDepthConfig(backbone_config=backbone, neck_hidden_sizes=[16, 32, 32, 32], fusion_hidden_size=16,
                            reassemble_factors=[4, 2, 1, 0.5], bottleneck_features=16, num_attractors=[4, 4, 4, 4],
                            bin_embedding_dim=16, num_relative_features=8, backbone_hidden_size=32, patch_size=16)
    torch.manual_seed(0)
    model = ZoeDepthForDepthEstimation(config)
    with torch.no_grad():  # a random head predicts one constant depth; spread its bins so pixels differ
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.2)
    directory = tmp_path_factory.mktemp("zoedepth-tiny")
    model.save_pretrained(directory)
    ZoeDepthImageProcessorPil(size={"height": 64, "width": 64}).save_pretrained(directory)
    return directory


def test_estimate_is_frame_sized_metric_and_mirror_consistent(tiny_zoedepth):
    estimator = ZoeDepthEstimator(tiny_zoedepth)
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (96, 80, 3), dtype=np.uint8)
    depth = estimator(rgb)
    assert depth.shape == (96, 80) and depth.dtype == np.float32
    assert np.isfinite(depth).all() and (depth >= 0).all() and depth.std() > 0
    # Averaging with the mirrored frame's prediction makes the estimate of a mirrored frame the mirror.
    mirrored = estimator(np.ascontiguousarray(rgb[:, ::-1]))
    assert np.allclose(mirrored, depth[:, ::-1], atol=1e-4 * max(1.0, float(np.abs(depth).max())))
    with pytest.raises(ValueError, match="uint8"):
        estimator(rgb.astype(np.float32))


def test_environment_depth_comes_from_the_model(tiny_zoedepth):
    rendered_env = make_env("reach-v3", image_size=64)
    estimated_env = make_env("reach-v3", image_size=64, depth_model=str(tiny_zoedepth))
    rendered, _ = rendered_env.reset(seed=3)
    estimated, _ = estimated_env.reset(seed=3)
    assert np.array_equal(rendered["rgb"], estimated["rgb"])
    expected = np.minimum(ZoeDepthEstimator(tiny_zoedepth)(estimated["rgb"]), estimated_env.config.depth_max)
    assert np.allclose(estimated["depth"], expected, atol=1e-6)
    assert not np.allclose(estimated["depth"], rendered["depth"])
    rendered_env.close()
    estimated_env.close()


def test_a_pickle_in_place_of_the_weights_is_refused_in_one_line(tiny_zoedepth, tmp_path):
    """A pytorch_model.bin that is an arbitrary pickle: transformers' weights_only loading refuses it, and the
    user gets one line naming the model and the directory, not torch's multi-line UnpicklingError."""
    import shutil

    directory = Path(shutil.copytree(tiny_zoedepth, tmp_path / "zoedepth"))
    (directory / "model.safetensors").unlink()
    torch.save({"weights": print}, directory / "pytorch_model.bin")  # a pickle of a function, not tensors
    with pytest.raises(ValueError) as refused:
        ZoeDepthEstimator(directory)
    message = str(refused.value)
    assert message.startswith(f"ZoeDepth at {directory} could not be loaded") and "\n" not in message


def test_missing_checkpoint_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        ZoeDepthEstimator(tmp_path)


def test_a_collection_records_its_depth_source_and_never_mixes_two(tiny_zoedepth, tmp_path):
    from stvla.data import CollectConfig, EpisodeStore, collect
    from stvla.data.store import DatasetError

    config = CollectConfig(task="reach-v3", episodes=1, out=str(tmp_path / "estimated"), image_size=64,
                           depth_model=str(tiny_zoedepth))
    collect(config, progress=False)
    store = EpisodeStore(config.out)
    assert str(tiny_zoedepth.resolve()) in store.features["observation.depth"]["info"]["source"]
    depth = store.episode(0, ["observation.depth"])["observation.depth"]
    assert depth.shape[1:] == (64, 64) and np.isfinite(depth).all()
    rendered = dataclasses.replace(config, episodes=2, resume=True, depth_model="")
    with pytest.raises(DatasetError, match="observation.depth"):
        collect(rendered, progress=False)
    assert EpisodeStore(config.out).num_episodes == 1  # the refused resume added nothing


@pytest.fixture(scope="module")
def tiny_depth_anything(tmp_path_factory):
    """A tiny random Depth Anything V2 metric model (DINOv2 backbone, DPT neck, metric head), saved with its
    DPT image processor as the Depth-Anything-V2-Metric-*-hf checkpoints are."""
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config
    from transformers.models.dpt.image_processing_pil_dpt import DPTImageProcessorPil

    backbone = Dinov2Config(image_size=28, patch_size=14, hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                            intermediate_size=64, out_features=["stage1", "stage2", "stage3", "stage4"],
                            reshape_hidden_states=False)
    config = DepthAnythingConfig(backbone_config=backbone, neck_hidden_sizes=[16, 16, 32, 32], fusion_hidden_size=16,
                                 head_hidden_size=16, reassemble_hidden_size=32, patch_size=14,
                                 depth_estimation_type="metric", max_depth=20)
    torch.manual_seed(0)
    model = DepthAnythingForDepthEstimation(config)
    with torch.no_grad():  # a random head predicts one constant depth; spread it so pixels differ
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.3)
    directory = tmp_path_factory.mktemp("depth-anything-tiny")
    model.save_pretrained(directory)
    DPTImageProcessorPil(size={"height": 56, "width": 56}, keep_aspect_ratio=True, ensure_multiple_of=14,
                         resample=3).save_pretrained(directory)
    return directory


def test_depth_anything_is_metric_frame_sized_and_batched(tiny_depth_anything, tiny_zoedepth, tmp_path):
    import json

    from stvla.envs.depth_model import DepthAnythingEstimator, load_depth_estimator

    estimator = load_depth_estimator(tiny_depth_anything)
    assert isinstance(estimator, DepthAnythingEstimator)
    assert isinstance(load_depth_estimator(tiny_zoedepth), ZoeDepthEstimator)
    rgbs = np.random.default_rng(0).integers(0, 256, (3, 96, 80, 3), dtype=np.uint8)
    batch = estimator.estimate_batch(rgbs)
    assert batch.shape == (3, 96, 80) and batch.dtype == np.float32
    assert (batch >= 0).all() and (batch <= 20).all() and batch.std() > 1e-3  # metres, within max_depth
    for rgb, depth in zip(rgbs, batch):
        assert np.allclose(estimator(rgb), depth, atol=1e-4)  # one frame at a time gives the same
    relative = tmp_path / "relative"
    relative.mkdir()
    for name in ("model.safetensors", "preprocessor_config.json"):
        (relative / name).write_bytes((tiny_depth_anything / name).read_bytes())
    config = json.loads((tiny_depth_anything / "config.json").read_text())
    (relative / "config.json").write_text(json.dumps({**config, "depth_estimation_type": "relative"}))
    with pytest.raises(ValueError, match="relative-depth .* use a metric one"):
        load_depth_estimator(relative)
    (relative / "config.json").write_text(json.dumps({**config, "model_type": "dpt"}))
    with pytest.raises(ValueError, match="model_type 'dpt' is not a depth model .*zoedepth, depth_anything"):
        load_depth_estimator(relative)


def test_stvla_depth_adds_a_lerobot_depth_stream_resumably(tiny_depth_anything, tmp_path):
    """`stvla depth` on an RGB-only LeRobot 0.6.1 dataset: the estimate of every frame becomes LeRobot depth
    with the intrinsics from --fov; an interrupted run into --out resumes to the same result and the
    source is only read; then a depth policy trains on it."""
    import shutil
    from pathlib import Path

    from stvla import features as F
    from stvla.cli import main
    from stvla.data.add_depth import DepthConfig, add_depth
    from stvla.data.roles import DataConfig
    from stvla.data.store import EpisodeStore
    from stvla.envs.depth_model import load_depth_estimator

    fixture = Path(__file__).parent / "fixtures" / "lerobot-0.6.1" / "rgb_7d"
    FRAMES = 20  # per episode
    inplace = tmp_path / "inplace"
    shutil.copytree(fixture, inplace)
    assert main(["depth", str(inplace), "--depth_model", str(tiny_depth_anything), "--fov", "60", "--batch_size", "7"]) == 0
    store = EpisodeStore(inplace, DataConfig())
    assert store.stored_key(F.DEPTH) == "observation.images.front_depth"
    assert store.info["features"]["observation.images.front_depth"]["info"]["is_depth_map"] is True
    assert not (inplace / ".stvla-depth").exists()
    estimator = load_depth_estimator(tiny_depth_anything)
    episode = store.episode(1, [F.RGB, F.DEPTH, F.INTRINSICS])
    expected = np.concatenate([estimator.estimate_batch(episode[F.RGB][i:i + 7]) for i in range(0, FRAMES, 7)])
    assert np.allclose(episode[F.DEPTH], expected, atol=1e-4)  # the frames' estimates, batched as stored
    assert np.allclose(episode[F.INTRINSICS][0, 1, 1], 48 / np.tan(np.deg2rad(30)), rtol=1e-5)

    before = sorted((p.relative_to(fixture), p.stat().st_size) for p in fixture.rglob("*"))
    config = DepthConfig(dataset=str(fixture), depth_model=str(tiny_depth_anything), out=str(tmp_path / "copy"), fov=60)
    add_depth(config, progress=False, stop_after=1)  # killed after one episode
    assert len(list((tmp_path / "copy" / ".stvla-depth").rglob("episode-*.npy"))) == 1
    add_depth(config, progress=False)
    copy = EpisodeStore(tmp_path / "copy", DataConfig())
    for e in range(store.num_episodes):
        assert np.array_equal(copy.episode(e, [F.DEPTH])[F.DEPTH], store.episode(e, [F.DEPTH])[F.DEPTH])
    assert sorted((p.relative_to(fixture), p.stat().st_size) for p in fixture.rglob("*")) == before

    with pytest.raises(ValueError, match="already has depth"):
        add_depth(DepthConfig(dataset=str(inplace), depth_model=str(tiny_depth_anything)), progress=False)
    with pytest.raises(ValueError, match="records no observation.camera.intrinsics: give the camera"):
        add_depth(DepthConfig(dataset=str(fixture), depth_model=str(tiny_depth_anything), out=str(tmp_path / "x")),
                  progress=False)
    tiny = ["--steps", "2", "--batch_size", "4", "--model.width", "32", "--model.image.channels", "8,16",
            "--model.image.width", "32", "--model.trunk.width", "32", "--model.trunk.depth", "1", "--model.trunk.heads", "2"]
    assert main(["train", "--policy", "st", "--dataset", str(inplace), "--out", str(tmp_path / "st"), *tiny]) == 0


def test_stvla_depth_runs_zoedepth_too(tiny_zoedepth, tmp_path):
    from pathlib import Path

    from stvla import features as F
    from stvla.data.add_depth import DepthConfig, add_depth
    from stvla.data.roles import DataConfig
    from stvla.data.store import EpisodeStore

    fixture = Path(__file__).parent / "fixtures" / "lerobot-0.6.1" / "rgb_7d"
    out = add_depth(DepthConfig(dataset=str(fixture), depth_model=str(tiny_zoedepth), out=str(tmp_path / "zoe"),
                                intrinsics="96,96,47.5,47.5", batch_size=20), progress=False)
    episode = EpisodeStore(out, DataConfig()).episode(2, [F.RGB, F.DEPTH, F.INTRINSICS])
    assert np.allclose(episode[F.DEPTH], ZoeDepthEstimator(tiny_zoedepth).estimate_batch(episode[F.RGB]), atol=1e-4)
    np.testing.assert_array_equal(episode[F.INTRINSICS][5], [[96, 0, 47.5], [0, 96, 47.5], [0, 0, 1]])
