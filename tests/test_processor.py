"""The input processor: training and control feed the model the same inputs for the same frames, for
every policy type; the contract a saved policy writes; the old flat trace options still work."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from conftest import responsive
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
    """A tiny policy of type `name` that runs the model at every control step (n_action_steps 1);
    "tracetokens-2d" is tracetokens with its traces' points in pixels."""
    name, _, space = name.partition("-")
    config = make_policy(name).config
    if space:
        config.trace_space = space
    vla = dataclasses.replace(TINY, n_action_steps=1, trace_tokens=name == "tracetokens")
    if name == "llarva":
        vla = dataclasses.replace(vla, language="prompt", trace_points=4)
    if name == "tracevla":
        vla = dataclasses.replace(vla, two_images=True)
    config.vla = vla
    if trace_changes:
        config.traces = TraceConfig(**trace_changes)
    return make_policy(name, config)


def control_inputs(policy, store: EpisodeStore, episode: int) -> list[dict]:
    """The model inputs `select_action` builds at every frame of a recorded episode, the frames given
    as environment observations (caught where they enter the model)."""
    keys = list(policy.processor.input_features())
    frames = store.episode(episode, keys)
    instruction = store.episode_meta(episode)["tasks"][0]
    seen = []
    predict_chunk = policy.model.predict_chunk

    def catch(batch):
        seen.append(batch)
        return predict_chunk(batch)

    policy.model.predict_chunk = catch
    policy.reset()
    for index in range(len(frames[F.RGB])):
        obs = {F.FEATURE_OF_OBSERVATION[key]: frames[key][index] for key in keys}
        obs[F.OBS_INSTRUCTION] = instruction
        policy.select_action(obs)
    return seen


TRACED = ("st", "tracevla", "tracetokens", "tracetokens-2d")


@pytest.mark.parametrize("name", ["st", "tracevla", "spatialvla", "llarva", "tracetokens", "tracetokens-2d"])
def test_training_and_control_give_identical_model_inputs(small_dataset, name):
    root, _ = small_dataset
    store = EpisodeStore(root)
    # Adaptive selection: at 64 px the tracer draws traces on most frames of an episode, not on all.
    adaptive = {"selection": SelectionConfig(adaptive=True)} if name in TRACED else {}
    policy = tiny_policy(name, **adaptive)
    samples = TrainingSamples(store, policy, progress=False)
    policy.fit_statistics(samples.actions, samples.states)
    episode = 3
    span = samples.decoded.episode_slice(episode)
    if name == "llarva":
        # LLARVA's prompt noise: control draws it from a generator seeded at the episode start, one
        # prompt per step; the same generator, frame by frame, gives training's prompts.
        noise = np.random.default_rng(0)
        rows = [samples.batch(np.array([index]), noise) for index in range(span.start, span.stop)]
        trained = {key: torch.cat([r[key] for r in rows]) if isinstance(rows[0][key], torch.Tensor)
                   else [x for r in rows for x in r[key]] for key in rows[0]}
    else:
        trained = samples.batch(np.arange(span.start, span.stop))  # no rng: no augmentation
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
    if name in TRACED:  # the comparison saw frames with traces and frames without
        shown = np.array(samples.arrays[F.HAS_TRACES][span])
        assert shown.any() and not shown.all()
    if name == "st":  # the traced depth differs from the raw one where traces were drawn
        raw = torch.from_numpy(np.array(samples.arrays[F.DEPTH][span]))
        assert not torch.equal(trained[F.DEPTH][shown], raw[shown])
        assert torch.equal(trained[F.DEPTH][~shown], raw[~shown])
    if name == "tracevla":
        assert not torch.equal(trained[F.TRACED_RGB][shown], trained[F.RGB][shown])
        assert torch.equal(trained[F.TRACED_RGB][~shown], trained[F.RGB][~shown])
    if name.startswith("tracetokens"):  # points exactly where there are traces; 3D ones in front of the camera
        points = trained[F.TRACE_POINTS]
        assert points.shape[1:] == (5, 30, 4)
        assert torch.equal(points[..., 3].amax(dim=(1, 2)) > 0, torch.from_numpy(shown))
        assert not points[~shown].any()
        exists = points[..., 3] > 0
        if name == "tracetokens":
            assert (points[..., 2][exists] > 0.1).all() and (points[..., 2][exists] < 4).all()
        else:
            assert (points[..., :2][exists].abs() <= 1).all() and not points[..., 2].any()
    if name == "llarva":  # the prompts carry noise: the comparison saw the noisy path
        assert trained[F.PROMPT][0] != samples.batch(np.array([span.start]))[F.PROMPT][0]


