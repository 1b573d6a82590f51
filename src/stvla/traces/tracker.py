"""Online point trackers: one update per new frame, a ring buffer of the last b positions per point.

A tracker follows N point slots from frame to frame. Each update propagates the points from the
previous frame to the new one only (never a re-run over the buffer), so the work per update does not
depend on the buffer length b. Points that are lost (tracking failed, forward-backward check failed,
left the image) are re-seeded at once in the same slot, and a re-seeded slot starts a fresh history.
A point whose own 3x3 patch has not changed is held still (see `FlowTracker`), so static background
does not creep along beside moving edges. A point that moves is then re-aligned with its own
appearance when it was seeded (a Gaussian-weighted window, translation-only Lucas-Kanade), so
frame-to-frame errors do not add up into drift over the window; that is one small solve per moving
point per update, whatever b is.

    tracker = LucasKanadeTracker(TrackerConfig(buffer_length=30, num_points=400))
    for rgb in frames:
        state = tracker.update(rgb)      # TrackState: positions (T, N, 2), visible (T, N), age (N,)

`PointTracker` is the interface the rest of the toolkit sees; `FlowTracker` holds the buffering and
re-seeding shared by every frame-to-frame tracker, which only has to say how points move from one
frame to the next (`LucasKanadeTracker`: sparse pyramidal LK; `DenseFlowTracker`: DIS dense flow).
A windowed tracker such as CoTracker would implement `PointTracker` directly.

Pixel convention (as in stvla.geometry): (u, v) = (column, row), pixel centres at integers.
"""

from __future__ import annotations

import abc
import copy
import functools
from dataclasses import dataclass

import cv2
import numpy as np

SEEDINGS: tuple[str, ...] = ("grid", "features")
# Side of the patch the zero-motion check compares: small, so that a moving edge a few pixels away
# (which drags the flow solver's larger window along) does not count as the point's own change.
STILL_PATCH = 3
# Re-alignment with the seed-time appearance: Gaussian weights (sigma in px) favour the point's own
# pixels over the window's edges, which often show the static background behind a moving part; a
# re-alignment that moves the point further than REFERENCE_MAX_SHIFT px from the frame-to-frame estimate
# is not trusted. Measured on simulator ground truth by benchmarks/bench_traces.py.
REFERENCE_SIGMA = 2.0
REFERENCE_MAX_SHIFT = 2.0
REFERENCE_ITERATIONS = 8
REFERENCE_CONVERGED = 0.01  # px: a point whose update is smaller stops iterating
DIS_PRESETS: dict[str, int] = {
    "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
    "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
    "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
}


