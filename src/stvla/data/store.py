"""Episode store in the LeRobotDataset v3 on-disk layout: a writer that survives being killed, and a reader.

Layout (the same files, `meta/info.json` keys and parquet schemas that LeRobot 0.6's own writer makes):

    meta/info.json                                  codebase_version v3.0, fps, features, totals, paths
    meta/stats.json                                 per-feature min/max/mean/std/count/q01..q99
    meta/tasks.parquet                              task string (index) -> task_index
    meta/episodes/chunk-000/file-000.parquet        one row per episode: length, file indices, stats
    data/chunk-CCC/file-FFF.parquet                 one row per frame
    videos/<video key>/chunk-CCC/file-FFF.mp4       RGB streams

Choices of ours, all valid v3:
- One data file and one video file per episode while collecting. LeRobot packs episodes into ~100 MB
  files; a file per episode lets a killed collection keep every finished episode (each file is
  written to a temporary name and renamed) and makes the episode the unit of resume. `pack` rewrites
  a dataset with many episodes per file, as LeRobot and the Hub have them; the reader takes both.
- Depth is LeRobot's depth (`info.is_depth_map`, so LeRobot lists it among its depth keys): a 12-bit
  HEVC video by default (LeRobot's own codec; `video.*` fields say how metres map to codes) or float32
  TIFF images in the data files (exact), or in datasets of earlier releases a float32 (H, W) column.
  Its stats are global scalars, not per pixel.
- `meta/episodes` is rewritten after each episode and is the record of what is finished; the reader
  trusts it, and any data or video file it does not list is an unfinished leftover.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image
from tqdm import tqdm

from stvla.data.roles import DataConfig, is_depth_feature, resolve_roles
from stvla.data.video import (
    DepthQuantization,
    StreamDescription,
    VideoSettings,
    codec_family,
    describe_stream,
    frames_checksum,
    read_video,
    write_depth_video,
    write_video,
)
from stvla.features import ACTION, DEPTH, EPISODE_INDEX, EXTRA_CAMERAS, FRAME_INDEX, INDEX, INTRINSICS, RGB, STATE, \
    TASK, TASK_INDEX, TIMESTAMP
from stvla.image_fit import fit_depth, fit_intrinsics, fit_rgb, is_identity

CODEBASE_VERSION = "v3.0"
CHUNKS_SIZE = 1000
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_META_PATH = "meta/episodes/chunk-000/file-000.parquet"
INDEX_FEATURES = {
    TIMESTAMP: {"dtype": "float32", "shape": [1], "names": None},
    FRAME_INDEX: {"dtype": "int64", "shape": [1], "names": None},
    EPISODE_INDEX: {"dtype": "int64", "shape": [1], "names": None},
    INDEX: {"dtype": "int64", "shape": [1], "names": None},
    TASK_INDEX: {"dtype": "int64", "shape": [1], "names": None},
}
DEPTH_QUANTIZATION_INFO = ("video.depth_min", "video.depth_max", "video.shift", "video.use_log")
IDENTITY_INFO = ("is_depth_map", "depth_unit", "source", *DEPTH_QUANTIZATION_INFO)  # feature info a caller gives
QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)
FPS_TOLERANCE = 0.005  # a video's frame rate may differ from info.json's fps by this share (29.97 for 30; not 79 for 80)
TIMESTAMP_TOLERANCE_S = 1e-3  # consecutive timestamps may differ from 1/fps by this much (float32 rounding, clocks)
STAT_NAMES = ("min", "max", "mean", "std", "count", "q01", "q10", "q50", "q90", "q99")


SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def hub_sha256(root: Path, path: Path) -> tuple[str, Path] | None:
    """The SHA-256 the Hugging Face Hub gave for a file of a dataset downloaded from it, and where it is
    recorded: huggingface_hub's download metadata in the dataset folder (`snapshot_download(local_dir=...)`,
    as LeRobot downloads; its second line is the file's etag, a SHA-256 for the LFS files videos are), or the
    name of the Hub cache's blob the file links to. None for a file that did not come from the Hub."""
    try:
        metadata = root / ".cache" / "huggingface" / "download" / f"{path.relative_to(root)}.metadata"
        lines = metadata.read_text().splitlines() if metadata.is_file() else []
    except (OSError, ValueError, UnicodeDecodeError):
        lines = []
    if len(lines) > 1 and SHA256_HEX.fullmatch(lines[1].strip()):
        return lines[1].strip(), metadata
    blob = path.resolve()
    if path.is_symlink() and blob.parent.name == "blobs" and SHA256_HEX.fullmatch(blob.name):
        return blob.name, blob
    return None


def _frame_shape(key: str, feature: dict) -> tuple[int, ...]:
    """The shape of one frame's value as the writer takes it and the reader returns it."""
    if is_depth_feature(key, feature):
        return tuple(feature["shape"][:2])  # (H, W) metres, whatever the stored (H, W, 1)
    return () if list(feature["shape"]) == [1] else tuple(feature["shape"])


def _identity(feature: dict) -> dict:
    """What episodes must share to be one dataset: dtype, shape and the info the caller gave (the depth
    source, a depth video's quantisation), not what a video's encoder writes into it."""
    info = {k: v for k, v in (feature.get("info") or {}).items() if k in IDENTITY_INFO}
    if not info.get("is_depth_map"):
        info.pop("is_depth_map", None)  # the encoder marks every RGB stream so
    return {"dtype": feature.get("dtype"), "shape": feature.get("shape"), "info": info or None}


class DatasetError(ValueError):
    """A dataset on disk is missing a file, or a file or field is not what the layout requires."""


# --- small helpers --------------------------------------------------------------------------------
def _whole_number(value: Any) -> bool:
    """A count as JSON holds one: an integer (or an integral float), never a bool or a string."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
        and value == int(value)


def _plain(value: Any) -> Any:
    """A value read from a table as Python's own (numpy's scalars print as np.int64(5))."""
    return value.item() if isinstance(value, np.generic) else value


def write_atomically(path: Path, write: Callable[[Path], Any]) -> None:
    """`write(temporary)`, then the temporary renamed to `path`: a reader sees the old file or the whole new
    one, never a part. The temporary's name is unique, so concurrent writers never share one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f"{path.name}.tmp-")
    os.close(handle)
    try:
        write(Path(temporary))
        os.replace(temporary, path)
    finally:
        Path(temporary).unlink(missing_ok=True)


def _write_json(path: Path, payload: Any) -> None:
    write_atomically(path, lambda tmp: tmp.write_text(json.dumps(payload, indent=4) + "\n"))


def _write_parquet(path: Path, table: pa.Table, float_columns: list[str] | None = None) -> None:
    # Byte-stream-split lets zstd compress float maps (depth) about twice as well, losslessly.
    write_atomically(path, lambda tmp: pq.write_table(
        table, tmp, compression="zstd", use_byte_stream_split=float_columns or False))


def _chunk_and_file(file_number: int) -> tuple[int, int]:
    return file_number // CHUNKS_SIZE, file_number % CHUNKS_SIZE


def _hf_feature(feature: dict) -> dict:
    """The `datasets` feature type LeRobot derives from one of our feature entries."""
    dtype, shape = feature["dtype"], list(feature["shape"])
    if dtype == "image":
        return {"_type": "Image"}
    if shape == [1]:
        return {"dtype": dtype, "_type": "Value"}
    if len(shape) == 1:
        return {"feature": {"dtype": dtype, "_type": "Value"}, "length": shape[0], "_type": "List"}
    return {"shape": shape, "dtype": dtype, "_type": f"Array{len(shape)}D"}


def _arrow_column(values: np.ndarray, feature: dict) -> pa.Array:
    """A frame-major numpy array as an Arrow column: scalars plain, arrays as nested fixed-size lists."""
    values = np.ascontiguousarray(values, dtype=np.dtype(feature["dtype"]))
    shape = list(feature["shape"])
    if shape == [1]:
        return pa.array(values.reshape(-1))
    column = pa.array(values.reshape(-1))
    for size in reversed(shape):
        column = pa.FixedSizeListArray.from_arrays(column, size)
    return column


def _image_column(values: np.ndarray, key: str, feature: dict) -> pa.Array:
    """Frames as LeRobot's image column, struct<bytes, path>: PNG for RGB, float32 TIFF metres for depth."""
    depth = is_depth_feature(key, feature)
    items = []
    for index, value in enumerate(values):
        buffer = io.BytesIO()
        if depth:
            Image.fromarray(np.asarray(value, np.float32), mode="F").save(buffer, format="TIFF",
                                                                          compression="tiff_adobe_deflate")
        else:
            Image.fromarray(np.asarray(value, np.uint8)).save(buffer, format="PNG")
        items.append({"bytes": buffer.getvalue(), "path": f"frame-{index:06d}.{'tiff' if depth else 'png'}"})
    return pa.array(items, type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]))


