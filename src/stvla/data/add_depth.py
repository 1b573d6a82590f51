"""`stvla depth`: add an estimated metric depth stream to a dataset recorded without depth.

    stvla depth ~/data/my_robot --depth_model ~/models/Depth-Anything-V2-Metric-Indoor-Small-hf --fov 60
    stvla depth ~/data/my_robot --depth_model ~/models/zoedepth-nyu-kitti --out ~/data/my_robot_depth

The chosen camera's frames go through the depth model (stvla.envs.depth_model: Depth Anything V2
metric or ZoeDepth) in batches; the estimate is stored as LeRobot's depth (`<camera>_depth`, float32
TIFF images with `info.is_depth_map`, exact), with the camera intrinsics (`observation.camera.intrinsics`)
when the dataset records none, from `--intrinsics` or `--fov`. With `--out` the dataset is copied first
and the original is only read.

Resumable: each episode's estimate is kept under `<target>/.stvla-depth/<model>/` as it finishes, and
the dataset's files are rewritten only once every episode has one (see `append_features` for the order
that makes a kill at any point safe); the folder is removed at the end.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from stvla import features as F
from stvla.data.roles import DataConfig
from stvla.data.store import DatasetError, EpisodeStore, append_features
from stvla.locks import FolderLock

WORK_DIRECTORY = ".stvla-depth"


@dataclass
class DepthConfig:
    dataset: str = ""  # dataset directory (LeRobot v3) whose camera has no depth
    depth_model: str = ""  # local checkpoint directory (transformers layout): Depth Anything V2 metric or ZoeDepth
    out: str = ""  # write the result to this new directory (a copy); "" = add the depth to `dataset` itself
    camera: str = ""  # the RGB stream to estimate from; "" = observation.images.rgb, else the only camera
    intrinsics: str = ""  # "fx,fy,cx,cy" in pixels, stored with the data when the dataset records none
    fov: float = 0.0  # or the camera's vertical field of view in degrees (centred principal point)
    batch_size: int = 8  # frames per forward pass of the model
    depth_device: str = "cpu"  # torch device the model runs on: cpu, cuda, cuda:1, mps


def add_depth(config: DepthConfig, progress: bool = True, stop_after: int | None = None) -> Path:
    """Add the estimated depth (see the module docstring); returns the dataset that has it. `stop_after`
    estimates that many episodes and returns without writing (for tests of resuming)."""
    if not config.dataset or not config.depth_model:
        raise ValueError("stvla depth needs a dataset and --depth_model DIR (a local depth model checkpoint)")
    if config.batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {config.batch_size}")
    source = EpisodeStore(config.dataset, DataConfig(camera=config.camera))
    if F.DEPTH in source.features:
        raise DatasetError(f"{source.root} already has depth ({source.stored_key(F.DEPTH)}); stvla depth is for "
                           f"datasets without it")
    if F.INTRINSICS not in source.features and not (config.intrinsics or config.fov):
        raise ValueError(f"{source.root} records no {F.INTRINSICS}: give the camera with --intrinsics fx,fy,cx,cy "
                         f"or --fov DEGREES (depth policies lift pixels to 3D with it)")
    # One writer: the dataset itself when the depth goes into it, else the new copy's name.
    lock = (FolderLock(source.root, "stvla depth") if not config.out else
            FolderLock(Path(config.out).parent, "stvla depth", name=f".{Path(config.out).name}.lock"))
    with lock:
        target = _target(config, source)
        store = EpisodeStore(target, DataConfig(camera=config.camera, intrinsics=config.intrinsics, fov=config.fov))
        camera = store.stored_key(F.RGB)
        work = target / WORK_DIRECTORY / hashlib.sha256(f"{Path(config.depth_model).resolve()}|{camera}".encode()).hexdigest()[:12]
        work.mkdir(parents=True, exist_ok=True)

        from stvla.envs.depth_model import load_depth_estimator

        estimator = None
        todo = [e for e in range(store.num_episodes) if not (work / f"episode-{e:06d}.npy").is_file()]
        for count, episode in enumerate(tqdm(todo, desc="depth", unit="ep", disable=not progress)):
            if stop_after is not None and count >= stop_after:
                return target
            estimator = estimator or load_depth_estimator(config.depth_model, config.depth_device)
            rgb = store.episode(episode, [F.RGB])[F.RGB]
            depth = np.concatenate([estimator.estimate_batch(rgb[i:i + config.batch_size])
                                    for i in range(0, len(rgb), config.batch_size)])
            _save_atomically(work / f"episode-{episode:06d}.npy", depth.astype(np.float32))

        height, width = store.features[F.RGB]["shape"][:2]
        added = {f"{camera}_depth": {"dtype": "image", "shape": [height, width, 1], "names": ["height", "width", "channels"],
                                     "info": {"is_depth_map": True, "depth_unit": "m",
                                              "source": f"estimated from {camera} by the depth model "
                                                        f"{Path(config.depth_model).resolve()}"}}}
        if F.INTRINSICS not in store.info["features"]:
            added[F.INTRINSICS] = {"dtype": "float32", "shape": [3, 3], "names": None}

        def frames(episode: int) -> dict[str, np.ndarray]:
            out = {f"{camera}_depth": np.load(work / f"episode-{episode:06d}.npy")}
            if F.INTRINSICS in added:
                out[F.INTRINSICS] = store.episode(episode, [F.INTRINSICS])[F.INTRINSICS]
            return out

        append_features(target, added, frames, progress=progress)
        shutil.rmtree(target / WORK_DIRECTORY, ignore_errors=True)
        return target


def _target(config: DepthConfig, source: EpisodeStore) -> Path:
    """The dataset to add the depth to: the source itself, or a copy of it at `out` (made once)."""
    if not config.out:
        return source.root
    out = Path(config.out)
    if (out / WORK_DIRECTORY).is_dir():
        return out  # an interrupted run: continue the copy it made
    if out.exists():
        raise FileExistsError(f"{out} already exists; choose a new --out directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    copying = Path(tempfile.mkdtemp(dir=out.parent, prefix=f"{out.name}.tmp-"))  # renamed to `out` when complete
    shutil.copytree(source.root, copying, dirs_exist_ok=True, ignore=shutil.ignore_patterns(WORK_DIRECTORY))
    (copying / WORK_DIRECTORY).mkdir()
    os.replace(copying, out)
    return out


def _save_atomically(path: Path, array: np.ndarray) -> None:
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f"{path.name}.tmp-", suffix=".npy")
    os.close(handle)
    np.save(temporary, array)
    os.replace(temporary, path)
