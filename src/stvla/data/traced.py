"""Traced inputs for training: the online tracer run along every recorded episode, once per setting.

Training must see what control sees, so the traced depth (and TraceVLA's traced RGB) of every
frame comes from the same `OnlineTracer` a policy runs in closed loop, stepped through each episode
from its first frame. Results are cached as memory-mapped arrays in
`<dataset>/cache/traced-<trace settings hash>-<dataset fingerprint>/` and never recomputed per epoch.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
from tqdm import tqdm

from stvla.data.cache import DecodedCache
from stvla.data.collect import DEPTH_KEY, RGB_KEY
from stvla.data.store import EPISODES_META_PATH
from stvla.traces import OnlineTracer, TraceConfig

INTRINSICS_KEY = "observation.camera.intrinsics"


class TracedCache:
    """`traced_depth` (N, H, W) float32, `has_traces` (N,) bool, and with `with_rgb` `traced_rgb` (N, H, W, 3)."""

    def __init__(self, root: str | Path, trace_config: TraceConfig, with_rgb: bool = False, progress: bool = True):
        self.decoded = DecodedCache(root, [RGB_KEY, DEPTH_KEY, INTRINSICS_KEY], progress=progress)
        self.config = trace_config
        self.with_rgb = with_rgb
        fingerprint = hashlib.sha256((Path(root) / EPISODES_META_PATH).read_bytes()).hexdigest()[:12]
        suffix = "-rgb" if with_rgb else ""
        self.directory = Path(root) / "cache" / f"traced-{trace_config.cache_key()}-{fingerprint}{suffix}"
        if not (self.directory / "complete").exists():
            self._build(progress)
        names = ["traced_depth", "has_traces"] + (["traced_rgb"] if with_rgb else [])
        self.arrays = {name: np.load(self.directory / f"{name}.npy", mmap_mode="r") for name in names}

    def _build(self, progress: bool) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)
        self.directory.mkdir(parents=True)
        rgb, depth = self.decoded.arrays[RGB_KEY], self.decoded.arrays[DEPTH_KEY]
        intrinsics = self.decoded.arrays[INTRINSICS_KEY]
        total = len(self.decoded)

        def array(name: str, like: np.ndarray, dtype) -> np.memmap:
            return np.lib.format.open_memmap(self.directory / f"{name}.npy", mode="w+", dtype=dtype,
                                             shape=(total, *like.shape[1:]))

        out = {"traced_depth": array("traced_depth", depth, np.float32),
               "has_traces": array("has_traces", np.zeros((total,)), np.bool_)}
        if self.with_rgb:
            out["traced_rgb"] = array("traced_rgb", rgb, np.uint8)
        tracer = OnlineTracer(self.config)
        episodes = range(len(self.decoded.episode_lengths))
        for episode in tqdm(episodes, desc="trace cache", unit="ep", disable=not progress):
            tracer.reset()
            span = self.decoded.episode_slice(episode)
            for index in range(span.start, span.stop):
                step = tracer.step(rgb[index], depth[index], intrinsics=intrinsics[index])
                out["traced_depth"][index] = step.traced_depth
                out["has_traces"][index] = len(step.traces) > 0
                if self.with_rgb:
                    out["traced_rgb"][index] = step.traced_rgb if step.traces else rgb[index]
        for memmap in out.values():
            memmap.flush()
        (self.directory / "complete").write_text("ok\n")
