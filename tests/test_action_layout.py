"""Action layouts from the action's names: an end effector keeps SpatialVLA's grid, joints (one arm or two)
get per-dimension bins; round trips within half a bin, overrides, and a joint policy that trains and reloads
to identical actions."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from stvla import features as F
from stvla.policies.action_layout import action_layout_for, action_names
from stvla.policies.action_tokenizer import (
    AdaptiveActionGrid,
    PerDimensionConfig,
    PerDimensionTokenizer,
)
from stvla.policies.image_encoder import ImageEncoderConfig
from stvla.policies.prompt import PromptConfig
from stvla.policies.registry import load_policy, make_policy
from stvla.policies.trunk import TrunkConfig
from stvla.policies.vla import VLAConfig
from stvla.train import TrainConfig, train
from stvla.train.samples import TrainingSamples

SO101 = ["shoulder_pan.pos", "shoulder_lift.pos", "elbow_flex.pos", "wrist_flex.pos", "wrist_roll.pos", "gripper.pos"]
ARM = ["waist", "shoulder", "elbow", "forearm_roll", "wrist_angle", "wrist_rotate", "gripper"]
ALOHA = [f"left_{n}" for n in ARM] + [f"right_{n}" for n in ARM]
JOINT7 = [f"joint_{i}" for i in range(6)] + ["gripper"]
# name -> (action names, expected layout, gripper dims of the joint layout)
LAYOUTS = {
    "ee4": (["dx", "dy", "dz", "gripper"], "ee", ()),
    "ee7": (["x", "y", "z", "roll", "pitch", "yaw", "gripper"], "ee", ()),
    "so101": (SO101, "joint", (5,)),
    "aloha": (ALOHA, "joint", (6, 13)),
    "joint7": (JOINT7, "joint", (6,)),
}
TINY = VLAConfig(image_size=64, width=32, image=ImageEncoderConfig(channels=(8, 16), width=32),
                 trunk=TrunkConfig(width=32, depth=1, heads=2))


def fixture_info(name: str) -> dict:
    """A LeRobot 0.6.1 fixture's info.json (tests/fixtures/lerobot-0.6.1, as LeRobot wrote it)."""
    return json.loads((Path(__file__).parent / "fixtures" / "lerobot-0.6.1" / name / "meta" / "info.json").read_text())


def tokenizer_for(names: list[str]) -> tuple[AdaptiveActionGrid | PerDimensionTokenizer, str, tuple[int, ...]]:
    layout = action_layout_for({"shape": [len(names)], "names": names}, "test")
    if layout.kind == "ee":
        return AdaptiveActionGrid(layout.grid), layout.kind, ()
    return PerDimensionTokenizer(PerDimensionConfig(gripper_dims=layout.gripper_dims), len(names)), layout.kind, \
        layout.gripper_dims


