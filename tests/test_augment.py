"""Training-time random shift: every image-like input moves together, the intrinsics follow so that
Ego3D sees the same 3D points, LLARVA's trace targets follow the image, and training runs with it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stvla import features as F
from stvla.policies.ego3d import patch_points
from stvla.train import train
from stvla.train.augment import AugmentConfig, augment_batch, jitter_batch, shift_batch
from stvla.train.trainer import load_train_config


def camera_batch(count: int = 3, size: int = 16, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    depth = torch.from_numpy(rng.uniform(0.5, 3.0, (count, size, size)).astype(np.float32))
    intrinsics = torch.tensor([[20.0, 0.0, 7.5], [0.0, 21.0, 7.0], [0.0, 0.0, 1.0]]).repeat(count, 1, 1)
    rgb = torch.from_numpy(rng.uniform(0, 1, (count, 3, size, size)).astype(np.float32))
    return {F.RGB: rgb, F.TRACED_RGB: rgb.flip(1), F.DEPTH: depth, F.INTRINSICS: intrinsics,
            F.TRACE_TARGET: torch.tensor([[[4.0, 5.0], [9.0, 2.0]]]).repeat(count, 1, 1)}


def pixel_points(depth: torch.Tensor, intrinsics: torch.Tensor) -> torch.Tensor:
    """(B, H, W, 3): Ego3D's back-projection of every pixel (2 px patches, 2 x 2 one-pixel sub-cells)."""
    count, height, width = depth.shape
    points = patch_points(depth, intrinsics, patch_size=2, samples_per_side=2)  # (B, patches, 4, 3)
    points = points.view(count, height // 2, width // 2, 2, 2, 3)
    return points.permute(0, 1, 3, 2, 4, 5).reshape(count, height, width, 3)


def test_ego3d_points_of_a_shifted_sample_are_the_shifted_points_of_the_original():
    batch = camera_batch()
    shifts = np.array([[3, -2], [-4, 4], [0, 1]])
    shifted = shift_batch(batch, shifts, pad=4)
    before = pixel_points(batch[F.DEPTH], batch[F.INTRINSICS])
    after = pixel_points(shifted[F.DEPTH], shifted[F.INTRINSICS])
    size = batch[F.DEPTH].shape[-1]
    for i, (sx, sy) in enumerate(shifts):
        # Where the crop still shows the original image (not its repeated edge), the points agree.
        v, u = np.mgrid[0:size, 0:size]
        inside = (u + sx >= 0) & (u + sx < size) & (v + sy >= 0) & (v + sy < size)
        torch.testing.assert_close(after[i][inside], before[i][v[inside] + sy, u[inside] + sx], rtol=1e-5, atol=1e-5)


def test_every_image_like_input_moves_together_and_the_trace_targets_follow():
    batch = camera_batch()
    shifts = np.array([[2, 1], [-1, -3], [4, 0]])
    shifted = shift_batch(batch, shifts, pad=4)
    for i, (sx, sy) in enumerate(shifts):
        for key in (F.RGB, F.TRACED_RGB):
            assert torch.equal(shifted[key][i, :, 5, 6], batch[key][i, :, 5 + sy, 6 + sx])
        assert torch.equal(shifted[F.DEPTH][i, 5, 6], batch[F.DEPTH][i, 5 + sy, 6 + sx])
        assert torch.equal(shifted[F.TRACE_TARGET][i], batch[F.TRACE_TARGET][i] - torch.tensor([sx, sy]))
    assert torch.equal(batch[F.INTRINSICS][:, :2, 2], torch.tensor([[7.5, 7.0]] * 3))  # the input is not changed
    with pytest.raises(ValueError, match="within \\+-2 pixels"):
        shift_batch(batch, shifts, pad=2)


def test_random_shift_draws_per_sample_and_is_off_by_default():
    batch = camera_batch(count=16)
    assert augment_batch(batch, AugmentConfig(), np.random.default_rng(0)) is batch
    shifted = augment_batch(batch, AugmentConfig(shift_px=4), np.random.default_rng(0))
    moved = batch[F.INTRINSICS][:, :2, 2] - shifted[F.INTRINSICS][:, :2, 2]
    assert moved.abs().max() <= 4 and len({tuple(m.tolist()) for m in moved}) > 4
    again = augment_batch(batch, AugmentConfig(shift_px=4), np.random.default_rng(0))
    assert torch.equal(again[F.DEPTH], shifted[F.DEPTH])  # a seeded draw: resumed runs see the same shifts


def test_colour_jitter_changes_rgb_alike_per_sample_and_leaves_depth_and_hue():
    batch = camera_batch(count=2)
    jittered = jitter_batch(batch, brightness=np.array([1.2, 1.0]), contrast=np.array([1.0, 0.5]))
    # Sample 0: brightness x1.2 only; sample 1: contrast halved about its mean grey level.
    torch.testing.assert_close(jittered[F.RGB][0], (batch[F.RGB][0] * 1.2).clamp(0, 1))
    mean = batch[F.RGB][1].mean()
    torch.testing.assert_close(jittered[F.RGB][1], (batch[F.RGB][1] - mean) * 0.5 + mean)
    # The traced image gets its sample's factors; depth, intrinsics and traces are untouched.
    torch.testing.assert_close(jittered[F.TRACED_RGB][0], (batch[F.TRACED_RGB][0] * 1.2).clamp(0, 1))
    for key in (F.DEPTH, F.INTRINSICS, F.TRACE_TARGET):
        assert jittered[key] is batch[key]
    # A pure red pixel stays the reddest channel (the goal markers' colours tell the tasks apart).
    red = {F.RGB: torch.zeros(1, 3, 2, 2)}
    red[F.RGB][0, 0] = 0.9
    for brightness, contrast in ((0.7, 1.3), (1.3, 0.7)):
        out = jitter_batch(red, np.array([brightness]), np.array([contrast]))[F.RGB][0]
        assert (out[0] > out[1]).all() and torch.equal(out[1], out[2])
    drawn = augment_batch(camera_batch(count=16), AugmentConfig(color_jitter=0.3), np.random.default_rng(0))
    ratio = drawn[F.RGB].mean(dim=(1, 2, 3)) / camera_batch(count=16)[F.RGB].mean(dim=(1, 2, 3))
    assert ratio.min() >= 0.69 and ratio.max() <= 1.31 and ratio.std() > 0.05  # one draw per sample
    with pytest.raises(ValueError, match="color_jitter"):
        AugmentConfig(color_jitter=1.5)


def test_training_with_random_shift(small_dataset, tmp_path):
    from test_train import tiny_config

    root, _ = small_dataset
    config = tiny_config(root, tmp_path / "run", steps=6, augment=AugmentConfig(shift_px=4))
    assert "augment" in config.key() and "augment" not in tiny_config(root, tmp_path).key()
    policy_dir = train(config, progress=False)
    assert (policy_dir / "model.safetensors").is_file()
    assert load_train_config(tmp_path / "run" / "train_config.json").augment.shift_px == 4


def test_pixel_trace_points_move_with_the_image_and_3d_ones_stay():
    """A `2d` trace point on pixel (u, v) is on pixel (u - sx, v - sy) of the shifted image; absent points
    stay zero; 3D points stay (the principal point moves instead)."""
    from stvla.traces import Trace
    from stvla.traces.points import trace_point_array

    batch = camera_batch()
    size = batch[F.RGB].shape[-1]
    pixel = np.array([[6.0, 5.0]], np.float32)
    points = trace_point_array([Trace(points=pixel, frame_index=np.array([1]), point_id=0)], window=2,
                               buffer_length=3, num_traces=2, image_shape=(size, size))
    batch[F.TRACE_POINTS] = torch.from_numpy(np.stack([points] * 3))
    shifts = np.array([[2, 1], [-1, -3], [4, 0]])
    shifted = shift_batch(batch, shifts, pad=4, pixel_trace_points=True)
    for i, (sx, sy) in enumerate(shifts):
        moved = trace_point_array([Trace(points=pixel - np.array([sx, sy], np.float32), frame_index=np.array([1]),
                                         point_id=0)], window=2, buffer_length=3, num_traces=2, image_shape=(size, size))
        torch.testing.assert_close(shifted[F.TRACE_POINTS][i], torch.from_numpy(moved))
    assert torch.equal(shift_batch(batch, shifts, pad=4)[F.TRACE_POINTS], batch[F.TRACE_POINTS])
