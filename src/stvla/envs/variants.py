"""Task variants where the current frame is not enough: the goal or the object moves, or is hidden for a while.

In `reach-moving-v3` the reach goal moves across the table at a constant velocity drawn per episode
(its direction uniform, its speed `speed`), bouncing off the goal space's edges. A policy that sees one
frame knows where the goal is but not where it is going; the expert leads it (aims where the goal will
be after the hand's lag), which needs the goal's velocity: history. `expert_action(lead=False)` is the
same expert given only the current state, the control that shows the history is needed
(`python benchmarks/bench_variants.py`).

`reach-moving-hidden-v3` also hides the moving marker for a stretch of steps (`hidden`): a policy must
carry where the goal was and where it was going through frames that do not show it. The expert with
history keeps leading it; given the current frame only, it cannot see the goal then, and holds still.

The goal marker is drawn larger than Meta-World's (radius `marker_radius`), so that a 128 px camera
sees it move.

`button-press-topdown-moving-v3` moves a large object instead of a marker (`MovingObject`): the button
box (a quarter of the table's width, plainly seen at 128 px) slides across the table as the goal does,
bouncing inside a rectangle, and vanishes from the frames for a stretch of steps while it keeps sliding
(it is still there to be pressed). The expert with history leads the button and goes on to it, seen or
not; given the current frame only, it aims where the button is now and holds still while it cannot see
it. Success is Meta-World's own: the button pressed down. The box moving alone is not enough: the button
is wide enough that the expert chasing it lags but still presses it; the hidden stretch is what costs the
current-frame expert its episodes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

CONTROL_DT = 0.0125  # seconds per environment step (Meta-World: 5 MuJoCo steps of 2.5 ms)
ACTION_SCALE = 0.01  # metres the hand's target moves per step per unit of action (Meta-World's action scale)
EXPERT_GAIN = 5.0 * ACTION_SCALE  # the reach expert's P gain times the action scale (metres per step per metre)


@dataclass(frozen=True, kw_only=True)
class MovingThing:
    """What the moving variants share: the task, the per-episode velocity, the bounce, the lead, the hidden
    steps. A subclass says what moves (`state_slice`, `thing`, `extent`)."""

    base: str  # the Meta-World task it changes
    instruction: str  # what the policy is told
    speed: float = 0.3  # metres per second
    hidden: tuple[int, int] = (0, 0)  # the moving thing is not drawn on steps [start, end) of an episode
    expert_gain: float = EXPERT_GAIN  # the base expert's P gain in metres per step per metre, for its lead
    max_steps: int = 80  # steps the benchmark gives an episode

    # The indices of Meta-World's state holding the position of the thing that moves: the one the expert
    # aims at, and leads.
    state_slice: ClassVar[slice]

    @property
    def thing(self) -> str:
        """What moves, in words (the benchmark's rows)."""
        raise NotImplementedError

    @property
    def extent(self) -> float:
        """Metres around the aimed-at point that are the moving thing (what "on it" means for a trace)."""
        raise NotImplementedError

    def hidden_at(self, step: int) -> bool:
        """Whether the moving thing is hidden in the frame after `step` environment steps."""
        return self.hidden[0] <= step < self.hidden[1]

    def draw_velocity(self, seed: int | None) -> np.ndarray:
        """The episode's velocity (x, y, 0) in metres per step, a function of the episode's seed."""
        angle = np.random.default_rng([int(seed or 0), 7]).uniform(0.0, 2.0 * np.pi)
        return np.array([np.cos(angle), np.sin(angle), 0.0]) * self.speed * CONTROL_DT

    @staticmethod
    def move(point: np.ndarray, velocity: np.ndarray, low: np.ndarray, high: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One step of the goal or body, bouncing off the box [low, high]; (new position, new velocity)."""
        point, velocity = point + velocity, velocity.copy()
        for axis in range(3):
            if point[axis] < low[axis] or point[axis] > high[axis]:
                velocity[axis] = -velocity[axis]
                point[axis] = np.clip(point[axis], low[axis], high[axis])
        return point, velocity

    def lead(self, velocity: np.ndarray) -> np.ndarray:
        """Where to aim ahead of the moving thing: a P-controller's steady lag behind a target moving
        `velocity` per step is velocity / gain."""
        return velocity / self.expert_gain


@dataclass(frozen=True, kw_only=True)
class MovingGoal(MovingThing):
    """A task whose goal marker moves (and may be hidden); the goal bounces inside Meta-World's goal space.
    The leading expert needs about 53 steps."""

    marker_radius: float = 0.03  # metres: the goal marker as rendered

    state_slice: ClassVar[slice] = slice(-3, None)  # Meta-World's goal, the last 3 of its state

    @property
    def thing(self) -> str:
        return "goal"

    @property
    def extent(self) -> float:
        return self.marker_radius


@dataclass(frozen=True, kw_only=True)
class MovingObject(MovingThing):
    """A task whose object (a Meta-World body, with what is attached to it) slides across the table, and may
    be hidden; Meta-World's target moves with it, so its own success criterion holds wherever it is."""

    body: str  # the MuJoCo body that moves (a fixed body: moved by setting its position)
    low: tuple[float, float]  # metres: the least (x, y) of the body's position; it bounces off it
    high: tuple[float, float]  # metres: the greatest (x, y); together they hold every start Meta-World draws
    name: str = "object"  # what moves, in words (the benchmark's rows)
    size: float = 0.05  # metres around the aimed-at point that are the moving body (what "on it" means for a trace)

    state_slice: ClassVar[slice] = slice(4, 7)  # Meta-World's first object position, which its experts aim at

    @property
    def thing(self) -> str:
        return self.name

    @property
    def extent(self) -> float:
        return self.size


VARIANTS: dict[str, MovingThing] = {
    "reach-moving-v3": MovingGoal(base="reach-v3", instruction="reach the moving red goal"),
    "reach-moving-hidden-v3": MovingGoal(base="reach-v3", instruction="reach the moving red goal, even while it is hidden",
                                         hidden=(15, 35)),
    "button-press-topdown-moving-v3": MovingObject(
        base="button-press-topdown-v3", instruction="press the sliding button from the top, even while it is hidden",
        body="box", low=(-0.2, 0.75), high=(0.2, 0.9), expert_gain=25.0 * ACTION_SCALE, name="button box",
        speed=0.3, hidden=(15, 45), max_steps=90),  # the leading expert needs 53-81 steps
}
