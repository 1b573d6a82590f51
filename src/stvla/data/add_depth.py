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
that makes a kill at any point safe); the folder is removed at the end. Every setting and the depth model
are checked before anything is written, and a run that fails removes the folders it made (the copy, the
work folder), never what was there before; an interrupted one keeps them to resume.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from stvla import features as F
from stvla.data.roles import DataConfig
from stvla.data.store import DatasetError, EpisodeStore, append_features
from stvla.files import naming_the_file
from stvla.locks import FolderLock

if TYPE_CHECKING:  # torch and transformers: imported where the model is loaded
    from stvla.envs.depth_model import DepthEstimator

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
    # Everything that can refuse the run is checked before anything is written, the depth model included
    # (loaded here): a refused run leaves no copy, no work folder and no lock file behind.
    source = _checked_source(config)
    from stvla.envs.depth_model import load_depth_estimator

    estimator = load_depth_estimator(config.depth_model, config.depth_device)
    # One writer: the dataset itself when the depth goes into it, else the new copy's name.
    lock = (FolderLock(source.root, "stvla depth") if not config.out else
            FolderLock(Path(config.out).parent, "stvla depth", name=f".{Path(config.out).name}.lock"))
    with lock:
        made_here: list[Path] = []  # the folders this run created, in order: removed if the run fails
        try:
            return _estimate_and_write(config, source, estimator, made_here, progress, stop_after)
        except Exception:
            # A failure (a damaged video, a full disk) removes what this run made, never what was there
            # before. An interruption (Ctrl-C, a kill) keeps it: the next run resumes from it.
            for folder in reversed(made_here):
                shutil.rmtree(folder, ignore_errors=True)
            raise


def _checked_source(config: DepthConfig) -> EpisodeStore:
    """The dataset to read the frames from, once every setting that needs no depth model is checked."""
    if not config.dataset or not config.depth_model:
        raise ValueError("stvla depth needs a dataset and --depth_model DIR (a local depth model checkpoint)")
    if config.batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {config.batch_size}")
    if config.out:  # a copy inside its own source would copy itself, and become part of the dataset
        dataset, out = Path(config.dataset).resolve(), Path(config.out).resolve()
        if out.is_relative_to(dataset):
            raise ValueError(f"--out {config.out} is inside the dataset {config.dataset}: write it elsewhere")
        if dataset.is_relative_to(out):
            raise ValueError(f"the dataset {config.dataset} is inside --out {config.out}: write it elsewhere")
    # Opened with the camera settings the depth is written with: --intrinsics and --fov are checked here.
    source = EpisodeStore(config.dataset, _camera_settings(config))
    if F.DEPTH in source.features:
        raise DatasetError(f"{source.root} already has depth ({source.stored_key(F.DEPTH)}); stvla depth is for "
                           f"datasets without it")
    if F.INTRINSICS not in source.features:  # neither recorded nor given
        raise ValueError(f"{source.root} records no {F.INTRINSICS}: give the camera with --intrinsics fx,fy,cx,cy "
                         f"or --fov DEGREES (depth policies lift pixels to 3D with it)")
    if config.out and Path(config.out).exists() and not _unfinished_copy(Path(config.out)):
        raise FileExistsError(f"{config.out} already exists; choose a new --out directory")
    return source


def _camera_settings(config: DepthConfig) -> DataConfig:
    return DataConfig(camera=config.camera, intrinsics=config.intrinsics, fov=config.fov)


def _estimate_and_write(config: DepthConfig, source: EpisodeStore, estimator: DepthEstimator, made_here: list[Path],
                        progress: bool, stop_after: int | None) -> Path:
    """Estimate every episode's depth not estimated yet and write it all to the target dataset; each folder
    this creates is appended to `made_here` as soon as it exists."""
    target = _target(config, source, made_here)
    store = EpisodeStore(target, _camera_settings(config))
    camera = store.stored_key(F.RGB)
    work_root = target / WORK_DIRECTORY
    work = work_root / hashlib.sha256(f"{Path(config.depth_model).resolve()}|{camera}".encode()).hexdigest()[:12]
    for folder in (work_root, work):
        if not folder.is_dir():
            folder.mkdir()
            made_here.append(folder)

    todo = [e for e in range(store.num_episodes) if not (work / f"episode-{e:06d}.npy").is_file()]
    for count, episode in enumerate(tqdm(todo, desc="depth", unit="ep", disable=not progress)):
        if stop_after is not None and count >= stop_after:
            return target
        rgb = store.episode(episode, [F.RGB])[F.RGB]
        depth = np.concatenate([estimator.estimate_batch(rgb[i:i + config.batch_size])
                                for i in range(0, len(rgb), config.batch_size)])
        _save_atomically(work / f"episode-{episode:06d}.npy", depth.astype(np.float32))

    height, width = store.features[F.RGB]["shape"][:2]
    added = {f"{camera}_depth": {"dtype": "image", "shape": [height, width, 1],
                                 "names": ["height", "width", "channels"],
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
    shutil.rmtree(work_root, ignore_errors=True)
    return target


def _unfinished_copy(out: Path) -> bool:
    """Whether `out` is the copy of an interrupted run (its work folder is removed when the run finishes)."""
    return (out / WORK_DIRECTORY).is_dir()


def _target(config: DepthConfig, source: EpisodeStore, made_here: list[Path]) -> Path:
    """The dataset to add the depth to: the source itself, or a copy of it at `out` (made once)."""
    if not config.out:
        return source.root
    out = Path(config.out)
    if _unfinished_copy(out):
        return out  # an interrupted run: continue the copy it made
    if out.exists():  # checked again under the lock: another run may have made it since
        raise FileExistsError(f"{out} already exists; choose a new --out directory")
    copying = Path(tempfile.mkdtemp(dir=out.parent, prefix=f"{out.name}.tmp-"))  # renamed to `out` when complete
    made_here.append(copying)
    shutil.copytree(source.root, copying, dirs_exist_ok=True, ignore=shutil.ignore_patterns(WORK_DIRECTORY))
    (copying / WORK_DIRECTORY).mkdir()
    os.replace(copying, out)
    made_here[made_here.index(copying)] = out  # the same folder, under its final name
    return out


def _save_atomically(path: Path, array: np.ndarray) -> None:
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f"{path.name}.tmp-", suffix=".npy")
    os.close(handle)
    try:
        with naming_the_file(path):
            np.save(temporary, array)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)  # a full disk leaves no half-written estimate behind
        raise
    os.replace(temporary, path)
