"""Videos of recordings for people: `stvla view` (RGB | depth, end effector marked) and `stvla trace`
(RGB with traces | depth with traces outlined | traced depth, from the same online tracer a policy runs).
Any dataset: the depth panels appear when it has depth, and images are shown at the camera's own size."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from stvla import features as F
from stvla.data.roles import DataConfig
from stvla.data.store import EpisodeStore
from stvla.data.video import VIEWING, read_video, write_video
from stvla.image_fit import nearest_indices
from stvla.traces import OnlineTracer, TraceConfig, draw_traces_rgb
from stvla.visualize import colorize_depth, mark_point, panels, working_depth_range


def render_episode_video(root: str | Path, episode: int, out: str | Path, height: int = 256,
                         data: DataConfig | None = None) -> Path:
    """Write an mp4 of one episode: RGB | depth (when the dataset has it), the end-effector pixel ringed
    (when recorded). `data` chooses the camera and depth of a dataset with several."""
    refuse_writing_into_the_source(out, root)
    store = EpisodeStore(root, data or DataConfig())
    keys = [key for key in (F.RGB, F.DEPTH, F.EE_PIXEL) if key in store.features]
    frames = store.episode(episode, keys)
    pixels = frames.get(F.EE_PIXEL, [None] * len(frames[F.RGB]))
    if F.DEPTH in frames:
        depth_max = float(np.nanmax(frames[F.DEPTH]))
        depth_min = float(np.nanpercentile(frames[F.DEPTH], 1))
        video = np.stack([
            panels([mark_point(rgb, uv), mark_point(colorize_depth(depth, depth_min, depth_max), uv)],
                   ["rgb", "depth"], height)
            for rgb, depth, uv in zip(frames[F.RGB], frames[F.DEPTH], pixels)
        ])
    else:
        video = np.stack([panels([mark_point(rgb, uv)], ["rgb"], height) for rgb, uv in zip(frames[F.RGB], pixels)])
    out = Path(out)
    write_video(out, video, fps=min(store.fps, 30), settings=VIEWING)
    return out


def refuse_writing_into_the_source(out: str | Path, source: str | Path) -> None:
    """Refuse, before anything is written, an `out` inside the dataset `source` (it would become part of the
    dataset, or replace one of its own videos) or the very video `source` (replaced by what is read from it)."""
    out_path, source_path = Path(out).resolve(), Path(source).resolve()
    if source_path.is_dir() and out_path.is_relative_to(source_path):
        raise ValueError(f"--out {out} is inside the dataset {source}: write it elsewhere")
    # samefile: another name (a hard link) for the same file
    if out_path == source_path or (out_path.is_file() and source_path.is_file() and out_path.samefile(source_path)):
        raise ValueError(f"--out {out} is the video {source} it reads: write it elsewhere")


def _depth_at_camera_size(store: EpisodeStore, depths: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Depth recorded at another resolution than its camera (the same aspect: registered to it) at the
    camera's (height, width), by nearest pixel as the model's fit takes it (no depths mixed)."""
    (height, width), (depth_height, depth_width) = size, depths.shape[1:3]
    store.check_depth_registered(size, (depth_height, depth_width), "traced")
    rows, columns = nearest_indices(depth_height, height), nearest_indices(depth_width, width)
    return depths[:, rows[:, None], columns[None, :]]


def render_trace_video(source: str | Path, out: str | Path, trace_config: TraceConfig, episode: int = 0,
                       height: int = 256, data: DataConfig | None = None) -> Path:
    """Write an mp4 of the online tracer run along a recording, as a policy would run it.

    `source` is a dataset directory or a plain video file. The traces come from RGB alone, so any camera
    of any size will do; a dataset with depth adds its panels (depth with the traces outlined | traced
    depth), one without shows the traces on RGB. `data` chooses the camera and depth of a dataset, and
    the intrinsics of one that records none (handed to the tracer as a policy's processor would).
    """
    refuse_writing_into_the_source(out, source)
    source = Path(source)
    tracer = OnlineTracer(trace_config)
    tracer.reset()
    if source.is_dir():
        store = EpisodeStore(source, data or DataConfig())
        frames = store.episode(episode, [key for key in (F.RGB, F.DEPTH, F.INTRINSICS) if key in store.features])
        if F.DEPTH in frames and frames[F.DEPTH].shape[1:3] != frames[F.RGB].shape[1:3]:
            frames[F.DEPTH] = _depth_at_camera_size(store, frames[F.DEPTH], frames[F.RGB].shape[1:3])
        fps = store.fps
    else:
        if data is not None and data != DataConfig():
            raise ValueError(f"{source} is a video file: --camera, --depth, --intrinsics and --fov choose a "
                             f"dataset's features")
        frames, fps = {F.RGB: read_video(source)}, 30
    rgbs = frames[F.RGB]
    if F.DEPTH not in frames:
        # RGB only: the tracer draws into a blank depth nobody sees.
        no_depth = np.zeros(rgbs.shape[1:3], np.float32)
        video = [panels([tracer.step(rgb, no_depth).traced_rgb], ["rgb + traces"], height) for rgb in rgbs]
    else:
        depths = frames[F.DEPTH]
        cameras = frames.get(F.INTRINSICS, [None] * len(rgbs))
        depth_min, depth_max = working_depth_range(depths)
        video = []
        for rgb, depth, intrinsics in zip(rgbs, depths, cameras):
            step = tracer.step(rgb, depth, intrinsics=intrinsics)
            # Middle panel: the raw depth with the traces outlined for the eye (not what the policy sees);
            # right panel: the traced depth exactly as Ego3D encodes it (values clipped into the scale).
            outlined = draw_traces_rgb(colorize_depth(depth, depth_min, depth_max), step.traces)
            video.append(panels([step.traced_rgb, outlined,
                                 colorize_depth(np.clip(step.traced_depth, depth_min, depth_max), depth_min, depth_max)],
                                ["rgb + traces", "depth + traces (outline)", f"traced depth ({trace_config.variant})"],
                                height))
    out = Path(out)
    write_video(out, np.stack(video), fps=min(fps, 30), settings=VIEWING)
    return out