def training_actions(size: int, grippers: tuple[int, ...], n: int = 3000, seed: int = 0) -> torch.Tensor:
    """Normalised actions in [-1, 1]: a translation inside the unit ball (the grid's), joints of several shapes
    (Gaussian, uniform, one mostly held still, one constant), binary grippers."""
    rng = np.random.default_rng(seed)
    columns = []
    for d in range(size):
        kind = d % 4
        if kind == 0:
            column = np.clip(rng.normal(0.1, 0.3, n), -1, 1)
        elif kind == 1:
            column = rng.uniform(-1, 1, n)
        elif kind == 2:
            column = np.where(rng.random(n) < 0.6, 0.25, rng.uniform(-1, 1, n))  # held still 60% of the time
        else:
            column = np.full(n, -0.4)
        columns.append(column)
    actions = np.stack(columns, axis=1)
    if size in (4, 7):  # an end effector's translation: inside the unit ball, away from its centre
        direction = rng.normal(size=(n, 3))
        actions[:, :3] = direction / np.linalg.norm(direction, axis=1, keepdims=True) * rng.uniform(0.05, 0.95, (n, 1))
    for d in grippers or ((size - 1,) if size in (4, 7) else ()):
        actions[:, d] = np.where(rng.random(n) < 0.4, 1.0, -1.0)
    return torch.tensor(actions, dtype=torch.float32)


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_training_actions_round_trip_within_half_a_bin(name):
    names, kind, grippers = LAYOUTS[name]
    tokenizer, found, found_grippers = tokenizer_for(names)
    assert (found, found_grippers) == (kind, grippers)
    actions = training_actions(len(names), grippers)
    tokenizer.fit(actions)
    tokens = tokenizer.encode(actions)
    assert set(tokens) == set(tokenizer.num_classes) and all(t.dtype == torch.long for t in tokens.values())
    decoded = tokenizer.decode(tokens)
    assert decoded.shape == actions.shape and decoded.abs().max() <= 1.0
    error = (tokenizer.axis_values(decoded) - tokenizer.axis_values(actions)).abs()
    widths = tokenizer.bin_widths(tokens)
    gripper_axes = [i for i, axis in enumerate(tokenizer.axis_names)
                    if axis == "gripper" or (kind == "joint" and i in grippers)]
    continuous = [i for i in range(len(tokenizer.axis_names)) if i not in gripper_axes]
    if kind == "ee":  # phi wraps at +-pi: compare the shorter way round
        phi = tokenizer.axis_names.index("phi")
        error[:, phi] = torch.minimum(error[:, phi], 2 * math.pi - error[:, phi])
    assert torch.all(error[:, continuous] <= widths[:, continuous] / 2 + 1e-5), tokenizer.axis_names
    assert torch.equal(decoded[:, list(grippers) or [len(names) - 1]], actions[:, list(grippers) or [len(names) - 1]])
    if kind == "joint":
        for axis in tokenizer.axis_names:  # duplicate quantiles (a joint held still, a constant one) pushed apart
            assert torch.all(torch.diff(tokenizer.edges(axis)) > 0), axis
        assert tokenizer.num_classes == {f"dim{d}": 2 if d in grippers else 256 for d in range(len(names))}
        fresh = PerDimensionTokenizer(tokenizer.config, len(names))
        fresh.load_state_dict(tokenizer.state_dict())
        assert torch.equal(fresh.decode(tokens), decoded)


def test_per_dimension_bins_refuse_bad_input():
    tokenizer = PerDimensionTokenizer(PerDimensionConfig(gripper_dims=(5,)), 6)
    with pytest.raises(RuntimeError, match="not fitted"):
        tokenizer.encode(torch.zeros(2, 6))
    with pytest.raises(ValueError, match="6-D"):
        tokenizer.fit(torch.zeros(10, 7))
    with pytest.raises(ValueError, match="non-finite"):
        tokenizer.fit(torch.full((10, 6), float("nan")))
    with pytest.raises(ValueError, match="NORMALISED"):
        tokenizer.fit(torch.full((10, 6), 3.0))
    with pytest.raises(ValueError, match="outside"):
        PerDimensionTokenizer(PerDimensionConfig(gripper_dims=(6,)), 6)
    tokenizer.fit(training_actions(6, (5,)))
    with pytest.raises(ValueError, match="dim5"):
        tokenizer.decode({f"dim{d}": torch.tensor([2]) for d in range(6)})
    assert PerDimensionConfig(gripper_dims="6,13").gripper_dims == (6, 13)  # as the command line gives it


@pytest.mark.parametrize("names", [JOINT7, ["shoulder", "elbow", "wrist", "gripper"],
                                   ["x.pos", "y.pos", "z.pos", "roll.pos", "pitch.pos", "yaw.pos", "gripper.pos"]])
def test_joint_names_are_never_read_as_an_end_effector(names):
    layout = action_layout_for({"shape": [len(names)], "names": {"motors": names}}, "d")
    assert layout.kind == "joint" and layout.gripper_dims == (len(names) - 1,)
    with pytest.raises(ValueError, match="names say joints"):
        action_layout_for({"shape": [len(names)], "names": names}, "d", "ee")


