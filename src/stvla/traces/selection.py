"""Trace selection: which tracked points become the K traces drawn at a control step.

Default (TraceVLA's rule): a point is active if it was tracked and inside the image in every buffered
frame of the window and its mean per-step motion (|dx| + |dy|, averaged over the steps) exceeds
`min_mean_motion_px`; if more than K are active, K are sampled with a seeded RNG, otherwise all active
points are used (none: the step has no trace). No traces during the first `warmup_steps` steps.

Adaptive mode (for the ST-VLA authors' "slow motion leaves no trace" failure): a point whose per-step
motion is below the threshold is still active if it has moved far enough over the window (its farthest
buffered position is at least `adaptive_min_displacement_px` from its newest), and every trace keeps a
vertex only once the point has moved `adaptive_min_step_px` from the previous one, so a slow,
steady motion still leaves a visible line instead of a pile of sub-pixel steps.

All per-point tests are a few vectorised numpy operations over the (T, N) window; only the K chosen
traces are walked vertex by vertex.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stvla.traces.tracker import TrackState


@dataclass
class SelectionConfig:
    num_traces: int = 5  # K: traces drawn at most per step
    min_mean_motion_px: float = 1.0  # a point must move more than this per step on average (|dx| + |dy|)
    warmup_steps: int = 5  # steps after reset with no traces (too little motion to trace)
    seed: int = 0  # seed of the RNG that samples K of the active points (reproducible traces)
    adaptive: bool = False  # also trace slow points that moved far over the window (see module docs)
    adaptive_min_step_px: float = 2.0  # adaptive: spacing between kept trace vertices
    adaptive_min_displacement_px: float = 3.0  # adaptive: farthest buffered position to newest, to qualify
    keep_previous: bool = False  # keep last step's traced points while still active (less flicker than re-sampling)

    def __post_init__(self) -> None:
        if self.num_traces < 1:
            raise ValueError(f"num_traces must be >= 1, got {self.num_traces}")
        if self.min_mean_motion_px < 0:
            raise ValueError(f"min_mean_motion_px must be >= 0, got {self.min_mean_motion_px}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if not self.adaptive_min_step_px > 0:
            raise ValueError(f"adaptive_min_step_px must be > 0, got {self.adaptive_min_step_px}")
        if self.adaptive_min_displacement_px < self.adaptive_min_step_px:
            raise ValueError(
                "adaptive_min_displacement_px must be >= adaptive_min_step_px (else a qualifying point could "
                f"have a single vertex), got {self.adaptive_min_displacement_px} < {self.adaptive_min_step_px}"
            )


@dataclass(frozen=True)
class Trace:
    """One tracked point's recent path, ready to draw."""

    points: np.ndarray  # (L, 2) float32 pixel positions (u, v), oldest first; the last is the newest
    frame_index: np.ndarray  # (L,) int64: window frame each vertex was seen in (0 = oldest buffered frame)
    point_id: int  # the tracker slot the trace follows
    vertex_depth: np.ndarray | None = None  # (L,) float32 depth at each vertex in the frame it was seen in


def mean_step_motion(positions: np.ndarray) -> np.ndarray:
    """(N,) mean over the window's steps of |dx| + |dy|, from (T, N, 2) positions (T >= 2)."""
    step = np.abs(np.diff(positions, axis=0))
    # Adding the two components beats .sum(axis=2): numpy reduces a length-2 last axis slowly.
    return (step[..., 0] + step[..., 1]).mean(axis=0)


def max_displacement(positions: np.ndarray) -> np.ndarray:
    """(N,) largest Euclidean distance of any buffered position from the newest one."""
    offset = positions - positions[-1]
    return np.hypot(offset[..., 0], offset[..., 1]).max(axis=0)


def active_points(positions: np.ndarray, visible: np.ndarray, config: SelectionConfig) -> np.ndarray:
    """(N,) bool: the points that may become traces, by the rule `config` selects (see module docs)."""
    if len(positions) < 2:
        return np.zeros(positions.shape[1], dtype=bool)
    seen_throughout = visible.all(axis=0)
    moving = mean_step_motion(positions) > config.min_mean_motion_px
    if config.adaptive:
        # Net displacement, not summed path length: tracker jitter adds path but no displacement.
        moving |= max_displacement(positions) >= config.adaptive_min_displacement_px
    return seen_throughout & moving


def spaced_vertices(paths: np.ndarray, min_step: float) -> np.ndarray:
    """(T, K) bool: the vertices kept so that consecutive kept vertices are >= `min_step` apart.

    Walks back from the newest position (always kept, so the arrowhead sits on the point and points
    along a segment at least `min_step` long), vectorised over the K paths of (T, K, 2).
    """
    keep = np.zeros(paths.shape[:2], dtype=bool)
    keep[-1] = True
    anchor = paths[-1].copy()
    for t in range(len(paths) - 2, -1, -1):
        far = np.hypot(*(paths[t] - anchor).T) >= min_step
        keep[t] = far
        anchor[far] = paths[t][far]
    return keep


class TraceSelector:
    """Chooses up to K traces per step from a tracker's state; holds the RNG (and last choice)."""

    def __init__(self, config: SelectionConfig | None = None) -> None:
        self.config = config or SelectionConfig()
        self.reset()

    def reset(self) -> None:
        """Restart the RNG from the seed, so every episode's traces are reproducible."""
        self._rng = np.random.default_rng(self.config.seed)
        self._previous = np.empty(0, dtype=np.int64)

    def episode_state(self) -> dict[str, object]:
        """Where the RNG and the last choice are, for `restore_episode` (undoing a served step)."""
        return {"rng": self._rng.bit_generator.state, "previous": self._previous}  # `_previous` is never changed in place

    def restore_episode(self, state: dict[str, object]) -> None:
        self._rng.bit_generator.state, self._previous = state["rng"], state["previous"]

    def select(self, state: TrackState) -> list[Trace]:
        """The traces for this step, oldest vertex first (an empty list during warm-up or without motion)."""
        if state.frame_count <= self.config.warmup_steps or len(state.positions) < 2:
            self._previous = np.empty(0, dtype=np.int64)
            return []
        active = np.flatnonzero(active_points(state.positions, state.visible, self.config))
        chosen = self._choose(active)
        self._previous = chosen
        if len(chosen) == 0:
            return []
        paths = state.positions[:, chosen]
        if self.config.adaptive:
            keep = spaced_vertices(paths, self.config.adaptive_min_step_px)
        else:
            keep = np.ones(paths.shape[:2], dtype=bool)
        return [
            Trace(points=paths[keep[:, k], k].astype(np.float32), frame_index=np.flatnonzero(keep[:, k]),
                  point_id=int(point))
            for k, point in enumerate(chosen)
        ]

    def _choose(self, active: np.ndarray) -> np.ndarray:
        k = self.config.num_traces
        if len(active) <= k:
            return active
        kept = np.intersect1d(self._previous, active) if self.config.keep_previous else active[:0]
        pool = np.setdiff1d(active, kept, assume_unique=True)
        fresh = self._rng.choice(pool, size=k - len(kept), replace=False) if len(kept) < k else pool[:0]
        return np.sort(np.concatenate([kept[:k], fresh]))