@dataclass
class TrackerConfig:
    buffer_length: int = 30  # b: frames of history kept per point (the trace window)
    num_points: int = 400  # N: point slots tracked at once
    seeding: str = "grid"  # where lost points restart: "grid" (emptiest cells of a regular grid) or "features"
    lk_window: int = 9  # Lucas-Kanade window side in pixels (odd); small windows hug small moving parts
    pyramid_levels: int = 2  # Lucas-Kanade pyramid levels above the full image (0 = single scale)
    lk_iterations: int = 20  # Lucas-Kanade iterations per pyramid level at most
    lk_min_eigen: float = 1e-4  # LK drops points whose window's gradients are weaker (flat or 1-D texture)
    fb_threshold_px: float | None = 1.0  # forward-backward error above which a point is dropped; None = no check
    max_patch_error: float | None = 40.0  # LK only: drop a point whose window changes more (mean grey levels; 20 dropped 9% of a turning gripper's points: bench_traces); None = off
    static_tolerance: float | None = 1.0  # hold a point until its 3x3 patch changes by more than this (grey levels)
    reference_window: int | None = 9  # side (px, odd) of the seed-time appearance a moving point is re-aligned with; None = off
    reference_max_residual: float = 12.0  # grey levels: a worse median match keeps the frame-to-frame position and renews the reference
    dis_preset: str = "medium"  # DenseFlowTracker only: DIS preset ("ultrafast", "fast", "medium")

    def __post_init__(self) -> None:
        if self.buffer_length < 2:
            raise ValueError(f"buffer_length must be >= 2 (a trace needs two frames), got {self.buffer_length}")
        if self.num_points < 1:
            raise ValueError(f"num_points must be >= 1, got {self.num_points}")
        if self.seeding not in SEEDINGS:
            raise ValueError(f"unknown seeding {self.seeding!r}; valid: {', '.join(SEEDINGS)}")
        if self.lk_window < 3 or self.lk_window % 2 == 0:
            raise ValueError(f"lk_window must be an odd number >= 3, got {self.lk_window}")
        if not 0 <= self.pyramid_levels <= 8:
            raise ValueError(f"pyramid_levels must be in [0, 8], got {self.pyramid_levels}")
        if self.lk_iterations < 1:
            raise ValueError(f"lk_iterations must be >= 1, got {self.lk_iterations}")
        if not self.lk_min_eigen > 0:
            raise ValueError(f"lk_min_eigen must be > 0, got {self.lk_min_eigen}")
        if self.fb_threshold_px is not None and not self.fb_threshold_px > 0:
            raise ValueError(f"fb_threshold_px must be > 0 or None, got {self.fb_threshold_px}")
        if self.max_patch_error is not None and not self.max_patch_error > 0:
            raise ValueError(f"max_patch_error must be > 0 or None, got {self.max_patch_error}")
        if self.static_tolerance is not None and not self.static_tolerance >= 0:
            raise ValueError(f"static_tolerance must be >= 0 or None, got {self.static_tolerance}")
        if self.reference_window is not None and (self.reference_window < 3 or self.reference_window % 2 == 0):
            raise ValueError(f"reference_window must be an odd number >= 3 or None, got {self.reference_window}")
        if not self.reference_max_residual > 0:
            raise ValueError(f"reference_max_residual must be > 0, got {self.reference_max_residual}")
        if self.dis_preset not in DIS_PRESETS:
            raise ValueError(f"unknown dis_preset {self.dis_preset!r}; valid: {', '.join(DIS_PRESETS)}")


@dataclass(frozen=True)
class TrackState:
    """A snapshot of the buffered tracks, oldest frame first (T <= b frames so far since reset)."""

    positions: np.ndarray  # (T, N, 2) float32 pixel positions (u, v)
    visible: np.ndarray  # (T, N) bool: the slot's current point was tracked and inside the image then
    age: np.ndarray  # (N,) int32: consecutive frames the slot's current point has been tracked (1 = new)
    frame_count: int  # frames given to update() since the last reset()

    @property
    def latest(self) -> np.ndarray:
        """(N, 2) positions in the newest frame."""
        return self.positions[-1]


class RingBuffer:
    """The last `length` items of a fixed shape, stored in place; a push costs one item's copy."""

    def __init__(self, length: int, item_shape: tuple[int, ...], dtype: np.dtype | type, fill: float = 0) -> None:
        self.data = np.full((length, *item_shape), fill, dtype=dtype)
        self.fill = fill
        self.write_index = 0
        self.count = 0

    def __len__(self) -> int:
        return min(self.count, self.data.shape[0])

    def clear(self) -> None:
        self.data.fill(self.fill)
        self.write_index = 0
        self.count = 0

    def push(self, item: np.ndarray) -> None:
        self.data[self.write_index] = item
        self.write_index = (self.write_index + 1) % self.data.shape[0]
        self.count += 1

    def copy(self) -> RingBuffer:
        """An independent copy (the stored items copied)."""
        clone = copy.copy(self)
        clone.data = self.data.copy()
        return clone

    def chronological(self) -> np.ndarray:
        """A copy of the stored items, oldest first."""
        n = len(self)
        if n < self.data.shape[0]:
            return self.data[:n].copy()
        return np.concatenate([self.data[self.write_index:], self.data[: self.write_index]])