def test_override_and_unnamed_actions():
    meta_world = {"shape": [4], "names": ["dx", "dy", "dz", "gripper"]}
    layout = action_layout_for(meta_world, "d", "joint")
    assert layout.kind == "joint" and layout.gripper_dims == (3,)
    for aliases in (["delta_x", "ee_y", "pos_z", "rx", "ry", "rz", "gripper"], ["dx", "dy", "dz", "droll", "dpitch",
                                                                                  "dyaw", "gripper_open"]):
        assert action_layout_for({"shape": [7], "names": aliases}, "d").grid.has_rotation
    unnamed = action_layout_for({"shape": [7]}, "d")
    assert unnamed.kind == "ee" and unnamed.grid.gripper_dim == 6 and "without names" in unnamed.note
    assert action_layout_for({"shape": [6]}, "d").kind == "joint"
    assert action_layout_for({"shape": [7], "names": [f"a{i}" for i in range(7)]}, "d", "ee").grid.has_rotation
    with pytest.raises(ValueError, match="6 values"):
        action_layout_for({"shape": [6]}, "d", "ee")
    with pytest.raises(ValueError, match="--action_layout must be one of"):
        action_layout_for(meta_world, "d", "cartesian")
    with pytest.raises(ValueError, match="--action_layout must be one of"):
        TrainConfig(action_layout="cartesian")


def test_lerobot_fixtures_are_read_by_their_names():
    so101 = action_layout_for(fixture_info("so101_joints_2cam")["features"]["action"], "so101")
    assert so101.kind == "joint" and so101.gripper_dims == (5,)
    franka = action_layout_for(fixture_info("franka_640x480_depth")["features"]["action"], "franka")
    assert franka.kind == "ee" and franka.grid.has_rotation and franka.grid.gripper_dim == 6


def test_default_layout_keeps_config_keys():
    """The new fields are key-neutral: a default (end-effector) model's key and checkpoint config are unchanged."""
    from stvla.config import config_key

    key = config_key(VLAConfig())
    assert "action_layout" not in key and "bins" not in key
    assert "action_layout" not in TrainConfig().key()
    joint = config_key(dataclasses.replace(VLAConfig(), action_layout="joint",
                                           bins=PerDimensionConfig(gripper_dims=(3,))))
    assert joint["action_layout"] == "joint" and joint["bins"]["gripper_dims"] == (3,)


@pytest.fixture(scope="module")
def joint_dataset(small_dataset, tmp_path_factory):
    """The small Meta-World dataset with its action named as joints (a 3-joint arm and a gripper)."""
    root, _ = small_dataset
    copy = tmp_path_factory.mktemp("joints") / "small_joints"
    shutil.copytree(root, copy)
    info_path = copy / "meta" / "info.json"
    info = json.loads(info_path.read_text())
    info["features"][F.ACTION]["names"] = ["joint_0", "joint_1", "joint_2", "gripper"]
    info_path.write_text(json.dumps(info, indent=4))
    return copy


def test_a_joint_policy_trains_and_reloads_to_identical_actions(joint_dataset, tmp_path):
    config = TrainConfig(policy="spatialvla", dataset=str(joint_dataset), out=str(tmp_path / "joint"), model=TINY,
                         steps=6, batch_size=8, warmup_steps=2, save_every=10, lr=3e-3)
    policy_dir = train(config, progress=False)
    policy = load_policy(policy_dir)
    vla = policy.config.vla
    assert (vla.action_layout, vla.bins.gripper_dims, vla.action_dim) == ("joint", (3,), 4)
    assert set(policy.model.heads) == {"dim0", "dim1", "dim2", "dim3"}
    assert json.loads((policy_dir / "config.json").read_text())["config"]["vla"]["action_layout"] == "joint"
    reloaded = load_policy(policy.save_pretrained(tmp_path / "again"))
    samples = TrainingSamples(joint_dataset, policy, progress=False)
    batch = samples.batch(np.arange(0, len(samples), 5))
    actions, _ = policy.model.predict_chunk(batch)
    again, _ = reloaded.model.predict_chunk(batch)
    assert torch.equal(actions, again) and torch.isfinite(actions).all()
    with torch.no_grad():
        assert float(policy(batch)[0]) == float(reloaded(batch)[0])
    # Stage 2 keeps the checkpoint's layout and refuses another.
    with pytest.raises(ValueError, match="differs from the --init checkpoint's"):
        train(dataclasses.replace(config, out=str(tmp_path / "s2"), init=str(policy_dir), action_layout="ee"),
              progress=False)
    # A grid checkpoint (an end effector's) cannot go on with joints.
    grid = make_policy("spatialvla", dataclasses.replace(policy.config, vla=TINY))
    grid.fit_statistics(np.random.default_rng(0).uniform(-1, 1, (200, 4)), np.zeros((200, 4)))
    grid.save_pretrained(tmp_path / "grid")
    with pytest.raises(ValueError, match=r"grid.* reads an end effector's .*names say joints \(joint_0"):
        train(dataclasses.replace(config, out=str(tmp_path / "s2g"), init=str(tmp_path / "grid")), progress=False)