def test_a_message_in_dataset_keys_and_bad_observations(small_dataset):
    """A client may send the dataset's feature keys instead of the environment's; a missing key or a
    wrong shape is a one-line error naming it."""
    root, _ = small_dataset
    store = EpisodeStore(root)
    policy = tiny_policy("st")
    keys = list(policy.processor.input_features())
    frame = store.frame(0, 0, keys)
    obs = {F.FEATURE_OF_OBSERVATION[key]: frame[key] for key in keys} | {F.OBS_INSTRUCTION: "reach"}
    message = {key: frame[key] for key in keys} | {F.TASK: "reach"}
    for source in (obs, message):
        policy.processor.reset()
        made = policy.processor.observation_frame(source)
        assert np.array_equal(made[F.STATE], frame[F.STATE]) and made[F.TASK] == "reach"
    with pytest.raises(ValueError, match="no 'proprio'"):
        policy.processor.observation_frame({k: v for k, v in obs.items() if k != F.OBS_STATE})
    with pytest.raises(ValueError, match=r"'observation.images.rgb' has shape \[32, 32, 3\]"):
        policy.processor.observation_frame(obs | {F.OBS_RGB: frame[F.RGB][:32, :32]})


@pytest.mark.parametrize("change, message", [
    ({F.OBS_STATE: "nan"}, "'observation.state' must be finite numbers.*non-finite values at \\[0\\]"),
    ({F.OBS_RGB: "float"}, "must be uint8 RGB"),
    ({F.OBS_DEPTH: "all_nan"}, "depth has no valid value"),
    ({F.OBS_DEPTH: "zero"}, "depth has no valid value"),
    ({F.OBS_DEPTH: "negative"}, "negative values"),
    ({F.OBS_DEPTH: "millimetres"}, "looks like millimetres"),
    ({F.OBS_DEPTH: "uint16"}, "must be float metres"),
    ({F.OBS_INTRINSICS: "nan"}, "intrinsics have non-finite values"),
    ({F.OBS_INTRINSICS: "zero"}, "fx, fy > 0"),
    ({F.OBS_INSTRUCTION: None}, "must be a non-empty string"),
])
def test_implausible_observations_are_refused_by_name(small_dataset, change, message):
    """NaN proprio, NaN intrinsics, depth in millimetres ... once gave a finite action: now one line each."""
    root, _ = small_dataset
    policy, store = tiny_policy("st"), EpisodeStore(root)
    recorded = store.episode(0, [F.ACTION, F.STATE])
    policy.fit_statistics(recorded[F.ACTION], recorded[F.STATE])
    keys = list(policy.processor.input_features())
    frame = store.frame(0, 0, keys)
    obs = {F.FEATURE_OF_OBSERVATION[key]: np.array(frame[key]) for key in keys} | {F.OBS_INSTRUCTION: "reach"}
    key, how = next(iter(change.items()))
    broken = {
        "nan": lambda x: np.where(np.arange(x.size).reshape(x.shape) == 0, np.nan, x).astype(np.float32),
        "float": lambda x: x.astype(np.float32) / 255,
        "all_nan": lambda x: np.full_like(x, np.nan),
        "zero": lambda x: np.zeros_like(x),
        "negative": lambda x: x - 10,
        "millimetres": lambda x: x * 1000,
        "uint16": lambda x: (x * 1000).astype(np.uint16),
        None: lambda x: None,
    }[how](obs[key])
    policy.reset()
    with pytest.raises(ValueError, match=message):
        policy.select_action(obs | {key: broken})
    policy.reset()
    holes = obs | {F.OBS_DEPTH: np.where(np.eye(*obs[F.OBS_DEPTH].shape, dtype=bool), np.nan, obs[F.OBS_DEPTH])}
    assert np.isfinite(policy.select_action(holes)).all(), "depth with NaN holes (no reading) is fine"
    with pytest.raises(ValueError, match="frames have no observation.has_traces"):
        policy.processor.model_inputs({key: frame[key][None] for key in keys} | {F.TASK: ["reach"]})


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


