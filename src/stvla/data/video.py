"""Encode and decode videos (mp4) with PyAV, as LeRobot's own writer and reader do: RGB streams (h264,
AV1, HEVC, whatever the installed FFmpeg decodes), and LeRobot 0.6's depth streams (12-bit log-quantised
codes in a `gray12le` HEVC stream), decoded to float32 metres.

LeRobot packs many episodes into one video file; an episode is the frames whose timestamps lie in its
[from_timestamp, to_timestamp) span (meta/episodes), which `read_video` decodes after seeking there."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from stvla.files import naming_the_file

DEPTH_CODE_MAX = (1 << 12) - 1  # LeRobot's depth streams hold 12-bit codes

# FFmpeg's error detection, on for every read: a packet the decoder finds malformed (a bitstream syntax
# error, a buffer overrun, a failed CRC where the codec carries one) raises instead of being concealed
# with guessed pixels. It catches only part of the damage a file can suffer (BENCHMARKS.md "Video
# damage"): the frame checksums our writer stores are what catches the rest.
DECODER_ERROR_DETECTION = {"err_detect": "crccheck+bitstream+buffer+explode"}


@dataclass(frozen=True)
class VideoSettings:
    """Lossless RGB h264 by default: training then sees exactly the pixels the simulator rendered,
    as closed-loop evaluation does (yuv420p at crf 18 is ~10x smaller but off by ~3.5 grey levels on
    average and up to 25 at edges on Meta-World frames). Pass codec="libx264", pix_fmt="yuv420p",
    crf=18 for LeRobot's usual lossy streams."""

    codec: str = "libx264rgb"  # ffmpeg encoder; h264 streams are decoded everywhere (LeRobot, players)
    pix_fmt: str = "rgb24"  # pixel format of the stream
    crf: int = 0  # constant rate factor: 0 is lossless, higher is smaller and lossier
    gop: int = 2  # keyframe interval; small so that any frame decodes quickly (LeRobot uses 2)

    @property
    def codec_name(self) -> str:
        """The stream's codec as LeRobot's info.json names it."""
        return "h264" if "264" in self.codec else self.codec.removeprefix("lib")


@dataclass(frozen=True)
class DepthQuantization:
    """How a LeRobot depth stream maps metres to 12-bit codes (the `video.*` fields of its feature info):
    code = round(4095 * (f(d) - f(min)) / (f(max) - f(min))) with f(d) = log(d + shift), or f(d) = d
    without `use_log`; decoding inverts it and clips to [min, max], as LeRobot 0.6.1 does."""

    depth_min: float = 0.01  # metres at code 0
    depth_max: float = 10.0  # metres at code 4095
    shift: float = 3.5  # metres added before the log (finer steps near the camera)
    use_log: bool = True  # log-spaced codes; linear without

    @classmethod
    def from_info(cls, info: dict, where: str) -> "DepthQuantization":
        """From a depth feature's info (LeRobot's `video.depth_min`, ...); a missing field names itself."""
        fields = {"depth_min": "video.depth_min", "depth_max": "video.depth_max", "shift": "video.shift",
                  "use_log": "video.use_log"}
        missing = [name for name in fields.values() if name not in info]
        if missing:
            raise ValueError(f"{where}: a depth video needs {missing} in its feature info (LeRobot's quantisation)")
        values = {field: info[name] for field, name in fields.items()}
        for field in ("depth_min", "depth_max", "shift"):  # a string or null would be read as some other number
            value = values[field]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{where}: {fields[field]} is {json.dumps(value)[:40]}, not a number of metres")
        if not isinstance(values["use_log"], bool):  # null or "false" would decode every depth on the wrong scale
            raise ValueError(f"{where}: video.use_log is {json.dumps(values['use_log'])[:40]}, not true or false")
        quantization = cls(float(values["depth_min"]), float(values["depth_max"]), float(values["shift"]),
                           values["use_log"])
        if not quantization.depth_max > quantization.depth_min or (
                quantization.use_log and quantization.depth_min + quantization.shift <= 0):
            raise ValueError(f"{where}: invalid depth quantisation {values}")
        return quantization

    def _bounds(self) -> tuple[float, float]:
        if self.use_log:
            return math.log(self.depth_min + self.shift), math.log(self.depth_max + self.shift)
        return self.depth_min, self.depth_max

    def encode(self, depth: np.ndarray) -> np.ndarray:
        """Metres -> uint16 codes in [0, 4095]."""
        low, high = self._bounds()
        depth = np.asarray(depth, dtype=np.float64)
        values = np.log(np.maximum(depth + self.shift, 1e-12)) if self.use_log else depth
        codes = np.rint((values - low) / (high - low) * DEPTH_CODE_MAX)
        return np.clip(np.nan_to_num(codes, nan=0.0), 0, DEPTH_CODE_MAX).astype(np.uint16)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """uint16 codes -> float32 metres."""
        low, high = self._bounds()
        values = np.asarray(codes, dtype=np.float64) / DEPTH_CODE_MAX * (high - low) + low
        depth = np.exp(values) - self.shift if self.use_log else values
        return np.clip(depth, self.depth_min, self.depth_max).astype(np.float32)