def test_llarva_prompt_names_the_dataset_robot_and_refuses_trace_targets_it_cannot_make(joint_dataset, small_dataset,
                                                                                       tmp_path):
    from stvla.train.trainer import build_policy

    llarva = TINY  # the policy type sets the prompt and the trace head
    config = TrainConfig(policy="llarva", dataset=str(joint_dataset), model=llarva, action_layout="joint",
                         trace_points=0, out=str(tmp_path / "l"))
    fitted = dataclasses.replace(llarva, action_layout="joint", bins=PerDimensionConfig(gripper_dims=(3,)))
    prompt = build_policy(dataclasses.replace(config, model=fitted), 64, robot_type="so101").config.prompt
    assert (prompt.robot_type, prompt.control_mode, prompt.state_dim) == ("so101", "joint position control", 4)
    # Meta-World keeps its prompt, byte for byte.
    sawyer = build_policy(dataclasses.replace(config, model=llarva), 64, robot_type="sawyer").config.prompt
    assert sawyer == PromptConfig()
    # A dataset without the end effector's position cannot give future-trace targets: refused before any cache.
    data = tmp_path / "no_ee"
    shutil.copytree(joint_dataset, data)
    info = json.loads((data / "meta" / "info.json").read_text())
    del info["features"][F.EE_POSITION]
    (data / "meta" / "info.json").write_text(json.dumps(info, indent=4))
    cache = tmp_path / "cache"
    refused = dataclasses.replace(config, dataset=str(data), trace_points=-1,
                                  data=dataclasses.replace(config.data, cache_dir=str(cache)))
    with pytest.raises(ValueError, match=r"has no observation.ee.position.*--trace_points 0"):
        train(refused, progress=False)
    assert not any(cache.rglob("*.npy"))


@pytest.mark.parametrize("policy_type", ["spatialvla", "tracevla", "st", "tracetokens", "llarva"])
def test_every_policy_type_acts_with_per_dimension_bins(joint_dataset, policy_type, tmp_path):
    """Ego3D, traces, trace tokens and LLARVA's prompt and trace head sit on top of the tokenizer unchanged."""
    from stvla.train.trainer import build_policy

    model = dataclasses.replace(TINY, action_layout="joint", bins=PerDimensionConfig(gripper_dims=(3,)))
    config = TrainConfig(policy=policy_type, dataset=str(joint_dataset), model=model, out=str(tmp_path / "p"))
    policy = build_policy(config, 64, robot_type="so101")
    samples = TrainingSamples(joint_dataset, policy, progress=False)
    policy.fit_statistics(samples.actions, samples.states)
    batch = samples.batch(np.arange(0, len(samples), 7), np.random.default_rng(0))
    loss, logs = policy(batch)
    assert torch.isfinite(loss) and {f"loss_dim{d}" for d in range(4)} <= set(logs)
    actions, _ = policy.model.predict_chunk(samples.batch(np.arange(3)))
    assert actions.shape == (3, 4, 4) and torch.isfinite(actions).all()
    assert len(actions[..., 3].unique()) <= 2  # the gripper's two bins


def test_names_in_groups_or_not_counting_the_values_never_read_joints_as_an_end_effector():
    """{"arm": [...], "gripper": [...]} (converters' groups) reads the groups in order; names that do not count
    the values (6 joint names for 7 values) still say joints: never the positional end-effector reading."""
    grouped = {"shape": [7], "names": {"arm": JOINT7[:6], "gripper": ["gripper"]}}
    assert action_names(grouped) == [name.lower() for name in JOINT7[:6]] + ["gripper"]
    layout = action_layout_for(grouped, "d")
    assert layout.kind == "joint" and layout.gripper_dims == (6,)
    miscounted = action_layout_for({"shape": [7], "names": {"motors": JOINT7[:6]}}, "d")
    assert miscounted.kind == "joint" and "has 7 values but 6 names" in miscounted.note
    with pytest.raises(ValueError, match="names say joints"):
        action_layout_for({"shape": [7], "names": JOINT7[:6]}, "d", "ee")
    assert action_layout_for({"shape": [7], "names": ["a", "b"]}, "d").kind == "ee"  # no joints said: by position
