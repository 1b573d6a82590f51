"""Success rates with honest uncertainty: the Wilson score interval for a binomial proportion.

Wilson rather than the normal ("Wald") interval: with 50 episodes and rates near 0% or 100% the
Wald interval collapses to a point or leaves [0, 1]; Wilson's stays inside and keeps its coverage.
"""

from __future__ import annotations

import math


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """(low, high) 95% interval (z = 1.96) for `successes` out of `n`; (0, 1) when n = 0."""
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in [0, n={n}], got {successes}")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def rate_summary(successes: int, n: int) -> dict[str, float | int | list[float]]:
    """{"episodes", "successes", "success_rate", "ci95"} for a count."""
    low, high = wilson_interval(successes, n)
    return {"episodes": n, "successes": successes, "success_rate": successes / n if n else float("nan"),
            "ci95": [low, high]}
