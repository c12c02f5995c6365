"""p = d log y / d log x — the least-squares slope on log–log axes, from which the course reads every law.

One function for every power law the course reads: steps ∝ κ (slope 1), σ₁(∇²ℒ) ∝ α² (slope 2),
η_max ∝ 1/α² and η* ∝ 1/α (slopes −2 and −1). Points that a log axis cannot hold
(None, NaN, ±inf, ≤ 0 — a run that never reached its target, an exact zero) are left out, not guessed.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["loglog_slope"]


def loglog_slope(x: Sequence[float], y: Sequence[float | None], *, x_min: float | None = None,
                 x_max: float | None = None) -> float:
    """p minimising Σ (log yᵢ − p·log xᵢ − c)² over the finite, positive points with x_min ≤ x ≤ x_max; NaN if < 2.

    Example:
        >>> loglog_slope([1, 10, 100], [1.0, 1e-2, 1e-4])
        -2.0
        >>> loglog_slope([1, 10, 100, 1000], [5.0, None, 50.0, 500.0], x_min=10)  # None is skipped
        1.0
    """
    x = np.asarray(x, dtype=float)
    y = np.array([np.nan if v is None else v for v in y], dtype=float)
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same length, got {x.size} and {y.size}")
    ok = np.isfinite(x) & (x > 0) & np.isfinite(y) & (y > 0)
    if x_min is not None:
        ok &= x >= x_min
    if x_max is not None:
        ok &= x <= x_max
    if ok.sum() < 2 or np.ptp(np.log(x[ok])) == 0:
        return float("nan")
    return round(float(np.polyfit(np.log(x[ok]), np.log(y[ok]), 1)[0]), 12)
