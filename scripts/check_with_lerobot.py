"""Read a dataset stvla wrote with LeRobot's own reader, and compare with what stvla reads.

    python scripts/check_with_lerobot.py --dump DATASET ours.npz              # with stvla's Python
    LEROBOT_PYTHON scripts/check_with_lerobot.py DATASET ours.npz             # with a Python that has lerobot

The second call needs `lerobot` (0.6.1 was checked; it wants Python >= 3.12 and torchvision) and prints
whether LeRobot lists the depth among its depth keys, and how far its depth (metres) and RGB are from
stvla's. Not part of the tests: LeRobot is not a dependency of stvla.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

DEPTH, RGB = "observation.depth", "observation.images.rgb"


def dump(dataset: str, out: str) -> None:
    from stvla.data.store import EpisodeStore

    store = EpisodeStore(dataset)
    episodes = [store.episode(e, [RGB, DEPTH]) for e in range(store.num_episodes)]
    np.savez(out, rgb=np.concatenate([e[RGB] for e in episodes]), depth=np.concatenate([e[DEPTH] for e in episodes]))


def check(dataset: str, ours_path: str) -> dict:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    from lerobot.datasets.lerobot_dataset import LeRobotDataset, LeRobotDatasetMetadata

    ours = np.load(ours_path)
    meta = LeRobotDatasetMetadata("local/stvla", root=dataset)
    data = LeRobotDataset("local/stvla", root=dataset, depth_output_unit="m", video_backend="pyav")
    depth = np.stack([np.asarray(data[i][DEPTH]).reshape(ours["depth"].shape[1:]) for i in range(len(data))])
    rgb = np.stack([np.asarray(data[i][RGB]) for i in range(len(data))])  # (3, H, W) floats in [0, 1]
    rgb = np.rint(rgb.transpose(0, 2, 3, 1) * 255).astype(int)
    return {"depth_keys": list(meta.depth_keys), "depth_listed": DEPTH in meta.depth_keys, "frames": len(data),
            "depth_max_diff_mm": float(np.abs(depth - ours["depth"]).max() * 1000),
            "rgb_max_diff": int(np.abs(rgb - ours["rgb"]).max())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", help="dataset directory written by stvla")
    parser.add_argument("ours", help="the .npz of stvla's reading (written by --dump)")
    parser.add_argument("--dump", action="store_true", help="write stvla's reading of the dataset to OURS")
    args = parser.parse_args()
    if args.dump:
        dump(args.dataset, args.ours)
    else:
        print(json.dumps(check(args.dataset, args.ours), indent=2))
    sys.exit(0)


if __name__ == "__main__":
    main()
