"""Damaged video without frame checksums: which damage the decoder's own error detection catches, per codec.

    python benchmarks/bench_video_damage.py [--trials 40] [--frames 80]

A LeRobot dataset carries no checksum of its frames (ours store one per episode, and one downloaded from
the Hub has the Hub's SHA-256 of each file: both catch every change). Reading a video with neither,
stvla relies on FFmpeg's error detection (`err_detect` crccheck+bitstream+buffer+explode, one decoding
thread, and frames the decoder marks corrupt), so that a packet the decoder finds malformed raises
instead of being concealed with guessed pixels. This measures how much of the damage that catches.

Frames: one expert episode of pick-place-v3 (128 px RGB and metric depth, the first `--frames` steps).
Streams, as the writers that make them: h264 yuv420p crf 18 (LeRobot's h264 option), lossless RGB h264
(stvla's default), HEVC yuv420p crf 28, AV1 yuv420p (libsvtav1 crf 30, LeRobot's default codec) and
LeRobot's depth stream (12-bit codes, lossless HEVC gray12le). Damage, `--trials` times per stream at
offsets drawn from the stream's payload (the mp4's mdat box): 64 random bytes written over it, one bit
flipped, a 4 KiB block of zeros.

Each damaged file is read twice: by a plain PyAV decode (FFmpeg's defaults: errors concealed) and by
stvla's `read_video` with the expected frame count (as training reads an episode). Outcomes: "harmless"
(the frames decode to exactly the undamaged ones), "caught" (an error), "silent" (different frames, no
error). Writes benchmarks/results/video_damage.json and the "Video damage" section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import struct
import sys
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import av  # noqa: E402
import numpy as np  # noqa: E402
from common import record, run  # noqa: E402

from stvla import features as F  # noqa: E402
from stvla.data.collect import run_expert_episode  # noqa: E402
from stvla.data.video import (  # noqa: E402
    DepthQuantization, VideoSettings, read_video, write_depth_video, write_video,
)
from stvla.envs import make_env  # noqa: E402

FPS = 30
os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints its configuration at info level otherwise
DEPTH = DepthQuantization(depth_max=4.0)
STREAMS = {  # name -> the settings the writer uses (None: LeRobot's depth stream)
    "h264 yuv420p crf 18": VideoSettings(codec="libx264", pix_fmt="yuv420p", crf=18),
    "h264 rgb lossless (stvla)": VideoSettings(),
    "HEVC yuv420p crf 28": VideoSettings(codec="libx265", pix_fmt="yuv420p", crf=28),
    "AV1 yuv420p crf 30 (LeRobot)": VideoSettings(codec="libsvtav1", pix_fmt="yuv420p", crf=30),
    "HEVC gray12le depth (LeRobot)": None,
}


def random_bytes(data: bytearray, offset: int, rng: np.random.Generator) -> None:
    data[offset:offset + 64] = rng.integers(0, 256, 64, dtype=np.uint8).tobytes()[:len(data) - offset]


def bit_flip(data: bytearray, offset: int, rng: np.random.Generator) -> None:
    data[offset] ^= 1 << int(rng.integers(8))


def zero_block(data: bytearray, offset: int, rng: np.random.Generator) -> None:
    data[offset:offset + 4096] = bytes(min(4096, len(data) - offset))


DAMAGES: dict[str, Callable[[bytearray, int, np.random.Generator], None]] = {
    "64 random bytes": random_bytes, "one bit flipped": bit_flip, "4 KiB zeroed": zero_block,
}


def payload_span(data: bytes) -> tuple[int, int]:
    """[start, end) of the mdat box's payload: the coded frames, where damage reaches the decoder."""
    offset = 0
    while offset + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[offset:offset + 8])
        header = 8
        if size == 1:
            size, header = struct.unpack(">Q", data[offset + 8:offset + 16])[0], 16
        if kind == b"mdat":
            return offset + header, offset + size
        if size < header:
            break
        offset += size
    raise ValueError("no mdat box in the video")


def plain_decode(path: Path, depth: bool) -> np.ndarray:
    """FFmpeg's defaults, as a reader that does not ask for error detection decodes."""
    with av.open(str(path)) as container:
        frames = [frame.to_ndarray() if depth else frame.to_ndarray(format="rgb24")
                  for frame in container.decode(video=0)]
    return np.stack(frames) if frames else np.zeros((0,))


def outcome(read: Callable[[], np.ndarray], truth: np.ndarray) -> str:
    try:
        frames = read()
    except (ValueError, av.error.FFmpegError):
        return "caught"
    return "harmless" if frames.shape == truth.shape and np.array_equal(frames, truth) else "silent"


