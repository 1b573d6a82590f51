"""Traces: latency of one online trace step, and tracking accuracy against simulator ground truth.

    python benchmarks/bench_traces.py [--seeds 4] [--steps 120]

Pinned to one core. Frames come from expert episodes (Meta-World, corner3 camera): latency and trace
precision on pick-place-v3, tracking accuracy on eight tasks (ACCURACY_TASKS) x `--seeds` seeds.

- Latency: one `OnlineTracer.step` (400 points, LK with forward-backward check, selection, drawing
  into depth, variant C) per frame, median and p95 in ms at 128 and 224 px; the median at 128 px for
  buffer lengths 7, 15, 30, 60 (work per step must not grow with b).
- Accuracy: at the start of each 30-frame window (every 15 frames), points are seeded on the gripper
  (corners inside the gripper's pixels, from MuJoCo's segmentation render), tracked, and compared
  with the true image position of the same surface point: the point is back-projected with the true
  depth, attached to its body, moved with the body's simulated pose and projected by the true camera.
  Frames where the true point is hidden (self-occlusion by the fingers and arm, or by objects) are
  skipped; points the tracker drops stop counting. Reported: median and p95 error over the seen
  point-frames, the kept share (points seen in every frame of the window that the tracker still holds,
  never re-seeded, at its end), and the error of the points hidden at some frame once seen again.
  Three trackers: the default, the default without re-alignment to the seed-time appearance (the
  tracker before it), and plain OpenCV LK with only the forward-backward check.

- Trace precision: the share of drawn traces that start and end on a moving body (robot or object,
  within one pixel), for the default (TraceVLA) rule and the adaptive rule; the rest are background
  points dragged along by a moving edge. Also the share of steps with at least one trace.

Writes benchmarks/results/traces.json and the "Traces" section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cv2  # noqa: E402
import mujoco  # noqa: E402
import numpy as np  # noqa: E402
from common import record, run  # noqa: E402

from stvla import features as F  # noqa: E402
from stvla import geometry  # noqa: E402
from stvla.envs import EnvConfig, make_env  # noqa: E402
from stvla.traces import (  # noqa: E402
    DepthDrawConfig,
    LucasKanadeTracker,
    OnlineTracer,
    SelectionConfig,
    TraceConfig,
    TrackerConfig,
)

TASK = "pick-place-v3"  # latency and trace precision
ACCURACY_TASKS = ("pick-place-v3", "push-v3", "door-open-v3", "window-open-v3", "drawer-open-v3",
                  "peg-insert-side-v3", "button-press-topdown-v3", "reach-v3")
GRIPPER_BODIES = ("right_hand", "hand", "rightclaw", "rightpad", "leftclaw", "leftpad")
WINDOW = 30  # frames per accuracy window (the default buffer length)
WINDOW_STRIDE = 15  # frames between window starts
SEEDS_PER_WINDOW = 8  # gripper points seeded per window at most
BUFFER_LENGTHS = (7, 15, 30, 60)
DEPTH_TOLERANCE = 0.015  # metres: a true point this far behind the rendered surface counts as hidden


@dataclass
class Episode:
    """Frames of one expert episode, with what the ground truth needs (when recorded)."""

    rgb: list = field(default_factory=list)
    depth: list = field(default_factory=list)
    body_at_pixel: list = field(default_factory=list)  # (H, W) body id seen at each pixel (-1: none)
    body_pos: list = field(default_factory=list)  # (nbody, 3) world positions
    body_rot: list = field(default_factory=list)  # (nbody, 3, 3) world-from-body rotations
    intrinsics: np.ndarray | None = None
    pose: np.ndarray | None = None  # world-from-camera (the camera is fixed)
    gripper_ids: tuple[int, ...] = ()


def pin_one_core() -> None:
    cv2.setNumThreads(1)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})


def record_episode(task: str, seed: int, size: int, steps: int, ground_truth: bool) -> Episode:
    env = make_env(task, image_size=size)
    episode = Episode()
    segmenter = None
    try:
        obs, _ = env.reset(seed=seed)
        model, data = env._mw.model, env._mw.data
        episode.intrinsics, episode.pose = obs[F.OBS_INTRINSICS], obs[F.OBS_CAMERA_POSE]
        if ground_truth:
            segmenter = mujoco.Renderer(model, size, size)
            segmenter.enable_segmentation_rendering()
            episode.gripper_ids = tuple(mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, n) for n in GRIPPER_BODIES)
        for _ in range(steps):
            episode.rgb.append(obs[F.OBS_RGB])
            episode.depth.append(obs[F.OBS_DEPTH])
            if segmenter is not None:
                segmenter.update_scene(data, camera=env._camera_id)
                seg = segmenter.render()
                geom, kind = seg[..., 0], seg[..., 1]
                is_geom = (geom >= 0) & (kind == mujoco.mjtObj.mjOBJ_GEOM)
                episode.body_at_pixel.append(np.where(is_geom, model.geom_bodyid[np.maximum(geom, 0)], -1))
                episode.body_pos.append(data.xpos.copy())
                episode.body_rot.append(data.xmat.reshape(-1, 3, 3).copy())
            obs, *_ = env.step(env.expert_action())
    finally:
        if segmenter is not None:
            segmenter.close()
        env.close()
    return episode


# --- latency ---------------------------------------------------------------------------------------
def step_latencies_ms(frames: list, depths: list, config: TraceConfig, repeats: int) -> np.ndarray:
    """Wall time of each OnlineTracer.step over the episode, `repeats` passes (reset between)."""
    tracer = OnlineTracer(config)
    times = []
    for _ in range(repeats):
        tracer.reset()
        for rgb, depth in zip(frames, depths):
            start = time.perf_counter()
            tracer.step(rgb, depth)
            times.append(time.perf_counter() - start)
    return np.array(times) * 1e3


def trace_config(buffer_length: int = 30, adaptive: bool = False) -> TraceConfig:
    return TraceConfig(
        tracker=TrackerConfig(buffer_length=buffer_length, num_points=400),
        selection=SelectionConfig(adaptive=adaptive),
        variant="C",
        depth=DepthDrawConfig(depth_max=EnvConfig().depth_max),  # where the env clips the background
    )


# --- accuracy --------------------------------------------------------------------------------------
def gripper_seeds(episode: Episode, frame: int) -> np.ndarray:
    """Up to SEEDS_PER_WINDOW integer pixels (u, v) on the gripper's surface, at corners LK can track."""
    # Segmentation and depth are both rendered at pixel centres (no multisampling), so an integer
    # seed on a gripper pixel has the gripper's own depth, even on the silhouette.
    on_gripper = np.isin(episode.body_at_pixel[frame], episode.gripper_ids).astype(np.uint8)
    grey = cv2.cvtColor(episode.rgb[frame], cv2.COLOR_RGB2GRAY)
    corners = cv2.goodFeaturesToTrack(grey, SEEDS_PER_WINDOW, 0.01, 2, mask=on_gripper * 255)
    return np.empty((0, 2)) if corners is None else np.round(corners.reshape(-1, 2))


