"""`stvla view`: play back a recorded episode as RGB beside colour-mapped depth, end effector marked."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from stvla.data.collect import DEPTH_KEY, RGB_KEY
from stvla.data.store import EpisodeStore
from stvla.data.video import write_video
from stvla.visualize import colorize_depth, mark_point, panels

EE_PIXEL_KEY = "observation.ee.pixel"


def render_episode_video(root: str | Path, episode: int, out: str | Path, height: int = 256) -> Path:
    """Write an mp4 of one episode: RGB (end-effector pixel ringed) | depth (same ring)."""
    store = EpisodeStore(root)
    frames = store.episode(episode, [RGB_KEY, DEPTH_KEY, EE_PIXEL_KEY])
    depth_max = float(np.nanmax(frames[DEPTH_KEY]))
    depth_min = float(np.nanpercentile(frames[DEPTH_KEY], 1))
    video = np.stack([
        panels([mark_point(rgb, uv), mark_point(colorize_depth(depth, depth_min, depth_max), uv)],
               ["rgb", "depth"], height)
        for rgb, depth, uv in zip(frames[RGB_KEY], frames[DEPTH_KEY], frames[EE_PIXEL_KEY])
    ])
    out = Path(out)
    write_video(out, video, fps=min(store.fps, 30))
    return out