def _numpy_column(column: pa.ChunkedArray, feature: dict, path: Path, key: str) -> np.ndarray:
    shape = list(feature["shape"])
    flat = column.combine_chunks()
    for _ in range(len(shape) if shape != [1] else 0):
        flat = flat.flatten()
    values = flat.to_numpy(zero_copy_only=False)
    try:
        values = values.reshape(len(column), *([] if shape == [1] else shape))
    except ValueError as error:
        raise DatasetError(f"{path}: column {key!r} does not have shape {shape} per frame") from error
    return _lossless_cast(values, feature["dtype"], path, key)


def _lossless_cast(values: np.ndarray, dtype: str, path: Path, key: str) -> np.ndarray:
    """`values` as info.json's `dtype`, refused where the cast would change values (float to int, float32
    to float16, an integer out of range) or the dtype is not one."""
    try:
        target = np.dtype(dtype)
    except TypeError:
        raise DatasetError(f"{path}: meta/info.json gives {key!r} the dtype {dtype!r}, which is not a dtype") from None
    source = values.dtype
    if np.can_cast(source, target, "safe") or (source.kind == target.kind == "f" and target.itemsize >= 4):
        return values.astype(target, copy=False)  # float64 columns read as float32 (as LeRobot does)
    if source.kind in "iub" and target.kind in "iu":  # integers: when every value fits (none to read: the schema)
        info = np.iinfo(target)
        if not values.size or (info.min <= values.min() and values.max() <= info.max):
            return values.astype(target, copy=False)
    raise DatasetError(f"{path}: column {key!r} holds {source} values but meta/info.json says {target}: the cast "
                       f"would change them (fix the dtype in info.json)")


def episode_stats(frames: dict[str, np.ndarray], features: dict[str, dict]) -> dict[str, dict[str, np.ndarray]]:
    """LeRobot-style statistics of one episode: images per channel in [0, 1], depth global, others per element."""
    stats = {}
    for key, feature in features.items():
        values = frames[key]
        if is_depth_feature(key, feature):
            x = values.reshape(-1, 1).astype(np.float64)  # depth maps: one global value per stat, in metres
            reshape = (1,)
        elif feature["dtype"] in ("video", "image"):
            x = values.reshape(-1, 3).astype(np.float64) / 255.0
            reshape = (3, 1, 1)
        elif len(feature["shape"]) >= 2 and feature["shape"] != [1]:
            x = values.reshape(-1, 1).astype(np.float64)  # other maps: one global value per stat
            reshape = (1,)
        else:
            x = values.reshape(len(values), -1).astype(np.float64)
            reshape = tuple(feature["shape"])
        # Quantiles of a subsample keep stats cheap on image-sized features; min/max/mean stay exact.
        sample = x if len(x) <= 200_000 else x[np.linspace(0, len(x) - 1, 200_000).astype(int)]
        qs = np.quantile(sample, QUANTILES, axis=0)
        stats[key] = {
            "min": x.min(0).reshape(reshape),
            "max": x.max(0).reshape(reshape),
            "mean": x.mean(0).reshape(reshape),
            "std": x.std(0).reshape(reshape),
            "count": np.array([len(values)]),
            **{name: q.reshape(reshape) for name, q in zip(STAT_NAMES[5:], qs)},
        }
    return stats


def aggregate_stats(per_episode: list[dict[str, dict[str, np.ndarray]]]) -> dict[str, dict[str, np.ndarray]]:
    """Combine episode stats: exact min/max/mean/std (pooled variance), count-weighted quantiles."""
    combined = {}
    for key in per_episode[0]:
        items = [episode[key] for episode in per_episode]
        counts = np.array([float(item["count"][0]) for item in items])
        weights = (counts / counts.sum()).reshape(-1, *[1] * items[0]["mean"].ndim)
        means = np.stack([item["mean"] for item in items])
        mean = (weights * means).sum(0)
        second = (weights * (np.stack([item["std"] for item in items]) ** 2 + means**2)).sum(0)
        combined[key] = {
            "min": np.min([item["min"] for item in items], axis=0),
            "max": np.max([item["max"] for item in items], axis=0),
            "mean": mean,
            "std": np.sqrt(np.maximum(second - mean**2, 0.0)),
            "count": np.array([int(counts.sum())]),
            **{name: (weights * np.stack([item[name] for item in items])).sum(0) for name in STAT_NAMES[5:]},
        }
    return combined


