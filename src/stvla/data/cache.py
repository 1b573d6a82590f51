"""Training caches: a dataset's frames decoded once, and per-frame arrays derived from them, as
memory-mapped .npy files in a cache folder outside the dataset (`--cache_dir`, else $STVLA_CACHE, else
~/.cache/stvla), so that a read-only or shared dataset trains.

Training reads random frames many times per epoch; decoding mp4 (or re-running a tracker) each time
would dominate the cost.

- `DecodedCache`: one per dataset, `<cache>/<dataset name>-<fingerprint>/decoded/<stored feature>.npy`.
  A feature is decoded the first time anyone asks for it; whoever asks later, with any list of features,
  reads the same file. Files are named by the feature they were read from (the dataset's own key, or
  the intrinsics given for it) and, for images fitted to a model's square, the fit (`EpisodeStore.source_of`:
  `observation.images.front@128crop`), so choosing another camera, size or fit never reads another's cache.
- `DerivedCache`: arrays a stateful per-frame function makes while it steps through every episode from
  its first frame (a policy's traced inputs: `InputProcessor.trace_frame`), in
  `<cache>/<dataset name>-<fingerprint>/<name>-<inputs>/`, where `name` says what made them (the trace
  settings' hash) and `<inputs>` hashes the stored features they were made from.

The fingerprint covers info.json, the episode table and every data, video and image file's name, size
and modification time (and the cache format): a dataset that grows, or a file edited in place, gets
fresh caches. Every cache file is written under a temporary name and renamed when complete, with a
manifest (`<file>.json`: size, modification time, a hash of sampled blocks) that is checked before the
file is read; a cache file that does not match its manifest (replaced, truncated, made by an older
version) is rebuilt. A build that was killed leaves nothing that is read, and two processes building
the same cache at once both end with the same complete files.

Decoding checks what it reads: actions and states must be finite, depth must look like metres
(`geometry.check_metric_depth`); a bad episode is a DatasetError naming the dataset, episode and feature.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import sys
import tempfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
from tqdm import tqdm

from stvla import features as F
from stvla import geometry
from stvla.data.store import DatasetError, EpisodeStore, write_atomically

FrameStep = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


def cache_root(cache_dir: str = "") -> Path:
    """Where training caches go: `cache_dir`, else $STVLA_CACHE, else $XDG_CACHE_HOME/stvla (~/.cache/stvla)."""
    if cache_dir:
        return Path(cache_dir)
    if os.environ.get("STVLA_CACHE"):
        return Path(os.environ["STVLA_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "stvla"


CACHE_FORMAT = 4  # bump when what a cache file holds changes: every older cache is then rebuilt


def dataset_fingerprint(store: EpisodeStore) -> str:
    """A short hash of info.json, the episode table and the stat of every data, video and image file:
    it changes whenever an episode is added or a file is rewritten."""
    digest = hashlib.sha256(f"stvla-cache-{CACHE_FORMAT}".encode())
    digest.update((store.root / "meta" / "info.json").read_bytes())
    for path in sorted((store.root / "meta" / "episodes").glob("chunk-*/file-*.parquet")):
        digest.update(path.read_bytes())
    for folder in ("data", "videos", "images"):
        for path in sorted((store.root / folder).rglob("*")):
            if path.is_file():
                stat = path.stat()
                digest.update(f"{path.relative_to(store.root)}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:12]


def file_manifest(path: Path, spans: list[slice]) -> dict:
    """What a cache file must still be when it is read: its size, modification time, and a CRC-32 of every
    episode's rows (`spans`): every byte a run reads is covered, checked when the cache is opened."""
    stat = path.stat()
    array = np.load(path, mmap_mode="r")
    crc = [zlib.crc32(np.ascontiguousarray(array[span])) for span in spans]
    with open(path, "rb") as handle:  # the .npy header too: the same bytes under another dtype or shape are not
        header = zlib.crc32(handle.read(array.offset))  # the same values
    return {"format": CACHE_FORMAT, "file": path.name, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
            "header_crc32": header, "episode_crc32": crc}


def _manifest_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def write_manifest(path: Path, spans: list[slice]) -> None:
    """Record `path` as a complete cache file (call after it was renamed into place)."""
    manifest = file_manifest(path, spans)
    write_atomically(_manifest_path(path), lambda temporary: temporary.write_text(json.dumps(manifest)))


