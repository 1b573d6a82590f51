"""LLARVA: the structured prompt, future-trace targets, training of both losses, exact reloads."""

from __future__ import annotations

import json

import numpy as np
import pytest

from stvla.data import EpisodeStore
from stvla.envs import make_env
from stvla.geometry import project_world_points
from stvla.policies.image_encoder import ImageEncoderConfig
from stvla.policies.prompt import PromptConfig, llarva_prompt, proprio_history
from stvla.policies.registry import load_policy
from stvla.policies.trunk import TrunkConfig
from stvla.policies.vla import VLAConfig
from stvla.traces.future import future_indices, future_trace_targets, trace_error_px
from stvla.train import TrainConfig, train

TINY = VLAConfig(image_size=64, width=32, image=ImageEncoderConfig(channels=(8, 16), width=32),
                 trunk=TrunkConfig(width=32, depth=1, heads=2), language="prompt", trace_points=8)


def test_prompt_text_for_a_known_state():
    states = np.array([[0.1, 0.6, 0.2, 1.0], [0.12346, 0.61, -0.2, 0.5]])
    history = proprio_history(states, 1)
    assert history.shape == (5, 4) and not history[:3].any()  # zero-padded at the episode start
    text = llarva_prompt(PromptConfig(), "push the puck to the goal", history, 4, with_traces=True)
    assert text == (
        'You are a sawyer robot using the end-effector delta position control. The task is "push the puck to '
        'the goal", and the previous five (including current) steps is [[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, '
        '0.0], [0.0, 0.0, 0.0, 0.0], [0.1, 0.6, 0.2, 1.0], [0.1235, 0.61, -0.2, 0.5]], can you predict action of '
        'the next 4 step and the trajectories of the end effector?')
    plain = llarva_prompt(PromptConfig(), "reach", history, 4, with_traces=False)
    assert plain.endswith("can you predict action of the next 4 step?")
    noisy = [llarva_prompt(PromptConfig(), "reach", history, 4, False, np.random.default_rng(7)) for _ in range(2)]
    assert noisy[0] == noisy[1] != plain  # seeded noise, 4 decimals
    numbers = noisy[0].split("is [[")[1].split("]]")[0].replace("[", "").replace("]", "").split(", ")
    assert all(len(n.split(".")[1]) <= 4 for n in numbers)


def test_trace_targets_of_a_recorded_episode(small_dataset):
    root, _ = small_dataset
    keys = ["observation.ee.position", "observation.ee.pixel", "observation.camera.intrinsics",
            "observation.camera.pose"]
    frames = EpisodeStore(root).episode(2, keys)
    positions, intrinsics, poses = (frames[k] for k in (keys[0], keys[2], keys[3]))
    targets, masks = future_trace_targets(positions, intrinsics, poses, num_points=6)
    length = len(positions)
    assert targets.shape == (length, 6, 2) and masks.shape == (length, 6)
    # The first point is the current end effector, where the recorded pixel says it is.
    assert np.abs(targets[:, 0] - frames["observation.ee.pixel"]).max() < 1e-3
    t = 3
    indices, mask = future_indices(length, t, 6)
    expected = project_world_points(positions[indices], intrinsics[t], poses[t])
    assert np.allclose(targets[t], expected, atol=1e-4) and (masks[t] == mask).all()
    assert masks[-1].tolist() == [True] + [False] * 5
    assert trace_error_px(targets[t] + [3.0, 4.0], targets[t], masks[t]) == pytest.approx(5.0)


