"""CoTracker3 (online) behind the `PointTracker` interface: Meta's learned point tracker, one update per frame.

    tracker = CoTrackerOnline(CoTrackerConfig(checkpoint="/models/scaled_online.pth"), TrackerConfig(num_points=400))
    for rgb in frames:
        state = tracker.update(rgb)      # TrackState: positions (T, N, 2), visible (T, N), age (N,)

Query points are fixed at the first frame after `reset()`: the given points, then the cells of a regular
grid (TrackerConfig.num_points in all). CoTracker follows points through occlusion, so a slot is never
re-seeded: a point that is occluded or outside the image is reported as not visible and keeps its
estimated position; every slot's age is the number of frames since reset.

Schedules. Every `update(frame)` encodes the new frame once (its feature pyramid is cached for the window).
When the model runs, it refines the last `window_len` frames: frames the window has seen before start from
their previous estimates (coordinates, visibility and confidence logits), new frames from the newest one,
as the official overlap hand-over does; a run revises every frame in its window, so the last `window_len`
entries of the buffer may still change, older entries are final. Between runs the newest frame reports the
latest estimate held still (what the next run starts it from).

- `schedule="official"` (the default) is the authors' online predictor: the first model run is on the
  first full window (frames 0 .. window_len - 1), from the queries with zero visibility and confidence
  logits; then one run every window_len // 2 frames. Before the first full window there is no model
  output: the points are reported at their queries, held still (`warming_up` is True then). Traces,
  which need motion, start once the first window has run.
- `schedule="refine"` is ours: a run every `update_every` frames (1 = every frame) from the second frame
  on, the window padded with its newest frame until it is full (as the official code pads the last
  chunk). Each frame is refined about window_len / update_every times, its logits carried over; the
  newest frame's estimate is up to date at every step, at about window_len // 2 times the official
  transformer work per frame. The model was trained with the official cadence; how accurate this is
  with the released weights is not measured here.

The query frame is reported at the query points exactly (the query defines the track there).
Visibility is the official online rule: sigmoid(visibility) * sigmoid(confidence) > 0.6, and inside the image.

Cost per update: one encoder pass on one frame at model resolution, plus, when the model runs,
`iterations` x (correlation sampling for window_len x N points x corr_levels, the correlation MLP on
those volumes, and the transformer over window_len x (N + num_virtual_tracks) tokens). It depends on
window_len and N, never on buffer_length: older frames are neither stored as images nor re-processed.
`flow_calls` counts model runs.

The network is stvla.traces.cotracker.network, loaded by stvla.traces.cotracker.weights.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

from stvla.devices import torch_device
from stvla.traces.cotracker.config import CoTrackerConfig
from stvla.traces.cotracker.network import CoTrackerThreeOnlineNet
from stvla.traces.cotracker.weights import load_cotracker
from stvla.traces.tracker import (
    PointTracker,
    RingBuffer,
    TrackerConfig,
    TrackState,
    checked_seed_points,
    grid_cell_centres,
    grid_shape,
    inside_image,
)


# --- coordinates -----------------------------------------------------------------------------------------
def frame_to_model(points: np.ndarray, frame_hw: tuple[int, int], model_hw: tuple[int, int]) -> np.ndarray:
    """(N, 2) frame pixels (u, v) -> model-resolution pixels; corners aligned, as the resize of the frames."""
    return points * model_scale(frame_hw, model_hw)


def model_to_frame(points: np.ndarray, frame_hw: tuple[int, int], model_hw: tuple[int, int]) -> np.ndarray:
    """Inverse of `frame_to_model`."""
    return points / model_scale(frame_hw, model_hw)


def model_scale(frame_hw: tuple[int, int], model_hw: tuple[int, int]) -> np.ndarray:
    (frame_h, frame_w), (model_h, model_w) = frame_hw, model_hw
    return np.array([(model_w - 1) / (frame_w - 1), (model_h - 1) / (frame_h - 1)], dtype=np.float64)


# --- tracker ---------------------------------------------------------------------------------------------
@dataclass
class WindowFrame:
    """One frame of the sliding window: its features and the model's latest estimate there (feature cells, logits)."""

    index: int  # frame number since reset
    pyramid: list[torch.Tensor]  # per level (C, h, w)
    coords: torch.Tensor  # (N, 2)
    vis: torch.Tensor  # (N,)
    conf: torch.Tensor  # (N,)


