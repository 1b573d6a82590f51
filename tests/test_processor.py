"""The input processor: training and control feed the model the same inputs for the same frames, for
every policy type; the contract a saved policy writes; the old flat trace options still work."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from stvla import features as F
from stvla.data import EpisodeStore
from stvla.policies.image_encoder import ImageEncoderConfig
from stvla.policies.processor import CONTRACT_FILE
from stvla.policies.registry import load_policy, make_policy
from stvla.policies.trunk import TrunkConfig
from stvla.policies.vla import VLAConfig
from stvla.traces import SelectionConfig, TraceConfig, TrackerConfig
from stvla.train import TrainConfig
from stvla.train.samples import TrainingSamples
from stvla.train.trainer import flat_trace_key, load_train_config

TINY = VLAConfig(image_size=64, width=32, image=ImageEncoderConfig(channels=(8, 16), width=32),
                 trunk=TrunkConfig(width=32, depth=2, heads=2))


def tiny_policy(name: str, **trace_changes):
    config = make_policy(name).config
    config.vla = TINY if name != "llarva" else VLAConfig(**{**TINY.__dict__, "language": "prompt", "trace_points": 4})
    if name == "tracevla":
        config.vla = VLAConfig(**{**TINY.__dict__, "two_images": True})
    if trace_changes:
        config.traces = TraceConfig(**trace_changes)
    return make_policy(name, config)


def control_inputs(policy, store: EpisodeStore, episode: int) -> list[dict]:
    """Model inputs of every frame of a recorded episode, fed as environment observations, one per
    control step, through the policy's processor as `select_action` feeds it."""
    keys = list(policy.processor.input_features())
    frames = store.episode(episode, keys)
    instruction = store.episode_meta(episode)["tasks"][0]
    processor = policy.processor
    processor.reset()
    inputs = []
    for index in range(len(frames[F.RGB])):
        obs = {F.FEATURE_OF_OBSERVATION[key]: frames[key][index] for key in keys}
        obs[F.OBS_INSTRUCTION] = instruction
        frame = processor.observation_frame(obs)
        inputs.append(processor.model_inputs({k: [v] if k == F.TASK else np.asarray(v)[None]
                                              for k, v in frame.items()}))
    return inputs


@pytest.mark.parametrize("name", ["st", "tracevla", "spatialvla", "llarva"])
def test_training_and_control_give_identical_model_inputs(small_dataset, name):
    root, _ = small_dataset
    store = EpisodeStore(root)
    # Adaptive selection: at 64 px the tracer draws traces on most frames of an episode, not on all.
    adaptive = {"selection": SelectionConfig(adaptive=True)} if name in ("st", "tracevla") else {}
    policy = tiny_policy(name, **adaptive)
    samples = TrainingSamples(store, policy, progress=False)
    episode = 3
    span = samples.decoded.episode_slice(episode)
    trained = samples.batch(np.arange(span.start, span.stop))  # no rng: no augmentation, no prompt noise
    controlled = control_inputs(policy, store, episode)
    assert len(controlled) == span.stop - span.start
    model_keys = [key for key in trained if key not in (F.ACTION, F.ACTION_IS_PAD, F.TRACE_TARGET, F.TRACE_MASK)]
    for step, inputs in enumerate(controlled):
        assert sorted(inputs) == sorted(model_keys)
        for key in model_keys:
            if isinstance(inputs[key], torch.Tensor):
                assert torch.equal(inputs[key][0], trained[key][step]), (name, key, step)
            else:
                assert inputs[key][0] == trained[key][step], (name, key, step)
    if name in ("st", "tracevla"):  # the comparison saw frames with traces and frames without
        shown = np.array(samples.arrays[F.HAS_TRACES][span])
        assert shown.any() and not shown.all()
    if name == "st":  # the traced depth differs from the raw one where traces were drawn
        raw = torch.from_numpy(np.array(samples.arrays[F.DEPTH][span]))
        assert not torch.equal(trained[F.DEPTH][shown], raw[shown])
        assert torch.equal(trained[F.DEPTH][~shown], raw[~shown])
    if name == "tracevla":
        assert not torch.equal(trained[F.TRACED_RGB][shown], trained[F.RGB][shown])
        assert torch.equal(trained[F.TRACED_RGB][~shown], trained[F.RGB][~shown])


