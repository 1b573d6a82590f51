"""Traces: latency of one online trace step, and tracking accuracy against simulator ground truth.

    python benchmarks/bench_traces.py [--seeds 2] [--steps 120]

Pinned to one core. Frames come from expert episodes (Meta-World): latency and trace precision on
pick-place-v3 (corner3 camera); tracking accuracy on every MT10 task and the history variants
(ACCURACY_TASKS), from both ACCURACY_CAMERAS, x `--seeds` seeds.

- Latency: one `OnlineTracer.step` (400 points, LK with forward-backward check, selection, drawing
  into depth, variant C) per frame, median and p95 in ms at 128 and 224 px; the median at 128 px for
  buffer lengths 7, 15, 30, 60 (work per step must not grow with b).
- Accuracy: at the start of each 30-frame window (every 15 frames, so several starts per episode), up to
  32 points are seeded anywhere on the gripper's visible surface (random pixels one pixel inside its
  silhouette, from MuJoCo's segmentation render), tracked, and compared with the true image position of
  the same surface point: the point is back-projected with the true depth, attached to its body, moved
  with the body's simulated pose and projected by the true camera. Frames where the true point is hidden
  (self-occlusion by the fingers and arm, or by objects) are skipped; points the tracker drops stop
  counting. Reported: median and p95 error over the seen point-frames, the kept share (points seen in
  every frame of the window that the tracker still holds, never re-seeded, at its end), the error of the
  points hidden at some frame once seen again, and the median time per tracker update; per camera and
  per task for the default tracker. Trackers: the default, the default without re-alignment to the
  seed-time appearance, dense DIS flow, plain OpenCV LK with only the forward-backward check, and
  CoTracker3 online on the official schedule as a tiny random model (its time per update; its accuracy
  says nothing about the released weights, and it never re-seeds, so it keeps every point by design).

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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cv2  # noqa: E402
import mujoco  # noqa: E402
import numpy as np  # noqa: E402
from common import record, run  # noqa: E402

from stvla import features as F  # noqa: E402
from stvla import geometry  # noqa: E402
from stvla.envs import MT10_TASKS, VARIANTS, EnvConfig, make_env  # noqa: E402
from stvla.traces import (  # noqa: E402
    DenseFlowTracker,
    DepthDrawConfig,
    LucasKanadeTracker,
    OnlineTracer,
    PointTracker,
    SelectionConfig,
    TraceConfig,
    TrackerConfig,
)

TASK = "pick-place-v3"  # latency and trace precision
ACCURACY_TASKS = (*MT10_TASKS, *VARIANTS)  # every MT10 task and the history variants
ACCURACY_CAMERAS = ("corner3", "corner")  # the project's camera, and Meta-World's first corner camera
GRIPPER_BODIES = ("right_hand", "hand", "rightclaw", "rightpad", "leftclaw", "leftpad")
WINDOW = 30  # frames per accuracy window (the default buffer length)
WINDOW_STRIDE = 15  # frames between window starts
SEEDS_PER_WINDOW = 32  # gripper points seeded per window at most, anywhere on its visible surface
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


def record_episode(task: str, seed: int, size: int, steps: int, ground_truth: bool,
                   camera: str = "corner3") -> Episode:
    env = make_env(task, image_size=size, camera=camera)
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
    """Up to SEEDS_PER_WINDOW integer pixels (u, v) anywhere on the gripper's visible surface (one pixel in
    from its silhouette), drawn at random: the tracker must hold what the traces need, not only its best corners."""
    # Segmentation and depth are both rendered at pixel centres (no multisampling), so an integer
    # seed on a gripper pixel has the gripper's own depth.
    on_gripper = np.isin(episode.body_at_pixel[frame], episode.gripper_ids).astype(np.uint8)
    rows, cols = np.nonzero(cv2.erode(on_gripper, np.ones((3, 3), np.uint8)))
    if len(rows) == 0:
        return np.empty((0, 2))
    chosen = np.random.default_rng(frame).choice(len(rows), min(SEEDS_PER_WINDOW, len(rows)), replace=False)
    return np.stack([cols[chosen], rows[chosen]], axis=1).astype(np.float64)


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
    update_ms: list = field(default_factory=list)  # wall time of each tracker update


def track_window(episode: Episode, start: int, make_tracker: Callable[[], PointTracker]) -> WindowResult:
    """Seed a new tracker on the gripper at `start`, track WINDOW frames and compare with the truth."""
    result = WindowResult()
    seeds = gripper_seeds(episode, start)
    if len(seeds) == 0:
        return result
    truth, visible = true_pixels(episode, start, seeds)
    occluded = ~visible.all(axis=0)
    tracker = make_tracker()
    tracker.reset(points=seeds)
    slots = np.arange(len(seeds))
    for k in range(WINDOW):
        started = time.perf_counter()
        state = tracker.update(episode.rgb[start + k])
        result.update_ms.append((time.perf_counter() - started) * 1000)
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


def accuracy(episodes: dict[tuple[str, str], list[Episode]], make_tracker: Callable[[], PointTracker]) -> dict:
    """Gripper tracking accuracy over every window of the episodes (keyed by task and camera): overall,
    per camera and per task, with the kept share and the time per update."""
    total, groups = WindowResult(), {}
    for (task, camera), task_episodes in episodes.items():
        for episode in task_episodes:
            for start in range(0, len(episode.rgb) - WINDOW + 1, WINDOW_STRIDE):
                window = track_window(episode, start, make_tracker)
                for result in (total, groups.setdefault(("task", task), WindowResult()),
                               groups.setdefault(("camera", camera), WindowResult())):
                    for name in ("errors", "occluded_errors", "update_ms"):
                        getattr(result, name).extend(getattr(window, name))
                    result.always_seen += window.always_seen
                    result.kept += window.kept

    def summary(result: WindowResult) -> dict:
        return {"median": round(float(np.median(result.errors)), 3), "p95": round(float(np.percentile(result.errors, 95)), 3),
                "kept_share": round(result.kept / max(result.always_seen, 1), 3), "always_seen_points": result.always_seen}

    return {
        **summary(total),
        "update_ms_median": round(float(np.median(total.update_ms)), 3),
        "occluded_median": round(float(np.median(total.occluded_errors)), 3),
        "occluded_p95": round(float(np.percentile(total.occluded_errors, 95)), 3),
        "point_frames": len(total.errors),
        "occluded_point_frames": len(total.occluded_errors),
        "per_task": {key: summary(result) for (kind, key), result in groups.items() if kind == "task"},
        "per_camera": {key: summary(result) for (kind, key), result in groups.items() if kind == "camera"},
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


def tiny_cotracker() -> PointTracker:
    """CoTracker3 online on the official schedule, at toy widths with random weights: its time per update and
    that the loop runs, not CoTracker3's accuracy (the released weights cannot be downloaded here)."""
    import torch

    from stvla.traces.cotracker import CoTrackerConfig, CoTrackerOnline, CoTrackerThreeOnlineNet

    config = CoTrackerConfig(model_resolution=(128, 128), corr_embed_dim=32, corr_hidden_dim=64, latent_dim=32,
                             hidden_size=64, num_heads=4, num_virtual_tracks=8, iterations=4)
    torch.manual_seed(0)
    return CoTrackerOnline(config, TrackerConfig(num_points=400, buffer_length=WINDOW),
                           model=CoTrackerThreeOnlineNet(config))