def measure_stream(name: str, settings: VideoSettings | None, episode: dict, trials: int, work: Path,
                   rng: np.random.Generator) -> dict:
    is_depth = settings is None
    path = work / "clean.mp4"
    if is_depth:
        write_depth_video(path, episode[F.DEPTH], FPS, DEPTH)
    else:
        write_video(path, episode[F.RGB], FPS, settings)
    frames = len(episode[F.RGB])
    clean = path.read_bytes()
    start, end = payload_span(clean)
    truth_plain = plain_decode(path, is_depth)
    truth_ours = read_video(path, expected_frames=frames, depth=DEPTH if is_depth else None)
    result = {"bytes": len(clean)}
    for damage_name, damage in DAMAGES.items():
        counts = {"plain PyAV": Counter(), "stvla": Counter()}
        for _ in range(trials):
            data = bytearray(clean)
            damage(data, int(rng.integers(start, end)), rng)
            damaged = work / "damaged.mp4"
            damaged.write_bytes(bytes(data))
            counts["plain PyAV"][outcome(lambda: plain_decode(damaged, is_depth), truth_plain)] += 1
            counts["stvla"][outcome(lambda: read_video(damaged, expected_frames=frames,
                                                       depth=DEPTH if is_depth else None), truth_ours)] += 1
        result[damage_name] = {reader: dict(count) for reader, count in counts.items()}
        print(f"{name:32s} {damage_name:16s} " + "  ".join(
            f"{reader}: {dict(count)}" for reader, count in counts.items()), flush=True)
    return result


def share(counts: dict, key: str) -> str:
    harmful = counts.get("caught", 0) + counts.get("silent", 0)
    return f"{counts.get(key, 0)}/{harmful}" if harmful else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=40, help="damaged files per stream and kind of damage")
    parser.add_argument("--frames", type=int, default=80, help="frames of the expert episode encoded")
    parser.add_argument("--seed", type=int, default=0, help="seeds the episode and the damage")
    args = parser.parse_args()
    env = make_env("pick-place-v3", image_size=128)
    episode = run_expert_episode(env, seed=args.seed).frames
    env.close()
    episode = {key: values[:args.frames] for key, values in episode.items()}
    rng = np.random.default_rng(args.seed)
    results = {}
    with tempfile.TemporaryDirectory() as work:
        for name, settings in STREAMS.items():
            results[name] = measure_stream(name, settings, episode, args.trials, Path(work), rng)

    rows = [("Frames, trials", f"{len(episode[F.RGB])} frames of pick-place-v3 at 128 px; {args.trials} damaged files "
             f"per stream and kind of damage, offsets drawn from the coded frames")]
    table = ["| stream | damage | harmful | caught, plain PyAV | caught, stvla | silent, stvla |",
             "|---|---|---:|---:|---:|---:|"]
    for name, by_damage in results.items():
        for damage_name in DAMAGES:
            plain, ours = by_damage[damage_name]["plain PyAV"], by_damage[damage_name]["stvla"]
            harmful = ours.get("caught", 0) + ours.get("silent", 0)
            table.append(f"| {name} | {damage_name} | {harmful}/{args.trials} | {share(plain, 'caught')} | "
                         f"{share(ours, 'caught')} | {share(ours, 'silent')} |")
    totals = Counter()
    for by_damage in results.values():
        for damage_name in DAMAGES:
            for reader, counts in by_damage[damage_name].items():
                for key, count in counts.items():
                    totals[(reader, key)] += count
    for reader in ("plain PyAV", "stvla"):
        harmful = totals[(reader, "caught")] + totals[(reader, "silent")]
        rows.append((f"Harmful damage caught, {reader}", f"{totals[(reader, 'caught')]}/{harmful}"))
    table.append("")
    table.append("\"harmful\": the damaged file does not decode to the undamaged frames (stvla's reader; the rest "
                 "decode identically). A share is of the harmful files. Files with our frame checksums "
                 "(written by `stvla collect` and `stvla depth`) or the Hub's SHA-256 (downloaded from the Hub) "
                 "are caught whatever the damage; this is the case of files with neither.")
    record("video_damage", {"trials": args.trials, "frames": len(episode[F.RGB]), "results": results}, rows,
           title="Video damage: what the decoder's error detection catches without frame checksums (issue 46)",
           markdown=["\n".join(table)])


if __name__ == "__main__":
    run(main)