def verified(path: Path, spans: list[slice], say: bool = True) -> bool:
    """Whether `path` is a complete cache file, unchanged since its manifest was written; a file whose bytes
    changed since (its episodes' checksums differ) is said so on stderr (unless not `say`: a check made
    again), and the caller builds it again."""
    try:
        if not path.is_file() or not _manifest_path(path).is_file():  # (a pipe there would block the read)
            return False
        # Manifests written before they named their file are taken as this file's.
        written = {"file": path.name, **json.loads(_manifest_path(path).read_text())}
        stat = path.stat()
        if (written.get("format"), written.get("size"), written.get("mtime_ns")) != (CACHE_FORMAT, stat.st_size,
                                                                                    stat.st_mtime_ns):
            return False  # stale or rewritten: no need to read it to know
        now = file_manifest(path, spans)
    except (OSError, ValueError, AttributeError, TypeError):  # (TypeError: a manifest that is not a JSON object)
        return False
    if written == now:
        return True
    recorded = written.get("episode_crc32")
    if say and written.get("file") != path.name:  # another feature's file and manifest moved here together
        print(f"cache file {path}: its manifest is {written.get('file')!r}'s: building it again", file=sys.stderr)
    elif say and isinstance(recorded, list) and len(recorded) == len(spans):
        changed = [i for i, (a, b) in enumerate(zip(recorded, now["episode_crc32"])) if a != b]
        if written.get("header_crc32") != now["header_crc32"]:
            print(f"cache file {path}: its header (dtype, shape) changed since it was written: building it again",
                  file=sys.stderr)
        elif changed:
            print(f"cache file {path}: episodes {changed[:10]}{' ...' if len(changed) > 10 else ''} changed since it "
                  f"was written (their checksums differ): building it again", file=sys.stderr)
    return False


def check_decoded(store: EpisodeStore, episode: int, key: str, values: np.ndarray) -> None:
    """Refuse values training must not read: NaN/inf in any numeric feature it reads (actions, states, the
    end-effector's pixel LLARVA learns to predict, ...), depth that is not metres, intrinsics that are no
    camera matrix."""
    where = f"{store.root} episode {episode} feature {store.source_of(key)!r}"
    if key not in (F.DEPTH, F.INTRINSICS) and np.asarray(values).dtype.kind == "f":
        bad = np.argwhere(~np.isfinite(values))
        if len(bad):
            more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
            raise DatasetError(f"{where}: non-finite value at frame {bad[0][0]}{more}")
        huge = np.argwhere(np.abs(values) > F.MAX_MAGNITUDE)
        if len(huge):
            value = np.asarray(values)[tuple(huge[0])]
            raise DatasetError(f"{where}: value {value:.3g} at frame {huge[0][0]} is beyond +-{F.MAX_MAGNITUDE:g} "
                               f"(no robot's; damage?)")
    elif key == F.DEPTH:
        geometry.check_metric_depth(values, where)
    elif key == F.INTRINSICS:  # one camera has few distinct matrices: each is checked once
        flat = np.asarray(values, dtype=np.float64).reshape(len(values), -1)
        distinct, first = np.unique(flat, axis=0, return_index=True)
        for matrix, frame in zip(distinct, first):
            geometry.check_intrinsics(matrix.reshape(3, 3), f"{where} frame {frame}")


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def _temporary_file(directory: Path, name: str) -> Path:
    """A new, unique file beside where `name` will be renamed to (unique across processes and hosts)."""
    handle, path = tempfile.mkstemp(dir=directory, prefix=f"{name}.tmp-")
    os.close(handle)
    return Path(path)


def reserved_memmap(path: Path, dtype: np.dtype, shape: tuple[int, ...]) -> np.memmap:
    """`np.lib.format.open_memmap(path, "w+")` with its disk space reserved before anything is written: a full
    disk is a one-line error here, never a Bus error later when a page of the map cannot be backed."""
    array = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
    size = path.stat().st_size
    if hasattr(os, "posix_fallocate"):  # not on every system; elsewhere the map stays sparse
        try:
            with open(path, "r+b") as handle:
                os.posix_fallocate(handle.fileno(), 0, size)
        except OSError as error:
            if error.errno not in (errno.ENOSPC, errno.EDQUOT):
                return array  # a file system that cannot reserve space (the map stays sparse)
            del array
            free = shutil.disk_usage(path.parent).free
            raise OSError(f"cannot make the cache file {path} ({error.strerror}): it needs {size / 2**20:.0f} MiB, "
                          f"{free / 2**20:.0f} MiB are free there (--cache_dir puts the caches elsewhere)") from None
    return array