@contextlib.contextmanager
def mp4_written_atomically(path: str | Path) -> Iterator[av.container.OutputContainer]:
    """An mp4 container writing to a temporary file that becomes `path` only when complete; on failure
    nothing is left behind. A directory given as `path` is an error naming it."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a directory: give the video's file name (e.g. {path / 'episode.mp4'})")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        # PyAV's errors name no file (a folder that takes no files, a full disk): the video's path is named.
        with naming_the_file(path), av.open(str(tmp), mode="w", format="mp4") as container:
            yield container
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# Videos for people (evaluation episodes, `stvla view` and `stvla trace`): yuv420p h264, which players
# and browsers show in the right colours (they read a lossless rgb24 stream's planes as YUV).
VIEWING = VideoSettings(codec="libx264", pix_fmt="yuv420p", crf=18)


def write_video(path: str | Path, frames: np.ndarray, fps: int, settings: VideoSettings = VideoSettings()) -> None:
    """Write (T, H, W, 3) uint8 RGB frames to an mp4 file, atomically (a temporary file, then rename)."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be (T, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
    if settings.pix_fmt == "yuv420p":  # chroma at half resolution: the sides must be even (edge pixels repeated)
        frames = np.pad(frames, ((0, 0), (0, frames.shape[1] % 2), (0, frames.shape[2] % 2), (0, 0)), mode="edge")
    height, width = frames.shape[1:3]
    with mp4_written_atomically(path) as container:
        stream = container.add_stream(settings.codec, rate=fps)
        stream.width, stream.height = width, height
        stream.pix_fmt = settings.pix_fmt
        stream.options = {"crf": str(settings.crf), "g": str(settings.gop)}
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def write_depth_video(path: str | Path, depth: np.ndarray, fps: int, quantization: DepthQuantization,
                      gop: int = 2) -> None:
    """Write (T, H, W) float32 metres as LeRobot's depth stream: 12-bit codes, HEVC gray12le, lossless x265
    (the only loss is the quantisation), atomically."""
    depth = np.asarray(depth)
    if depth.ndim != 3:
        raise ValueError(f"depth frames must be (T, H, W) metres, got shape {depth.shape}")
    with mp4_written_atomically(path) as container:
        stream = container.add_stream("libx265", rate=fps)
        stream.width, stream.height = depth.shape[2], depth.shape[1]
        stream.pix_fmt = "gray12le"
        stream.options = {"x265-params": "lossless=1:log-level=error", "g": str(gop)}
        for frame in depth:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(quantization.encode(frame), format="gray12le")))
        container.mux(stream.encode())


def read_video(path: str | Path, expected_frames: int | None = None, start: float = 0.0,
               stop: float | None = None, depth: DepthQuantization | None = None,
               checksum: str | None = None) -> np.ndarray:
    """Decode the frames of a video whose timestamps lie in [start, stop) seconds (all by default): RGB
    as (T, H, W, 3) uint8, or with `depth` a LeRobot depth stream as (T, H, W) float32 metres.

    With `expected_frames`, a span that decodes to another count (a truncated or corrupt file) raises an
    error naming the file instead of returning a shorter array. With `checksum` (`frames_checksum` of the
    span when it was written), frames that decode to anything else (a damaged file: decoders conceal
    errors rather than fail) raise an error naming the file.
    """
    frames, digest = [], hashlib.sha256()
    try:
        for frame in _span_frames(Path(path), start, stop):
            if checksum is not None:
                digest.update(_native(frame))
            if depth is None:
                frames.append(frame.to_ndarray(format="rgb24"))
            elif frame.format.name != "gray12le":
                raise ValueError(f"depth video {path} holds {frame.format.name} frames, not LeRobot's gray12le")
            else:
                frames.append(depth.decode(frame.to_ndarray()))
    except (av.error.FFmpegError, IndexError) as error:
        raise ValueError(f"cannot decode video file {path}: {error}") from error
    span = f" between {start:.3f} s and {stop:.3f} s" if stop is not None else ""
    if expected_frames is not None and len(frames) != expected_frames:
        raise ValueError(f"video file {path} holds {len(frames)} frames{span}, expected {expected_frames} (truncated?)")
    if not frames:
        raise ValueError(f"video file {path} holds no frames{span}")
    if checksum is not None and digest.hexdigest() != checksum:
        raise ValueError(f"video file {path}: the frames{span} differ from those written (checksum mismatch): "
                         f"the file is damaged")
    return np.stack(frames)


