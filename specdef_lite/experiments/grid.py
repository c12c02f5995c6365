"""α grids on a log scale: 10^(j/per_decade) from lo to hi, and the grid point nearest a value (log distance).

The course sweeps lock strengths α over decades (1 … 10⁶) and looks results up at the α a learner picks;
both happen on a log scale, so "nearest" means nearest in log₁₀.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["log_grid", "nearest", "snap"]


def log_grid(lo: float = 1.0, hi: float = 1e6, per_decade: float = 4) -> np.ndarray:
    """α grid 10^(log10 lo … log10 hi), ``per_decade`` points a decade, endpoints included.

    Example:
        >>> log_grid(1.0, 100.0, 1).tolist()
        [1.0, 10.0, 100.0]
    """
    a, b = np.log10(lo), np.log10(hi)
    return 10 ** np.linspace(a, b, int(round((b - a) * per_decade)) + 1)


def nearest(grid: Sequence[float], value: float) -> int:
    """argminᵢ |log₁₀ gridᵢ − log₁₀ value|: the index of the grid point nearest on a log scale.

    >>> nearest([1, 10, 100], 40)
    2
    >>> nearest([1, 10, 100], 0)
    Traceback (most recent call last):
    ...
    ValueError: a log-scale grid needs a finite value > 0, got 0.0
    """
    g = np.asarray(grid, dtype=float)
    v = float(value)
    if not (np.isfinite(v) and v > 0):  # log10 would give -inf or NaN, and argmin a silent index 0
        raise ValueError(f"a log-scale grid needs a finite value > 0, got {v}")
    if g.size == 0 or not np.all(np.isfinite(g) & (g > 0)):
        raise ValueError(f"a log-scale grid needs finite points > 0, got {list(g)}")
    return int(np.argmin(np.abs(np.log10(g) - np.log10(v))))


def snap(value: float, grid: Sequence[float]) -> float:
    """The grid point nearest to ``value`` on a log scale."""
    return float(np.asarray(grid, dtype=float)[nearest(grid, value)])
