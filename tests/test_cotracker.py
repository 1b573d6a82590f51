"""CoTracker3 online adapter: checkpoint naming and loading, per-update behaviour, on a tiny random model."""

import cv2
import numpy as np
import pytest
import torch

from stvla.traces import TrackerConfig
from stvla.traces.cotracker import (
    CoTrackerConfig,
    CoTrackerOnline,
    CoTrackerThreeOnlineNet,
    frame_to_model,
    load_cotracker,
    model_to_frame,
)

torch.set_num_threads(2)

FRAME_HW = (40, 56)


def tiny_config(checkpoint: str = "", **overrides) -> CoTrackerConfig:
    """The CoTracker3 architecture at toy widths: runs in milliseconds on a CPU."""
    fields = {"checkpoint": checkpoint, "model_resolution": (32, 48), "window_len": 4, "iterations": 2,
              "corr_radius": 1, "corr_levels": 2, "corr_embed_dim": 8, "corr_hidden_dim": 16, "latent_dim": 16,
              "hidden_size": 16, "num_heads": 2, "time_depth": 2, "space_depth": 1, "mlp_ratio": 2.0,
              "num_virtual_tracks": 3, "rel_pos_frequencies": 2}
    return CoTrackerConfig(**{**fields, **overrides})


@pytest.fixture
def checkpoint(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "tiny_online.pth"
    torch.save(CoTrackerThreeOnlineNet(tiny_config()).state_dict(), path)
    return path


def textured_frames(count: int, step=(1.0, 0.5)) -> list[np.ndarray]:
    noise = np.random.default_rng(0).uniform(0, 255, FRAME_HW).astype(np.float32)
    base = cv2.normalize(cv2.GaussianBlur(noise, (0, 0), 1.5), None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    frames = []
    for i in range(count):
        shift = np.float32([[1, 0, step[0] * i], [0, 1, step[1] * i]])
        grey = cv2.warpAffine(base, shift, FRAME_HW[::-1], borderMode=cv2.BORDER_REFLECT)
        frames.append(np.repeat(grey[..., None], 3, axis=2))
    return frames


def tracker(path, num_points: int = 6, buffer_length: int = 5, **overrides) -> CoTrackerOnline:
    return CoTrackerOnline(tiny_config(str(path), **overrides),
                           TrackerConfig(num_points=num_points, buffer_length=buffer_length))


# --- checkpoint naming (official CoTracker3 online, names and shapes read from the reference code) ----------
OFFICIAL_SHAPES = {
    "time_emb": (1, 16, 1110),
    "fnet.conv1.weight": (64, 3, 7, 7),
    "fnet.layer2.0.downsample.0.weight": (96, 64, 1, 1),
    "fnet.layer4.1.conv2.weight": (128, 128, 3, 3),
    "fnet.conv2.weight": (256, 416, 3, 3),
    "fnet.conv3.weight": (128, 256, 1, 1),
    "corr_mlp.fc1.weight": (384, 2401),
    "corr_mlp.fc2.weight": (256, 384),
    "updateformer.input_transform.weight": (384, 1110),
    "updateformer.flow_head.weight": (2, 384),
    "updateformer.vis_conf_head.weight": (2, 384),
    "updateformer.virual_tracks": (1, 64, 1, 384),
    "updateformer.time_blocks.2.attn.to_kv.weight": (768, 384),
    "updateformer.time_blocks.0.mlp.fc1.weight": (1536, 384),
    "updateformer.space_virtual_blocks.2.attn.to_out.bias": (384,),
    "updateformer.space_point2virtual_blocks.1.cross_attn.to_q.weight": (384, 384),
    "updateformer.space_virtual2point_blocks.0.norm_context.weight": (384,),
}


def test_default_config_has_official_key_names_and_shapes():
    with torch.device("meta"):  # no memory, no init cost: only names and shapes matter here
        state = CoTrackerThreeOnlineNet(CoTrackerConfig()).state_dict()
    for name, shape in OFFICIAL_SHAPES.items():
        assert tuple(state[name].shape) == shape, name
    # Instance norms and block layer norms carry no parameters in the official model.
    assert not any(".norm1." in k or ".norm2." in k or ".norm3." in k for k in state)
    assert len(state) == 188
    assert CoTrackerConfig().transformer_input_dim == 1110


# --- loading -----------------------------------------------------------------------------------------------
def test_missing_checkpoint_names_the_file(tmp_path):
    missing = tmp_path / "nowhere" / "scaled_online.pth"
    with pytest.raises(FileNotFoundError, match="scaled_online.pth"):
        load_cotracker(tiny_config(str(missing)))


def test_wrong_key_is_named(tmp_path, checkpoint):
    state = torch.load(checkpoint, weights_only=True)
    state["corr_mlp.fc9.weight"] = state.pop("corr_mlp.fc2.weight")
    bad = tmp_path / "renamed.pth"
    torch.save(state, bad)
    with pytest.raises(ValueError, match="renamed.pth") as error:
        load_cotracker(tiny_config(str(bad)))
    assert "corr_mlp.fc2.weight" in str(error.value) and "corr_mlp.fc9.weight" in str(error.value)


def test_wrong_shape_is_named(checkpoint):
    with pytest.raises(ValueError, match="time_emb"):  # a window of another length
        load_cotracker(tiny_config(str(checkpoint), window_len=6))


def test_nested_model_key_and_safetensors_load(tmp_path, checkpoint):
    from safetensors.torch import save_file

    state = torch.load(checkpoint, weights_only=True)
    nested = tmp_path / "nested.pth"
    torch.save({"model": state, "step": torch.tensor(3)}, nested)
    flat = tmp_path / "flat.safetensors"
    save_file(state, str(flat))
    for path in (nested, flat):
        loaded = load_cotracker(tiny_config(str(path))).state_dict()
        assert set(loaded) == set(state)
        assert all(torch.equal(loaded[k], state[k]) for k in state)


def test_empty_checkpoint_path_is_refused():
    with pytest.raises(ValueError, match="checkpoint"):
        load_cotracker(tiny_config(""))


# --- behaviour -----------------------------------------------------------------------------------------------
def test_state_shapes_dtypes_and_bounded_buffer(checkpoint):
    tr = tracker(checkpoint, num_points=6, buffer_length=5)
    assert tr.state is None
    for i, frame in enumerate(textured_frames(9)):
        state = tr.update(frame)
        t = min(i + 1, 5)
        assert state.positions.shape == (t, 6, 2) and state.positions.dtype == np.float32
        assert state.visible.shape == (t, 6) and state.visible.dtype == bool
        assert state.age.shape == (6,) and state.age.dtype == np.int32 and np.all(state.age == i + 1)
        assert state.frame_count == i + 1
        assert np.all(np.isfinite(state.positions))
    assert tr.buffer_length == 5
    assert len(tr._window) == 4  # only window_len frames of features are kept, whatever the buffer length


def test_model_runs_on_the_official_schedule_or_ours(checkpoint):
    official, every_frame, every_second = (tracker(checkpoint), tracker(checkpoint, schedule="refine"),
                                           tracker(checkpoint, schedule="refine", update_every=2))
    runs = {name: [] for name in ("official", "every", "second")}
    warming = []
    for frame in textured_frames(9):
        for name, tr in (("official", official), ("every", every_frame), ("second", every_second)):
            tr.update(frame)
            runs[name].append(tr.flow_calls)
        warming.append(official.warming_up)
    # window_len 4: the official loop first runs on frames 0-3, then every 2 frames (frames 2-5, 4-7, ...).
    assert runs["official"] == [0, 0, 0, 1, 1, 2, 2, 3, 3]
    assert warming == [False, True, True, False, False, False, False, False, False]
    assert runs["every"] == [0, 1, 2, 3, 4, 5, 6, 7, 8]  # frame 0 only sets the queries
    assert runs["second"] == [0, 1, 1, 2, 2, 3, 3, 4, 4]


def test_the_official_loop_starts_from_the_queries_and_hands_over_as_the_authors_do(checkpoint):
    """Written from the official online forward (cotracker3_online.py, is_online): the first run sees the
    first full window with every frame at the queries and zero visibility / confidence logits; a later run
    at window start `ind` takes the previous predictions for the overlapping frames ind .. ind + S/2 - 1 and
    the last of them (coordinates and logits) for the new frames. Frames before the first run report the
    queries held still."""
    tr = tracker(checkpoint, num_points=6, buffer_length=16)
    calls = []
    refine = tr.model.refine

    def recorded(pyramid, patches, coords, vis, conf, iterations):
        out = refine(pyramid, patches, coords, vis, conf, iterations)
        calls.append({"level0": pyramid[0].clone(), "coords": coords.clone(), "vis": vis.clone(),
                      "conf": conf.clone(), "out": [o.clone() for o in out]})
        return out

    tr.model.refine = recorded
    frames = textured_frames(8)
    with torch.no_grad():
        encoded = [tr.model.encode(tr._to_model_input(f))[0][0] for f in frames]
    for count, frame in enumerate(frames, start=1):
        state = tr.update(frame)
        if count < 4:  # the fallback: queries held still
            np.testing.assert_array_equal(state.positions, np.repeat(tr.queries[None], count, axis=0))
    assert len(calls) == 3  # after frames 4, 6 and 8
    first, second = calls[0], calls[1]
    for call, window in ((first, range(0, 4)), (second, range(2, 6)), (calls[2], range(4, 8))):
        for slot, frame_index in enumerate(window):
            torch.testing.assert_close(call["level0"][slot], encoded[frame_index], rtol=0, atol=1e-6)
    queries = tr._to_cells(tr.queries)
    torch.testing.assert_close(first["coords"], queries[None].expand(4, -1, -1))
    assert not first["vis"].any() and not first["conf"].any()
    coords, vis, conf = first["out"]
    for name, previous in (("coords", coords), ("vis", vis), ("conf", conf)):
        torch.testing.assert_close(second[name][:2], previous[2:4])  # the overlap: frames 2, 3
        torch.testing.assert_close(second[name][2:], previous[3:4].expand_as(second[name][2:]))  # new: from frame 3
    # The buffer holds the model's estimates for frames 1-7 (frame 0 is the query frame).
    last = calls[2]["out"][0]
    np.testing.assert_allclose(state.positions[4:8], tr._to_frame(last), atol=1e-4)


def test_reset_points_are_the_first_frame_positions(checkpoint):
    tr = tracker(checkpoint, num_points=6, buffer_length=8)  # frame 0 stays in the buffer throughout
    given = np.array([[3.0, 4.0], [10.5, 20.25], [55.0, 39.0]], dtype=np.float32)
    tr.reset(given)
    frames = textured_frames(6)
    state = tr.update(frames[0])
    np.testing.assert_array_equal(state.positions[0, :3], given)
    assert state.visible[0].all()
    for frame in frames[1:]:
        state = tr.update(frame)  # model runs revise the window but never the query frame
    np.testing.assert_array_equal(state.positions[0, :3], given)
    assert np.all(tr.queries[:3] == given)


def test_points_outside_the_first_frame_are_seeded_from_the_grid(checkpoint):
    tr = tracker(checkpoint, num_points=4)
    tr.reset(np.array([[-5.0, 3.0], [7.0, 8.0]]))
    state = tr.update(textured_frames(1)[0])
    assert np.all(state.positions[0, 1] == [7.0, 8.0])
    h, w = FRAME_HW
    assert 0 <= state.positions[0, 0, 0] <= w - 1 and 0 <= state.positions[0, 0, 1] <= h - 1


def test_same_frames_give_same_tracks(checkpoint):
    frames = textured_frames(7)
    runs = []
    for _ in range(2):
        tr = tracker(checkpoint)
        for frame in frames:
            state = tr.update(frame)
        runs.append(state)
    np.testing.assert_array_equal(runs[0].positions, runs[1].positions)
    np.testing.assert_array_equal(runs[0].visible, runs[1].visible)
    # reset() starts over: the same frames again give the same tracks.
    tr.reset()
    for frame in frames:
        state = tr.update(frame)
    np.testing.assert_array_equal(state.positions, runs[0].positions)


def test_a_restored_episode_tracks_as_if_the_frame_never_came(checkpoint):
    """A served step that fails is undone with episode_state / restore_episode: the window's frames (changed
    in place by each model run) are copied, the model is shared."""
    frames, stray = textured_frames(9), textured_frames(9, step=(-2.0, 1.0))[-1]
    kept, clean = tracker(checkpoint), tracker(checkpoint)
    for index, frame in enumerate(frames):
        if index in (3, 6):
            state = kept.episode_state()
            assert state["model"] is kept.model
            kept.update(stray)
            kept.restore_episode(state)
        a, b = kept.update(frame), clean.update(frame)
        np.testing.assert_array_equal(a.positions, b.positions)
        np.testing.assert_array_equal(a.visible, b.visible)
    assert kept.flow_calls == clean.flow_calls


def test_zero_update_heads_keep_points_still(tmp_path, checkpoint):
    """With zero output heads the model proposes no motion: tracks must come back exactly at the queries.

    This checks the chain frame pixels -> model resolution -> feature cells -> frame pixels, whatever the weights.
    """
    state = torch.load(checkpoint, weights_only=True)
    for name in ("updateformer.flow_head.weight", "updateformer.flow_head.bias",
                 "updateformer.vis_conf_head.weight", "updateformer.vis_conf_head.bias"):
        state[name] = torch.zeros_like(state[name])
    still = tmp_path / "still.pth"
    torch.save(state, still)
    tr = tracker(still, num_points=6, buffer_length=6)
    for frame in textured_frames(6):
        result = tr.update(frame)
    np.testing.assert_allclose(result.positions, np.broadcast_to(tr.queries, result.positions.shape), atol=1e-4)
    # Zero logits: sigmoid(0) * sigmoid(0) = 0.25 is below 0.6, so every model-estimated frame is not visible.
    assert result.visible[0].all() and not result.visible[1:].any()


def test_coordinate_transform_round_trips_and_maps_corners():
    frame_hw, model_hw = (480, 640), (384, 512)
    points = np.array([[0.0, 0.0], [639.0, 479.0], [123.4, 56.7]])
    model_points = frame_to_model(points, frame_hw, model_hw)
    np.testing.assert_allclose(model_points[:2], [[0, 0], [511, 383]])
    np.testing.assert_allclose(model_to_frame(model_points, frame_hw, model_hw), points)


def test_bad_frames_and_configs_are_refused(checkpoint):
    tr = tracker(checkpoint)
    with pytest.raises(ValueError, match="uint8"):
        tr.update(np.zeros((*FRAME_HW, 3), np.float32))
    tr.update(np.zeros((*FRAME_HW, 3), np.uint8))
    with pytest.raises(ValueError, match="size changed"):
        tr.update(np.zeros((20, 20, 3), np.uint8))
    with pytest.raises(ValueError, match="multiples"):
        tiny_config(model_resolution=(30, 48))
    with pytest.raises(ValueError, match="update_every"):
        tiny_config(update_every=3)
    with pytest.raises(ValueError, match="unknown schedule 'every'"):
        tiny_config(schedule="every")
    with pytest.raises(ValueError, match="slots"):
        tr.reset(np.zeros((7, 2)))


def test_trace_settings_reach_cotracker_and_keep_their_cache_key(tmp_path):
    """`tracker_type="cotracker"` builds CoTracker3 from the named checkpoint (here a missing one: the error
    names it), and the new setting, left at its default, leaves the traced-input cache key as it was."""
    import dataclasses
    import hashlib
    import json

    from stvla.traces import OnlineTracer, TraceConfig

    missing = tmp_path / "scaled_online.pth"
    with pytest.raises(FileNotFoundError, match="scaled_online.pth"):
        OnlineTracer(TraceConfig(tracker_type="cotracker", cotracker=CoTrackerConfig(checkpoint=str(missing))))
    with pytest.raises(ValueError, match="--traces.cotracker.checkpoint"):
        TraceConfig(tracker_type="cotracker")
    with pytest.raises(ValueError, match="valid: lk, dense, cotracker"):
        TraceConfig(tracker_type="cotrack")
    settings = dataclasses.asdict(TraceConfig())
    del settings["cotracker"]
    before = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    assert TraceConfig().cache_key() == before
    chosen = TraceConfig(tracker_type="cotracker", cotracker=CoTrackerConfig(checkpoint="x.pth"))
    assert chosen.cache_key() != before
    # Every CoTracker setting is part of the key once CoTracker is chosen: another cadence, another cache.
    assert TraceConfig(tracker_type="cotracker", cotracker=CoTrackerConfig(checkpoint="x.pth", schedule="refine")
                       ).cache_key() != chosen.cache_key()
