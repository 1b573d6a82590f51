"""Closed-loop evaluation: the interval arithmetic, eval_info.json against its episodes, resume, errors."""

from __future__ import annotations

import dataclasses
import shutil
import json
import math

import numpy as np
import pytest
import torch

from stvla import features as F
from stvla import geometry
from stvla.envs import episode_seed, make_env
from stvla.evaluate import EvalConfig, evaluate, wilson_interval
from stvla.policies.action_tokenizer import ActionGridConfig
from stvla.policies.image_encoder import ImageEncoderConfig
from stvla.policies.registry import make_policy
from stvla.policies.trunk import TrunkConfig
from stvla.policies.vla import VLAConfig

TINY = VLAConfig(image_size=64, width=32, image=ImageEncoderConfig(channels=(8, 16), width=32),
                 trunk=TrunkConfig(width=32, depth=1, heads=2))


def test_wilson_interval_matches_the_formula():
    def by_hand(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
        p = k / n
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
        return centre - half, centre + half

    for k, n in ((0, 10), (5, 10), (10, 10), (17, 50), (1, 3)):
        assert wilson_interval(k, n) == pytest.approx(by_hand(k, n), abs=1e-12)
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == pytest.approx(1.0)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def save_tiny(directory, policy_type: str = "st", vla: VLAConfig = TINY, seed: int = 0):
    torch.manual_seed(seed)
    config = dataclasses.replace(make_policy(policy_type).config, vla=vla)
    policy = make_policy(policy_type, config)
    rng = np.random.default_rng(0)
    policy.fit_statistics(rng.uniform(-1, 1, (500, vla.action_dim)), rng.normal(size=(500, 4)))
    return policy.save_pretrained(directory)


def test_evaluation_writes_consistent_results_and_resumes(tmp_path):
    checkpoint = save_tiny(tmp_path / "policy")
    config = EvalConfig(policy=str(checkpoint), tasks="reach-v3", episodes=1, max_steps=10, workers=1,
                        out=str(tmp_path / "eval"), videos=1)
    evaluate(config, progress=False)
    # Resumes: two new episodes, run by two worker processes.
    info = evaluate(dataclasses.replace(config, episodes=3, workers=2), progress=False)
    log = (tmp_path / "eval" / "episodes.jsonl").read_text().splitlines()
    assert len(log) == 3  # the first episode was not run again
    stored = json.loads((tmp_path / "eval" / "eval_info.json").read_text())
    assert stored["per_task"] == info["per_task"]
    episodes = stored["episodes"]
    assert [(e["task"], e["attempt"]) for e in episodes] == [("reach-v3", a) for a in range(3)]
    assert len({e["seed"] for e in episodes}) == 3 and all(1 <= e["steps"] <= 10 for e in episodes)
    row = stored["per_task"]["reach-v3"]
    assert row["episodes"] == 3 and row["successes"] == sum(e["success"] for e in episodes)
    assert row["ci95"] == pytest.approx(list(wilson_interval(row["successes"], 3)))
    assert stored["overall"]["episodes"] == 3
    video = episodes[0]["video"]
    assert video and video.endswith(("-success.mp4", "-failure.mp4")) and episodes[1]["video"] is None
    assert (tmp_path / "eval" / "success_by_task.png").is_file()
    # Other settings in the same directory are refused rather than mixed.
    with pytest.raises(ValueError, match="episodes of another evaluation"):
        evaluate(dataclasses.replace(config, max_steps=20), progress=False)
    # The policy counts by what it is: a moved copy resumes (nothing to run), new weights in place do not.
    moved = shutil.copytree(checkpoint, tmp_path / "moved")
    evaluate(dataclasses.replace(config, policy=str(moved), episodes=3), progress=False)
    assert len((tmp_path / "eval" / "episodes.jsonl").read_text().splitlines()) == 3
    save_tiny(tmp_path / "moved", seed=1)
    with pytest.raises(ValueError, match="episodes of another evaluation"):
        evaluate(dataclasses.replace(config, policy=str(moved), episodes=3), progress=False)
    # The training split replays the collection's starts, never the held-out ones; it is another evaluation.
    with pytest.raises(ValueError, match="episodes of another evaluation"):
        evaluate(dataclasses.replace(config, split="train"), progress=False)
    train = evaluate(dataclasses.replace(config, split="train", out=str(tmp_path / "train")), progress=False)
    assert [e["seed"] for e in train["episodes"]] == [episode_seed("reach-v3", 0, "train")]
    assert train["episodes"][0]["seed"] != episodes[0]["seed"] == episode_seed("reach-v3", 0, "eval")
    with pytest.raises(ValueError, match="--split must be 'eval'"):
        evaluate(dataclasses.replace(config, split="test"), progress=False)


def test_bad_task_and_mismatched_checkpoint_are_refused(tmp_path):
    checkpoint = save_tiny(tmp_path / "policy", "spatialvla")
    with pytest.raises(ValueError, match="valid tasks: mt10, "):
        evaluate(EvalConfig(policy=str(checkpoint), tasks="reach", out=str(tmp_path / "a")), progress=False)
    arm = dataclasses.replace(TINY, action_dim=7, grid=ActionGridConfig(has_rotation=True, gripper_dim=6))
    seven = save_tiny(tmp_path / "seven", "spatialvla", arm)
    with pytest.raises(ValueError, match="outputs 7-D actions; task reach-v3 takes 4-D"):
        evaluate(EvalConfig(policy=str(seven), tasks="reach-v3", out=str(tmp_path / "b")), progress=False)


def test_a_worker_that_cannot_start_fails_the_evaluation_instead_of_hanging(tmp_path):
    """A pool restarts a worker whose start-up raises, forever: the error must travel with the first job."""
    from stvla.evaluate.rollout import _WORKER, _episode_in_worker, _start_worker

    config = dataclasses.asdict(EvalConfig(policy=str(tmp_path / "gone"), tasks="reach-v3"))
    threads = torch.get_num_threads()
    try:
        _start_worker(config)
        with pytest.raises(RuntimeError, match="could not start: FileNotFoundError: not a policy checkpoint"):
            _episode_in_worker(("reach-v3", 0, None))
    finally:
        _WORKER.clear()
        torch.set_num_threads(threads)
    if not torch.cuda.is_available():  # a device this machine lacks is refused before any worker starts
        with pytest.raises(ValueError, match="'cuda' is not available"):
            evaluate(EvalConfig(policy=str(save_tiny(tmp_path / "p", "spatialvla")), tasks="reach-v3",
                                device="cuda", out=str(tmp_path / "e")), progress=False)


def test_target_traces_count_a_trace_that_follows_the_moving_goal_shown_and_hidden():
    """TargetTraces: a trace whose vertices lie on the moving goal's pixels at their frames counts; one that
    only ends on it (a hand that reached it) does not, nor one left where it was; hidden steps apart."""
    from types import SimpleNamespace

    from stvla.evaluate.rollout import TargetTraces
    from stvla.traces import Trace

    env = make_env("reach-moving-hidden-v3", image_size=64)
    obs, _ = env.reset(seed=0)
    counter = TargetTraces()
    start, end = env.variant.hidden
    pixels = []
    for step in range(end + 1):
        position, hidden, extent = env.moving_thing()
        assert hidden == (start <= step < end) and extent == env.variant.marker_radius
        pixels.append(geometry.project_world_points(position, obs[F.OBS_INTRINSICS], obs[F.OBS_CAMERA_POSE]))
        window = min(len(pixels), 3)
        recent = np.array(pixels[-window:], np.float32)
        follows = Trace(points=recent + 0.5, frame_index=np.arange(window), point_id=0)
        arrives = Trace(points=np.concatenate([recent[:-1] + 15, recent[-1:]]), frame_index=np.arange(window), point_id=1)
        traces = [follows, arrives] if step % 2 and window > 1 else [arrives]
        counter.observe(env, obs, SimpleNamespace(traces=traces, state=SimpleNamespace(positions=np.zeros((window, 1, 2)))))
        obs, *_ = env.step(np.zeros(4))
    env.close()
    shown_steps, hidden_steps = start + 1, end - start  # the step after the hidden stretch is shown again
    assert counter.steps == {False: shown_steps, True: hidden_steps}
    on_shown = sum(s % 2 for s in [*range(start), end])
    on_hidden = sum(s % 2 for s in range(start, end))
    assert counter.summary() == {"target_trace_share": on_shown / shown_steps,
                                 "hidden_target_trace_share": on_hidden / hidden_steps}
    beside = TargetTraces()  # a trace that moved as the goal did, but elsewhere, does not follow it
    beside.pixels = pixels[:21]
    path = np.array(pixels[:21], np.float32)
    assert beside.follows(Trace(points=path + 2, frame_index=np.arange(21), point_id=0), 21, radius=3, tolerance=1)
    assert not beside.follows(Trace(points=path + 4, frame_index=np.arange(21), point_id=0), 21, radius=3, tolerance=1)
    standing = Trace(points=np.repeat(path[-1:], 21, axis=0), frame_index=np.arange(21), point_id=0)
    moved = np.hypot(*(path - path[-1]).T).max()  # how far the goal ever was from where it is now
    assert beside.follows(standing, 21, radius=3, tolerance=moved + 0.1)
    assert not beside.follows(standing, 21, radius=3, tolerance=moved - 0.1)
    assert make_env("reach-v3", image_size=64).moving_thing() is None