class CoTrackerOnline(PointTracker):
    """CoTracker3 online over a sliding window of the last `window_len` frames (see the module docstring)."""

    def __init__(self, cotracker: CoTrackerConfig | None = None, config: TrackerConfig | None = None,
                 model: CoTrackerThreeOnlineNet | None = None) -> None:
        """`model` overrides loading `cotracker.checkpoint` (it must be built from the same CoTrackerConfig)."""
        self.cotracker = cotracker or CoTrackerConfig()
        self.config = config or TrackerConfig()
        if self.config.seeding != "grid":
            raise ValueError(f"CoTrackerOnline seeds its queries on a grid only, got seeding={self.config.seeding!r}")
        self.device = torch_device(self.cotracker.device)  # a device this machine lacks is a clear error
        self.model = (model if model is not None else load_cotracker(self.cotracker)).to(self.device).eval()
        self.flow_calls = 0  # model runs (window refinements) so far
        n, b = self.config.num_points, self.config.buffer_length
        self._positions = RingBuffer(b, (n, 2), np.float32)
        self._visible = RingBuffer(b, (n,), bool, fill=False)
        self._window: deque[WindowFrame] = deque(maxlen=self.cotracker.window_len)
        self._seed_points: np.ndarray | None = None
        self._query_patches: list[torch.Tensor] | None = None
        self._queries: np.ndarray | None = None
        self._hw: tuple[int, int] | None = None
        self._state: TrackState | None = None

    def episode_state(self) -> dict[str, object]:
        """As `PointTracker.episode_state`, without copying the window's feature pyramids (megabytes a frame at
        the released resolution): a model run rebinds a window frame's estimates, never changes its tensors in
        place, so each frame is copied shallowly; the ring buffers are copied, the rest is replaced, not changed."""
        state = {name: value.copy() if isinstance(value, RingBuffer) else value for name, value in vars(self).items()}
        state["_window"] = deque((replace(frame) for frame in self._window), maxlen=self._window.maxlen)
        return state

    @property
    def state(self) -> TrackState | None:
        return self._state

    @property
    def queries(self) -> np.ndarray | None:
        """(N, 2) query points (u, v) at the first frame since reset (None before it)."""
        return None if self._queries is None else self._queries.copy()

    def reset(self, points: np.ndarray | None = None) -> None:
        self._seed_points = checked_seed_points(points, self.config.num_points)
        self._positions.clear()
        self._visible.clear()
        self._window.clear()
        self._query_patches = None
        self._queries = None
        self._hw = None
        self._state = None

    @torch.inference_mode()
    def update(self, frame: np.ndarray) -> TrackState:
        rgb = self._check_frame(frame)
        pyramid = self.model.encode(self._to_model_input(rgb))
        pyramid = [level[0] for level in pyramid]
        if self._hw is None:
            self._start(rgb.shape[:2], pyramid)
        else:
            self._advance(pyramid)
        positions, visible = self._positions.chronological(), self._visible.chronological()
        age = np.full(self.config.num_points, self._positions.count, dtype=np.int32)
        self._state = TrackState(positions, visible, age, self._positions.count)
        return self._state

    # --- internals ---------------------------------------------------------------------------------
    def _check_frame(self, frame: np.ndarray) -> np.ndarray:
        if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8:
            raise ValueError(f"frame must be a uint8 RGB (H, W, 3) or grey (H, W) numpy array, got "
                             f"{type(frame).__name__} {getattr(frame, 'dtype', '')} {getattr(frame, 'shape', '')}")
        if frame.ndim == 2:
            frame = np.repeat(frame[..., None], 3, axis=2)
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.shape[0] < 2 or frame.shape[1] < 2:
            raise ValueError(f"frame must be uint8 RGB (H, W, 3) or grey (H, W), at least 2 x 2; got {frame.shape}")
        if self._hw is not None and frame.shape[:2] != self._hw:
            raise ValueError(f"frame size changed mid-stream: expected (H, W) = {self._hw} as in the first frame "
                             f"since reset(), got {frame.shape[:2]}; call reset() before feeding frames of another size")
        return frame

    def _to_model_input(self, rgb: np.ndarray) -> torch.Tensor:
        image = torch.from_numpy(np.ascontiguousarray(rgb)).to(self.device).permute(2, 0, 1)[None].float()
        image = F.interpolate(image, self.cotracker.model_resolution, mode="bilinear", align_corners=True)
        return image / 127.5 - 1.0

    def _to_cells(self, points: np.ndarray) -> torch.Tensor:
        model_px = frame_to_model(points.astype(np.float64), self._hw, self.cotracker.model_resolution)
        return torch.from_numpy(model_px / self.cotracker.model_stride).float().to(self.device)

    def _to_frame(self, cells: torch.Tensor) -> np.ndarray:
        model_px = cells.double().cpu().numpy() * self.cotracker.model_stride
        return model_to_frame(model_px, self._hw, self.cotracker.model_resolution).astype(np.float32)

    def _start(self, hw: tuple[int, int], pyramid: list[torch.Tensor]) -> None:
        self._hw = hw
        self._queries = self._seed_queries(*hw)
        cells = self._to_cells(self._queries)
        self._query_patches = self.model.query_patches([level[None] for level in pyramid], cells)
        zeros = torch.zeros(len(cells), device=self.device)
        self._window.append(WindowFrame(0, pyramid, cells, zeros, zeros.clone()))
        self._positions.push(self._queries)
        self._visible.push(inside_image(self._queries, *hw))

    def _seed_queries(self, height: int, width: int) -> np.ndarray:
        """Given points first, the rest (and given points outside the frame) on evenly spread grid cells."""
        n = self.config.num_points
        rows, cols = grid_shape(n, height, width)
        grid = grid_cell_centres(rows, cols, height, width)
        queries = grid[np.linspace(0, len(grid), n, endpoint=False).astype(np.int64)]
        if self._seed_points is not None:
            given = self._seed_points
            usable = inside_image(given, height, width)
            queries[: len(given)][usable] = given[usable]
        return queries.astype(np.float32)

    def _advance(self, pyramid: list[torch.Tensor]) -> None:
        latest = self._window[-1]
        # A new frame starts from the newest estimate, as the official window hand-over pads with it.
        self._window.append(WindowFrame(latest.index + 1, pyramid, latest.coords, latest.vis, latest.conf))
        last_slot = (self._positions.write_index - 1) % self._positions.data.shape[0]
        self._positions.push(self._positions.data[last_slot].copy())
        self._visible.push(self._visible.data[last_slot].copy())
        if self._runs_now(frame_count=latest.index + 2):
            self._run_window()

    def _runs_now(self, frame_count: int) -> bool:
        """Whether the model runs once the `frame_count`-th frame since reset has arrived (see the schedules)."""
        if self.cotracker.schedule == "refine":
            return frame_count % self.cotracker.update_every == 0
        window, step = self.cotracker.window_len, self.cotracker.window_len // 2
        return frame_count >= window and (frame_count - window) % step == 0

    @property
    def warming_up(self) -> bool:
        """True while the newest reported points are the fallback (the queries held still), not the model's:
        under the official schedule, from the second frame until the first full window has run."""
        count = self._positions.count
        return self.cotracker.schedule == "official" and 1 < count < self.cotracker.window_len

    def _run_window(self) -> None:
        frames = list(self._window)
        padding = self.cotracker.window_len - len(frames)
        padded = frames + [frames[-1]] * padding
        pyramid = [torch.stack([f.pyramid[level] for f in padded]) for level in range(self.cotracker.corr_levels)]
        coords, vis, conf = self.model.refine(
            pyramid, self._query_patches, torch.stack([f.coords for f in padded]),
            torch.stack([f.vis for f in padded]), torch.stack([f.conf for f in padded]), self.cotracker.iterations)
        self.flow_calls += 1
        newest = frames[-1].index
        probability = torch.sigmoid(vis) * torch.sigmoid(conf)
        visible = (probability > self.cotracker.visibility_threshold).cpu().numpy()
        positions = self._to_frame(coords)
        length = self._positions.data.shape[0]
        for offset, window_frame in enumerate(frames):
            window_frame.coords, window_frame.vis, window_frame.conf = coords[offset], vis[offset], conf[offset]
            frames_ago = newest - window_frame.index
            if window_frame.index == 0 or frames_ago >= len(self._positions):
                continue  # the query frame keeps the queries; frames out of the buffer are gone
            slot = (self._positions.write_index - 1 - frames_ago) % length
            points = positions[offset]
            self._positions.data[slot] = points
            self._visible.data[slot] = visible[offset] & inside_image(points, *self._hw)
