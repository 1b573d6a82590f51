"""Peak memory while training, against DESIGN's 4 GiB: the two largest trainings of the benchmark, stage-1
pre-training of the SpatialVLA-style base on MT10 and LLARVA's instruction pre-training on every task.

    python benchmarks/bench_memory.py [--steps 60] [--bench runs/bench]

Each training runs `--steps` optimiser steps in its own process on the datasets `stvla bench` collected
under `--bench`/data (a full run is longer; its private memory is set by the model, batch and
optimiser, which the first steps already hold). Training reads its frames through memory-mapped caches: resident memory (RSS) counts the
pages of those files that are in the page cache, which the kernel can drop and re-read at any time, so
the figure that must fit is the private memory (what the process itself allocated); both are reported,
sampled every 0.2 s from /proc. The datasets' decoded-frame caches (memory-mapped .npy files) are those the
benchmark already built: the first training on a dataset, which builds them, is not what is measured.
Writes benchmarks/results/memory.json and BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import record, run

GIB = 2**30
TRAININGS = {  # name -> (policy, dataset folder under <bench>/data, what it is)
    "stage1": ("spatialvla", "pretrain-mt10", "stage-1 pre-training (spatialvla, every weight, MT10 x 50 episodes)"),
    "llarva": ("llarva", "llarva-pretrain-all", "LLARVA instruction pre-training (every weight, 50 tasks x 10 episodes)"),
}


def memory_of(pid: int) -> tuple[float, float]:
    """(resident, private) bytes of process `pid` now, from /proc/<pid>/smaps_rollup. Private is the
    anonymous memory (and its swap): Private_Clean would also count file pages only this process maps."""
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, value, *_ = line.split()
        fields[name.rstrip(":")] = int(value) * 1024
    return fields["Rss"], fields["Anonymous"] + fields.get("Swap", 0)


def peak_memory(command: list[str]) -> dict:
    """Run `command`, sampling its memory until it exits; its peaks and wall time."""
    started = time.perf_counter()
    process = subprocess.Popen(command)
    peaks = [0.0, 0.0]

    def sample() -> None:
        while process.poll() is None:
            try:
                rss, private = memory_of(process.pid)
            except (FileNotFoundError, ProcessLookupError, KeyError):
                break
            peaks[0], peaks[1] = max(peaks[0], rss), max(peaks[1], private)
            time.sleep(0.2)

    sampler = threading.Thread(target=sample)
    sampler.start()
    code = process.wait()
    sampler.join()
    if code != 0:
        raise SystemExit(f"{' '.join(command)} exited with {code}")
    return {"peak_rss_gib": round(peaks[0] / GIB, 2), "peak_private_gib": round(peaks[1] / GIB, 2),
            "minutes": round((time.perf_counter() - started) / 60, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=60, help="optimiser steps of each training")
    parser.add_argument("--bench", default="runs/bench", help="the `stvla bench` output holding data/")
    args = parser.parse_args()
    stvla = str(Path(sys.executable).with_name("stvla"))
    figures, rows = {}, []
    for name, (policy, folder, label) in TRAININGS.items():
        dataset = Path(args.bench) / "data" / folder
        if not (dataset / "meta" / "info.json").is_file():
            raise SystemExit(f"{dataset} is not a dataset: run `stvla bench` first (it collects {folder})")
        with tempfile.TemporaryDirectory() as out:
            result = peak_memory([stvla, "train", "--policy", policy, "--dataset", str(dataset), "--out", out,
                                  "--steps", str(args.steps), "--save_every", str(10 * args.steps)])
        figures[name] = {**result, "steps": args.steps, "dataset": str(dataset)}
        rows.append((f"{label}: peak private / resident memory, GiB",
                     f"{result['peak_private_gib']} / {result['peak_rss_gib']} ({args.steps} steps)"))
        print(*rows[-1], sep=": ")
    record("memory", figures, rows, "Peak memory while training (issue 5)")


if __name__ == "__main__":
    run(main)
