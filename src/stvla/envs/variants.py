"""Task variants where the current frame is not enough: the goal moves, or is hidden for a while.

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
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CONTROL_DT = 0.0125  # seconds per environment step (Meta-World: 5 MuJoCo steps of 2.5 ms)
EXPERT_GAIN = 5.0 * 0.01  # the reach expert's P gain times Meta-World's action scale (metres per step per metre)


@dataclass(frozen=True)
class MovingGoal:
    base: str  # the Meta-World task it moves the goal of
    instruction: str  # what the policy is told
    speed: float = 0.3  # metres per second
    marker_radius: float = 0.03  # metres: the goal marker as rendered
    hidden: tuple[int, int] = (0, 0)  # the marker is not drawn on steps [start, end) of an episode

    def hidden_at(self, step: int) -> bool:
        """Whether the marker is hidden in the frame after `step` environment steps."""
        return self.hidden[0] <= step < self.hidden[1]

    def draw_velocity(self, seed: int | None) -> np.ndarray:
        """The episode's velocity (x, y, 0) in metres per step, a function of the episode's seed."""
        angle = np.random.default_rng([int(seed or 0), 7]).uniform(0.0, 2.0 * np.pi)
        return np.array([np.cos(angle), np.sin(angle), 0.0]) * self.speed * CONTROL_DT

    @staticmethod
    def move(goal: np.ndarray, velocity: np.ndarray, low: np.ndarray, high: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One step of the goal, bouncing off the box [low, high]; (new goal, new velocity)."""
        goal, velocity = goal + velocity, velocity.copy()
        for axis in range(3):
            if goal[axis] < low[axis] or goal[axis] > high[axis]:
                velocity[axis] = -velocity[axis]
                goal[axis] = np.clip(goal[axis], low[axis], high[axis])
        return goal, velocity

    @staticmethod
    def lead(velocity: np.ndarray) -> np.ndarray:
        """Where to aim ahead of the goal: a P-controller's steady lag behind a target moving `velocity`
        per step is velocity / gain."""
        return velocity / EXPERT_GAIN


VARIANTS: dict[str, MovingGoal] = {
    "reach-moving-v3": MovingGoal(base="reach-v3", instruction="reach the moving red goal"),
    "reach-moving-hidden-v3": MovingGoal(base="reach-v3", instruction="reach the moving red goal, even while it is hidden",
                                         hidden=(15, 35)),
}
