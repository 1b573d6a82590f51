"""Building blocks of the policies: Ego3D, adaptive action grid, normalisers, trunk (+ LoRA), text encoder."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

from stvla.policies.action_tokenizer import ActionGridConfig, AdaptiveActionGrid
from stvla.policies.ego3d import Ego3DConfig, Ego3DEncoder, frequency_encode, patch_points
from stvla.policies.normalizer import ActionNormalizer, StateNormalizer
from stvla.policies.text import EMBEDDING_DIM, SentenceEncoder, default_model_path, instruction_embeddings
from stvla.policies.trunk import Trunk, TrunkConfig

os.environ.setdefault("HF_HUB_OFFLINE", "1")

K_TEST = np.array([[10.0, 0.0, 3.5], [0.0, 12.0, 3.2], [0.0, 0.0, 1.0]])


# --- Ego3D ----------------------------------------------------------------------------------------------
def _hand_patch_features(depth: np.ndarray, K: np.ndarray, patch: int, r: int, freqs: int) -> np.ndarray:
    """Reference, one patch and sub-cell at a time: (P, 3 r^2 (2 freqs + 1)) MLP inputs of one depth map."""
    cell = patch // r
    rows, cols = depth.shape[0] // patch, depth.shape[1] // patch
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    features = []
    for pi in range(rows):
        for pj in range(cols):
            numbers = []
            for si in range(r):
                for sj in range(r):
                    y0, x0 = pi * patch + si * cell, pj * patch + sj * cell
                    d = depth[y0:y0 + cell, x0:x0 + cell].mean()
                    u, v = x0 + (cell - 1) / 2, y0 + (cell - 1) / 2
                    point = np.array([(u - cx) / fx * d, (v - cy) / fy * d, d])
                    numbers += list((point - np.array([0.0, 0.0, 2.0])) / 2.0)
            row = []
            for x in numbers:
                row.append(x)
                for k in range(freqs):
                    row += [math.sin(2**k * x), math.cos(2**k * x)]
            features.append(row)
    return np.array(features)


def test_ego3d_matches_hand_computation():
    rng = np.random.default_rng(0)
    depth = rng.uniform(1.0, 3.0, size=(8, 8))  # 2 x 2 patches of 4 px, 2 x 2 sub-cells of 2 px each
    config = Ego3DConfig(samples_per_side=2, num_frequencies=8, hidden_width=32)
    encoder = Ego3DEncoder(config, width=16)
    depth_t = torch.tensor(depth[None], dtype=torch.float64)
    K_t = torch.tensor(K_TEST[None])

    # Sub-cell means and back-projection of the first patch, by hand.
    points = patch_points(depth_t, K_t, patch_size=4)
    assert points.shape == (1, 4, 4, 3)
    d00 = depth[0:2, 0:2].mean()
    np.testing.assert_allclose(points[0, 0, 0].numpy(), [(0.5 - 3.5) / 10 * d00, (0.5 - 3.2) / 12 * d00, d00])
    d_last = depth[6:8, 6:8].mean()  # last patch, last sub-cell: centre pixel (6.5, 6.5)
    np.testing.assert_allclose(points[0, 3, 3].numpy(), [(6.5 - 3.5) / 10 * d_last, (6.5 - 3.2) / 12 * d_last, d_last])

    # The first frequency features of the first number: x, sin(x), cos(x), sin(2x), cos(2x).
    x = ((0.5 - 3.5) / 10 * d00 - 0.0) / 2.0
    encoded = frequency_encode(torch.tensor([[x]]), 8)[0].numpy()
    assert encoded.shape == (17,)
    np.testing.assert_allclose(encoded[:5], [x, math.sin(x), math.cos(x), math.sin(2 * x), math.cos(2 * x)])

    # The whole pipeline against the reference features put through the same MLP.
    hand = _hand_patch_features(depth, K_TEST, patch=4, r=2, freqs=8)
    assert hand.shape == (4, 204) and config.features_per_patch == 204
    with torch.no_grad():
        expected = encoder.mlp(torch.tensor(hand, dtype=torch.float32))
        got = encoder(depth_t.float(), K_t.float(), patch_size=4)[0]
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-7)


def test_ego3d_constant_plane_points():
    """A fronto-parallel plane at z = 2 m: every point has z = 2, i.e. normalised z = 0."""
    depth = torch.full((1, 8, 8), 2.0)
    points = patch_points(depth, torch.tensor(K_TEST), patch_size=4)
    torch.testing.assert_close(points[..., 2], torch.full((1, 4, 4), 2.0))
    # Sub-cell centres u = 0.5, 2.5, 4.5, 6.5 back-project to x = (u - cx) / fx * 2.
    xs = sorted(set(np.round(points[0, :, :, 0].numpy().ravel(), 6)))
    np.testing.assert_allclose(xs, [(u - 3.5) / 10 * 2 for u in (0.5, 2.5, 4.5, 6.5)], atol=1e-6)


def test_ego3d_output_shape_and_small_init():
    encoder = Ego3DEncoder(Ego3DConfig(), width=128)
    depth = torch.rand(2, 64, 96) * 2 + 0.5
    K = torch.tensor(K_TEST, dtype=torch.float32).expand(2, 3, 3)
    out = encoder(depth, K, patch_size=16)
    assert out.shape == (2, (64 // 16) * (96 // 16), 128)
    # Gain 0.01 on both layers: tokens start near zero, so image tokens are barely disturbed.
    assert out.abs().max() < 0.1 and out.std() < 0.02
    assert encoder.mlp[0].bias.abs().max() == 0 and encoder.mlp[3].bias.abs().max() == 0


def test_ego3d_width_must_be_known_and_consistent():
    with pytest.raises(ValueError, match="width"):
        Ego3DEncoder(Ego3DConfig())
    with pytest.raises(ValueError, match="contradicts"):
        Ego3DEncoder(Ego3DConfig(output_width=64), width=128)
    assert Ego3DEncoder(Ego3DConfig(output_width=64)).width == 64
    assert Ego3DConfig(center=[0, 0, 1]).center == (0.0, 0.0, 1.0)  # a JSON list comes back as a tuple


def test_ego3d_invalid_depth_never_propagates():
    depth = torch.full((1, 8, 8), 2.0)
    depth[0, 0, 0] = float("nan")  # one bad pixel: the sub-cell takes its other pixels' mean (2.0)
    depth[0, 0, 1] = 3.0
    depth[0, 2:4, 0:2] = torch.tensor([[float("inf"), -1.0], [0.0, float("-inf")]])  # a sub-cell with no valid pixel
    points = patch_points(depth, torch.tensor(K_TEST), patch_size=4)
    assert torch.isfinite(points).all()
    torch.testing.assert_close(points[0, 0, 0, 2], torch.tensor((3.0 + 2.0 + 2.0) / 3))
    torch.testing.assert_close(points[0, 0, 2], torch.zeros(3))  # no valid pixel: depth 0, the camera centre
    out = Ego3DEncoder(Ego3DConfig(hidden_width=16), width=8)(depth, torch.tensor(K_TEST), 4)
    assert torch.isfinite(out).all()
    all_bad = Ego3DEncoder(Ego3DConfig(hidden_width=16), width=8)(torch.full((1, 8, 8), float("nan")),
                                                                  torch.tensor(K_TEST), 4)
    assert torch.isfinite(all_bad).all()


def test_ego3d_single_pixel_changes_only_its_patch():
    torch.manual_seed(0)
    encoder = Ego3DEncoder(Ego3DConfig(init_gain=1.0), width=32)
    depth = torch.rand(1, 64, 64) + 1.0
    K = torch.tensor([[60.0, 0.0, 31.5], [0.0, 60.0, 31.5], [0.0, 0.0, 1.0]])
    changed = depth.clone()
    changed[0, 37, 5] += 0.3  # patch row 2, column 0 of a 4 x 4 grid of 16 px patches -> patch 8
    with torch.no_grad():
        difference = (encoder(changed, K, 16) - encoder(depth, K, 16)).abs().amax(dim=-1)[0]
    assert difference[8] > 1e-4
    assert torch.all(difference[torch.arange(16) != 8] == 0)


def test_ego3d_rejects_bad_shapes():
    with pytest.raises(ValueError, match="divisible"):
        patch_points(torch.ones(1, 10, 8), torch.tensor(K_TEST), patch_size=4)
    with pytest.raises(ValueError, match="samples_per_side"):
        patch_points(torch.ones(1, 9, 9), torch.tensor(K_TEST), patch_size=3, samples_per_side=2)


# --- adaptive action grid ----------------------------------------------------------------------------------
def _spherical_actions(n: int, seed: int, rotation: bool = False) -> torch.Tensor:
    """Normalised actions whose grid axes (r, theta, phi, gripper, rotations) are Gaussian, inside [-1, 1]."""
    rng = np.random.default_rng(seed)
    r = np.clip(rng.normal(0.55, 0.08, n), 0.05, 0.95)
    theta = np.clip(rng.normal(math.pi / 2, 0.3, n), 0.01, math.pi - 0.01)
    phi = np.clip(rng.normal(0.3, 0.7, n), -math.pi + 0.01, math.pi - 0.01)
    columns = [r * np.sin(theta) * np.cos(phi), r * np.sin(theta) * np.sin(phi), r * np.cos(theta)]
    if rotation:
        columns += [np.clip(rng.normal(m, 0.2, n), -1, 1) for m in (-0.2, 0.0, 0.3)]
    columns.append(np.clip(rng.normal(0.1, 0.3, n), -1, 1))  # gripper last
    return torch.tensor(np.stack(columns, axis=1), dtype=torch.float32)


GRID_CONFIGS = {
    "meta_world": (ActionGridConfig(), False),
    "with_rotation": (ActionGridConfig(has_rotation=True, rotation_dims=(3, 4, 5), gripper_dim=6), True),
}


@pytest.fixture(scope="module", params=sorted(GRID_CONFIGS))
def fitted_grid(request):
    config, rotation = GRID_CONFIGS[request.param]
    train = _spherical_actions(20000, seed=1, rotation=rotation)
    return AdaptiveActionGrid(config).fit(train), train, rotation


def test_grid_num_classes():
    assert AdaptiveActionGrid().num_classes == {"translation": 16 * 32 * 8, "gripper": 2}
    rotation = AdaptiveActionGrid(ActionGridConfig(has_rotation=True, gripper_dim=6))
    assert rotation.num_classes == {"translation": 4096, "gripper": 2, "rotation": 16**3}
    with pytest.raises(ValueError, match="cover"):
        ActionGridConfig(gripper_dim=5)


def test_grid_round_trip_within_half_a_bin(fitted_grid):
    grid, _, rotation = fitted_grid
    actions = _spherical_actions(1500, seed=2, rotation=rotation)
    values = grid.axis_values(actions)
    low = torch.stack([grid.edges(a)[0] for a in grid.axis_names])
    high = torch.stack([grid.edges(a)[-1] for a in grid.axis_names])
    in_range = ((values >= low) & (values <= high)).all(dim=-1)
    actions, values = actions[in_range][:1000], values[in_range][:1000]
    assert len(actions) == 1000
    tokens = grid.encode(actions)
    assert set(tokens) == set(grid.num_classes) and all(t.dtype == torch.long for t in tokens.values())
    decoded = grid.decode(tokens)
    assert decoded.shape == actions.shape and decoded.abs().max() <= 1.0
    error = (grid.axis_values(decoded) - values).abs()
    continuous = [i for i, axis in enumerate(grid.axis_names) if axis != "gripper"]
    assert torch.all(error[:, continuous] <= grid.bin_widths(tokens)[:, continuous] / 2 + 1e-5), grid.axis_names
    # The gripper decodes to the mean training value of its bin: still inside the bin.
    gripper = grid.axis_names.index("gripper")
    assert torch.all(error[:, gripper] <= grid.bin_widths(tokens)[:, gripper] + 1e-5)
    # Decoding a decoded action changes nothing: bin centres are fixed points.
    assert all(torch.equal(grid.encode(decoded)[k], tokens[k]) for k in tokens)


def test_binary_gripper_decodes_to_its_commands():
    rng = torch.Generator().manual_seed(0)
    actions = torch.rand(500, 4, generator=rng) * 2 - 1
    actions[:, 3] = torch.where(torch.rand(500, generator=rng) < 0.4, 1.0, -1.0)
    grid = AdaptiveActionGrid(ActionGridConfig()).fit(actions)
    decoded = grid.decode(grid.encode(actions))
    assert torch.equal(decoded[:, 3], actions[:, 3])


def test_grid_bins_have_equal_mass_on_gaussian_training_data(fitted_grid):
    grid, train, _ = fitted_grid
    values = grid.axis_values(train)
    for i, axis in enumerate(grid.axis_names):
        edges = grid.edges(axis)
        assert torch.all(torch.diff(edges) > 0), axis
        bins = len(edges) - 1
        counts = torch.bincount(torch.bucketize(values[:, i].contiguous(), edges[1:-1], right=True), minlength=bins)
        share = counts.double() / len(train)
        assert torch.all((share - 1 / bins).abs() < 0.25 / bins), (axis, share)


def test_grid_batched_shapes_and_token_layout():
    grid = AdaptiveActionGrid().fit(_spherical_actions(5000, seed=3))
    chunk = _spherical_actions(24, seed=4).view(2, 3, 4, 4)  # (batch, ..., chunk, D)
    tokens = grid.encode(chunk)
    assert tokens["translation"].shape == (2, 3, 4)
    theta_i = torch.bucketize(grid.axis_values(chunk)[..., 1].contiguous(), grid.edges("theta")[1:-1], right=True)
    assert torch.equal(tokens["translation"] // (32 * 8), theta_i)
    assert grid.decode(tokens).shape == (2, 3, 4, 4)


def test_grid_state_dict_round_trip_reproduces_decode(fitted_grid):
    grid, _, rotation = fitted_grid
    fresh = AdaptiveActionGrid(grid.config)
    fresh.load_state_dict(grid.state_dict())
    tokens = {kind: torch.randint(0, n, (257,)) for kind, n in grid.num_classes.items()}
    assert torch.equal(fresh.decode(tokens), grid.decode(tokens))


def test_grid_used_before_fit_raises():
    grid = AdaptiveActionGrid()
    with pytest.raises(RuntimeError, match="not fitted"):
        grid.encode(torch.zeros(3, 4))
    with pytest.raises(RuntimeError, match="not fitted"):
        grid.decode({"translation": torch.zeros(3, dtype=torch.long), "gripper": torch.zeros(3, dtype=torch.long)})


def test_grid_refuses_unnormalised_actions_and_bad_tokens():
    grid = AdaptiveActionGrid()
    with pytest.raises(ValueError, match="NORMALISED"):
        grid.fit(torch.full((10, 4), 3.0))
    grid.fit(_spherical_actions(1000, seed=5))
    with pytest.raises(ValueError, match="translation"):
        grid.decode({"translation": torch.tensor([4096]), "gripper": torch.tensor([0])})


def test_grid_constant_axis_still_has_finite_bins():
    actions = _spherical_actions(2000, seed=6)
    actions[:, 3] = 1.0  # a gripper that never opens
    grid = AdaptiveActionGrid().fit(actions)
    assert torch.all(torch.diff(grid.edges("gripper")) > 0)
    decoded = grid.decode(grid.encode(actions))
    assert torch.allclose(decoded[:, 3], torch.ones(2000), atol=1e-3)


def test_grid_interpolate_embeddings_onto_a_new_grid():
    old = AdaptiveActionGrid().fit(_spherical_actions(5000, seed=7))
    assert torch.allclose(old.interpolate_from(old, torch.eye(4096)[:, :7]), torch.eye(4096)[:, :7], atol=1e-6)
    narrow = _spherical_actions(5000, seed=8)
    narrow[:, :3] *= 0.8  # the new robot moves less
    new = AdaptiveActionGrid().fit(narrow)
    # An embedding linear in the old bin centres is reproduced exactly at the new centres (clamped to the old range).
    axes = ("theta", "phi", "r")
    old_centres = torch.stack(torch.meshgrid(*(old.bin_centres(a).double() for a in axes), indexing="ij"), -1)
    moved = new.interpolate_from(old, old_centres.reshape(-1, 3))
    assert moved.shape == (new.num_classes["translation"], 3)
    expected = torch.stack(torch.meshgrid(
        *(new.bin_centres(a).double().clamp(old.bin_centres(a).min(), old.bin_centres(a).max()) for a in axes),
        indexing="ij"), -1).reshape(-1, 3)
    torch.testing.assert_close(moved, expected, rtol=1e-6, atol=1e-6)
    assert new.interpolate_from(old, torch.ones(4096)).shape == (4096,)  # a head's bias


# --- normalisers --------------------------------------------------------------------------------------------
def test_action_normalizer_round_trip_and_constant_dims():
    rng = np.random.default_rng(0)
    actions = rng.normal(0.0, [0.5, 2.0, 0.1, 1.0], size=(5000, 4))
    actions[:, 2] = 0.7  # a dimension that never changes
    normalizer = ActionNormalizer.fit(actions)
    np.testing.assert_allclose(normalizer.low.numpy(), np.percentile(actions, 1, axis=0), rtol=1e-6)
    np.testing.assert_allclose(normalizer.high.numpy(), np.percentile(actions, 99, axis=0), rtol=1e-6)
    x = torch.tensor(actions, dtype=torch.float32)
    inside = ((x >= normalizer.low) & (x <= normalizer.high)).all(dim=-1)
    y = normalizer.normalize(x)
    assert y.abs().max() <= 1.0 and torch.isfinite(y).all()
    assert torch.all(y[:, 2] == 0)
    torch.testing.assert_close(normalizer.unnormalize(y)[inside], x[inside], rtol=1e-5, atol=1e-5)
    assert torch.all(normalizer.unnormalize(y)[:, 2] == normalizer.low[2])
    torch.testing.assert_close(normalizer.normalize(normalizer.low[None]), torch.tensor([[-1.0, -1.0, 0.0, -1.0]]))


def test_normalizers_save_load_and_refuse_before_fit():
    actions = ActionNormalizer.fit(np.random.default_rng(1).normal(size=(100, 4)))
    states = StateNormalizer.fit(np.random.default_rng(2).normal(3.0, 2.0, size=(100, 5)))
    for fitted, fresh in ((actions, ActionNormalizer(4)), (states, StateNormalizer(5))):
        with pytest.raises(RuntimeError, match="not fitted"):
            fresh.normalize(torch.zeros(1, fresh.dim))
        fresh.load_state_dict(fitted.state_dict())
        x = torch.randn(7, fresh.dim) * 0.3
        assert torch.equal(fresh.normalize(x), fitted.normalize(x))
    with pytest.raises(ValueError, match="dimensions"):
        ActionNormalizer(3).fit_(np.zeros((10, 4)))
    with pytest.raises(ValueError, match="beyond \\+-1e\\+09 \\(got 1e\\+12\\)"):  # damage, not a robot's values
        StateNormalizer.fit(np.full((10, 2), 1e12))


def test_state_normalizer_round_trip_and_std_floor():
    states = np.random.default_rng(3).normal(3.0, 2.0, size=(1000, 3))
    states[:, 1] = -4.0
    normalizer = StateNormalizer(3).fit_(torch.tensor(states))
    assert normalizer.std[1] == pytest.approx(1e-6)
    x = torch.tensor(states[:10], dtype=torch.float32)
    y = normalizer.normalize(x)
    assert torch.isfinite(y).all() and torch.all(y[:, 1] == 0)
    torch.testing.assert_close(normalizer.unnormalize(y), x)


# --- trunk -------------------------------------------------------------------------------------------------
def test_trunk_shapes_and_padding_mask():
    torch.manual_seed(0)
    trunk = Trunk(TrunkConfig(width=32, depth=2, heads=4)).eval()
    x = torch.randn(2, 7, 32)
    assert trunk(x).shape == (2, 7, 32)
    padding = torch.zeros(2, 7, dtype=torch.bool)
    padding[0, 5:] = True
    disturbed = x.clone()
    disturbed[0, 5:] = 100.0  # padding content must not reach the real tokens
    torch.testing.assert_close(trunk(disturbed, padding)[0, :5], trunk(x, padding)[0, :5])
    assert torch.isfinite(trunk(x, torch.ones(2, 7, dtype=torch.bool))).all()  # all padding: no NaN


def test_trunk_lora_wraps_every_linear_layer():
    peft = pytest.importorskip("peft")
    from peft.tuners.lora import LoraLayer

    depth = 3
    trunk = Trunk(TrunkConfig(width=32, depth=depth, heads=2))
    linear_names = {n.rsplit(".", 1)[-1] for n, m in trunk.named_modules() if isinstance(m, torch.nn.Linear)}
    assert linear_names == set(Trunk.lora_target_modules())
    model = peft.get_peft_model(trunk, peft.LoraConfig(r=4, lora_alpha=8, target_modules=Trunk.lora_target_modules()))
    wrapped = [n for n, m in model.named_modules() if isinstance(m, LoraLayer)]
    assert len(wrapped) == 6 * depth
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert model(torch.randn(2, 5, 32)).shape == (2, 5, 32)


# --- text encoder --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sentence_encoder():
    return SentenceEncoder()


def test_sentence_encoder_unit_vectors_and_cache(sentence_encoder):
    texts = ["open the drawer", "push the puck to the goal", "open the drawer"]
    embeddings = sentence_encoder.embed(texts)
    assert embeddings.shape == (3, EMBEDDING_DIM) and embeddings.dtype == torch.float32
    torch.testing.assert_close(embeddings.norm(dim=-1), torch.ones(3))
    assert torch.equal(embeddings[0], embeddings[2])
    calls = sentence_encoder.model_calls
    again = sentence_encoder.embed(["push the puck to the goal", "open the drawer"])
    assert sentence_encoder.model_calls == calls  # all cached: no forward pass
    assert torch.equal(again[1], embeddings[0])
    sentence_encoder.embed(["a new instruction", "a new instruction"])
    assert sentence_encoder.model_calls == calls + 1
    assert not torch.allclose(embeddings[0], embeddings[1])


def test_sentence_encoder_matches_sentence_transformers(sentence_encoder):
    sentence_transformers = pytest.importorskip("sentence_transformers")
    texts = ["pick up the puck and place it at the goal", "reach", "close the window by sliding it to the left"]
    path = default_model_path()
    reference = sentence_transformers.SentenceTransformer(str(path), device="cpu").encode(texts)
    ours = sentence_encoder.embed(texts).numpy()
    np.testing.assert_allclose(ours, reference, atol=1e-5)


def test_sentence_encoder_missing_directory_names_it(tmp_path):
    missing = tmp_path / "no-model-here"
    encoder = SentenceEncoder(missing)  # lazy: nothing loads yet
    with pytest.raises(FileNotFoundError, match="no-model-here"):
        encoder.embed(["anything"])


def test_instruction_embeddings_shared_encoder():
    embeddings = instruction_embeddings(["reach the goal", "open the door", "reach the goal"])
    assert set(embeddings) == {"reach the goal", "open the door"}
    assert all(v.shape == (EMBEDDING_DIM,) and v.dtype == np.float32 for v in embeddings.values())
    assert abs(float(np.linalg.norm(embeddings["open the door"])) - 1.0) < 1e-5