def test_tracevla_training_shows_a_share_of_samples_untraced(small_dataset):
    root, _ = small_dataset
    policy = tiny_policy("tracevla", selection=SelectionConfig(adaptive=True))
    samples = TrainingSamples(root, policy, progress=False)
    indices = np.flatnonzero(np.asarray(samples.arrays[F.HAS_TRACES]))
    plain = samples.batch(indices)
    augmented = samples.batch(indices, np.random.default_rng(0))
    untraced = [not torch.equal(a, p) for a, p in zip(augmented[F.TRACED_RGB], plain[F.TRACED_RGB])]
    fraction = np.mean(untraced)
    assert 0.05 < fraction < 0.45  # untraced_fraction 0.2 of the samples with traces
    for changed, row in zip(untraced, range(len(indices))):
        if changed:  # shown [original, original] and the plain prompt
            assert torch.equal(augmented[F.TRACED_RGB][row], augmented[F.RGB][row])
            assert not torch.equal(augmented[F.LANGUAGE][row], plain[F.LANGUAGE][row])


def test_saved_policy_writes_its_contract(tmp_path):
    policy = tiny_policy("st", variant="A", tracker=TrackerConfig(buffer_length=7))
    policy.save_pretrained(tmp_path / "st")
    contract = json.loads((tmp_path / "st" / CONTRACT_FILE).read_text())
    assert contract["policy"] == "st" and contract["depth_source"] == "traced" and not contract["traced_rgb"]
    assert contract["input_features"][F.RGB]["shape"] == [64, 64, 3]
    assert contract["observation_keys"][F.STATE] == F.OBS_STATE
    assert contract["traces"]["variant"] == "A" and contract["traces"]["tracker"]["buffer_length"] == 7
    assert contract["output_features"][F.ACTION]["shape"] == [4] and contract["chunk_size"] == TINY.chunk_size
    # The contract is written from the config, never read back: a policy without it loads the same.
    (tmp_path / "st" / CONTRACT_FILE).unlink()
    assert load_policy(tmp_path / "st").processor.contract() == contract


def test_old_flat_trace_options_and_saved_configs_still_work(tmp_path):
    from stvla.cli import build_parser
    from stvla.config import config_from_arguments

    args = build_parser().parse_args(["train", "--dataset", "d", "--variant", "A", "--buffer", "7"])
    old = config_from_arguments(TrainConfig, args)
    args = build_parser().parse_args(["train", "--dataset", "d", "--traces.variant", "A",
                                      "--traces.tracker.buffer_length", "7"])
    assert config_from_arguments(TrainConfig, args) == old
    assert old.traces.variant == "A" and old.traces.buffer_length == 7
    # A train_config.json of the release before: flat options.
    saved = {"policy": "st", "dataset": "d", "variant": "B", "buffer": 15, "tracker_type": "dense"}
    (tmp_path / "train_config.json").write_text(json.dumps(saved))
    loaded = load_train_config(tmp_path / "train_config.json")
    assert (loaded.traces.variant, loaded.traces.buffer_length, loaded.traces.tracker_type) == ("B", 15, "dense")


def test_trace_settings_keep_their_flat_cache_key():
    """Cache keys spell the trace settings as before they were nested: a default run's key has `variant`
    and `buffer` and no `traces`; any other changed setting makes the key differ."""
    config = TrainConfig(policy="st", dataset="d", traces=TraceConfig(variant="A"))
    key = config.key()
    assert key["variant"] == "A" and key["buffer"] == 30 and "traces" not in key
    assert "tracker_type" not in key and "cotracker_checkpoint" not in key
    other = TraceConfig(variant="A", selection=SelectionConfig(adaptive=True))
    assert flat_trace_key(other)["traces"]["selection"]["adaptive"] is True
