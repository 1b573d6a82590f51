"""ZoeDepth as the depth source, on a tiny randomly initialised ZoeDepth of the real architecture (BEiT
backbone, metric bins head) saved with its image processor the way transformers saves
Intel/zoedepth-nyu-kitti: frame-sized metric depth, ZoeDepth's mirror averaging, and environments whose
depth comes from the model."""

from __future__ import annotations

import dataclasses

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
