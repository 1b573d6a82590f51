"""Reading datasets: a packed dataset (LeRobot's layout, many episodes per file) against stvla's
one-episode-per-file layout through the training path, and what each depth format costs.

    python benchmarks/bench_data.py [--episodes 10] [--work runs/bench-data]

Collects `--episodes` expert episodes of reach-v3 and pick-place-v3 at 128 px once per depth format
(video: LeRobot's 12-bit depth video, the default; image: LeRobot depth as float32 TIFF; float: the
earlier float32 column), rewrites the default one with 10 episodes per file (`stvla.data.store.pack`), and times
the training path's first read of each (the decoded cache of RGB, depth, state and action, built into a
fresh cache folder: what the first training on a dataset pays). Depth error is against the exact float
column. Writes benchmarks/results/data.json and BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import record, run  # noqa: E402

from stvla import features as F  # noqa: E402
from stvla.data import CollectConfig, collect  # noqa: E402
from stvla.data.cache import DecodedCache  # noqa: E402
from stvla.data.roles import DataConfig  # noqa: E402
from stvla.data.store import EpisodeStore, pack  # noqa: E402

KEYS = [F.RGB, F.DEPTH, F.STATE, F.ACTION]


def dataset_bytes(root: Path, part: str) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and part in str(p.relative_to(root)))


def read_rate(root: Path, cache: Path) -> tuple[float, float]:
    """Frames per second of the first read through the training path, and the seconds it took."""
    shutil.rmtree(cache, ignore_errors=True)
    store = EpisodeStore(root, DataConfig())
    started = time.perf_counter()
    DecodedCache(store, progress=False, cache_dir=str(cache)).require(KEYS)
    seconds = time.perf_counter() - started
    return store.num_frames / seconds, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=10, help="episodes per task (two tasks)")
    parser.add_argument("--work", default="runs/bench-data", help="directory for the datasets and caches")
    args = parser.parse_args()
    work = Path(args.work)
    datasets = {}
    for depth_format in ("video", "image", "float"):
        out = work / depth_format
        collect(CollectConfig(task="reach-v3,pick-place-v3", episodes=args.episodes, out=str(out), resume=True,
                              depth_format=depth_format, workers=2), progress=False)
        datasets[depth_format] = out
    packed = work / "packed"
    shutil.rmtree(packed, ignore_errors=True)
    pack(datasets["video"], packed, episodes_per_file=10)

    exact = EpisodeStore(datasets["float"])
    truth = np.concatenate([exact.episode(e, [F.DEPTH])[F.DEPTH] for e in range(exact.num_episodes)])
    frames = exact.num_frames
    figures: dict = {"frames": frames, "episodes": exact.num_episodes, "formats": {}}
    rows = []
    for depth_format, root in datasets.items():
        store = EpisodeStore(root)
        depth = np.concatenate([store.episode(e, [F.DEPTH])[F.DEPTH] for e in range(store.num_episodes)])
        error = np.abs(depth - truth)
        part = "observation.depth/" if depth_format == "video" else "data/"
        size = dataset_bytes(root, part) / frames / 1024
        rate, _ = read_rate(root, work / "cache")
        figures["formats"][depth_format] = {"depth_kib_per_frame": size, "max_error_mm": float(error.max() * 1000),
                                            "mean_error_mm": float(error.mean() * 1000), "frames_per_s": rate}
        where = "its video files" if depth_format == "video" else "the data files (with state, action, ...)"
        rows += [(f"depth as {depth_format}: KiB per frame ({where})", f"{size:.1f}"),
                 (f"depth as {depth_format}: error against float32, max / mean (mm)",
                  f"{error.max() * 1000:.3f} / {error.mean() * 1000:.3f}"),
                 (f"depth as {depth_format}: first read through the training path (frames/s)", f"{rate:.0f}")]
    rate, seconds = read_rate(packed, work / "cache")
    figures["packed_frames_per_s"] = rate
    rows.append(("depth as video, packed 10 episodes per file: first read through the training path (frames/s)",
                 f"{rate:.0f}"))
    record("data", figures, rows, f"Reading datasets ({frames} frames, reach-v3 + pick-place-v3 at 128 px, "
                                  f"{exact.num_episodes} episodes)")


if __name__ == "__main__":
    run(main)
