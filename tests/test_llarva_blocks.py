"""LLARVA's building blocks one at a time: proprio history, prompt numbers, prompt tokens, trace targets, trace loss.

tests/test_llarva.py covers the whole policy (training, reloads, evaluation, CLI); this file pins the
pieces it is made of, with hand-computed expectations, and checks that training and control build the
same prompt for the same step of an episode.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from stvla import features as F
from stvla.data import EpisodeStore
from stvla.policies.image_encoder import ImageEncoderConfig
from stvla.policies.prompt import (
    HISTORY_LENGTH,
    PromptConfig,
    PromptResampler,
    PromptTokens,
    format_history,
    llarva_prompt,
    proprio_history,
)
from stvla.policies.registry import make_policy
from stvla.policies.trunk import TrunkConfig
from stvla.policies.vla import VLAConfig
from stvla.traces.future import future_indices, future_trace_targets, trace_error_px

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TINY = VLAConfig(image_size=64, width=32, image=ImageEncoderConfig(channels=(8, 16), width=32),
                 trunk=TrunkConfig(width=32, depth=1, heads=2), language="prompt", trace_points=4)


def _numbers(prompt: str) -> np.ndarray:
    """The (5, S) proprio history written in a prompt, parsed back."""
    inner = prompt.split("steps is [[")[1].split("]], can you")[0]
    return np.array([[float(x) for x in row.split(", ")] for row in inner.split("], [")])


# --- proprio history ---------------------------------------------------------------------------------------
def test_proprio_history_window_and_padding():
    states = np.arange(7 * 4, dtype=np.float64).reshape(7, 4) + 1.0
    assert np.array_equal(proprio_history(states, 6), states[2:7])  # mid-episode: exactly the last five, in order
    assert np.array_equal(proprio_history(states, 4), states[0:5])
    first = proprio_history(states, 0)
    assert np.array_equal(first[:4], np.zeros((4, 4))) and np.array_equal(first[4], states[0])
    short = np.array([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]])  # an episode shorter than the history
    history = proprio_history(short, 1)
    assert history.shape == (HISTORY_LENGTH, 4)
    assert np.array_equal(history, np.concatenate([np.zeros((3, 4)), short]))  # padding first, never shifted
    assert np.array_equal(proprio_history(states, 2, length=2), states[1:3])
    with pytest.raises(IndexError, match="index 7 outside the episode's 7 steps"):
        proprio_history(states, 7)
    with pytest.raises(IndexError):
        proprio_history(states, -1)
    with pytest.raises(ValueError, match=r"states must be \(T, S\)"):
        proprio_history(states[0], 0)


# --- prompt numbers ----------------------------------------------------------------------------------------
def test_history_formatting_is_fixed():
    history = np.array([[0.1, -0.25, 1.0, 0.0], [-0.00004, 0.12346, -1.5, 2.0]])
    assert format_history(np.round(history, 4)) == "[[0.1, -0.25, 1.0, 0.0], [0.0, 0.1235, -1.5, 2.0]]"


def test_prompt_noise_is_seeded_small_and_rounded():
    states = np.array([[0.1, 0.6, 0.2, 1.0], [0.12, 0.61, 0.18, 0.5], [0.13, 0.62, 0.17, 0.4]])
    history = proprio_history(states, 2)
    config = PromptConfig()
    clean = _numbers(llarva_prompt(config, "reach", history, 4, False))
    assert np.array_equal(clean, np.round(history, 4))
    first = llarva_prompt(config, "reach", history, 4, False, np.random.default_rng(3))
    assert first == llarva_prompt(config, "reach", history, 4, False, np.random.default_rng(3))
    assert first != llarva_prompt(config, "reach", history, 4, False, np.random.default_rng(4))
    # The numbers are the noisy history rounded to 4 decimals: the same draws, reproduced here.
    expected = np.round(history + np.random.default_rng(3).normal(0.0, 0.01, history.shape), 4)
    assert np.allclose(_numbers(first), expected, atol=1e-12)
    # Noise of sigma 0.01 on every number, padding rows included (LLARVA pads, then adds noise).
    draws = np.stack([_numbers(llarva_prompt(config, "reach", history, 4, False, np.random.default_rng(s))) - history
                      for s in range(200)])
    assert 0.009 < draws.std() < 0.011 and abs(draws.mean()) < 0.001
    no_noise = llarva_prompt(PromptConfig(noise_std=0.0), "reach", history, 4, False, np.random.default_rng(3))
    assert np.array_equal(_numbers(no_noise), clean)


def test_prompt_checks_the_robots_state_size():
    config = PromptConfig(robot_type="franka", control_mode="joint velocity control", state_dim=8)
    text = llarva_prompt(config, "open the drawer", np.zeros((5, 8)), 2, with_traces=False)
    assert text.startswith("You are a franka robot using the joint velocity control. The task is \"open the drawer\"")
    assert text.endswith("can you predict action of the next 2 step?")
    with pytest.raises(ValueError, match=r"must be \(5, 8\) for a franka robot, got shape \(5, 4\)"):
        llarva_prompt(config, "open the drawer", np.zeros((5, 4)), 2, with_traces=False)
    with pytest.raises(ValueError, match=r"got shape \(4, 8\)"):
        llarva_prompt(config, "open the drawer", np.zeros((4, 8)), 2, with_traces=False)
    for bad in (np.inf, np.nan):
        history = np.zeros((5, 8))
        history[0, 7] = bad
        with pytest.raises(ValueError, match="non-finite value at step 0, dimension 7"):
            llarva_prompt(config, "open the drawer", history, 2, with_traces=True)


# --- prompt tokens -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def prompt_tokens():
    torch.manual_seed(0)
    return PromptTokens(width=16, max_tokens=256)


def test_prompt_tokens_shapes_mask_and_frozen_table(prompt_tokens):
    history = proprio_history(np.array([[0.1235, -0.5, 0.2, 1.0]]), 0)
    long = llarva_prompt(PromptConfig(), "pick up the puck and place it at the goal", history, 4, True)
    short = llarva_prompt(PromptConfig(), "reach", history, 4, False)
    tokens, mask = prompt_tokens([long, short])
    reference = prompt_tokens.tokenizer([long, short], padding=True)
    lengths = [sum(m) for m in reference["attention_mask"]]
    assert tokens.shape == (2, max(lengths), 16) and mask.dtype == torch.bool
    assert mask.sum(1).tolist() == lengths and lengths[0] > lengths[1]
    assert mask[0].all() and not mask[1, lengths[1]:].any()
    # Numbers stay digits: word pieces of MiniLM's vocabulary, e.g. 0.1235 -> 0 . 123 ##5.
    pieces = prompt_tokens.tokenizer.tokenize("0.1235")
    assert pieces[:2] == ["0", "."] and "".join(p.removeprefix("##") for p in pieces[2:]) == "1235"
    # The MiniLM table is frozen and not saved; only the projection and the positions train.
    assert prompt_tokens.word_embeddings.shape[1] == 384 and not prompt_tokens.word_embeddings.requires_grad
    assert "word_embeddings" not in prompt_tokens.state_dict()
    assert {name for name, _ in prompt_tokens.named_parameters()} == {"position", "project.weight", "project.bias"}
    # Padding tokens never change a real token: the same prompt alone gives the same tokens.
    alone, _ = prompt_tokens([short])
    assert torch.allclose(alone[0], tokens[1, : lengths[1]])


def test_prompt_resampler_reads_the_pieces_and_ignores_padding(prompt_tokens):
    torch.manual_seed(0)
    resampler = PromptResampler(width=16, latents=4, heads=2)
    history = proprio_history(np.array([[0.1235, -0.5, 0.2, 1.0]]), 0)
    moved = history.copy()
    moved[-1, 0] = 0.9876  # one number of the prompt changes
    texts = [llarva_prompt(PromptConfig(), instruction, h, 4, True)
             for instruction, h in (("pick up the puck and place it at the goal", history), ("reach", history),
                                    ("reach", moved))]
    tokens, mask = prompt_tokens(texts)
    latents = resampler(tokens, mask)
    assert latents.shape == (3, 4, 16)
    # The short prompt, padded inside the batch, reads the same as alone: padding is never attended to.
    alone = resampler(*prompt_tokens(texts[1:2]))
    assert torch.allclose(alone[0], latents[1], atol=1e-6)
    # The latents see the digits of a single number.
    assert not torch.allclose(latents[1], latents[2], atol=1e-4)


def test_prompt_tokens_refuse_a_prompt_longer_than_max_tokens():
    with pytest.raises(ValueError, match="more than max_tokens=8"):
        PromptTokens(width=8, max_tokens=8)(["You are a sawyer robot using the end-effector delta position control."])


# --- future trace targets ----------------------------------------------------------------------------------
def _synthetic_episode():
    """Ten frames: the end effector moves along x at 2 m depth, the camera slides along x by 0.05 m a frame."""
    T = 10
    positions = np.stack([0.1 * np.arange(T), np.full(T, 0.2), np.full(T, 2.0)], axis=1)
    K = np.array([[100.0, 0.0, 32.0], [0.0, 100.0, 31.0], [0.0, 0.0, 1.0]])
    intrinsics = np.repeat(K[None], T, axis=0)
    poses = np.repeat(np.eye(4)[None], T, axis=0)
    poses[:, 0, 3] = 0.05 * np.arange(T)  # world-from-camera: camera centre at x = 0.05 t
    return positions, intrinsics, poses


def test_trace_targets_of_a_synthetic_episode_match_hand_projection():
    positions, intrinsics, poses = _synthetic_episode()
    targets, masks = future_trace_targets(positions, intrinsics, poses, num_points=4)
    assert targets.shape == (10, 4, 2) and targets.dtype == np.float32 and masks.shape == (10, 4)
    # Frame 0: future frames 0, 3, 6, 9 seen by frame 0's camera (x_c = x, y_c = 0.2, z = 2):
    # u = 100 * 0.1 f / 2 + 32 = 32 + 5 f, v = 100 * 0.2 / 2 + 31 = 41.
    assert np.allclose(targets[0], [[32.0, 41.0], [47.0, 41.0], [62.0, 41.0], [77.0, 41.0]])
    assert masks[0].all()
    # Frame 2 uses ITS camera (x = 0.1, so u shifts by 100 * 0.1 / 2 = 5 px): frames 2, 4, 7, 9 (evenly
    # spaced, rounded), u = 32 + 5 f - 5.
    assert np.allclose(targets[2], [[37.0, 41.0], [47.0, 41.0], [62.0, 41.0], [72.0, 41.0]])
    # Frame 8 (camera x = 0.4, shift 20 px): only frames 8 and 9 remain; the rest repeat frame 9, masked out.
    assert np.allclose(targets[8], [[52.0, 41.0], [57.0, 41.0], [57.0, 41.0], [57.0, 41.0]])
    assert masks[8].tolist() == [True, True, False, False]
    assert masks[9].tolist() == [True, False, False, False] and np.allclose(targets[9], [[54.5, 41.0]] * 4)
    # The vectorised targets equal the single-frame definition for every frame.
    for t in range(10):
        indices, mask = future_indices(10, t, 4)
        hand = np.stack([100 * (positions[indices, 0] - 0.05 * t) / 2 + 32, np.full(4, 41.0)], axis=1)
        assert np.allclose(targets[t], hand) and np.array_equal(masks[t], mask)


def test_future_indices_edge_cases():
    assert future_indices(4, 0, 4)[0].tolist() == [0, 1, 2, 3]  # exactly enough frames: every one of them
    indices, mask = future_indices(1, 0, 3)
    assert indices.tolist() == [0, 0, 0] and mask.tolist() == [True, False, False]
    indices, mask = future_indices(100, 10, 16)
    assert indices[0] == 10 and indices[-1] == 99 and (np.diff(indices) > 0).all() and mask.all()
    with pytest.raises(ValueError, match="num_points must be >= 1"):
        future_indices(10, 0, 0)
    with pytest.raises(IndexError):
        future_indices(10, 10, 4)
    positions, intrinsics, poses = _synthetic_episode()
    with pytest.raises(ValueError, match=r"intrinsics \(T, 3, 3\)"):
        future_trace_targets(positions, intrinsics[:5], poses)


def test_trace_error_px():
    target = np.array([[10.0, 10.0], [20.0, 20.0], [30.0, 30.0]])
    predicted = target + [[3.0, 4.0], [6.0, 8.0], [100.0, 0.0]]
    assert trace_error_px(predicted, target, np.array([True, True, False])) == pytest.approx(7.5)
    assert np.isnan(trace_error_px(predicted, target, np.zeros(3, bool)))


def test_trace_targets_of_recorded_episodes_are_finite_and_start_at_the_recorded_pixel(small_dataset):
    root, _ = small_dataset
    store = EpisodeStore(root)
    keys = ["observation.ee.position", "observation.ee.pixel", "observation.camera.intrinsics",
            "observation.camera.pose"]
    for episode in range(store.num_episodes):
        frames = store.episode(episode, keys)
        targets, masks = future_trace_targets(frames[keys[0]], frames[keys[2]], frames[keys[3]])
        assert np.isfinite(targets).all() and masks[:, 0].all()
        assert np.abs(targets[:, 0] - frames["observation.ee.pixel"]).max() < 1e-3


# --- training and control build the same prompt ------------------------------------------------------------
def test_training_samples_and_control_build_the_same_prompt(small_dataset):
    from stvla.envs import make_env
    from stvla.features import STATE as STATE_KEY
    from stvla.features import TASK_INDEX
    from stvla.train.samples import TrainingSamples

    root, _ = small_dataset
    config = make_policy("llarva").config
    config.vla = TINY
    policy = make_policy("llarva", config)
    samples = TrainingSamples(root, policy, progress=False)
    policy.fit_statistics(samples.actions, samples.states)
    store = EpisodeStore(root)
    episode = 1
    states = store.episode(episode, [STATE_KEY])[STATE_KEY]
    start = int(samples.decoded.episode_starts[episode])
    instruction = store.tasks[int(np.asarray(samples.arrays[TASK_INDEX])[start])]
    steps = [0, 1, 3, 4, 5, len(states) - 1]
    batch = samples.batch(np.array([start + t for t in steps]), rng=None)  # no noise: the exact numbers
    for t, text in zip(steps, batch["observation.prompt"]):
        assert text == llarva_prompt(config.prompt, instruction, proprio_history(states, t), TINY.chunk_size, True)
    assert batch["trace_target"].shape == (len(steps), 4, 2) and batch["trace_mask"][:, 0].all()

    # Control: the policy's own history after each observation is proprio_history of the states so far.
    env = make_env("reach-v3", image_size=64)
    obs, _ = env.reset(seed=3)
    policy.reset()
    seen = []
    for t in range(7):
        seen.append(np.asarray(obs["proprio"], np.float64))
        policy.select_action(obs)
        assert np.array_equal(policy.processor.state_history(), proprio_history(np.stack(seen), t))
        obs, *_ = env.step(env.action_space.sample() * 0)
    env.close()


# --- trace head and loss -----------------------------------------------------------------------------------
def test_trace_head_output_range_masking_and_loss_falls():
    torch.manual_seed(0)
    config = make_policy("llarva").config
    config.vla = TINY
    policy = make_policy("llarva", config)
    rng = np.random.default_rng(0)
    policy.fit_statistics(rng.uniform(-1, 1, (200, 4)), rng.normal(size=(200, 4)))
    B = 4
    frames = {
        F.RGB: rng.integers(0, 255, (B, 64, 64, 3), dtype=np.uint8),
        F.DEPTH: np.full((B, 64, 64), 1.5, np.float32),
        F.INTRINSICS: np.repeat(np.array([[[60.0, 0, 31.5], [0, 60.0, 31.5], [0, 0, 1]]]), B, 0),
        F.STATE: rng.normal(size=(B, 4)),
        F.STATE_HISTORY: rng.normal(size=(B, HISTORY_LENGTH, 4)),
        F.TASK: ["reach the goal"] * B,
    }
    batch = policy.processor.model_inputs(frames, np.random.default_rng(1))
    batch[F.ACTION] = torch.from_numpy(rng.uniform(-1, 1, (B, TINY.chunk_size, 4)).astype(np.float32))
    batch["action_is_pad"] = torch.zeros(B, TINY.chunk_size, dtype=torch.bool)
    batch["trace_target"] = torch.from_numpy(rng.uniform(5, 59, (B, 4, 2)).astype(np.float32))
    batch["trace_mask"] = torch.tensor([[True, True, True, False]] * B)

    out = policy.model(batch)
    assert out["trace"].shape == (B, 4, 2) and (out["trace"] >= 0).all() and (out["trace"] <= 1).all()
    # Masked-out points do not count: moving their targets anywhere leaves the loss unchanged.
    _, logs = policy.forward(batch)
    moved = dict(batch, trace_target=batch["trace_target"].clone())
    moved["trace_target"][:, 3] = 1e6
    assert policy.forward(moved)[1]["loss_trace"] == pytest.approx(logs["loss_trace"])

    optimizer = torch.optim.Adam(policy.model.parameters(), lr=3e-3)
    first = logs["loss_trace"]
    for _ in range(25):
        loss, logs = policy.forward(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert logs["loss_trace"] < 0.5 * first
    # Pixels out: predict_chunk scales the normalised trace by the image size.
    _, trace = policy.model.predict_chunk(batch)
    assert trace.shape == (B, 4, 2) and (trace >= 0).all() and (trace <= 64).all()