def frames_checksum(path: str | Path, start: float = 0.0, stop: float | None = None) -> str:
    """SHA-256 of the decoded frames in [start, stop), in the stream's own pixel format (what the codec
    standard makes bit-exact on every decoder, unlike a conversion to RGB)."""
    digest = hashlib.sha256()
    for frame in _span_frames(Path(path), start, stop):
        digest.update(_native(frame))
    return digest.hexdigest()


def _native(frame: av.VideoFrame) -> bytes:
    return np.ascontiguousarray(frame.to_ndarray()).tobytes()


# Encoder and decoder names of each codec, for comparing a stream with the codec a dataset's info names.
CODEC_ALIASES = {"libx264": "h264", "libx264rgb": "h264", "libopenh264": "h264", "libx265": "hevc", "h265": "hevc",
                 "libsvtav1": "av1", "libaom-av1": "av1", "librav1e": "av1", "libdav1d": "av1"}


def codec_family(name: str) -> str:
    """A codec's canonical name (h264, hevc, av1, ...) from an encoder's, a decoder's or its own."""
    return CODEC_ALIASES.get(name.lower(), name.lower())


@dataclass(frozen=True)
class StreamDescription:
    """What a video file's first video stream is, as its container says."""

    codec: str  # canonical codec name (h264, hevc, av1, ...)
    rate: float | None  # frames per second, None if unsaid


def describe_stream(path: str | Path) -> StreamDescription:
    """The codec and frame rate of a video file's first video stream."""
    with _opened(Path(path)) as (_, stream):
        rate = stream.average_rate or stream.guessed_rate
        return StreamDescription(codec_family(stream.codec_context.codec.canonical_name),
                                 float(rate) if rate else None)


@contextlib.contextmanager
def _opened(path: Path) -> Iterator[tuple[av.container.InputContainer, av.video.stream.VideoStream]]:
    """`path` opened as a video container, with its first video stream. A file that is not one (truncated: an
    mp4's index, its moov box, is written last; damaged; empty) raises a ValueError naming the file and its
    size, with FFmpeg's reason at the end (FFmpeg's own message, "Invalid data found", says neither)."""
    try:
        container = av.open(str(path))
    except av.error.FFmpegError as error:
        raise ValueError(f"video file {path} ({path.stat().st_size} bytes) cannot be opened as a video container "
                         f"(damaged, truncated or not a video): {error.strerror or error}") from error
    with container:
        if not container.streams.video:
            raise ValueError(f"video file {path} holds no video stream")
        yield container, container.streams.video[0]


def _span_frames(path: Path, start: float, stop: float | None) -> Iterator[av.VideoFrame]:
    """The decoded frames of `path` whose timestamps lie in [start, stop) seconds."""
    if not path.is_file():
        raise FileNotFoundError(f"video file missing: {path}")
    with _opened(path) as (container, stream):
        stream.codec_context.options = dict(DECODER_ERROR_DETECTION)
        # One decoding thread: FFmpeg raises a slice's error only when the slice is decoded in the calling
        # thread (h264: 29 of 30 damaged files caught instead of 4). Measured no slower here: episodes are
        # decoded in parallel one level up.
        stream.thread_count = 1
        # A frame belongs to the span when its timestamp is within half a frame of it (timestamps
        # are stored as float seconds and rounded to the stream's time base).
        half = 0.5 / float(stream.average_rate or stream.guessed_rate or 30)
        if start > half:
            container.seek(int((start - half) / stream.time_base), stream=stream, backward=True)
        for index, frame in enumerate(container.decode(stream)):
            time = frame.time if frame.time is not None else index * 2 * half
            if time < start - half:
                continue
            if stop is not None and time >= stop - half:
                break
            if frame.is_corrupt:  # the decoder concealed an error it found in this frame
                raise ValueError(f"video file {path}: the frame at {time:.3f} s is corrupt (the decoder "
                                 f"concealed an error): the file is damaged")
            yield frame