def lk(**changes) -> Callable[[], PointTracker]:
    return lambda: LucasKanadeTracker(TrackerConfig(num_points=400, buffer_length=WINDOW, **changes))


TRACKERS = {  # accuracy rows: name -> (a new tracker, what it is)
    "default": (lk(), "default tracker (LK)"),
    "no_reference": (lk(reference_window=None), "default without re-alignment to the seed-time appearance"),
    "dense": (lambda: DenseFlowTracker(TrackerConfig(num_points=400, buffer_length=WINDOW)), "dense flow (DIS)"),
    "plain_lk_fb": (lk(lk_window=21, pyramid_levels=3, reference_window=None, static_tolerance=None,
                       max_patch_error=None), "plain OpenCV LK (21 px window, 3 levels), forward-backward check only"),
    "cotracker_tiny": (tiny_cotracker, "CoTracker3 online, official schedule, tiny random model (speed only)"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=2, help="expert episodes per task and camera for the accuracy windows")
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

    # Accuracy: every task on both cameras at 128 px; the default tracker at 224 px on the project's camera.
    cells = {128: [(task, camera) for task in ACCURACY_TASKS for camera in ACCURACY_CAMERAS],
             224: [(task, ACCURACY_CAMERAS[0]) for task in ACCURACY_TASKS]}
    recorded = {size: {(task, camera): [latency_episodes[size] if (task, camera, seed) == (TASK, "corner3", 0) else
                                        record_episode(task, seed, size, args.steps, True, camera)
                                        for seed in range(args.seeds)] for task, camera in cells[size]}
                for size in cells}
    clips = len(cells[128]) * args.seeds * len(range(0, args.steps - WINDOW + 1, WINDOW_STRIDE))
    figures["accuracy"] = {}
    for name, size in [(name, 128) for name in TRACKERS] + [("default", 224)]:
        make_tracker, what = TRACKERS[name]
        acc = accuracy(recorded[size], make_tracker)
        figures["accuracy"][f"{name}_{size}"] = acc
        rows.append((f"{what}, {size} px: gripper error median / p95; kept share of the always-seen points; "
                     "error of self-occluded points once seen again (median / p95); time per update (median)",
                     f"{acc['median']:.2f} / {acc['p95']:.2f} px; {acc['kept_share']:.1%} of {acc['always_seen_points']}; "
                     f"{acc['occluded_median']:.2f} / {acc['occluded_p95']:.2f} px; {acc['update_ms_median']:.2f} ms"))
        print(rows[-1], flush=True)
    default = figures["accuracy"]["default_128"]
    for group in ("per_camera", "per_task"):
        rows.append((f"default tracker at 128 px, {group.replace('_', ' ')}: median / p95 (px), kept share",
                     "; ".join(f"{key.removesuffix('-v3')} {r['median']:.2f} / {r['p95']:.2f}, {r['kept_share']:.0%}"
                               for key, r in default[group].items())))

    for rule, adaptive_rule in (("default", False), ("adaptive", True)):
        on_body, traced, total = trace_precision(recorded[128][(TASK, "corner3")], trace_config(adaptive=adaptive_rule))
        figures[f"trace_on_moving_body_fraction_{rule}"] = round(on_body, 3)
        figures[f"steps_with_traces_fraction_{rule}"] = round(traced, 3)
        rows.append((f"{rule} selection at 128 px: traces on a moving body / steps with traces",
                     f"{on_body:.0%} of {total} traces / {traced:.0%} of steps"))
        print(rows[-1], flush=True)
    figures.update(task=TASK, accuracy_tasks=list(ACCURACY_TASKS), accuracy_cameras=list(ACCURACY_CAMERAS), seeds=args.seeds, frames_per_episode=args.steps,
                   window=WINDOW, clips_per_size=clips, cores=1)
    record("traces", figures, rows, title="Traces: online tracker latency and accuracy (issues 3 and 18)")


if __name__ == "__main__":
    run(main)
