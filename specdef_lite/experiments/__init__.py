"""The course's experiments: sweeps that answer its questions, each returning a frozen result.

One idea per module. Explorers (``specdef_lite.widgets``), exercise checkers and notebooks only read
these results; nothing here draws or displays.
"""
from __future__ import annotations

from .best_response import BestResponse, Outcome, Slowdown, search, slowdown

__all__ = ["Outcome", "BestResponse", "search", "Slowdown", "slowdown"]
