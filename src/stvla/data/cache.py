"""Decoded training cache: every frame of a dataset decoded once into memory-mapped .npy arrays.

Training reads random frames many times per epoch; decoding mp4 each time would dominate the cost.
The cache lives in `<dataset>/cache/decoded-<fingerprint>/`, where the fingerprint covers the
episode table and the requested keys, so a dataset that grows (a resumed collection) gets a fresh
cache. A `complete` marker is written last: a build that was killed is rebuilt, never half-used.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
from tqdm import tqdm

from stvla.data.store import EPISODES_META_PATH, EpisodeStore


class DecodedCache:
    """Frame-major arrays for `keys` over all episodes, plus where each episode starts."""

    def __init__(self, root: str | Path, keys: list[str], progress: bool = True):
        self.store = EpisodeStore(root)
        unknown = sorted(set(keys) - set(self.store.features))
        if unknown:
            raise KeyError(f"{root}: unknown features {unknown}; the dataset has {sorted(self.store.features)}")
        self.keys = list(keys)
        lengths = self.store.episodes["length"].to_numpy(dtype=np.int64)
        self.episode_lengths = lengths
        self.episode_starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        self.directory = Path(root) / "cache" / f"decoded-{self._fingerprint()}"
        if not (self.directory / "complete").exists():
            self._build(progress)
        self.arrays = {key: np.load(self.directory / f"{key}.npy", mmap_mode="r") for key in self.keys}

    def __len__(self) -> int:
        return int(self.episode_lengths.sum())

    def episode_slice(self, episode: int) -> slice:
        start = int(self.episode_starts[episode])
        return slice(start, start + int(self.episode_lengths[episode]))

    def _fingerprint(self) -> str:
        digest = hashlib.sha256((self.store.root / EPISODES_META_PATH).read_bytes())
        digest.update(json.dumps(self.keys).encode())
        return digest.hexdigest()[:16]

    def _build(self, progress: bool) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)
        self.directory.mkdir(parents=True)
        total = len(self)
        first = self.store.frame(0, 0, self.keys) if self.store.num_episodes else {}
        arrays = {
            key: np.lib.format.open_memmap(self.directory / f"{key}.npy", mode="w+",
                                           dtype=np.asarray(first[key]).dtype,
                                           shape=(total, *np.shape(first[key])))
            for key in self.keys
        }
        for episode in tqdm(range(self.store.num_episodes), desc="decode cache", unit="ep", disable=not progress):
            frames = self.store.episode(episode, self.keys)
            for key in self.keys:
                arrays[key][self.episode_slice(episode)] = frames[key]
        for array in arrays.values():
            array.flush()
        (self.directory / "complete").write_text("ok\n")