class PointTracker(abc.ABC):
    """What a point tracker offers: one update per new frame, buffered tracks, a reset per episode."""

    config: TrackerConfig
    flow_calls: int  # optical-flow computations so far: lets tests check the work per update

    @abc.abstractmethod
    def update(self, frame: np.ndarray) -> TrackState:
        """Track the points into `frame` (uint8 RGB (H, W, 3) or grey (H, W)) and return the new state."""

    @abc.abstractmethod
    def reset(self, points: np.ndarray | None = None) -> None:
        """Forget every track. With `points` (M, 2), slots 0..M-1 start at them on the next frame."""

    @property
    @abc.abstractmethod
    def state(self) -> TrackState | None:
        """The state after the last update (None before the first frame)."""

    @property
    def buffer_length(self) -> int:
        return self.config.buffer_length

    def episode_state(self) -> dict[str, object]:
        """This episode's tracking (buffers, points, window) as it is now, for `restore_episode`: a served step
        that fails is undone with it. This default deep-copies everything but the settings; a tracker holding
        a model or large inputs overrides it with a leaner copy (FlowTracker, CoTrackerOnline)."""
        return copy.deepcopy(vars(self), {id(self.config): self.config})

    def restore_episode(self, state: dict[str, object]) -> None:
        """Put the episode back as `episode_state()` found it (the state is used up: take a new one after)."""
        vars(self).update(state)


def to_grey(frame: np.ndarray, expected_hw: tuple[int, int] | None = None) -> np.ndarray:
    """A validated frame as a contiguous uint8 grey image; raises ValueError on a bad frame."""
    if not isinstance(frame, np.ndarray):
        raise ValueError(f"frame must be a numpy array, got {type(frame).__name__}")
    if frame.dtype != np.uint8:
        raise ValueError(
            f"frame must be uint8 RGB (H, W, 3) or grey (H, W); got dtype {frame.dtype} with shape {frame.shape}"
        )
    if frame.ndim == 3 and frame.shape[2] == 3:
        grey = cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY)
    elif frame.ndim == 2:
        grey = np.ascontiguousarray(frame)
    else:
        raise ValueError(f"frame must be uint8 RGB (H, W, 3) or grey (H, W); got shape {frame.shape}")
    if grey.shape[0] < 2 or grey.shape[1] < 2:
        raise ValueError(f"frame must be at least 2 x 2 pixels, got shape {frame.shape}")
    if expected_hw is not None and grey.shape != expected_hw:
        raise ValueError(
            f"frame size changed mid-stream: expected (H, W) = {expected_hw} as in the first frame since "
            f"reset(), got {grey.shape}; call reset() before feeding frames of another size"
        )
    return grey


def checked_seed_points(points: np.ndarray | None, slots: int) -> np.ndarray | None:
    """`reset(points)`'s points as (M, 2) float32, refused when more than the tracker's slots or not finite."""
    if points is None:
        return None
    points = np.asarray(points, dtype=np.float32).reshape(-1, 2)
    if len(points) > slots:
        raise ValueError(f"got {len(points)} seed points but the tracker has {slots} slots")
    if not np.all(np.isfinite(points)):
        raise ValueError("seed points must be finite")
    return points


def grid_shape(num_points: int, height: int, width: int) -> tuple[int, int]:
    """(rows, cols) of the smallest grid with square-ish cells and at least `num_points` cells."""
    cols = max(1, int(np.ceil(np.sqrt(num_points * width / height))))
    rows = int(np.ceil(num_points / cols))
    return rows, cols


def grid_cell_centres(rows: int, cols: int, height: int, width: int) -> np.ndarray:
    """(rows * cols, 2) float32 cell centres (u, v), row-major."""
    v, u = np.mgrid[0:rows, 0:cols]
    centres = np.stack([(u + 0.5) * width / cols - 0.5, (v + 0.5) * height / rows - 0.5], axis=-1)
    return centres.reshape(-1, 2).astype(np.float32)