def test_an_incomplete_traced_cache_is_rebuilt_not_read(small_dataset, tmp_path):
    """A traced cache directory without every output (a killed build, an older layout) is rebuilt."""
    import shutil

    root, _ = small_dataset
    copy = tmp_path / "data"
    shutil.copytree(root, copy)
    cache = tmp_path / "cache"
    policy = tiny_policy("tracevla", selection=SelectionConfig(adaptive=True))
    first = np.array(TrainingSamples(copy, policy, progress=False, cache_dir=str(cache)).arrays[F.TRACED_RGB])
    (directory,) = cache.glob("*/traced-*")
    (directory / f"{F.TRACED_RGB}.npy").unlink()
    (directory / "traced_depth.npy").write_bytes(b"an older layout")
    again = TrainingSamples(copy, policy, progress=False, cache_dir=str(cache))
    assert np.array_equal(np.asarray(again.arrays[F.TRACED_RGB]), first)
    assert sorted(p.name for p in directory.iterdir()) == sorted(
        name for key in policy.processor.trace_outputs() for name in (f"{key}.npy", f"{key}.npy.json"))
    assert not [p for p in directory.parent.iterdir() if ".tmp-" in p.name]  # nothing temporary left behind
    assert not (copy / "cache").exists()  # the dataset itself is only read


def test_temporal_ensembling_averages_every_chunks_action_for_the_step():
    """ACT's temporal ensembling: a chunk every step; the action for step t averages element i of the
    chunk predicted i steps ago. Here the chunk predicted at step s holds s + i at element i, so every
    chunk's action for step t is t, and the average is exactly t only if the indexing is right."""
    policy = tiny_policy("spatialvla")
    policy.config.temporal_ensemble = 0.5
    calls = []

    def predict_chunk(batch):
        t = len(calls)
        calls.append(t)
        chunk = torch.arange(TINY.chunk_size, dtype=torch.float32)[:, None].repeat(1, 4) + t  # element i: t + i
        return chunk[None], None

    policy.model.predict_chunk = predict_chunk
    obs = {F.OBS_RGB: np.zeros((64, 64, 3), np.uint8), F.OBS_DEPTH: np.ones((64, 64), np.float32),
           F.OBS_INTRINSICS: np.eye(3), F.OBS_STATE: np.zeros(4, np.float32), F.OBS_INSTRUCTION: "reach"}
    policy.reset()
    for step in range(7):
        assert np.allclose(policy.select_action(obs), step)  # every overlapping chunk agrees on step t
    assert len(calls) == 7  # one forward pass per step
    policy.config.temporal_ensemble = 0.0  # off: one forward pass per n_action_steps (1 here)
    policy.reset()
    assert np.allclose(policy.select_action(obs), 7)