# --- writer --------------------------------------------------------------------------------------
@dataclass
class EpisodeWriter:
    """Appends episodes to a dataset directory; every flushed episode is on disk and readable.

    `features` maps a key to {"dtype", "shape", "names"}, dtype "video" for RGB streams, as in
    LeRobot's info.json. Index features (timestamp, frame_index, ...) are added automatically.
    `episodes_per_file` episodes share a data file and a video file per stream: 1 (collection: every
    episode is on disk when `add_episode` returns) or more (`pack`; call `flush()` after the last).
    """

    root: Path
    fps: int
    features: dict[str, dict]
    robot_type: str
    video: VideoSettings = VideoSettings()
    episodes_per_file: int = 1

    @classmethod
    def create_or_resume(cls, root: str | Path, fps: int, features: dict[str, dict], robot_type: str,
                         resume: bool = False, video: VideoSettings = VideoSettings(),
                         episodes_per_file: int = 1) -> "EpisodeWriter":
        """Start a new dataset at `root`, or with `resume` continue the one there (same features required)."""
        root = Path(root)
        check_new_dataset_folder(root)
        writer = cls(root, fps, features, robot_type, video, episodes_per_file)
        writer._pending = []
        if (root / "meta" / "info.json").exists():
            if not resume:
                raise FileExistsError(f"{root} already holds a dataset; pass resume to continue it or choose another path")
            existing = EpisodeStore(root)
            ours, theirs = {**features, **INDEX_FEATURES}, existing.info["features"]
            mismatched = sorted(k for k in set(ours) | set(theirs)
                                if _identity(ours.get(k, {})) != _identity(theirs.get(k, {})))
            if mismatched or existing.fps != fps:
                differences = [f"{key}: {_identity(theirs.get(key, {}))} there, {_identity(ours.get(key, {}))} now"
                               for key in mismatched[:3]] + ([f"fps {existing.fps} there, {fps} now"]
                                                             if existing.fps != fps else [])
                raise DatasetError(f"{root}: cannot resume, the dataset was written with other settings "
                                   f"({'; '.join(differences)}): give the settings it was collected with")
            writer._episodes = existing.episodes.to_dict("records")
            writer._tasks = list(existing.tasks)
            writer._stats = [existing.episode_stats(i) for i in range(existing.num_episodes)]
        else:
            root.mkdir(parents=True, exist_ok=True)
            writer._episodes, writer._tasks, writer._stats = [], [], []
        return writer

    @property
    def all_features(self) -> dict[str, dict]:
        return {**self.features, **INDEX_FEATURES}

    @property
    def num_episodes(self) -> int:
        return len(self._episodes) + len(self._pending)

    @property
    def episodes(self) -> list[dict]:
        return list(self._episodes)

    def add_episode(self, frames: dict[str, np.ndarray], task: str, extra: dict[str, Any] | None = None) -> int:
        """Add one episode (frame-major arrays per feature key) and return its episode index; it is written
        when its file is full (at once with one episode per file).

        `extra` holds scalar per-episode fields kept as extra columns of meta/episodes (e.g. seed).
        """
        missing = sorted(set(self.features) - set(frames))
        if missing:
            raise ValueError(f"episode is missing features {missing}")
        length = len(next(iter(frames.values())))
        frames = dict(frames)
        for key, feature in self.features.items():
            expected = (length, *_frame_shape(key, feature))
            shape = np.shape(frames[key])
            if shape != expected and shape != (length, *feature["shape"]):
                raise ValueError(f"feature {key!r}: expected shape {expected}, got {shape}")
            frames[key] = np.reshape(frames[key], expected)
        if length == 0:
            raise ValueError("an episode needs at least one frame")

        episode_index = self.num_episodes
        if task not in self._tasks:
            self._tasks.append(task)
        start = sum(e["length"] for e in self._episodes) + sum(len(p[0][INDEX]) for p in self._pending)
        frames = {
            **frames,
            TIMESTAMP: np.arange(length, dtype=np.float32) / self.fps,
            FRAME_INDEX: np.arange(length, dtype=np.int64),
            EPISODE_INDEX: np.full(length, episode_index, dtype=np.int64),
            INDEX: np.arange(start, start + length, dtype=np.int64),
            TASK_INDEX: np.full(length, self._tasks.index(task), dtype=np.int64),
        }
        row: dict[str, Any] = {
            EPISODE_INDEX: episode_index, "tasks": [task], "length": length,
            "dataset_from_index": start, "dataset_to_index": start + length,
        }
        self._pending.append((frames, row, extra or {}))
        if len(self._pending) >= self.episodes_per_file:
            self.flush()
        return episode_index

    def flush(self) -> None:
        """Write the added episodes not written yet into one data file and one video file per stream."""
        if not self._pending:
            return
        files = {(int(e["data/chunk_index"]), int(e["data/file_index"])) for e in self._episodes}
        chunk, file = _chunk_and_file(len(files))
        frames = {key: np.concatenate([p[0][key] for p in self._pending]) for key in self._pending[0][0]}
        offsets = np.cumsum([0] + [p[1]["length"] for p in self._pending])
        for key, feature in self.features.items():
            if feature["dtype"] == "video":
                path = self.root / VIDEO_PATH.format(video_key=key, chunk_index=chunk, file_index=file)
                if is_depth_feature(key, feature):
                    quantization = DepthQuantization.from_info(feature.get("info") or {}, f"feature {key!r}")
                    write_depth_video(path, frames[key], self.fps, quantization, self.video.gop)
                else:
                    write_video(path, frames[key], self.fps, self.video)
        self._write_data_file(self.root / DATA_PATH.format(chunk_index=chunk, file_index=file), frames)
        for (episode_frames, row, extra), offset in zip(self._pending, offsets):
            row.update({"data/chunk_index": chunk, "data/file_index": file})
            for key, feature in self.features.items():
                if feature["dtype"] == "video":
                    span = float(offset / self.fps), float((offset + row["length"]) / self.fps)
                    path = self.root / VIDEO_PATH.format(video_key=key, chunk_index=chunk, file_index=file)
                    row.update({f"videos/{key}/chunk_index": chunk, f"videos/{key}/file_index": file,
                                f"videos/{key}/from_timestamp": span[0], f"videos/{key}/to_timestamp": span[1],
                                # stvla's own column (LeRobot ignores it): damage is found when frames are read
                                f"videos/{key}/frames_sha256": frames_checksum(path, *span)})
            stats = episode_stats(episode_frames, self.all_features)
            for key, values in stats.items():
                for name, value in values.items():
                    row[f"stats/{key}/{name}"] = value.tolist()
            row.update({"meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0, **extra})
            self._episodes.append(row)
            self._stats.append(stats)
        self._pending = []
        self._write_meta()

    def _write_data_file(self, path: Path, frames: dict[str, np.ndarray]) -> None:
        data_features = {k: f for k, f in self.all_features.items() if f["dtype"] != "video"}
        table = pa.table({key: _image_column(frames[key], key, f) if f["dtype"] == "image" else
                          _arrow_column(frames[key], f) for key, f in data_features.items()})
        hf = {"info": {"features": {key: _hf_feature(f) for key, f in data_features.items()}}}
        table = table.replace_schema_metadata({"huggingface": json.dumps(hf)})
        _write_parquet(path, table, [k for k, f in data_features.items() if f["dtype"].startswith("float")])

    def _write_meta(self) -> None:
        # Order matters for a kill at any instant: the episodes table, written last, is the record
        # of what is finished; the files before it only ever describe a superset or the same set.
        tasks = pd.DataFrame({TASK_INDEX: range(len(self._tasks))}, index=pd.Index(self._tasks, name=TASK))
        write_atomically(self.root / "meta" / "tasks.parquet", lambda tmp: tasks.to_parquet(tmp))
        stats = aggregate_stats(self._stats)
        _write_json(self.root / "meta" / "stats.json",
                    {k: {n: v.tolist() for n, v in s.items()} for k, s in stats.items()})
        total_frames = sum(e["length"] for e in self._episodes)
        features = {}
        for key, feature in self.all_features.items():
            features[key] = dict(feature)
            if feature["dtype"] == "video":
                h, w, c = feature["shape"]
                depth = is_depth_feature(key, feature)
                features[key]["info"] = {
                    "video.height": h, "video.width": w, "video.codec": "hevc" if depth else self.video.codec_name,
                    "video.pix_fmt": "gray12le" if depth else self.video.pix_fmt, "video.fps": self.fps,
                    "video.channels": c, "has_audio": False, "video.g": self.video.gop,
                    "video.crf": 0 if depth else self.video.crf, "is_depth_map": False,
                    **(feature.get("info") or {}),  # a depth stream's is_depth_map and quantisation
                }
        _write_json(self.root / "meta" / "info.json", {
            "codebase_version": CODEBASE_VERSION,
            "fps": self.fps,
            "features": features,
            "total_episodes": self.num_episodes,
            "total_frames": total_frames,
            "total_tasks": len(self._tasks),
            "chunks_size": CHUNKS_SIZE,
            "data_files_size_in_mb": 100,
            "video_files_size_in_mb": 200,
            "data_path": DATA_PATH,
            "video_path": VIDEO_PATH,
            "robot_type": self.robot_type,
            "splits": {"train": f"0:{self.num_episodes}"},
        })
        _write_parquet(self.root / EPISODES_META_PATH, pa.Table.from_pylist(self._episodes))


# --- reader --------------------------------------------------------------------------------------
# (size, mtime) of each video file found to match the Hub's hash, in this process: the stores training
# opens one after another hash a large download once.
_HUB_CHECKED: dict[Path, tuple[int, int]] = {}

class EpisodeStore:
    """Reads a dataset in the LeRobot v3 layout: any frame, window of frames or whole episode.

    Datasets as LeRobot 0.6 writes them are read as they are: many episodes per data and video file
    (located through meta/episodes), image features as PNG/TIFF bytes in the data files, depth maps
    (`info.is_depth_map`) from 12-bit depth videos or float images, all returned in metres. Depth
    features appear in `features` as what they decode to: float32 (H, W).

    With `data` (a DataConfig), the features that play the toolkit's roles are also readable by its
    names (the chosen camera as `observation.images.rgb`, further ones as `observation.images.rgb1`...,
    the depth as `observation.depth`, given intrinsics as `observation.camera.intrinsics`), and
    `features` lists them under those names. With `image_size` too, those images, the depth and the
    intrinsics are read fitted to the model's square input (stvla.image_fit, `data.image_fit`), and
    `features` gives the fitted shapes; a camera already at that square size is read as it is.

    Missing or truncated files raise a DatasetError that names the file; nothing is silently shorter.
    """

    def __init__(self, root: str | Path, data: DataConfig | None = None, image_size: int = 0):
        """`image_size`: the model's square side the roles' images are fitted to (0: as stored)."""
        self.root = Path(root)
        info_path = self.root / "meta" / "info.json"
        if not info_path.is_file():
            raise DatasetError(f"not a dataset: {info_path} is missing")
        try:
            self.info = json.loads(info_path.read_text())
        except json.JSONDecodeError as error:
            raise DatasetError(f"{info_path} is not valid JSON: {error}") from error
        for field in ("codebase_version", "fps", "features", "robot_type", "data_path"):
            if field not in self.info:
                raise DatasetError(f"{info_path}: field {field!r} is missing")
        if not str(self.info["codebase_version"]).startswith("v3"):
            raise DatasetError(f"{info_path}: codebase_version {self.info['codebase_version']!r} is not v3")
        if not isinstance(self.info["features"], dict):
            raise DatasetError(f"{info_path}: field 'features' is not a mapping of feature keys to entries")
        for key in (INDEX, EPISODE_INDEX, FRAME_INDEX, TIMESTAMP):
            if key not in self.info["features"]:
                raise DatasetError(f"{info_path}: feature {key!r} is missing: LeRobot writes it with every row, and "
                                   f"without it the rows' episode and time order cannot be checked")
        for key, feature in self.info["features"].items():
            _check_feature_entry(key, feature, info_path)
            if is_depth_feature(key, feature):
                _check_depth_info(key, feature, info_path)
        self.info["features"] = {key: _channels_last(feature) for key, feature in self.info["features"].items()}
        fps = self.info.get("fps")
        if not _whole_number(fps) or fps <= 0:
            raise DatasetError(f"{info_path}: field 'fps' must be a positive whole number of frames per second "
                               f"(as LeRobot writes it), got {fps!r}")
        self.fps: int = int(fps)
        for key, feature in self.info["features"].items():  # LeRobot writes each video's rate beside the fps
            rate = (feature.get("info") or {}).get("video.fps")
            if rate is not None and (not isinstance(rate, (int, float)) or isinstance(rate, bool)
                                     or not abs(rate - self.fps) <= FPS_TOLERANCE * self.fps):
                raise DatasetError(f"{info_path}: feature {key!r} says video.fps {rate!r}, but field 'fps' is "
                                   f"{self.fps}: one of them is not the recording's")
        self._check_paths()
        self.episodes = self._read_episodes()
        self.tasks: list[str] = self._read_tasks(self.root / "meta" / "tasks.parquet")
        self._check_totals(info_path)
        stored = {key: _decoded_feature(key, feature) for key, feature in self.info["features"].items()}
        self.roles = resolve_roles(self.info["features"], data, str(self.root)) if data is not None else None
        self._stored_key = dict(self.roles.stored) if self.roles else {}  # toolkit key -> dataset key
        self.features: dict[str, dict] = {key: f for key, f in stored.items() if key not in self._stored_key.values()}
        self.features.update({role: stored[key] for role, key in self._stored_key.items()})
        if self.roles is not None and self.roles.intrinsics is not None:
            self.features[INTRINSICS] = {"dtype": "float32", "shape": [3, 3], "names": None}
        # The stored (height, width) of each image role (the cameras, the depth) that is fitted to image_size.
        self.fitted: dict[str, tuple[int, int]] = {}
        self.image_fit = data.image_fit if data is not None else "crop"
        if image_size and data is not None:
            if DEPTH in self._stored_key:  # fitted alike only if the depth shows what the camera shows
                self.check_depth_registered(self.features[RGB]["shape"][:2], self.features[DEPTH]["shape"][:2],
                                            "fitted")
            for role in (RGB, *EXTRA_CAMERAS, DEPTH):
                if role in self._stored_key and not is_identity(*self.features[role]["shape"][:2], image_size):
                    self.fitted[role] = tuple(self.features[role]["shape"][:2])
                    shape = [image_size, image_size, *self.features[role]["shape"][2:]]
                    self.features[role] = {**self.features[role], "shape": shape}
        self.image_size = image_size
        self._cache: dict[int, dict[str, np.ndarray]] = {}
        self._video_streams: dict[Path, StreamDescription] = {}  # each video file's codec and rate, read once
        self._table: tuple[Path, tuple[str, ...], pa.Table] | None = None  # the latest data file read

    def _check_paths(self) -> None:
        """info.json's path templates format into files inside the dataset folder (checked once here, so a
        bad template is named before anything is read), and its chunks_size is a positive whole number."""
        self._template_path("data_path", chunk_index=0, file_index=0)
        for key, feature in self.info["features"].items():
            if feature.get("dtype") == "video":
                self._template_path("video_path", video_key=key, chunk_index=0, file_index=0)
        size = self.info.get("chunks_size", CHUNKS_SIZE)
        if not _whole_number(size) or size <= 0:
            raise DatasetError(f"{self.root / 'meta' / 'info.json'}: field 'chunks_size' must be a positive whole "
                               f"number (files per chunk), got {size!r}")

    def _template_path(self, field: str, **keys: Any) -> Path:
        """The file info.json's path template `field` (data_path, video_path) names for `keys`; a template that
        does not format with them, or leads outside the dataset folder, is refused naming the field."""
        template, where = self.info.get(field), f"{self.root / 'meta' / 'info.json'}: field {field!r}"
        if not isinstance(template, str):
            raise DatasetError(f"{where} is {template!r}, not a path template")
        try:
            relative = template.format(**keys)
        except (KeyError, IndexError, AttributeError, ValueError) as error:
            raise DatasetError(f"{where} {template!r} does not format with {', '.join(keys)} "
                               f"({type(error).__name__}: {error})") from None
        # Lexically: a file of a Hub download may be a link into the Hub's cache, which is no escape.
        normal = os.path.normpath(relative)
        if os.path.isabs(normal) or normal == os.pardir or normal.startswith(os.pardir + os.sep):
            raise DatasetError(f"{where} {template!r} leads outside the dataset folder ({relative})")
        return self.root / relative

    def _check_totals(self, info_path: Path) -> None:
        """info.json's totals against meta/episodes, the record of what is finished. The writer writes info.json
        first, so one killed between the two leaves info.json ahead (more episodes and frames), never behind;
        with the same episodes, the same frames."""
        totals = {field: self.info[field] for field in ("total_episodes", "total_frames", "total_tasks")
                  if field in self.info}
        for field, value in totals.items():
            if not _whole_number(value):
                raise DatasetError(f"{info_path}: field {field!r} must be a whole number, got {value!r}")
        episodes, frames = totals.get("total_episodes", self.num_episodes), totals.get("total_frames", self.num_frames)
        if episodes < self.num_episodes:
            raise DatasetError(f"{info_path}: total_episodes is {episodes} but meta/episodes lists "
                               f"{self.num_episodes} episodes")
        if frames < self.num_frames or (episodes == self.num_episodes and frames != self.num_frames):
            raise DatasetError(f"{info_path}: total_frames is {frames} but meta/episodes lists {self.num_frames} "
                               f"frames (the lengths of its {self.num_episodes} episodes)")
        tasks = totals.get("total_tasks", len(self.tasks))  # a killed writer's new episode may bring a new task
        if tasks < len(self.tasks) or (episodes == self.num_episodes and tasks != len(self.tasks)):
            raise DatasetError(f"{info_path}: total_tasks is {tasks} but meta/tasks.parquet lists {len(self.tasks)} "
                               f"tasks")

    # --- what the dataset holds -------------------------------------------------------------------
    @property
    def num_episodes(self) -> int:
        return len(self.episodes)

    @property
    def num_frames(self) -> int:
        return int(self.episodes["length"].sum()) if len(self.episodes) else 0

    def check_depth_registered(self, camera_hw: tuple[int, int], depth_hw: tuple[int, int], use: str) -> None:
        """A DatasetError naming both features unless the depth's (height, width) has the camera's aspect
        (registered to it: it shows what the camera shows), which fitting or tracing it with the camera needs."""
        (height, width), (depth_height, depth_width) = camera_hw, depth_hw
        if height * depth_width != width * depth_height:
            raise DatasetError(f"{self.root}: depth {self.stored_key(DEPTH)!r} is {depth_height}x{depth_width} and "
                               f"camera {self.stored_key(RGB)!r} {height}x{width}: the depth must be registered to "
                               f"the camera (the same aspect) to be {use} with it")

    def stored_key(self, key: str) -> str:
        """The dataset's own name of feature `key` (the chosen camera for `observation.images.rgb`, ...)."""
        return self._stored_key.get(key, key)

    def source_of(self, key: str) -> str:
        """What feature `key` is read from, as a name for caches: the stored key, or the given intrinsics;
        and, when the images are fitted, the fit (`@128crop`), so a cache made at another size or fit is
        never read."""
        source = self.stored_key(key)
        if key == INTRINSICS and self.roles is not None and self.roles.intrinsics is not None:
            source = "intrinsics-" + ",".join(f"{v:g}" for v in self.roles.intrinsics[:2].reshape(-1)[[0, 2, 4, 5]])
        moved = self.fitted.get(RGB if key == INTRINSICS else key)
        return f"{source}@{self.image_size}{self.image_fit}" if moved else source

    def _fit(self, key: str, values: np.ndarray) -> np.ndarray:
        """Frames of `key` as the model reads them: fitted to image_size when the role is (see the class docs)."""
        if key == INTRINSICS and RGB in self.fitted:
            return fit_intrinsics(values, self.fitted[RGB], self.image_size, self.image_fit).astype(np.float32)
        if key not in self.fitted:
            return values
        fit = fit_depth if key == DEPTH else fit_rgb
        return fit(values, self.image_size, self.image_fit)

    def episode_length(self, episode: int) -> int:
        return int(self.episodes.iloc[self._check_episode(episode)]["length"])

    def episode_meta(self, episode: int) -> dict[str, Any]:
        """The meta/episodes row of one episode (lengths, file indices, extra fields such as seed)."""
        row = self.episodes.iloc[self._check_episode(episode)]
        return {k: _plain(v) for k, v in row.items() if not k.startswith("stats/")}

    def episode_stats(self, episode: int) -> dict[str, dict[str, np.ndarray]]:
        row = self.episodes.iloc[self._check_episode(episode)]
        stats: dict[str, dict[str, np.ndarray]] = {}
        for column, value in row.items():
            if column.startswith("stats/"):
                _, key, name = column.split("/")  # feature keys hold dots, never slashes
                stats.setdefault(key, {})[name] = np.array(_to_nested_list(value), dtype=np.float64)
        return stats

    def data_path(self, episode: int) -> Path:
        row = self.episodes.iloc[self._check_episode(episode)]
        return self._template_path("data_path", chunk_index=int(row["data/chunk_index"]),
                                   file_index=int(row["data/file_index"]))

    def video_path(self, episode: int, key: str) -> Path:
        return self._stored_video_path(self._check_episode(episode), self.stored_key(key))

    def _stored_video_path(self, episode: int, stored_key: str) -> Path:
        row = self.episodes.iloc[episode]
        return self._template_path("video_path", video_key=stored_key,
                                   chunk_index=int(row[f"videos/{stored_key}/chunk_index"]),
                                   file_index=int(row[f"videos/{stored_key}/file_index"]))

    # --- reading ----------------------------------------------------------------------------------
    def episode(self, episode: int, keys: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """Every frame of one episode: {feature key: (T, ...) array}; videos decoded to uint8 RGB, depth
        maps to float32 metres."""
        episode = self._check_episode(episode)
        wanted = list(keys) if keys is not None else list(self.features)
        unknown = sorted(set(wanted) - set(self.features))
        if unknown:
            raise KeyError(f"{self.root}: unknown features {unknown}; this dataset has {sorted(self.features)}")
        cached = self._cache.get(episode, {})
        todo = [k for k in wanted if k not in cached]
        length = self.episode_length(episode)
        if INTRINSICS in todo and self.stored_key(INTRINSICS) not in self.info["features"]:
            cached[INTRINSICS] = self._fit(INTRINSICS, np.repeat(self.roles.intrinsics[None], length, axis=0))
            todo.remove(INTRINSICS)
        in_videos = [k for k in todo if self.info["features"][self.stored_key(k)]["dtype"] == "video"]
        data_keys = [k for k in todo if k not in in_videos]
        if data_keys:
            path, rows = self._episode_rows(episode, [self.stored_key(k) for k in data_keys])
            for key in data_keys:
                cached[key] = self._decode_column(rows.column(self.stored_key(key)), key, path)
            if TASK_INDEX in data_keys:
                task_index = cached[TASK_INDEX].reshape(-1)
                outside = np.flatnonzero((task_index < 0) | (task_index >= len(self.tasks)))
                if len(outside):
                    raise DatasetError(f"{path}: episode {episode}, row {outside[0]} has task_index "
                                       f"{task_index[outside[0]]}, but meta/tasks.parquet holds {len(self.tasks)} "
                                       f"task(s) (0..{len(self.tasks) - 1})")
                self._check_episode_tasks(path, episode, task_index)
        for key in in_videos:
            cached[key] = self._read_video_span(episode, key, length)
        for key in todo:
            cached[key] = self._fit(key, cached[key])
        # Keep only the most recent episode decoded: windows of one episode are read in sequence.
        self._cache = {episode: cached}
        return {k: cached[k] for k in wanted}

    def frames(self, episode: int, start: int, stop: int, keys: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """Frames start..stop-1 of an episode (a window); the range must lie inside the episode."""
        length = self.episode_length(episode)
        if not 0 <= start < stop <= length:
            raise IndexError(f"window [{start}, {stop}) is outside episode {episode} of length {length}")
        return {k: v[start:stop] for k, v in self.episode(episode, keys).items()}

    def frame(self, episode: int, index: int, keys: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """One frame of an episode."""
        return {k: v[0] for k, v in self.frames(episode, index, index + 1, keys).items()}

    def verify(self) -> None:
        """Check that every listed episode's rows and video frames are on disk (decoding the videos)."""
        videos = [k for k, f in self.info["features"].items() if f["dtype"] == "video"]
        for episode in range(self.num_episodes):
            path = self.data_path(episode)
            if not path.is_file():
                raise DatasetError(f"data file missing: {path} (episode {episode})")
            self._episode_rows(episode, [])
            for key in videos:
                self._read_video_span(episode, key, self.episode_length(episode))

    def check_schema(self) -> None:
        """Check every data file's columns against meta/info.json and its row count against meta/episodes
        before anything reads rows, from the files' parquet footers: each feature stored in the data files
        exists there, with the shape info.json gives and a dtype that reads without changing values, and each
        file holds the rows of the episodes meta/episodes places in it, no more (a DatasetError naming the file
        and the feature or the counts otherwise)."""
        stored = {k: f for k, f in self.info["features"].items() if f["dtype"] != "video"}
        placed: dict[Path, list[int]] = {}
        for episode in range(self.num_episodes):
            placed.setdefault(self.data_path(episode), []).append(episode)
        for path, episodes in sorted(placed.items()):
            if not path.is_file():
                raise DatasetError(f"data file missing: {path}")
            try:
                metadata = pq.read_metadata(path)
                schema = metadata.schema.to_arrow_schema()
            except (pa.ArrowException, OSError) as error:
                raise DatasetError(f"cannot read {path} (truncated or corrupt?): {error}") from error
            rows = sum(self.episode_length(episode) for episode in episodes)
            if metadata.num_rows != rows:
                which = f"episode {episodes[0]}" if len(episodes) == 1 else f"episodes {episodes[0]}..{episodes[-1]}"
                raise DatasetError(f"{path} holds {metadata.num_rows} rows but meta/episodes accounts for {rows} "
                                   f"({which} placed in it)")
            for key, feature in stored.items():
                if key not in schema.names:
                    raise DatasetError(f"{path} has no column {key!r}, which meta/info.json lists as a feature")
                if feature["dtype"] == "image":
                    continue
                kind, shape = schema.field(key).type, []
                while pa.types.is_fixed_size_list(kind) or pa.types.is_list(kind):
                    shape.append(kind.list_size if pa.types.is_fixed_size_list(kind) else -1)
                    kind = kind.value_type
                expected = [] if list(feature["shape"]) == [1] else list(feature["shape"])
                if -1 not in shape and shape != expected:
                    raise DatasetError(f"{path}: column {key!r} has shape {shape or [1]} per frame but meta/info.json "
                                       f"says {feature['shape']}")
                _lossless_cast(np.empty(0, kind.to_pandas_dtype()), feature["dtype"], path, key)

    # --- internals ---------------------------------------------------------------------------------
    def _check_episode(self, episode: int) -> int:
        if not 0 <= episode < self.num_episodes:
            raise IndexError(f"episode {episode} out of range: {self.root} holds {self.num_episodes} episodes")
        return int(episode)

    def _read_episodes(self) -> pd.DataFrame:
        """meta/episodes: every file of it (LeRobot starts a new one as it grows), in episode order."""
        paths = sorted((self.root / "meta" / "episodes").glob("chunk-*/file-*.parquet"))
        if not paths:
            raise DatasetError(f"file missing: {self.root / EPISODES_META_PATH}")
        tables = [self._read_table(path).to_pandas() for path in paths]
        required = (EPISODE_INDEX, "length", "data/chunk_index", "data/file_index")
        for path, table in zip(paths, tables):  # each file by itself, so the one at fault is named
            for column in required:
                if column not in table:
                    raise DatasetError(f"{path}: column {column!r} is missing")
            video_files = [column for column in table.columns
                           if column.startswith("videos/") and column.endswith(("/chunk_index", "/file_index"))]
            for column in (*required, *video_files):
                if not pd.api.types.is_integer_dtype(table[column]):  # 1.5 would be read as 1 (or as a NaN)
                    raise DatasetError(f"{path}: column {column!r} holds {table[column].dtype} values "
                                       f"({_plain(table[column].iloc[0])!r}, ...), not integers")
        for path, table in zip(paths[1:], tables[1:]):  # a column one file lacks would be NaN for its episodes
            differ = sorted(set(tables[0].columns) ^ set(table.columns))
            if differ:
                raise DatasetError(f"{path}: column {differ[0]!r} is in one of {paths[0]} and {path.name} only: "
                                   f"the files of meta/episodes hold the same columns")
        episodes = pd.concat(tables, ignore_index=True) if len(tables) > 1 else tables[0]
        episodes = episodes.sort_values(EPISODE_INDEX, ignore_index=True)
        if list(episodes[EPISODE_INDEX]) != list(range(len(episodes))):
            listed = episodes[EPISODE_INDEX].tolist()
            twice = sorted({int(e) for e in listed if listed.count(e) > 1})
            said = f"episode {twice[0]} is listed {listed.count(twice[0])} times" if twice else (
                f"episode {min(set(range(len(listed))) - set(listed))} is missing")
            raise DatasetError(f"{self.root / 'meta' / 'episodes'}: episode indices are not 0..{len(episodes) - 1}: "
                               f"{said}")
        self._check_video_spans(episodes)
        return episodes

    def _check_video_spans(self, episodes: pd.DataFrame) -> None:
        """Episodes packed into one video file must hold disjoint time spans: spans that overlap would have
        an episode read another's frames (a LeRobot dataset carries no hash that would tell)."""
        keys = {name[len("videos/"):-len("/from_timestamp")] for name in episodes.columns
                if name.startswith("videos/") and name.endswith("/from_timestamp")}
        for key in sorted(keys):
            columns = [f"videos/{key}/{field}" for field in ("chunk_index", "file_index", "from_timestamp",
                                                              "to_timestamp")]
            if not all(column in episodes for column in columns):
                continue
            where = self.root / "meta" / "episodes"
            for _, row in episodes[[EPISODE_INDEX, *columns[2:]]].iterrows():
                start, stop = (pd.to_numeric(row[column], errors="coerce") for column in columns[2:])
                if not (np.isfinite(start) and np.isfinite(stop) and 0 <= start < stop):
                    raise DatasetError(f"{where}: episode {int(row[EPISODE_INDEX])}'s span of {key}'s video is "
                                       f"[{row[columns[2]]}, {row[columns[3]]}) s: a span runs from a time >= 0 to a "
                                       f"later one")
            spans = episodes[[EPISODE_INDEX, *columns]].sort_values(columns[:3])
            half_frame = 0.5 / self.fps
            for (_, a), (_, b) in zip(spans.iterrows(), list(spans.iterrows())[1:]):
                same_file = (a[columns[0]], a[columns[1]]) == (b[columns[0]], b[columns[1]])
                if same_file and b[columns[2]] < a[columns[3]] - half_frame:
                    raise DatasetError(f"{self.root / 'meta' / 'episodes'}: episodes {int(a[EPISODE_INDEX])} and "
                                       f"{int(b[EPISODE_INDEX])} overlap in {key}'s video file (chunk "
                                       f"{int(a[columns[0]])}, file {int(a[columns[1]])}): "
                                       f"[{a[columns[2]]:.3f}, {a[columns[3]]:.3f}) and "
                                       f"[{b[columns[2]]:.3f}, {b[columns[3]]:.3f}) s")

    def _read_tasks(self, path: Path) -> list[str]:
        """The task strings in task_index order: LeRobot keeps them as the index (named "task"), other writers
        as a "task" column; frames' task_index values are positions in this list."""
        table = self._read_table(path).to_pandas()
        if TASK_INDEX not in table:
            raise DatasetError(f"{path}: column {TASK_INDEX!r} is missing")
        table = table.sort_values(TASK_INDEX)
        if list(table[TASK_INDEX]) != list(range(len(table))):
            raise DatasetError(f"{path}: task indices are {list(table[TASK_INDEX])[:5]}..., not 0..{len(table) - 1}")
        tasks = list(table[TASK] if TASK in table else table.index)
        bad = next((task for task in tasks if not isinstance(task, str)), None)
        if bad is not None:
            raise DatasetError(f"{path}: task {bad!r} is not a string (the task strings are the index, named "
                               f"{TASK!r}, or a {TASK!r} column)")
        first: dict[str, int] = {}
        for index, task in enumerate(tasks):  # LeRobot, and our writer, find a task's index by its string
            if first.setdefault(task, index) != index:
                raise DatasetError(f"{path}: tasks {first[task]} and {index} are both {task!r}: a task string "
                                   f"names one task")
        return tasks

    def _episode_rows(self, episode: int, columns: list[str]) -> tuple[Path, pa.Table]:
        """The data-file rows of one episode (its `index` span; LeRobot packs many episodes in a file)."""
        path = self.data_path(episode)
        wanted = tuple(sorted({*columns, FRAME_INDEX, TIMESTAMP, INDEX, EPISODE_INDEX}))  # the order is checked
        if self._table is None or self._table[0] != path or not set(wanted) <= set(self._table[1]):
            self._table = (path, wanted, self._read_table(path, columns=list(wanted)))
        table = self._table[2]
        meta, episodes_meta = self.episodes.iloc[episode], self.root / "meta" / "episodes"
        length = int(meta["length"])
        index, owner = table.column(INDEX).to_numpy(), table.column(EPISODE_INDEX).to_numpy()
        if ("dataset_from_index" in meta) != ("dataset_to_index" in meta):
            raise DatasetError(f"{episodes_meta}: dataset_from_index and dataset_to_index come together (an "
                               f"episode's index span); one of them is missing")
        if "dataset_from_index" in meta:
            start, stop = int(meta["dataset_from_index"]), int(meta["dataset_to_index"])
            if stop - start != length:
                raise DatasetError(f"{episodes_meta} says episode {episode} has length {length} but is index "
                                   f"[{start}, {stop}) (dataset_from_index, dataset_to_index), {stop - start} rows")
            rows = np.flatnonzero((index >= start) & (index < stop))
        else:
            rows = np.flatnonzero(owner == episode)
        if len(rows) != length:
            # Say which disagrees: meta/episodes' span and the index values of the rows labelled this episode
            # (one shifted against the other), or the file lacks rows.
            own = index[owner == episode]
            if "dataset_from_index" in meta and len(own) and (own.min() < start or own.max() >= stop):
                raise DatasetError(f"{episodes_meta} says episode {episode} is index [{start}, {stop}) "
                                   f"(dataset_from_index, dataset_to_index) but {path}'s index column holds "
                                   f"[{own.min()}, {own.max() + 1}) for its rows")
            raise DatasetError(f"{path} holds {len(rows)} rows of episode {episode}, expected {length}"
                               + (" (truncated?)" if len(rows) < length else ""))
        episode_rows = (table.slice(int(rows[0]), len(rows)) if len(rows) and rows[-1] - rows[0] + 1 == len(rows)
                        else table.take(rows))
        labelled = episode_rows.column(EPISODE_INDEX).to_numpy().reshape(-1)
        other = np.flatnonzero(labelled != episode)
        if len(other):  # another episode's rows, or a wrong label: either way not surely this episode's
            raise DatasetError(f"{path}: episode {episode}, row {other[0]} (index {index[rows[other[0]]]}) has "
                               f"episode_index {labelled[other[0]]}, but {episodes_meta} places it in episode "
                               f"{episode}")
        self._check_time_order(path, episode, episode_rows)
        return path, episode_rows

    def _check_episode_tasks(self, path: Path, episode: int, task_index: np.ndarray) -> None:
        """meta/episodes' `tasks` of an episode (where a writer keeps them) name the tasks its rows' task_index
        give: where they disagree, one of the two is another episode's."""
        listed = self.episodes.iloc[episode].get("tasks")
        if listed is None or (isinstance(listed, float) and math.isnan(listed)):  # absent, or null in this row
            return
        if isinstance(listed, str):  # LeRobot writes a list; one string is one task
            listed = [listed]
        if np.ndim(listed) != 1:
            raise DatasetError(f"{self.root / 'meta' / 'episodes'}: episode {episode}'s tasks are "
                               f"{str(listed)[:60]}, not a list of task strings")
        given = sorted({self.tasks[int(i)] for i in np.unique(task_index)})
        if set(listed) != set(given):
            raise DatasetError(f"{self.root / 'meta' / 'episodes'}: episode {episode}'s tasks are {list(listed)}, but "
                               f"its rows' task_index in {path} give {given} (meta/tasks.parquet)")

    def _check_time_order(self, path: Path, episode: int, rows: pa.Table) -> None:
        """An episode's rows in time order (else every action would be paired with another frame's image):
        `frame_index` 0..n-1 row by row, `index` one apart, timestamps from 0, 1/fps apart (as LeRobot checks them)."""
        where = f"{path}: episode {episode}"
        count = rows.num_rows
        frame_index = rows.column(FRAME_INDEX).to_numpy().reshape(-1)
        wrong = np.flatnonzero(frame_index != np.arange(count))
        if len(wrong):
            raise DatasetError(f"{where}'s rows are not in time order: row {wrong[0]} has frame_index "
                               f"{frame_index[wrong[0]]}, expected {wrong[0]}")
        steps = np.diff(rows.column(INDEX).to_numpy().reshape(-1))
        if len(steps) and not (steps == 1).all():
            raise DatasetError(f"{where}: 'index' is not one apart from row to row (a step of {steps[steps != 1][0]})")
        # Seconds from the episode's start (frame_index / fps), which LeRobot adds to the video span's start
        # to find a frame. A NaN would pass every comparison below.
        stamps = rows.column(TIMESTAMP).to_numpy().reshape(-1).astype(np.float64)
        bad = np.flatnonzero(~np.isfinite(stamps))
        if len(bad):
            raise DatasetError(f"{where}, row {bad[0]} has timestamp {stamps[bad[0]]}: timestamps are finite seconds "
                               f"from the episode's start")
        if count and abs(stamps[0]) > TIMESTAMP_TOLERANCE_S:
            raise DatasetError(f"{where}, row 0 has timestamp {stamps[0]:.6g}, not 0: timestamps are seconds from the "
                               f"episode's start (frame_index / fps)")
        if count > 1:
            gaps = np.diff(stamps)
            worst = float(np.abs(gaps - 1 / self.fps).max())
            if worst > TIMESTAMP_TOLERANCE_S:
                raise DatasetError(f"{where}: timestamps are not 1/fps = {1 / self.fps:.4g} s apart (off by up to "
                                   f"{worst:.3g} s): rows out of order, dropped frames, or info.json's fps "
                                   f"({self.fps:g}) is not the recording's")
            # Small offsets that add up: past half a frame from frame_index / fps, the video lookup reads another frame.
            drift = np.abs(stamps - np.arange(count) / self.fps)
            if drift.max() > 0.5 / self.fps:
                row = int(drift.argmax())
                raise DatasetError(f"{where}, row {row} has timestamp {stamps[row]:.6g}, {drift[row]:.3g} s from "
                                   f"frame_index / fps = {row / self.fps:.6g}: the timestamps drift by more than half "
                                   f"a frame")

    def _decode_column(self, column: pa.ChunkedArray, key: str, path: Path) -> np.ndarray:
        stored = self.info["features"][self.stored_key(key)]
        if stored["dtype"] == "image":
            return _decode_images(column, stored, path, self.stored_key(key))
        values = _numpy_column(column, stored, path, self.stored_key(key))
        # The action and the state are vectors, also of one value (which LeRobot stores as a plain column).
        return values.reshape(len(values), 1) if key in (ACTION, STATE) and values.ndim == 1 else values

    def _read_video_span(self, episode: int, key: str, length: int) -> np.ndarray:
        stored_key = self.stored_key(key)
        row = self.episodes.iloc[episode]
        start = float(row.get(f"videos/{stored_key}/from_timestamp", 0.0))
        stop = row.get(f"videos/{stored_key}/to_timestamp")
        feature = self.info["features"][stored_key]
        depth = None
        if is_depth_feature(stored_key, feature):
            depth = DepthQuantization.from_info(feature.get("info") or {},
                                                f"{self.root / 'meta' / 'info.json'}: feature {stored_key!r}")
        checksum = self._frames_checksum(episode, stored_key)
        path = self._stored_video_path(episode, stored_key)
        self._check_video_file(episode, path, stored_key, hub_hash=checksum is None)
        try:
            frames = read_video(path, expected_frames=length, start=start, stop=None if stop is None else float(stop),
                                depth=depth, checksum=checksum)
        except DatasetError:
            raise
        except (ValueError, FileNotFoundError) as error:
            raise DatasetError(f"episode {episode}: {error}") from error
        # The size info.json gives is what the camera's intrinsics and its fit are computed from.
        if list(frames.shape[1:3]) != list(feature["shape"][:2]):
            raise DatasetError(f"{path}: frames of {stored_key!r} are {frames.shape[1]}x{frames.shape[2]}, "
                               f"meta/info.json says {feature['shape'][0]}x{feature['shape'][1]}")
        return frames

    def check_video_files(self) -> None:
        """Every video file the episodes name opens as a video container of the codec and frame rate that
        meta/info.json gives, and matches the Hub's hash if it came from the Hub, without decoding a frame:
        what can be known of the videos before training decodes them (`stvla info` says it too)."""
        videos = [key for key, feature in self.info["features"].items() if feature["dtype"] == "video"]
        for key in videos:
            for episode in range(self.num_episodes):
                checksum = self._frames_checksum(episode, key)
                self._check_video_file(episode, self._stored_video_path(episode, key), key, hub_hash=checksum is None)

    def _frames_checksum(self, episode: int, stored_key: str) -> str | None:
        """The SHA-256 of an episode's frames of video `stored_key` that stvla's writer records in meta/episodes
        (LeRobot's datasets have no such column), or None: no column, or null (an episode appended by a writer
        that records none). Any other value is refused: taken for "none", it would skip the check."""
        column = f"videos/{stored_key}/frames_sha256"
        value = _plain(self.episodes.iloc[episode].get(column))
        if value is None or (np.ndim(value) == 0 and pd.isna(value)):
            return None
        if not isinstance(value, str) or not SHA256_HEX.fullmatch(value):
            raise DatasetError(f"{self.root / 'meta' / 'episodes'}: episode {episode}'s {column} is {value!r}, not "
                               f"a SHA-256 of 64 lowercase hex digits (or null for no checksum)")
        return value

    def _check_video_file(self, episode: int, path: Path, stored_key: str, hub_hash: bool) -> None:
        """Episode `episode`'s video file of feature `stored_key`, once per file: it exists and opens as a video
        container, of the frame rate and codec meta/info.json says; with `hub_hash` (no frame checksums of
        ours), its Hub hash."""
        if not path.is_file():
            raise DatasetError(f"episode {episode}: video file missing: {path}")
        if hub_hash:
            self._check_hub_hash(path)
        if path not in self._video_streams:
            try:
                self._video_streams[path] = describe_stream(path)
            except ValueError as error:
                raise DatasetError(f"episode {episode}: {error}") from error
        stream = self._video_streams[path]
        rate = stream.rate  # a wrong fps would reach the control rate
        if rate and abs(rate - self.fps) > FPS_TOLERANCE * self.fps:
            raise DatasetError(f"{path}: the video runs at {rate:.4g} fps, meta/info.json says {self.fps}")
        said = (self.info["features"][stored_key].get("info") or {}).get("video.codec")  # another feature's file
        if isinstance(said, str) and said and codec_family(said) != stream.codec:
            raise DatasetError(f"{path}: the video is {stream.codec}, meta/info.json says {stored_key!r} is {said}")

    def _check_hub_hash(self, path: Path) -> None:
        """A file downloaded from the Hugging Face Hub against the SHA-256 the Hub gave for it (once per file
        as it now is): any change is caught, where the decoder's own checks catch only part of it."""
        if not path.is_file():
            return  # said by the read that follows
        stat = path.stat()
        if _HUB_CHECKED.get(path) == (stat.st_size, stat.st_mtime_ns):
            return
        expected = hub_sha256(self.root, path)
        if expected is not None:
            sha256, source = expected
            with open(path, "rb") as handle:
                if hashlib.file_digest(handle, "sha256").hexdigest() != sha256:
                    raise DatasetError(f"{path}: its SHA-256 differs from the one the Hub gave at download ({source}): "
                                       f"the file was damaged or changed since; download it again")
        _HUB_CHECKED[path] = (stat.st_size, stat.st_mtime_ns)

    @staticmethod
    def _read_table(path: Path, columns: list[str] | None = None) -> pa.Table:
        if not path.is_file():
            raise DatasetError(f"file missing: {path}")
        try:
            if columns is not None:
                names = pq.read_schema(path).names
                missing = [c for c in columns if c not in names]
                if missing:
                    raise DatasetError(f"{path} has no column {missing[0]!r} (info.json lists it as a feature); "
                                       f"its columns: {names}")
            return pq.read_table(path, columns=columns)
        except (pa.ArrowException, OSError) as error:
            raise DatasetError(f"cannot read {path} (truncated or corrupt?): {error}") from error


CHANNEL_NAMES = ("channel", "channels")


def _check_feature_entry(key: str, feature: Any, info_path: Path) -> None:
    """One entry of info.json's features has the form LeRobot writes: a mapping with a dtype string, a shape
    of whole numbers and, if any, an info mapping (what every reader of the entry takes for granted)."""
    where = f"{info_path}: feature {key!r}"
    if not isinstance(feature, dict):
        raise DatasetError(f"{where} is {json.dumps(feature)[:40]}, not an entry with dtype and shape")
    if not isinstance(feature.get("dtype"), str):
        raise DatasetError(f"{where}: 'dtype' is {json.dumps(feature.get('dtype'))[:40]}, not a type name")
    shape = feature.get("shape")
    if not isinstance(shape, list) or not all(_whole_number(size) and size >= 0 for size in shape):
        raise DatasetError(f"{where}: 'shape' is {json.dumps(shape)[:40]}, not a list of sizes")
    names = feature.get("names")  # LeRobot's: none, a list, or lists under axis names ({"motors": [...]})
    if not (names is None or isinstance(names, list)
            or isinstance(names, dict) and all(isinstance(v, list) for v in names.values())):
        raise DatasetError(f"{where}: 'names' is {json.dumps(names)[:40]}, not a list of names (or lists by axis)")
    if feature.get("info") is not None and not isinstance(feature["info"], dict):
        raise DatasetError(f"{where}: 'info' is {json.dumps(feature['info'])[:40]}, not a mapping")


DEPTH_UNITS = {"m": 1.0, "mm": 0.001}  # info.depth_unit -> metres per stored unit


def _check_depth_info(key: str, feature: dict, info_path: Path) -> None:
    """A depth feature's unit is one this reader knows (anything else was read as metres), and a depth
    video's quantisation fields are numbers and a flag (see DepthQuantization.from_info)."""
    info = feature.get("info") or {}
    if "depth_unit" in info and info["depth_unit"] not in DEPTH_UNITS:
        raise DatasetError(f"{info_path}: feature {key!r} has depth_unit {json.dumps(info['depth_unit'])[:40]}, "
                           f"not one of {sorted(DEPTH_UNITS)}")
    if feature["dtype"] == "video":
        try:
            DepthQuantization.from_info(info, f"{info_path}: feature {key!r}")
        except ValueError as error:
            raise DatasetError(str(error)) from None


def _channels_last(feature: dict) -> dict:
    """An image or video feature with its shape as its frames decode, (height, width, channels). Datasets
    ported by LeRobot's older writers (v2.0) may declare [C, H, W] with names ["channels", "height", "width"];
    LeRobot reads the order from the names, and so does this reader."""
    names, shape = feature.get("names"), list(feature.get("shape") or [])
    if feature.get("dtype") in ("video", "image") and len(shape) == 3 and shape[0] in (1, 3) \
            and isinstance(names, list) and len(names) == 3 and str(names[0]).lower() in CHANNEL_NAMES \
            and str(names[2]).lower() not in CHANNEL_NAMES:
        return {**feature, "shape": [*shape[1:], shape[0]], "names": [*names[1:], names[0]]}
    return feature


def _decoded_feature(key: str, feature: dict) -> dict:
    """A feature as the reader returns it: depth maps as float32 (H, W) metres, the rest as stored."""
    if is_depth_feature(key, feature):
        return {**feature, "dtype": "float32", "shape": list(feature["shape"][:2])}
    return feature


def _decode_images(column: pa.ChunkedArray, feature: dict, path: Path, key: str) -> np.ndarray:
    """An image feature's PNG / TIFF bytes (LeRobot's struct<bytes, path>) as uint8 RGB, or as float32
    metres for a depth map (float images in `info.depth_unit`, default metres; integer ones millimetres)."""
    depth = is_depth_feature(key, feature)
    images = []
    for row, value in enumerate(column.to_pylist()):
        data = (value or {}).get("bytes")
        if data is None:
            raise DatasetError(f"{path}: image feature {key!r} has a row without embedded bytes")
        try:
            image = Image.open(io.BytesIO(data))
            array = np.asarray(image) if depth else np.asarray(image.convert("RGB"))
        except (OSError, ValueError) as error:
            raise DatasetError(f"{path}: cannot decode an image of {key!r}: {error}") from error
        if depth:
            if array.ndim != 2 and not (array.ndim == 3 and array.shape[2] == 1):
                raise DatasetError(f"{path}: row {row} of depth feature {key!r} is a {array.shape} image "
                                   f"({image.mode}), not one channel of depth")
            unit = (feature.get("info") or {}).get("depth_unit", "mm" if array.dtype.kind in "iu" else "m")
            array = array.astype(np.float32) * DEPTH_UNITS[unit]
            array = array.reshape(array.shape[:2])
        if list(array.shape[:2]) != list(feature["shape"][:2]):  # each: one of another size would not stack
            raise DatasetError(f"{path}: images of {key!r} are {list(array.shape[:2])} (row {row}), info.json says "
                               f"{list(feature['shape'][:2])}")
        images.append(array)
    return np.stack(images)


def pack(source: str | Path, out: str | Path, episodes_per_file: int = 50, video: VideoSettings = VideoSettings(),
         progress: bool = False) -> Path:
    """Rewrite a dataset with `episodes_per_file` episodes per data and video file (LeRobot's layout;
    the Hub's datasets are so packed). Frames, tasks, depth and the extra meta/episodes fields are kept;
    RGB is re-encoded with `video` (lossless by default), depth with its own quantisation (the same codes)."""
    store = EpisodeStore(source)
    stored = store.info["features"]
    features = {key: {k: v for k, v in feature.items() if k != "info"} | (
                    {"info": feature["info"]} if is_depth_feature(key, feature) and "info" in feature else {})
                for key, feature in stored.items() if key not in INDEX_FEATURES}
    writer = EpisodeWriter.create_or_resume(out, store.fps, features, store.info["robot_type"], video=video,
                                            episodes_per_file=episodes_per_file)
    standard = {EPISODE_INDEX, "tasks", "length", "dataset_from_index", "dataset_to_index"}
    for episode in tqdm(range(store.num_episodes), desc="pack", unit="ep", disable=not progress):
        frames = store.episode(episode, list(features) + [TASK_INDEX])
        extra = {k: v for k, v in store.episode_meta(episode).items()
                 if k not in standard and not k.startswith(("data/", "videos/", "meta/"))}
        writer.add_episode({k: frames[k] for k in features}, store.tasks[int(frames[TASK_INDEX][0])], extra)
    writer.flush()
    return Path(out)


def check_new_dataset_folder(root: Path) -> None:
    """Where a dataset may be written: not inside another dataset (its files are what its meta/ lists: one
    written inside would be nobody's, or damage it), and a new one into a new or empty folder, or one a writer
    killed before its first info.json left (the lock, data, videos, meta): never around a user's own files."""
    holder = next((parent for parent in root.resolve().parents if (parent / "meta" / "info.json").is_file()), None)
    if holder is not None:
        raise DatasetError(f"{root} is inside the dataset {holder}: write the new dataset elsewhere")
    if not root.is_dir() or (root / "meta" / "info.json").is_file():
        return
    foreign = sorted(entry.name for entry in root.iterdir()
                     if entry.name not in ("meta", "data", "videos") and not entry.name.startswith(".stvla"))
    if foreign:
        raise DatasetError(f"{root} holds files that are no dataset's ({', '.join(foreign[:3])}"
                           f"{', ...' if len(foreign) > 3 else ''}): write the dataset into a new or empty folder")


def append_features(root: str | Path, features: dict[str, dict],
                    episode_frames: Callable[[int], dict[str, np.ndarray]], progress: bool = False) -> None:
    """Add per-frame features kept in the data files (not videos: a depth map as TIFF images, intrinsics)
    to every episode of a dataset, in place; `episode_frames(e)` gives episode e's frames of them.

    Safe to kill and call again: the data files are rewritten first (each to a temporary name; a column
    info.json does not list is ignored by every reader), then meta/episodes with the features' stats,
    stats.json, and info.json last, which makes them visible. A file that already holds one of the columns
    (left by a run that stopped before info.json) gets this call's values: that run's may be another
    model's.
    """
    store = EpisodeStore(root)
    clash = sorted(set(features) & set(store.info["features"]))
    if clash:
        raise DatasetError(f"{store.root} already has the feature(s) {clash}")
    videos = sorted(k for k, f in features.items() if f["dtype"] == "video")
    if videos:
        raise ValueError(f"append_features writes data-file features only, not videos {videos}")
    files: dict[Path, list[int]] = {}
    for episode in range(store.num_episodes):
        files.setdefault(store.data_path(episode), []).append(episode)
    stats: dict[int, dict] = {}
    for path, episodes in tqdm(files.items(), desc="write", unit="file", disable=not progress):
        table = EpisodeStore._read_table(path)
        owner = table.column(EPISODE_INDEX).to_numpy()
        frame = table.column(FRAME_INDEX).to_numpy()
        columns = {key: np.zeros((table.num_rows, *_frame_shape(key, f)), frame_dtype(key, f))
                   for key, f in features.items()}
        for episode in episodes:
            frames = episode_frames(episode)
            length = store.episode_length(episode)
            for key, feature in features.items():
                expected = (length, *_frame_shape(key, feature))
                if np.shape(frames[key]) != expected:
                    raise ValueError(f"feature {key!r} of episode {episode}: expected shape {expected}, "
                                     f"got {np.shape(frames[key])}")
                rows = owner == episode
                columns[key][rows] = np.asarray(frames[key])[frame[rows]]
            stats[episode] = episode_stats(frames, features)
        for key, feature in features.items():
            column = _image_column(columns[key], key, feature) if feature["dtype"] == "image" else \
                _arrow_column(columns[key], feature)
            if key in table.column_names:  # an unfinished earlier run's: replaced, never kept
                table = table.set_column(table.column_names.index(key), key, column)
            else:
                table = table.append_column(key, column)
        metadata = json.loads((table.schema.metadata or {}).get(b"huggingface", b"{}") or "{}")
        metadata.setdefault("info", {}).setdefault("features", {}).update(
            {key: _hf_feature(feature) for key, feature in features.items()})
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), b"huggingface": json.dumps(metadata)})
        _write_parquet(path, table, [k for k, f in features.items() if f["dtype"].startswith("float")])

    for path in sorted((store.root / "meta" / "episodes").glob("chunk-*/file-*.parquet")):
        table = EpisodeStore._read_table(path).to_pandas()
        for key in features:
            for name in STAT_NAMES:
                table[f"stats/{key}/{name}"] = [stats[int(e)][key][name].tolist() for e in table[EPISODE_INDEX]]
        _write_parquet(path, pa.Table.from_pandas(table, preserve_index=False))
    combined = aggregate_stats([stats[e] for e in range(store.num_episodes)])
    stats_path = store.root / "meta" / "stats.json"
    all_stats = json.loads(stats_path.read_text()) if stats_path.is_file() else {}
    all_stats.update({k: {n: v.tolist() for n, v in s.items()} for k, s in combined.items()})
    _write_json(stats_path, all_stats)
    info = json.loads((store.root / "meta" / "info.json").read_text())
    info["features"].update(features)
    _write_json(store.root / "meta" / "info.json", info)


def frame_dtype(key: str, feature: dict) -> str:
    """The array type a feature's frames are held in: float32 metres for depth (however it is stored),
    uint8 for other images, else the stored dtype."""
    if is_depth_feature(key, feature):
        return "float32"
    return "uint8" if feature["dtype"] in ("video", "image") else feature["dtype"]


def _to_nested_list(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return [_to_nested_list(v) for v in value]
    return value
