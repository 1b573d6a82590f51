"""The README's picture: what the online tracer draws, along one scripted-expert episode.

    python scripts/trace_figure.py [--task pick-place-v3] [--size 224] [--out docs/traces.png]

Rolls out the Meta-World scripted expert of one task from a fixed start (its first held-out seed) and
steps `OnlineTracer` on every frame, as a policy's input processor does, with its default settings (400
points, b = 30, TraceVLA's selection, variant C). Saves one PNG with a row per chosen time step:
RGB with its 2D traces (TraceVLA's drawing) | the rendered depth | the traced depth (ST-VLA's Ego3D
input), both depths on one colour scale. The time steps are spread over the steps that have traces.

Uses stvla's own functions (`make_env`, `OnlineTracer`, `colorize_depth`, `panels`), the ones
`stvla trace` draws its video with, and its colour scale. Headless rendering needs MUJOCO_GL (README,
"Install"). Takes a few seconds on one CPU core.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("MUJOCO_GL", "egl")

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from stvla import features as F  # noqa: E402
from stvla.envs import episode_seed, make_env  # noqa: E402
from stvla.traces import OnlineTracer, TraceConfig, TraceOutput  # noqa: E402
from stvla.visualize import colorize_depth, panels, working_depth_range  # noqa: E402

ROWS = 3  # time steps shown
MAX_STEPS = 200  # the evaluation's episode limit


def roll_out(task: str, size: int, config: TraceConfig) -> list[TraceOutput]:
    """One expert episode (the task's first held-out start), traced step by step; stops at success."""
    env = make_env(task, image_size=size)
    tracer = OnlineTracer(config)
    tracer.reset()
    steps = []
    try:
        obs, _ = env.reset(seed=episode_seed(task, 0, "eval"))
        for _ in range(MAX_STEPS):
            steps.append(tracer.step(obs[F.OBS_RGB], obs[F.OBS_DEPTH], intrinsics=obs[F.OBS_INTRINSICS]))
            obs, _, _, _, info = env.step(env.expert_action())
            if info["success"]:
                break
    finally:
        env.close()
    return steps


def chosen_steps(steps: list[TraceOutput], rows: int) -> list[int]:
    """`rows` step indices spread evenly over the steps that have at least one trace."""
    traced = [i for i, step in enumerate(steps) if step.traces]
    if not traced:
        raise SystemExit("the tracer drew no trace along this episode: try another task")
    picks = np.linspace(0, len(traced) - 1, min(rows, len(traced)) + 2)[1:-1]
    return [traced[int(round(p))] for p in picks]


def label_strip(labels: list[str], width: int, columns: int, height: int = 24) -> np.ndarray:
    """A black strip with one label per column, above a row of `columns` equal panels."""
    strip = np.zeros((height, width, 3), np.uint8)
    for k, label in enumerate(labels):
        cv2.putText(strip, label, (k * width // columns + 6, height - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.5,
                    (255, 255, 255), 1, cv2.LINE_AA)
    return strip


def figure(steps: list[TraceOutput], picks: list[int], variant: str, height: int) -> np.ndarray:
    """One row per picked step: RGB + traces | depth | traced depth, each under a strip of labels."""
    # One colour scale for every panel, as `stvla trace` chooses it.
    depth_min, depth_max = working_depth_range(np.stack([steps[i].depth for i in picks]))
    rows = []
    for i in picks:
        step = steps[i]
        row = panels([step.traced_rgb, colorize_depth(step.depth, depth_min, depth_max),
                      colorize_depth(np.clip(step.traced_depth, depth_min, depth_max), depth_min, depth_max)],
                     height=height)
        labels = [f"step {i} of {len(steps)}: RGB + {len(step.traces)} traces", "depth",
                  f"traced depth (variant {variant})"]
        rows += [label_strip(labels, row.shape[1], 3), row]
    return np.concatenate(rows, axis=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="pick-place-v3", help="Meta-World task whose expert is rolled out")
    parser.add_argument("--size", type=int, default=224, help="camera image side in pixels")
    parser.add_argument("--rows", type=int, default=ROWS, help="time steps shown, one row each")
    parser.add_argument("--height", type=int, default=288, help="panel height in the picture (pixels)")
    parser.add_argument("--out", default="docs/traces.png", help="PNG to write")
    args = parser.parse_args()

    config = TraceConfig()  # a policy's tracer as `stvla train` makes it by default: b = 30, K = 5, variant C
    steps = roll_out(args.task, args.size, config)
    picks = chosen_steps(steps, args.rows)
    picture = figure(steps, picks, config.variant, args.height)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out), cv2.cvtColor(picture, cv2.COLOR_RGB2BGR)):
        raise SystemExit(f"could not write {out}")
    print(f"{out}: {args.task}, {len(steps)} steps, rows at steps {picks}")


if __name__ == "__main__":
    main()