class DecodedCache:
    """Frame-major arrays of a dataset's features over all episodes, plus where each episode starts."""

    def __init__(self, store: EpisodeStore, progress: bool = True, cache_dir: str = ""):
        """`cache_dir`: the cache folder (see `cache_root`)."""
        self.store = store
        self.progress = progress
        lengths = store.episodes["length"].to_numpy(dtype=np.int64)
        self.episode_lengths = lengths
        self.episode_starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        self.dataset_directory = cache_root(cache_dir) / f"{store.root.resolve().name}-{dataset_fingerprint(store)}"
        self.directory = self.dataset_directory / "decoded"
        self.arrays: dict[str, np.ndarray] = {}  # feature -> (N, ...) read-only memory map, once decoded

    def __len__(self) -> int:
        return int(self.episode_lengths.sum())

    @property
    def spans(self) -> list[slice]:
        """Every episode's rows, in order (what the cache files' checksums cover)."""
        return [self.episode_slice(episode) for episode in range(len(self.episode_lengths))]

    def episode_slice(self, episode: int) -> slice:
        start = int(self.episode_starts[episode])
        return slice(start, start + int(self.episode_lengths[episode]))

    def require(self, keys: list[str]) -> dict[str, np.ndarray]:
        """The arrays of `keys`, decoding in one pass over the episodes those not decoded yet."""
        unknown = sorted(set(keys) - set(self.store.features))
        if unknown:
            raise KeyError(f"{self.store.root}: unknown features {unknown}; the dataset has {sorted(self.store.features)}")
        if not self.store.num_episodes:
            raise ValueError(f"dataset {self.store.root} has no episodes")
        missing = [key for key in keys if key not in self.arrays and not verified(self._file(key), self.spans)]
        if missing:
            self._decode(missing)
        for key in keys:
            if key not in self.arrays:
                array = np.load(self._file(key), mmap_mode="r")
                # A one-value action or state is a vector (N, 1); caches made before the store read it so hold (N,).
                self.arrays[key] = array.reshape(-1, 1) if key in (F.ACTION, F.STATE) and array.ndim == 1 else array
        return {key: self.arrays[key] for key in keys}

    def _file(self, key: str) -> Path:
        return self.directory / f"{self.store.source_of(key)}.npy"

    def _decode(self, keys: list[str]) -> None:
        made = [folder for folder in (self.directory, self.dataset_directory) if not folder.exists()]
        self.directory.mkdir(parents=True, exist_ok=True)
        temporary: dict[str, Path] = {}
        try:
            first = self.store.frame(0, 0, keys)
            temporary = {key: _temporary_file(self.directory, self._file(key).name) for key in keys}
            arrays = {key: reserved_memmap(temporary[key], np.asarray(first[key]).dtype,
                                           (len(self), *np.shape(first[key]))) for key in keys}
            for episode in tqdm(range(self.store.num_episodes), desc="decode cache", unit="ep",
                                disable=not self.progress):
                frames = self.store.episode(episode, keys)
                for key in keys:
                    check_decoded(self.store, episode, key, frames[key])
                    arrays[key][self.episode_slice(episode)] = frames[key]
            for key, array in arrays.items():
                array.flush()
                os.replace(temporary[key], self._file(key))
                write_manifest(self._file(key), self.spans)
        finally:  # an error (or Ctrl-C) leaves no half-written file behind, nor the folders made for it if empty
            for path in temporary.values():
                path.unlink(missing_ok=True)
            for folder in made:
                with contextlib.suppress(OSError):  # not empty: another key's finished file is kept
                    folder.rmdir()


class DerivedCache:
    """Per-frame arrays made by `step(frame)` along every episode (after `reset()` at each episode start).

    `frame` holds the decoded features `inputs` of one frame; `step` returns the arrays `outputs` for it,
    with the same shapes at every frame.
    """

    def __init__(self, decoded: DecodedCache, name: str, inputs: list[str], outputs: list[str],
                 reset: Callable[[], None], step: FrameStep):
        self.decoded = decoded
        sources = _short_hash(",".join(decoded.store.source_of(key) for key in inputs))
        self.directory = decoded.dataset_directory / f"{name}-{sources}"
        if not self._complete(outputs):
            self._build(inputs, outputs, reset, step)
        self.arrays = {key: np.load(self.directory / f"{key}.npy", mmap_mode="r") for key in outputs}

    def _complete(self, outputs: list[str], say: bool = True) -> bool:
        return all(verified(self.directory / f"{key}.npy", self.decoded.spans, say) for key in outputs)

    def _build(self, inputs: list[str], outputs: list[str], reset: Callable[[], None], step: FrameStep) -> None:
        sources = self.decoded.require(inputs)
        self.directory.parent.mkdir(parents=True, exist_ok=True)
        building = Path(tempfile.mkdtemp(dir=self.directory.parent, prefix=f"{self.directory.name}.tmp-"))
        try:
            out: dict[str, np.memmap] = {}
            for episode in tqdm(range(len(self.decoded.episode_lengths)), unit="ep", disable=not self.decoded.progress,
                                desc=f"{self.directory.name.split('-')[0]} cache"):
                reset()
                span = self.decoded.episode_slice(episode)
                for index in range(span.start, span.stop):
                    made = step({key: array[index] for key, array in sources.items()})
                    if sorted(made) != sorted(outputs):
                        raise ValueError(f"{self.directory.name}: a frame gave {sorted(made)}, expected {sorted(outputs)}")
                    for key, value in made.items():
                        if key not in out:
                            value = np.asarray(value)
                            out[key] = reserved_memmap(building / f"{key}.npy", value.dtype,
                                                       (len(self.decoded), *value.shape))
                        out[key][index] = value
            for key, memmap in out.items():
                memmap.flush()
                write_manifest(building / f"{key}.npy", self.decoded.spans)  # renaming the folder keeps each file's size and mtime
            if self._complete(outputs, say=False):  # (a damaged one was said when this build began)
                return  # another process finished the same cache meanwhile: its files are the same
            shutil.rmtree(self.directory, ignore_errors=True)  # an incomplete one (a kill, an older version)
            try:
                os.replace(building, self.directory)
            except OSError:
                if not self._complete(outputs, say=False):  # only losing the race to another process is not an error
                    raise
        finally:
            shutil.rmtree(building, ignore_errors=True)