def test_tiny_llarva_lowers_both_losses_and_reloads_exactly(small_dataset, tmp_path):
    root, _ = small_dataset
    config = TrainConfig(policy="llarva", dataset=str(root), out=str(tmp_path / "llarva"), model=TINY, steps=60,
                         batch_size=16, warmup_steps=5, lr=3e-3, save_every=1000, trace_points=8)
    policy_dir = train(config, progress=False)
    log = [json.loads(line) for line in (tmp_path / "llarva" / "train_log.jsonl").read_text().splitlines()]
    assert log[-1]["loss_trace"] < 0.7 * log[0]["loss_trace"]
    assert log[-1]["loss_translation"] < log[0]["loss_translation"]
    assert np.isfinite(log[-1]["trace_err_px"])

    policy, reloaded = load_policy(policy_dir), load_policy(policy_dir)
    assert policy.name == "llarva" and policy.config.vla.trace_points == 8
    env = make_env("reach-v3", image_size=64)
    outputs = []
    for candidate in (policy, reloaded):
        obs, _ = env.reset(seed=5)
        candidate.reset()
        steps = []
        for _ in range(6):
            action = candidate.select_action(obs)
            steps.append((action, candidate.predicted_trace))
            obs, *_ = env.step(action)
        outputs.append(steps)
    env.close()
    for (a1, t1), (a2, t2) in zip(*outputs):
        assert np.array_equal(a1, a2) and np.array_equal(t1, t2) and t1.shape == (8, 2)


def test_llarva_evaluation_reports_trace_error(tmp_path):
    from stvla.evaluate import EvalConfig, evaluate
    from stvla.policies.registry import make_policy

    config = make_policy("llarva").config
    config.vla = TINY
    policy = make_policy("llarva", config)
    rng = np.random.default_rng(0)
    policy.fit_statistics(rng.uniform(-1, 1, (300, 4)), rng.normal(size=(300, 4)))
    info = evaluate(EvalConfig(policy=str(policy.save_pretrained(tmp_path / "p")), tasks="reach-v3", episodes=1,
                               max_steps=8, workers=1, videos=1, out=str(tmp_path / "eval")), progress=False)
    (episode,) = info["episodes"]
    assert episode["trace_error_px"] is not None and 0 <= episode["trace_error_px"] < 64 * 1.5
    assert info["per_task"]["reach-v3"]["trace_error_px"] == pytest.approx(episode["trace_error_px"])


def test_llarva_two_stages_from_the_command_line(small_dataset, tmp_path):
    from stvla.cli import main

    root, _ = small_dataset
    tiny = ["--model.width", "32", "--model.image.width", "32", "--model.image.channels", "8,16",
            "--model.trunk.width", "32", "--model.trunk.depth", "1", "--model.trunk.heads", "2"]
    common = ["--dataset", str(root), "--batch_size", "8", "--warmup_steps", "2"]
    assert main(["train", "--policy", "llarva", "--out", str(tmp_path / "pre"), "--steps", "6", *common, *tiny]) == 0
    assert main(["train", "--policy", "llarva", "--init", str(tmp_path / "pre" / "policy"), "--out",
                 str(tmp_path / "tune"), "--steps", "4", "--lora.rank", "4", *common]) == 0
    tuned = load_policy(tmp_path / "tune" / "policy")
    assert tuned.name == "llarva" and tuned.config.vla.trace_points == 16 and tuned.config.vla.width == 32
    # The ablation without trace prediction has no trace head.
    assert main(["train", "--policy", "llarva", "--trace_points", "0", "--out", str(tmp_path / "plain"), "--steps",
                 "3", *common, *tiny]) == 0
    assert load_policy(tmp_path / "plain" / "policy").config.vla.trace_points == 0
    assert main(["train", "--policy", "st", "--trace_points", "4", "--out", str(tmp_path / "x"), *common]) == 2


def test_points_behind_the_camera_are_masked_out():
    intrinsics = np.tile(np.array([[50.0, 0, 32], [0, 50.0, 32], [0, 0, 1]]), (3, 1, 1))
    poses = np.tile(np.eye(4), (3, 1, 1))  # camera at the origin looking along +z
    positions = np.array([[0.0, 0.0, 1.0], [0.1, 0.0, 1.0], [0.0, 0.0, -1.0]])  # the last one is behind it
    targets, masks = future_trace_targets(positions, intrinsics, poses, num_points=3)
    assert masks[0].tolist() == [True, True, False] and np.isfinite(targets).all()
    assert np.allclose(targets[0, :2], [[32, 32], [37, 32]])