@pytest.mark.parametrize("name", TRACED)
def test_trace_diagnostics_measure_the_traces_and_removing_them_is_the_counterfactual(name, small_dataset):
    """In an episode: the share of steps with traces, the pixels they change, and how far the chunk moves
    without them; with `remove_traces` the policy acts exactly as that counterfactual."""
    from stvla.policies.base import TraceDiagnostics

    root, _ = small_dataset
    store = EpisodeStore(root)
    torch.manual_seed(0)
    policy = responsive(tiny_policy(name, selection=SelectionConfig(adaptive=True)))
    keys = list(policy.processor.input_features())
    frames = store.episode(1, keys)
    observations = [{**{F.FEATURE_OF_OBSERVATION[key]: frames[key][i] for key in keys},
                     F.OBS_INSTRUCTION: store.episode_meta(1)["tasks"][0]} for i in range(len(frames[F.RGB]))]
    policy.trace_diagnostics = TraceDiagnostics()
    policy.reset()
    for obs in observations:
        policy.select_action(obs)
    figures = policy.trace_diagnostics.summary()
    diagnostics = policy.trace_diagnostics
    assert diagnostics.steps == len(observations) and 0 < diagnostics.steps_with_traces < len(observations)
    # The share of depth or image pixels the traces changed; of the trace tokens that hold a trace.
    assert 0 < figures["traced_pixel_share"] < (1.0001 if name.startswith("tracetokens") else 0.5)
    assert len(diagnostics.sensitivities) == diagnostics.steps_with_traces  # n_action_steps 1: a chunk a step
    assert figures["trace_sensitivity"] > 0  # random weights still read their inputs
    assert figures["action_norm"] > 0 and len(diagnostics.action_norms) == len(diagnostics.sensitivities)
    assert len(diagnostics.token_changes) == len(diagnostics.sensitivities)
    assert 0 < figures["trace_token_change"] < 1  # the image tokens the traces reach moved, not all of them
    # Acting without traces: what enters the model is the untraced frame (raw depth; the plain image twice).
    policy.remove_traces = True
    policy.trace_diagnostics = None
    seen = []
    predict_chunk = policy.model.predict_chunk
    policy.model.predict_chunk = lambda batch: seen.append(batch) or predict_chunk(batch)
    policy.reset()
    for obs in observations:
        policy.select_action(obs)
    for batch, index in zip(seen, range(len(observations))):
        if name == "st":
            assert torch.equal(batch[F.DEPTH][0], torch.from_numpy(np.asarray(frames[F.DEPTH][index], np.float32)))
        elif name.startswith("tracetokens"):
            assert not batch[F.TRACE_POINTS].any()
        else:
            assert torch.equal(batch[F.TRACED_RGB], batch[F.RGB])



def test_without_the_state_the_policy_reads_image_depth_and_instruction_only(small_dataset, tmp_path):
    """--model.use_state false, the papers' inputs: no state token, no state in the contract or the inputs
    (its statistics still fitted), and training and control still give the model the same inputs."""
    from stvla.train import train

    root, _ = small_dataset
    config = TrainConfig(policy="st", dataset=str(root), out=str(tmp_path / "st"), steps=3, batch_size=4,
                         model=dataclasses.replace(TINY, use_state=False, n_action_steps=1),
                         traces=TraceConfig(selection=SelectionConfig(adaptive=True)))
    policy = load_policy(train(config, progress=False))
    assert policy.model.state is None and not any(k.startswith("state.") for k in policy.model.state_dict())
    assert F.STATE not in policy.processor.input_features()
    assert F.STATE not in json.loads((tmp_path / "st" / "policy" / CONTRACT_FILE).read_text())["input_features"]
    store = EpisodeStore(root)
    samples = TrainingSamples(store, policy, progress=False)
    seen = control_inputs(policy, store, 2)
    span = samples.decoded.episode_slice(2)
    for index, control in zip(range(span.start, span.stop), seen):
        training = samples.batch(np.array([index]))
        assert F.STATE not in control and F.STATE not in training
        assert all(torch.equal(training[k], control[k]) for k in control if isinstance(control[k], torch.Tensor))


def test_stacked_frames_are_the_same_frames_in_training_and_control(small_dataset):
    """--model.previous_frames 2 (frame stacking, another way to give history): the frames before each one,
    the episode's first standing in before it, reach the model alike from the dataset and from control."""
    root, _ = small_dataset
    store = EpisodeStore(root)
    config = make_policy("spatialvla").config
    config.vla = dataclasses.replace(TINY, n_action_steps=1, previous_frames=2)
    policy = make_policy("spatialvla", config)
    samples = TrainingSamples(store, policy, progress=False)
    policy.fit_statistics(samples.actions, samples.states)
    span = samples.decoded.episode_slice(1)
    trained = samples.batch(np.arange(span.start, span.stop))
    controlled = control_inputs(policy, store, 1)
    rgb = trained[F.RGB]
    assert trained[F.PREVIOUS_RGB].shape == (len(rgb), 6, *rgb.shape[-2:])
    for step, inputs in enumerate(controlled):
        assert torch.equal(inputs[F.PREVIOUS_RGB][0], trained[F.PREVIOUS_RGB][step])
        expected = [rgb[max(step - 2, 0)], rgb[max(step - 1, 0)]]  # oldest first
        assert torch.equal(trained[F.PREVIOUS_RGB][step], torch.cat(expected))
    with torch.no_grad():
        actions, _ = policy.model.predict_chunk(trained)
    assert actions.shape == (len(rgb), 4, 4) and torch.isfinite(actions).all()
