"""Property-based fuzzing (hypothesis) of what takes arbitrary values from outside: trace drawing and the
policy's input processor. Only stvla's own one-line ValueErrors may come out; whatever is accepted must
come out right (untouched pixels unchanged, written values finite, no invented action)."""

import dataclasses
import functools

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import responsive
from stvla import features as F
from stvla.policies.registry import make_policy
from stvla.traces import DepthDrawConfig, draw_traces_depth, draw_traces_rgb, trace_mask
from test_processor import TINY

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))

# Coordinates as they come from a broken tracker or a user: huge, non-finite, integer or float.
coordinate = st.one_of(st.floats(-1e12, 1e12), st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**9, 10**9))
polylines = st.lists(st.lists(st.tuples(coordinate, coordinate), max_size=6), max_size=4)


def as_traces(raw: list) -> list[np.ndarray]:
    return [np.array(points, dtype=np.float64).reshape(-1, 2) for points in raw]


def one_line_error(error: ValueError) -> None:
    assert str(error) and "\n" not in str(error), repr(error)


@FUZZ
@given(raw=polylines, height=st.integers(0, 40), width=st.integers(0, 40), variant=st.sampled_from("ABCD"),
       thickness=st.one_of(st.floats(-5, 200), st.just(float("nan"))), fill=st.floats(allow_nan=True, allow_infinity=True))
def test_depth_drawing_refuses_clearly_or_draws_right(raw, height, width, variant, thickness, fill):
    depth = np.full((height, width), fill, np.float32)
    traces = as_traces(raw)
    try:
        config = DepthDrawConfig(thickness=thickness)
        out = draw_traces_depth(depth, traces, variant, config)
    except ValueError as error:
        one_line_error(error)
        return
    assert out.shape == depth.shape and out.dtype == np.float32
    untouched = ~trace_mask(traces, depth.shape, config.thickness)
    np.testing.assert_array_equal(out[untouched], depth[untouched])  # NaN compares equal here
    changed = out != depth
    assert np.isfinite(out[changed & ~np.isnan(depth)]).all()


@FUZZ
@given(raw=polylines, height=st.integers(0, 40), width=st.integers(0, 40), thickness=st.integers(-3, 300),
       arrow=st.one_of(st.none(), st.floats(-10, 1e9)))
def test_rgb_drawing_refuses_clearly_or_draws(raw, height, width, thickness, arrow):
    rgb = np.zeros((height, width, 3), np.uint8)
    try:
        out = draw_traces_rgb(rgb, as_traces(raw), thickness=thickness, arrow_length=arrow)
    except ValueError as error:
        one_line_error(error)
        return
    assert out.shape == rgb.shape and out.dtype == np.uint8


def test_far_off_image_segments_cost_nothing_and_still_draw_their_visible_part():
    # A (0, 0) -> (1e6, 1e6) segment once allocated gigabytes; a +-5e8 line overflowed int32 and drew nothing.
    depth = np.ones((128, 128), np.float32)
    out = draw_traces_depth(depth, [np.array([[0.0, 0.0], [1e6, 1e6]])], "B")
    assert (out == 0).sum() >= 128 and out[64, 64] == 0
    rgb = draw_traces_rgb(np.zeros((128, 128, 3), np.uint8), [np.array([[-5e8, 64.0], [5e8, 64.0]])])
    assert rgb[64].any(axis=1).all(), "the visible part of the line spans the image"


@pytest.mark.parametrize("thickness", [0, 65, 1e9])
def test_line_widths_are_bounded(thickness):
    with pytest.raises(ValueError, match="thickness"):
        DepthDrawConfig(thickness=thickness)
    with pytest.raises(ValueError, match="thickness"):
        draw_traces_rgb(np.zeros((8, 8, 3), np.uint8), [], thickness=int(thickness))


# --- the processor: observations from a robot client ------------------------------------------------------
@functools.lru_cache(maxsize=1)
def fitted_st_policy():
    """A tiny ST-VLA policy at 32 px with fitted statistics (built once: hypothesis calls many times)."""
    vla = dataclasses.replace(TINY, image_size=32, n_action_steps=1)
    config = make_policy("st").config
    config.vla = vla
    return responsive(make_policy("st", config))


def good_observation(rng: np.random.Generator) -> dict:
    return {F.OBS_RGB: rng.integers(0, 256, (32, 32, 3), dtype=np.uint8),
            F.OBS_DEPTH: rng.uniform(0.3, 2.0, (32, 32)).astype(np.float32),
            F.OBS_INTRINSICS: np.array([[30.0, 0, 16], [0, 30, 16], [0, 0, 1]]),
            F.OBS_STATE: rng.normal(0, 0.2, 4).astype(np.float32), F.OBS_INSTRUCTION: "reach the goal"}


# What a broken client sends in one field: another dtype or shape, NaN, inf, huge or negative values, nothing.
odd_values = st.one_of(
    st.none(), st.text(max_size=5), st.integers(-10**12, 10**12), st.floats(allow_nan=True, allow_infinity=True),
    st.builds(lambda shape, fill, dtype: np.full(shape, fill).astype(dtype, casting="unsafe"),
              st.sampled_from([(), (4,), (3, 3), (32, 32), (32, 32, 3), (16, 16, 3), (32, 32, 1)]),
              st.floats(allow_nan=True, allow_infinity=True, width=32),
              st.sampled_from(["uint8", "uint16", "int64", "float16", "float32", "float64", "bool"])),
)


@FUZZ
@given(field=st.sampled_from([F.OBS_RGB, F.OBS_DEPTH, F.OBS_INTRINSICS, F.OBS_STATE, F.OBS_INSTRUCTION, "extra"]),
       value=odd_values, drop=st.booleans(), seed=st.integers(0, 3))
def test_select_action_refuses_clearly_or_returns_a_finite_action(field, value, drop, seed):
    policy = fitted_st_policy()
    obs = good_observation(np.random.default_rng(seed))
    if drop:
        obs.pop(field, None)
    else:
        obs[field] = value
    policy.reset()
    try:
        with np.errstate(all="ignore"):
            action = policy.select_action(obs)
    except ValueError as error:
        one_line_error(error)
        return
    assert action.shape == (4,) and np.isfinite(action).all()