def inside_image(points: np.ndarray, height: int, width: int) -> np.ndarray:
    """(N,) bool: finite and within the image (pixel centres 0..W-1, 0..H-1)."""
    u, v = points[:, 0], points[:, 1]
    with np.errstate(invalid="ignore"):
        return (u >= 0) & (u <= width - 1) & (v >= 0) & (v <= height - 1)


class FlowTracker(PointTracker):
    """Ring-buffered tracks and re-seeding for trackers that move points from one frame to the next.

    Subclasses implement `_propagate(prev, new, points) -> (new_points, ok)`, counting their flow calls.
    A zero-motion check then holds still every point whose own 3x3 patch has not changed since it last
    moved: beside a moving edge, or in a near 1-D texture such as wood grain, a flow solver slides
    static points along, and those slides would otherwise become traces. The points that did move are
    re-aligned with their seed-time appearance (`_align_to_reference`).
    """

    def __init__(self, config: TrackerConfig | None = None) -> None:
        self.config = config or TrackerConfig()
        self.flow_calls = 0
        n, b = self.config.num_points, self.config.buffer_length
        self._positions = RingBuffer(b, (n, 2), np.float32)
        self._visible = RingBuffer(b, (n,), bool, fill=False)
        self._age = np.zeros(n, dtype=np.int32)
        self._anchor = np.zeros((n, STILL_PATCH * STILL_PATCH), dtype=np.float32)  # patch when last moved
        self._pending = np.zeros((n, 2), dtype=np.float32)  # motion measured while held still
        side = self.config.reference_window or 1
        self._reference = np.zeros((3, n, side * side), dtype=np.float32)  # seed-time window: grey, d/du, d/dv
        self._renew = np.zeros(n, dtype=bool)  # slots whose reference no longer matches: renewed on record
        self._seed_points: np.ndarray | None = None
        self._prev = None
        self._hw: tuple[int, int] | None = None
        self._grid: np.ndarray | None = None
        self._grid_cols = 1
        self._state: TrackState | None = None

    @property
    def state(self) -> TrackState | None:
        return self._state

    def episode_state(self) -> dict[str, object]:
        """As `PointTracker.episode_state`, cheaply: the episode is in the arrays and ring buffers (copied);
        the rest is settings, the flow solver, or values that updates replace rather than change in place
        (the frozen TrackState, the previous grey frame, the grid)."""
        return {name: value.copy() if isinstance(value, (np.ndarray, RingBuffer)) else value
                for name, value in vars(self).items()}

    def reset(self, points: np.ndarray | None = None) -> None:
        self._seed_points = checked_seed_points(points, self.config.num_points)
        self._positions.clear()
        self._visible.clear()
        self._age[:] = 0
        self._prev = None
        self._hw = None
        self._state = None

    def update(self, frame: np.ndarray) -> TrackState:
        grey = to_grey(frame, self._hw)
        if self._hw is None:
            self._start(grey)
        else:
            self._track(grey)
        positions, visible = self._positions.chronological(), self._visible.chronological()
        # Slots re-seeded inside the window hold an older point's history there: hide it.
        frames_ago = np.arange(len(positions) - 1, -1, -1)[:, None]
        visible &= frames_ago < self._age[None, :]
        self._state = TrackState(positions, visible, self._age.copy(), self._positions.count)
        return self._state

    # --- internals ---------------------------------------------------------------------------------
    def _start(self, grey: np.ndarray) -> None:
        h, w = grey.shape
        self._hw = (h, w)
        rows, self._grid_cols = grid_shape(self.config.num_points, h, w)
        self._grid = grid_cell_centres(rows, self._grid_cols, h, w)
        points = np.zeros((self.config.num_points, 2), dtype=np.float32)
        lost = np.ones(self.config.num_points, dtype=bool)
        if self._seed_points is not None:
            given = self._seed_points
            points[: len(given)] = given
            lost[: len(given)] = ~inside_image(given, h, w)
        self._reseed(grey, points, lost)
        self._record(grey, points, reseeded=np.ones_like(lost), moved=np.ones_like(lost))

    def _track(self, grey: np.ndarray) -> None:
        h, w = grey.shape
        prev_points = self._positions.data[(self._positions.write_index - 1) % self._positions.data.shape[0]]
        points, ok = self._propagate(self._prev, grey, prev_points)
        moved = np.ones_like(ok)
        if self.config.static_tolerance is not None:
            points, moved = self._hold_still(grey, prev_points, points)
        if self.config.reference_window is not None:
            points = self._align_to_reference(grey, points, ok & moved & np.all(np.isfinite(points), axis=1))
        lost = ~(ok & inside_image(points, h, w))
        points = np.where(lost[:, None], prev_points, points).astype(np.float32)
        self._reseed(grey, points, lost)
        self._record(grey, points, reseeded=lost, moved=moved | lost)

    def _hold_still(self, grey: np.ndarray, start: np.ndarray, tracked: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(points, moved): points stay put until their own patch changes since they last moved.

        The motion measured while a point is held is summed and applied when it moves, so a slow
        motion (sub-threshold change per frame) is delayed by a few frames, never lost.
        """
        self._pending += np.nan_to_num(tracked - start)
        patch = sample_windows(grey, start, STILL_PATCH)
        moved = np.abs(patch - self._anchor).mean(axis=1) > self.config.static_tolerance
        return np.where(moved[:, None], start + self._pending, start).astype(np.float32), moved

    def _align_to_reference(self, grey: np.ndarray, points: np.ndarray, slots: np.ndarray) -> np.ndarray:
        """`points` with the `slots` moved to where their window best matches the reference (least squares).

        Inverse-compositional Lucas-Kanade for a translation, started at the frame-to-frame estimate.
        A slot whose match stays poor (its appearance changed) keeps the estimate and is marked for a
        new reference.
        """
        index = np.flatnonzero(slots)
        if len(index) == 0:
            return points
        side = self.config.reference_window
        template, grad_u, grad_v = self._reference[:, index]
        weights = gaussian_window(side, REFERENCE_SIGMA)
        # The Hessian is the template's, fixed over the iterations (the inverse-compositional trick).
        huu, huv, hvv = ((weights * a * b).sum(1) for a, b in ((grad_u, grad_u), (grad_u, grad_v), (grad_v, grad_v)))
        det = huu * hvv - huv * huv
        solvable = det > 1e-6
        det = np.where(solvable, det, 1.0)
        image = grey.astype(np.float32)
        start = points[index].astype(np.float32)
        aligned = start.copy()
        active = np.flatnonzero(solvable)  # points still moving by more than REFERENCE_CONVERGED px per iteration
        for _ in range(REFERENCE_ITERATIONS):
            if len(active) == 0:
                break
            residual = sample_windows(image, aligned[active], side) - template[active]
            eu = (weights * grad_u[active] * residual).sum(1)
            ev = (weights * grad_v[active] * residual).sum(1)
            du = (hvv[active] * eu - huv[active] * ev) / det[active]
            dv = (huu[active] * ev - huv[active] * eu) / det[active]
            aligned[active, 0] -= du
            aligned[active, 1] -= dv
            active = active[np.hypot(du, dv) > REFERENCE_CONVERGED]
        with np.errstate(invalid="ignore"):
            mismatch = np.median(np.abs(sample_windows(image, aligned, side) - template), axis=1)
            trusted = (
                solvable
                & (np.linalg.norm(aligned - start, axis=1) <= REFERENCE_MAX_SHIFT)
                & (mismatch <= self.config.reference_max_residual)
            )
        points = points.copy()
        points[index] = np.where(trusted[:, None], aligned, start)
        self._renew[index[~trusted]] = True
        return points

    def _record(self, grey: np.ndarray, points: np.ndarray, reseeded: np.ndarray, moved: np.ndarray) -> None:
        if self.config.reference_window is not None:
            renew = reseeded | self._renew
            if renew.any():
                grad_u = cv2.Sobel(grey, cv2.CV_32F, 1, 0, ksize=3) / 8.0
                grad_v = cv2.Sobel(grey, cv2.CV_32F, 0, 1, ksize=3) / 8.0
                for plane, image in enumerate((grey, grad_u, grad_v)):
                    self._reference[plane, renew] = sample_windows(image, points[renew], self.config.reference_window)
            self._renew[:] = False
        if self.config.static_tolerance is not None:
            self._anchor[moved] = sample_windows(grey, points[moved], STILL_PATCH)
            self._pending[moved] = 0.0
        self._age = np.where(reseeded, 1, self._age + 1).astype(np.int32)
        self._positions.push(points)
        # Every slot holds a tracked, in-image point after re-seeding; trackers that estimate
        # occlusion would store False here for hidden points.
        self._visible.push(True)
        self._prev = grey

    def _reseed(self, grey: np.ndarray, points: np.ndarray, lost: np.ndarray) -> None:
        """Write new start positions into `points` for the `lost` slots (in place)."""
        n_lost = int(lost.sum())
        if n_lost == 0:
            return
        new = np.empty((0, 2), dtype=np.float32)
        if self.config.seeding == "features":
            new = self._feature_seeds(grey, points[~lost], n_lost)
        if len(new) < n_lost:
            new = np.concatenate([new, self._grid_seeds(np.concatenate([points[~lost], new]), n_lost - len(new))])
        points[lost] = new

    def _grid_seeds(self, live: np.ndarray, count: int) -> np.ndarray:
        """`count` grid cell centres, emptiest cells first, so coverage stays even as points drift."""
        h, w = self._hw
        rows = len(self._grid) // self._grid_cols
        col = np.clip((live[:, 0] + 0.5) * self._grid_cols / w, 0, self._grid_cols - 1).astype(np.int64)
        row = np.clip((live[:, 1] + 0.5) * rows / h, 0, rows - 1).astype(np.int64)
        occupancy = np.bincount(row * self._grid_cols + col, minlength=len(self._grid))
        if len(live) == 0 and count < len(self._grid):
            # A fresh start: spread the points evenly over the cells rather than filling the top rows.
            cells = np.linspace(0, len(self._grid), count, endpoint=False).astype(np.int64)
        else:
            cells = np.argsort(occupancy, kind="stable")[:count]
        return self._grid[cells]

    def _feature_seeds(self, grey: np.ndarray, live: np.ndarray, count: int) -> np.ndarray:
        """Up to `count` Shi-Tomasi corners away from the live points."""
        h, w = grey.shape
        spacing = max(2, int(np.sqrt(h * w / self.config.num_points) / 2))
        mask = np.full((h, w), 255, dtype=np.uint8)
        for u, v in np.round(live).astype(int):
            cv2.circle(mask, (int(u), int(v)), spacing, 0, -1)
        corners = cv2.goodFeaturesToTrack(grey, count, 0.01, spacing, mask=mask)
        return np.empty((0, 2), np.float32) if corners is None else corners.reshape(-1, 2).astype(np.float32)

    @abc.abstractmethod
    def _propagate(self, prev, new, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Move (N, 2) points from grey frame `prev` to grey frame `new`: new points and an ok mask (N,)."""


class LucasKanadeTracker(FlowTracker):
    """Sparse pyramidal Lucas-Kanade from the previous frame, with a forward-backward check.

    (OpenCV's Python binding cannot take prebuilt pyramids, so each pass builds its own; at 128 px
    that is a small part of the cost next to the per-point iterations.)
    """

    def __init__(self, config: TrackerConfig | None = None) -> None:
        super().__init__(config)
        c = self.config
        self._lk = dict(
            winSize=(c.lk_window, c.lk_window),
            maxLevel=c.pyramid_levels,
            criteria=(cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, c.lk_iterations, 0.01),
            minEigThreshold=c.lk_min_eigen,
        )

    def _propagate(self, prev, new, points):
        forward, ok, patch_error = cv2.calcOpticalFlowPyrLK(prev, new, points.reshape(-1, 1, 2), None, **self._lk)
        self.flow_calls += 1
        ok = ok.reshape(-1).astype(bool)
        if self.config.max_patch_error is not None:
            ok &= patch_error.reshape(-1) <= self.config.max_patch_error
        if self.config.fb_threshold_px is not None:
            back, ok_back, _ = cv2.calcOpticalFlowPyrLK(new, prev, forward, None, **self._lk)
            self.flow_calls += 1
            fb_error = np.linalg.norm(back.reshape(-1, 2) - points, axis=1)
            ok &= ok_back.reshape(-1).astype(bool) & (fb_error <= self.config.fb_threshold_px)
        return forward.reshape(-1, 2), ok


class DenseFlowTracker(FlowTracker):
    """DIS dense optical flow from the previous frame, sampled at the points (bilinear).

    With a forward-backward check it computes the backward flow too and drops points whose round
    trip misses by more than the threshold.
    """

    def __init__(self, config: TrackerConfig | None = None) -> None:
        super().__init__(config)
        self._dis = cv2.DISOpticalFlow_create(DIS_PRESETS[self.config.dis_preset])

    def _propagate(self, prev, new, points):
        flow = self._dis.calc(prev, new, None)
        self.flow_calls += 1
        forward = points + sample_field(flow, points)
        ok = np.all(np.isfinite(forward), axis=1)
        if self.config.fb_threshold_px is not None:
            back_flow = self._dis.calc(new, prev, None)
            self.flow_calls += 1
            back = forward + sample_field(back_flow, forward)
            ok &= np.linalg.norm(back - points, axis=1) <= self.config.fb_threshold_px
        return forward.astype(np.float32), ok


def sample_field(field: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Bilinear samples (N, C) of an (H, W, C) float32 field at (N, 2) points (u, v), edges replicated."""
    map_u = np.ascontiguousarray(points[:, 0], dtype=np.float32).reshape(-1, 1)
    map_v = np.ascontiguousarray(points[:, 1], dtype=np.float32).reshape(-1, 1)
    samples = cv2.remap(field, map_u, map_v, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return samples.reshape(len(points), -1)


@functools.lru_cache(maxsize=8)
def window_offsets(side: int) -> tuple[np.ndarray, np.ndarray]:
    """(du, dv): (side * side,) float32 offsets of a square window's samples from its centre, row-major."""
    offsets = np.arange(side, dtype=np.float32) - (side - 1) / 2.0
    du, dv = np.meshgrid(offsets, offsets)
    return du.ravel(), dv.ravel()


@functools.lru_cache(maxsize=8)
def gaussian_window(side: int, sigma: float) -> np.ndarray:
    """(side * side,) float32 Gaussian weights over a square window, row-major like `sample_windows`."""
    du, dv = window_offsets(side)
    return np.exp(-(du**2 + dv**2) / (2 * sigma**2)).astype(np.float32)


def sample_windows(image: np.ndarray, centres: np.ndarray, side: int) -> np.ndarray:
    """(N, side * side) float32 bilinear samples of a grey image in square windows around (N, 2) centres."""
    if len(centres) == 0:
        return np.empty((0, side * side), dtype=np.float32)
    du, dv = window_offsets(side)
    map_u = (centres[:, :1] + du[None]).astype(np.float32)
    map_v = (centres[:, 1:2] + dv[None]).astype(np.float32)
    return cv2.remap(image.astype(np.float32, copy=False), map_u, map_v, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


# The frame-to-frame trackers by name; every tracker type (with CoTracker3) and `make_tracker` are in
# stvla.traces.pipeline, so that this module never refers to the torch-based tracker.
TRACKERS: dict[str, type[FlowTracker]] = {"lk": LucasKanadeTracker, "dense": DenseFlowTracker}