def true_pixels(episode: Episode, start: int, seeds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(W, M, 2) true pixels of the seeds' surface points over the window, and (W, M) visibility."""
    u, v = seeds[:, 0].astype(int), seeds[:, 1].astype(int)
    body = episode.body_at_pixel[start][v, u]
    cam = geometry.backproject_pixels(seeds, episode.depth[start][v, u], episode.intrinsics)
    world = geometry.camera_to_world(cam, episode.pose)
    local = np.einsum("mji,mj->mi", episode.body_rot[start][body], world - episode.body_pos[start][body])
    pixels, visible = [], []
    for k in range(start, start + WINDOW):
        moved = np.einsum("mij,mj->mi", episode.body_rot[k][body], local) + episode.body_pos[k][body]
        z = geometry.world_to_camera(moved, episode.pose)[:, 2]
        uv = geometry.project_world_points(moved, episode.intrinsics, episode.pose)
        col, row = np.floor(uv[:, 0] + 0.5).astype(int), np.floor(uv[:, 1] + 0.5).astype(int)
        h, w = episode.depth[k].shape
        inside = (col >= 0) & (col < w) & (row >= 0) & (row < h)
        col, row = np.clip(col, 0, w - 1), np.clip(row, 0, h - 1)
        # Hidden only if something is rendered in front of it (a silhouette point's pixel centre may
        # show the background behind it: still seen).
        seen = inside & (episode.depth[k][row, col] >= z - DEPTH_TOLERANCE)
        pixels.append(uv)
        visible.append(seen)
    return np.array(pixels), np.array(visible)


@dataclass
class WindowResult:
    """Tracking of one window's gripper seeds against the truth."""

    errors: list = field(default_factory=list)  # px, every seen and still-tracked point-frame
    occluded_errors: list = field(default_factory=list)  # px, the same for points hidden at some frame
    always_seen: int = 0  # points seen in every frame of the window
    kept: int = 0  # of those, still tracked (never re-seeded) at the window's end


def track_window(episode: Episode, start: int, config: TrackerConfig) -> WindowResult:
    """Seed the tracker on the gripper at `start`, track WINDOW frames and compare with the truth."""
    result = WindowResult()
    seeds = gripper_seeds(episode, start)
    if len(seeds) == 0:
        return result
    truth, visible = true_pixels(episode, start, seeds)
    occluded = ~visible.all(axis=0)
    tracker = LucasKanadeTracker(config)
    tracker.reset(points=seeds)
    slots = np.arange(len(seeds))
    for k in range(WINDOW):
        state = tracker.update(episode.rgb[start + k])
        tracked = state.age[slots] >= k + 1  # still the seeded point, never re-seeded
        if k == 0:
            continue
        ok = visible[k] & tracked
        error = np.linalg.norm(state.latest[slots[ok]] - truth[k, ok], axis=1)
        result.errors += error.tolist()
        result.occluded_errors += error[occluded[ok]].tolist()
    result.always_seen = int((~occluded).sum())
    result.kept = int((~occluded & tracked).sum())
    return result


def accuracy(episodes: dict[str, list[Episode]], config: TrackerConfig) -> dict:
    """Gripper tracking accuracy over every window of the episodes, overall and per task."""
    per_task, total = {}, WindowResult()
    for task, task_episodes in episodes.items():
        errors = []
        for episode in task_episodes:
            for start in range(0, len(episode.rgb) - WINDOW + 1, WINDOW_STRIDE):
                window = track_window(episode, start, config)
                errors += window.errors
                total.errors += window.errors
                total.occluded_errors += window.occluded_errors
                total.always_seen += window.always_seen
                total.kept += window.kept
        per_task[task] = {"median": round(float(np.median(errors)), 3), "p95": round(float(np.percentile(errors, 95)), 3)}
    return {
        "median": round(float(np.median(total.errors)), 3),
        "p95": round(float(np.percentile(total.errors, 95)), 3),
        "kept_share": round(total.kept / max(total.always_seen, 1), 3),
        "always_seen_points": total.always_seen,
        "occluded_median": round(float(np.median(total.occluded_errors)), 3),
        "occluded_p95": round(float(np.percentile(total.occluded_errors, 95)), 3),
        "point_frames": len(total.errors),
        "occluded_point_frames": len(total.occluded_errors),
        "per_task": per_task,
    }


def on_moving_body(episode: Episode, frame: int, uv: np.ndarray, moving: np.ndarray) -> bool:
    u, v = np.floor(uv + 0.5).astype(int)
    return bool(np.isin(episode.body_at_pixel[frame][max(v - 1, 0) : v + 2, max(u - 1, 0) : u + 2], moving).any())


def trace_precision(episodes: list[Episode], config: TraceConfig) -> tuple[float, float, int]:
    """(share of traces starting and ending on a moving body, share of steps with traces, traces)."""
    on_body = traced_steps = total = steps = 0
    for episode in episodes:
        positions = np.array(episode.body_pos)
        moving = np.flatnonzero(np.abs(positions - positions[0]).max(axis=(0, 2)) > 1e-3)
        tracer = OnlineTracer(config)
        for i, (rgb, depth) in enumerate(zip(episode.rgb, episode.depth)):
            out = tracer.step(rgb, depth)
            window_start = i - (len(out.state.positions) - 1)
            steps += 1
            traced_steps += bool(out.traces)
            for trace in out.traces:
                total += 1
                on_body += on_moving_body(episode, window_start + int(trace.frame_index[0]), trace.points[0], moving) \
                    and on_moving_body(episode, i, trace.points[-1], moving)
    return on_body / max(total, 1), traced_steps / max(steps, 1), total


TRACKERS = {  # accuracy rows: name -> (tracker config, what it is)
    "default": (TrackerConfig(num_points=400, buffer_length=WINDOW), "default tracker"),
    "no_reference": (TrackerConfig(num_points=400, buffer_length=WINDOW, reference_window=None),
                     "default without re-alignment to the seed-time appearance"),
    "plain_lk_fb": (TrackerConfig(num_points=400, buffer_length=WINDOW, reference_window=None, static_tolerance=None,
                                  max_patch_error=None), "plain OpenCV LK with the forward-backward check only"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=4, help="expert episodes per task for the accuracy windows")
    parser.add_argument("--steps", type=int, default=120, help="frames recorded per episode")
    parser.add_argument("--repeats", type=int, default=3, help="passes over the frames per latency figure")
    args = parser.parse_args()
    pin_one_core()
    figures, rows = {}, []

    # The latency episodes first, timed before the long recording of the accuracy episodes.
    latency_episodes = {size: record_episode(TASK, 0, size, args.steps, ground_truth=True) for size in (128, 224)}
    for size, episode in latency_episodes.items():
        ms = step_latencies_ms(episode.rgb, episode.depth, trace_config(), args.repeats)
        figures[f"trace_update_ms_median_{size}"] = round(float(np.median(ms)), 3)
        figures[f"trace_update_ms_p95_{size}"] = round(float(np.percentile(ms, 95)), 3)
        rows.append((f"trace step at {size} px (400 points, b=30, variant C): median / p95",
                     f"{np.median(ms):.2f} / {np.percentile(ms, 95):.2f} ms"))
        print(rows[-1], flush=True)

    ep128 = latency_episodes[128]
    adaptive = step_latencies_ms(ep128.rgb, ep128.depth, trace_config(adaptive=True), args.repeats)
    figures["trace_update_ms_median_128_adaptive"] = round(float(np.median(adaptive)), 3)
    rows.append(("trace step at 128 px, adaptive selection (5 traces drawn on most steps): median",
                 f"{np.median(adaptive):.2f} ms"))
    print(rows[-1], flush=True)

    by_buffer = {
        b: round(float(np.median(step_latencies_ms(ep128.rgb, ep128.depth, trace_config(b), args.repeats))), 3)
        for b in BUFFER_LENGTHS
    }
    figures["trace_update_ms_by_buffer"] = by_buffer
    rows.append(("median step at 128 px by buffer length b",
                 ", ".join(f"b={b}: {ms:.2f} ms" for b, ms in by_buffer.items())))
    print(rows[-1], flush=True)

    recorded = {size: {task: [latency_episodes[size] if (task, seed) == (TASK, 0) else
                              record_episode(task, seed, size, args.steps, ground_truth=True) for seed in range(args.seeds)]
                       for task in ACCURACY_TASKS} for size in (128, 224)}
    clips = sum(len(range(0, args.steps - WINDOW + 1, WINDOW_STRIDE)) for _ in ACCURACY_TASKS for _ in range(args.seeds))
    figures["accuracy"] = {}
    for name, size in [(name, 128) for name in TRACKERS] + [("default", 224)]:
        config, what = TRACKERS[name]
        acc = accuracy(recorded[size], config)
        figures["accuracy"][f"{name}_{size}"] = acc
        rows.append((f"{what}, {size} px: gripper error median / p95; kept share of the always-seen points; "
                     "error of self-occluded points once seen again (median / p95)",
                     f"{acc['median']:.2f} / {acc['p95']:.2f} px; {acc['kept_share']:.1%} of {acc['always_seen_points']}; "
                     f"{acc['occluded_median']:.2f} / {acc['occluded_p95']:.2f} px"))
        print(rows[-1], flush=True)
    default = figures["accuracy"]["default_128"]["per_task"]
    rows.append(("default tracker at 128 px, per task: median / p95 (px)",
                 "; ".join(f"{task.removesuffix('-v3')} {r['median']:.2f} / {r['p95']:.2f}" for task, r in default.items())))

    for rule, adaptive_rule in (("default", False), ("adaptive", True)):
        on_body, traced, total = trace_precision(recorded[128][TASK], trace_config(adaptive=adaptive_rule))
        figures[f"trace_on_moving_body_fraction_{rule}"] = round(on_body, 3)
        figures[f"steps_with_traces_fraction_{rule}"] = round(traced, 3)
        rows.append((f"{rule} selection at 128 px: traces on a moving body / steps with traces",
                     f"{on_body:.0%} of {total} traces / {traced:.0%} of steps"))
        print(rows[-1], flush=True)
    figures.update(task=TASK, accuracy_tasks=list(ACCURACY_TASKS), seeds=args.seeds, frames_per_episode=args.steps,
                   window=WINDOW, clips_per_size=clips, cores=1)
    record("traces", figures, rows, title="Traces: online tracker latency and accuracy (issues 3 and 18)")


if __name__ == "__main__":
    run(main)
