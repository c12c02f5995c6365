"""Controls sized so that an explorer's whole row fits a 900 px output area: sliders, α grids, toggles.

A control is an ipywidget with a fixed overall width and a label as wide as its text (``compact``); a log
slider moves by 10^(1/per_decade); an α slider offers exactly the explorer's precomputed grid, so every
position is a state already computed. ``accepted_range`` and ``on_options``: what ``Explorer.set`` accepts
for a control, and a number snapped to a selection's nearest option.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ...common.display import fmt
from ...experiments.grid import nearest, snap

__all__ = ["SLIDER_WIDTH", "compact", "log_slider", "alpha_slider", "toggle", "accepted_range", "on_options"]

SLIDER_WIDTH = "290px"


def compact(kw: dict[str, Any], width: str = SLIDER_WIDTH) -> dict[str, Any]:
    """Layout and style keywords for a compact control: a label as wide as its text, a fixed overall width."""
    import ipywidgets as W
    kw.setdefault("layout", W.Layout(width=width))
    kw.setdefault("style", {"description_width": "initial"})
    return kw


def log_slider(value: float, lo: float, hi: float, per_decade: float, description: str, **kw: Any) -> Any:
    """A log₁₀ slider snapped to ``per_decade`` steps a decade, with a 3-digit readout (``.3g``)."""
    import ipywidgets as W
    return W.FloatLogSlider(value=value, base=10, min=np.log10(lo), max=np.log10(hi), step=1 / per_decade,
                            description=description, readout_format=".3g", continuous_update=False,
                            **compact(kw))


def alpha_slider(value: float, grid: Sequence[float], description: str = "α", **kw: Any) -> Any:
    """A slider over the explorer's precomputed α grid, labelled as the plots label α (``display.fmt``).

    The values are the grid's own, so a slider position is always a precomputed state, and the readout
    says 3.16e+5 where the plot says 3.16e+5 (a ``.0e`` readout said 3e+5)."""
    import ipywidgets as W
    options = [(fmt(a), float(a)) for a in grid]
    return W.SelectionSlider(options=options, value=snap(value, grid), description=description,
                             continuous_update=False, **compact(kw))


def toggle(options: Sequence[Any], value: Any, description: str, button_width: str = "74px", **kw: Any) -> Any:
    """Toggle buttons that stay on one row: fixed, narrow buttons and a label as wide as its text."""
    import ipywidgets as W
    kw.setdefault("style", {"description_width": "initial", "button_width": button_width})
    return W.ToggleButtons(options=options, value=value, description=description, **kw)


def accepted_range(widget: Any, grid: Sequence[float] | None) -> tuple[float | None, float | None]:
    """(lo, hi) a numeric control accepts: a live slider's own bounds, or an α grid's ends (± half a step)."""
    if grid is not None and len(grid) and all(float(g) > 0 for g in grid):
        g = np.sort(np.asarray(grid, dtype=float))
        half = float(np.sqrt(np.max(g[1:] / g[:-1]))) if len(g) > 1 else 1.0
        return g[0] / half, g[-1] * half
    lo, hi = getattr(widget, "min", None), getattr(widget, "max", None)
    if lo is None or hi is None or getattr(widget, "options", None):
        return None, None
    base = getattr(widget, "base", None)
    return (base ** lo, base ** hi) if base else (lo, hi)


def on_options(widget: Any, value: Any) -> Any:
    """A numeric value for a selection widget snapped to its nearest option (log scale); others unchanged."""
    options = getattr(widget, "options", None)
    if not options or not isinstance(value, (int, float, np.floating)) or isinstance(value, bool):
        return value
    values = [o[1] if isinstance(o, tuple) else o for o in options]
    if value in values or not all(isinstance(x, (int, float, np.floating)) and x > 0 for x in values) or value <= 0:
        return value
    return values[nearest(values, value)]
