"""Training: the loss falls, LoRA trains only its adapters, a killed run resumes to the same weights,
checkpoints reload to identical actions, and mismatched inputs are refused with clear errors."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from stvla import features as F
from stvla.cli import main
from stvla.envs import make_env
from stvla.policies.action_tokenizer import ActionGridConfig
from stvla.policies.base import WEIGHTS_FILE
from stvla.policies.image_encoder import ImageEncoderConfig
from stvla.policies.registry import load_policy, make_policy
from stvla.policies.st import STPolicy
from stvla.policies.trunk import TrunkConfig
from stvla.policies.vla import VLAConfig
from stvla.train import TrainConfig, train
from stvla.train.trainer import build_policy
from stvla.train.samples import TrainingSamples

# A model small enough that tests train it in seconds.
TINY = VLAConfig(image_size=64, width=32, image=ImageEncoderConfig(channels=(8, 16), width=32),
                 trunk=TrunkConfig(width=32, depth=2, heads=2))


def tiny_config(dataset, out, **changes) -> TrainConfig:
    config = TrainConfig(policy="spatialvla", dataset=str(dataset), out=str(out), model=TINY, steps=30,
                         batch_size=8, warmup_steps=5, save_every=10, lr=3e-3)
    return dataclasses.replace(config, **changes)


@pytest.fixture(scope="module")
def stage1(small_dataset, tmp_path_factory):
    """A tiny stage-1 spatialvla policy trained on the small dataset."""
    root, _ = small_dataset
    out = tmp_path_factory.mktemp("stage1")
    return train(tiny_config(root, out), progress=False)


def fixed_batch_loss(policy, dataset) -> float:
    samples = TrainingSamples(dataset, policy, progress=False)
    policy.eval()
    with torch.no_grad():
        loss, _ = policy(samples.batch(np.arange(0, len(samples), 3)))
    return float(loss)


def test_training_lowers_the_loss(stage1, small_dataset):
    root, _ = small_dataset
    trained = load_policy(stage1)
    untrained = make_policy("spatialvla", trained.config)
    untrained.model.load_state_dict(trained.model.state_dict())  # same normalisers and action grid ...
    torch.manual_seed(0)
    fresh = make_policy("spatialvla", trained.config)
    for name, buffer in trained.model.named_buffers():  # ... but freshly initialised weights
        dict(fresh.model.named_buffers())[name].copy_(buffer)
    assert fixed_batch_loss(trained, root) < 0.8 * fixed_batch_loss(fresh, root)
    log = [json.loads(line) for line in (stage1.parent / "train_log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 30 and np.isfinite(log[-1]["loss"])
    assert json.loads((stage1.parent / "train_config.json").read_text())["model"]["width"] == 32


def test_killed_run_resumes_to_the_same_weights(small_dataset, tmp_path):
    root, _ = small_dataset
    whole = train(tiny_config(root, tmp_path / "whole", steps=20), progress=False)
    config = tiny_config(root, tmp_path / "killed", steps=20)
    partial = train(config, progress=False, stop_after=14)  # "killed" after step 14; last save at 10
    assert json.loads((partial / "state.json").read_text())["step"] == 10
    resumed = train(config, progress=False)
    a, b = load_file(str(whole / WEIGHTS_FILE)), load_file(str(resumed / WEIGHTS_FILE))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # The same out with other settings is refused rather than mixed.
    with pytest.raises(ValueError, match="another configuration"):
        train(dataclasses.replace(config, lr=1e-2, steps=40), progress=False)


def test_resuming_compares_the_settings_the_run_reads():
    """A run resumes when only settings its policy never reads differ (a new tracker default, for a policy
    without traces); anything it reads still refuses the resume."""
    from stvla.train.trainer import TrainConfig, run_settings

    plain = TrainConfig(dataset="data", policy="spatialvla")
    other_tracker = dataclasses.replace(plain.traces, tracker=dataclasses.replace(plain.traces.tracker,
                                                                                  max_patch_error=20.0))
    assert run_settings(plain) == run_settings(dataclasses.replace(plain, traces=other_tracker))
    assert run_settings(plain) != run_settings(dataclasses.replace(plain, lr=1e-2))
    traced = dataclasses.replace(plain, policy="st")
    assert run_settings(traced) != run_settings(dataclasses.replace(traced, traces=other_tracker))


def test_lora_trains_only_the_adapters(stage1, small_dataset, tmp_path):
    root, _ = small_dataset
    config = tiny_config(root, tmp_path / "st", policy="st", init=str(stage1), steps=12, lr=1e-2)
    config = dataclasses.replace(config, lora=dataclasses.replace(config.lora, rank=4))
    checkpoint = train(config, progress=False, stop_after=10)  # the unmerged training state
    base, state = load_file(str(stage1 / WEIGHTS_FILE)), load_file(str(checkpoint / "model.safetensors"))
    adapters = [k for k in state if "lora_" in k]
    assert adapters and any(k.endswith("lora_B.default.weight") and state[k].abs().sum() > 0 for k in adapters)
    for key, value in state.items():
        if "lora_" in key:
            continue
        original = key.replace("base_model.model.", "").replace(".base_layer", "")
        assert torch.equal(value, base[original]), f"{key} changed during LoRA training"
    # The exported policy has the adapters merged into a plain trunk that differs from the base.
    policy_dir = train(config, progress=False)
    merged = load_file(str(policy_dir / WEIGHTS_FILE))
    assert merged.keys() == base.keys()
    assert not torch.equal(merged["trunk.blocks.0.attn.q_proj.weight"], base["trunk.blocks.0.attn.q_proj.weight"])
    assert torch.equal(merged["image_encoder.stages.0.weight"], base["image_encoder.stages.0.weight"])
    assert load_policy(policy_dir).name == "st"


def test_lora_also_trains_what_the_checkpoint_lacks(stage1, small_dataset, tmp_path):
    """Stacked frames on a base made without them: their index embedding is new, and is trained with the
    adapters instead of staying at its random start."""
    root, _ = small_dataset
    config = tiny_config(root, tmp_path / "stack", init=str(stage1), steps=12, lr=1e-2,
                         model=dataclasses.replace(TINY, previous_frames=1))
    config = dataclasses.replace(config, lora=dataclasses.replace(config.lora, rank=4))
    def initial_index() -> torch.Tensor:  # the trainer's own start: seeded, then built
        torch.manual_seed(config.seed)
        return build_policy(config, 64).model.previous_index.detach().clone()

    start = initial_index()
    assert torch.equal(start, initial_index())
    policy_dir = train(config, progress=False)
    trained, base = load_file(str(policy_dir / WEIGHTS_FILE)), load_file(str(stage1 / WEIGHTS_FILE))
    assert set(trained) - set(base) == {"previous_index"}
    assert not torch.allclose(trained["previous_index"], start), "the new parameter stayed at its random start"
    changed = {k for k in base if not torch.equal(trained[k], base[k])}
    assert changed and all(k.startswith("trunk.") for k in changed), "only the trunk (adapters merged) may change"


def test_stage_two_can_drop_the_state_token(stage1, small_dataset, tmp_path):
    """--model.use_state false from a base with state (the papers' inputs): the state token's weights are
    left out, every other weight starts from the base's, and the policy acts without reading the state."""
    root, _ = small_dataset
    config = tiny_config(root, tmp_path / "no-state", init=str(stage1), steps=4,
                         model=dataclasses.replace(TINY, use_state=False))
    config = dataclasses.replace(config, lora=dataclasses.replace(config.lora, rank=0))  # every weight trains
    policy_dir = train(config, progress=False)
    trained, base = load_file(str(policy_dir / WEIGHTS_FILE)), load_file(str(stage1 / WEIGHTS_FILE))
    assert {"state.weight", "state.bias"} <= set(base) and set(base) - set(trained) == {"state.weight", "state.bias"}
    policy = load_policy(policy_dir)
    assert policy.config.vla.use_state is False and "observation.state" not in policy.processor.input_features()
    start = make_policy("spatialvla", policy.config)  # where training started: every weight the base's
    assert start.load_weights(stage1, leave_out=("state.",)) == []
    assert all(torch.equal(value, base[key]) for key, value in start.model.state_dict().items())
    observation, _ = make_env("reach-v3", image_size=64).reset(seed=0)
    observation = {key: value for key, value in observation.items() if key != "observation.state"}
    assert np.isfinite(policy.select_action(observation)).all()


def test_save_load_gives_identical_actions(stage1, tmp_path):
    policy = load_policy(stage1)
    st = make_policy("st", dataclasses.replace(STPolicy.config_class(), vla=policy.config.vla))
    st.load_weights(stage1, strict=True)
    reloaded = load_policy(st.save_pretrained(tmp_path / "st"))
    # Three action chunks, with traces once the tracker has history.
    saved, again = (closed_loop_actions(candidate, seed=123, steps=12) for candidate in (st, reloaded))
    assert np.array_equal(saved, again)
    assert np.all(np.isfinite(saved)) and saved.shape == (12, 4)


def closed_loop_actions(policy, seed: int, steps: int) -> np.ndarray:
    """(steps, action_dim): what `policy` does over the first steps of a pick-place episode."""
    env = make_env("pick-place-v3", image_size=64)
    obs, _ = env.reset(seed=seed)
    policy.reset()
    actions = []
    for _ in range(steps):
        actions.append(policy.select_action(obs))
        obs, *_ = env.step(actions[-1])
    env.close()
    return np.stack(actions)


def test_mismatched_inputs_are_refused(stage1, small_dataset, tmp_path):
    root, _ = small_dataset
    with pytest.raises(ValueError, match="holds a 'spatialvla' policy, not 'st'"):
        STPolicy.from_pretrained(stage1)
    # A dataset at another image size than the checkpoint is read fitted to the checkpoint's (stvla.image_fit).
    other = tmp_path / "other"
    assert main(["collect", "--task", "reach-v3", "--episodes", "1", "--image_size", "128", "--out", str(other)]) == 0
    fitted = load_policy(train(tiny_config(other, tmp_path / "a", init=str(stage1), steps=1, val_episodes=0),
                               progress=False))
    assert fitted.config.vla.image_size == 64 and fitted.processor.contract()["input_features"][F.RGB]["shape"] == \
        [128, 128, 3]
    # A checkpoint trained for another action dimension (a 7-D arm: translation, rotation, gripper).
    arm = dataclasses.replace(TINY, action_dim=7, grid=ActionGridConfig(has_rotation=True, gripper_dim=6))
    seven = make_policy("spatialvla", dataclasses.replace(load_policy(stage1).config, vla=arm))
    seven.fit_statistics(np.random.default_rng(0).uniform(-1, 1, (200, 7)), np.zeros((200, 4)))
    seven.save_pretrained(tmp_path / "seven")
    with pytest.raises(ValueError, match=r"actions of shape \[4\]; checkpoint .*seven expects \[7\]"):
        train(tiny_config(root, tmp_path / "b", init=str(tmp_path / "seven")), progress=False)
    # A dataset without depth for a depth policy.
    no_depth = tmp_path / "no_depth"
    shutil.copytree(root, no_depth)
    info_path = no_depth / "meta" / "info.json"
    info = json.loads(info_path.read_text())
    del info["features"]["observation.depth"]
    info_path.write_text(json.dumps(info))
    with pytest.raises(ValueError, match="has no depth: policy 'spatialvla' needs it .*train tracevla"):
        train(tiny_config(no_depth, tmp_path / "c"), progress=False)
    # --model options the run would not use are refused, not dropped: stage 2 takes the model from --init.
    with pytest.raises(ValueError, match=r"--model.patch_size 8 differs from the --init checkpoint's \(16"):
        train(tiny_config(root, tmp_path / "d", init=str(stage1), model=dataclasses.replace(TINY, patch_size=8)),
              progress=False)
    with pytest.raises(ValueError, match="--model.two_images True is not what policy 'spatialvla' uses .*--policy tracevla"):
        train(tiny_config(root, tmp_path / "e", model=dataclasses.replace(TINY, two_images=True)), progress=False)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_a_device_this_machine_lacks_is_a_clear_error(small_dataset, tmp_path):
    root, _ = small_dataset
    with pytest.raises(ValueError, match="'cuda' is not available"):
        train(tiny_config(root, tmp_path / "gpu", device="cuda"), progress=False)
    with pytest.raises(ValueError, match="unknown device 'gpu0'"):
        train(tiny_config(root, tmp_path / "typo", device="gpu0"), progress=False)


def test_weight_average_is_exported_and_resumes_exactly(small_dataset, tmp_path):
    """--ema: the exported weights are the moving average (not the last step's), and a killed run
    resumes to the same average as an uninterrupted one."""
    root, _ = small_dataset
    plain = load_file(str(train(tiny_config(root, tmp_path / "plain", steps=20), progress=False) / WEIGHTS_FILE))
    whole = train(tiny_config(root, tmp_path / "whole", steps=20, ema=0.9), progress=False)
    config = tiny_config(root, tmp_path / "killed", steps=20, ema=0.9)
    train(config, progress=False, stop_after=14)
    resumed = train(config, progress=False)
    a, b = load_file(str(whole / WEIGHTS_FILE)), load_file(str(resumed / WEIGHTS_FILE))
    assert all(torch.equal(a[k], b[k]) for k in a)
    changed = [k for k in a if not torch.equal(a[k], plain[k])]
    assert changed and all(torch.equal(a[k], plain[k]) for k in a if "normalizer" in k or "tokenizer" in k)
    with pytest.raises(ValueError, match=r"--ema must be in \[0, 1\)"):
        tiny_config(root, tmp_path / "bad", ema=1.5)


@pytest.mark.parametrize("space", ["3d", "2d"])
def test_trace_tokens_fine_tune_from_a_base_and_reload_to_identical_actions(stage1, small_dataset, tmp_path, space):
    """tracetokens from a base without a trace encoder: the encoder is new and trains with the adapters;
    the saved policy reloads to the same actions, its trace tokens read from the tracker's points."""
    root, _ = small_dataset
    config = tiny_config(root, tmp_path / space, policy="tracetokens", init=str(stage1), steps=12, lr=1e-2,
                         trace_space="" if space == "3d" else space)  # 3d: the policy's own
    config = dataclasses.replace(config, lora=dataclasses.replace(config.lora, rank=4))
    policy_dir = train(config, progress=False)
    trained, base = load_file(str(policy_dir / WEIGHTS_FILE)), load_file(str(stage1 / WEIGHTS_FILE))
    new = set(trained) - set(base)
    assert new and all(k.startswith("trace_encoder.") for k in new)
    torch.manual_seed(config.seed)
    start = build_policy(config, 64).model.trace_encoder.state_dict()
    assert any(not torch.equal(trained[f"trace_encoder.{k}"], v) for k, v in start.items())
    policy = load_policy(policy_dir)
    assert policy.name == "tracetokens" and policy.config.trace_space == space and policy.config.vla.trace_tokens
    contract = json.loads((policy_dir / "processor.json").read_text())
    assert contract["trace_tokens"] == space
    loaded, again = (closed_loop_actions(candidate, seed=5, steps=16) for candidate in (policy, load_policy(policy_dir)))
    assert np.array_equal(loaded, again) and np.isfinite(loaded).all()
    # Stage 2 from this checkpoint keeps its space, and refuses the other.
    again = dataclasses.replace(config, init=str(policy_dir), trace_space="")
    assert build_policy(again, 64).config.trace_space == space
    with pytest.raises(ValueError, match="differs from the --init checkpoint's"):
        build_policy(dataclasses.replace(again, trace_space="2d" if space == "3d" else "3d"), 64)


def test_trace_space_is_for_trace_tokens_only(small_dataset, tmp_path):
    root, _ = small_dataset
    with pytest.raises(ValueError, match="--trace_space applies to tracetokens only"):
        build_policy(tiny_config(root, tmp_path, policy="st", trace_space="2d"), 64)
    with pytest.raises(ValueError, match="--trace_space must be one of 3d, 2d"):
        tiny_config(root, tmp_path, policy="tracetokens", trace_space="xyz")
