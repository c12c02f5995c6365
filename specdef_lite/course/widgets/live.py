"""The live figure of an explorer: a ``FigureWidget`` whose control changes redraw only what they edit.

``LiveFigure.batch`` sends an edit as a zero-length ``Plotly.animate`` when plotly.js can draw it without
redrawing the whole figure (``redraw_free``: data of scatter or bar traces on axes with fixed ranges, no
legend name, no layout), else as ``Plotly.update``; ``fix_ranges`` fixes an explorer's axes over what its
controls reach so that every change qualifies.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import plotly.graph_objects as go

from ...common.display import plain

__all__ = ["Frame", "LiveFigure", "INSTANT", "DATA_ONLY", "redraw_free", "undrawn", "on_fixed_axes", "fix_ranges"]

Frame = dict[int, dict[str, Any]]  # trace index -> {"x": ..., "y": ..., ...}


class LiveFigure(go.FigureWidget):
    """A ``FigureWidget`` whose comm opens once it is complete, so the front end gets the model in one message.

    plotly opens the widget's comm in its constructor, before it fills ``_widget_data`` / ``_widget_layout``
    (the state its view draws from), which then follow as separate updates. With several notebooks
    rendering at once on a loaded machine (tests/test_browser.py), a view was sometimes drawn from the
    comm_open state alone: an empty plot that stayed empty, since later updates only restyle existing
    traces. Opened at the end of the constructor, the model carries its figure, and nothing is sent
    until a control moves.

    Two traits are set before opening:
    * ``_view_count = None`` — ipywidgets' default. plotly turns view counting on (0) and never reads it;
      every view then syncs its removal, and closing a notebook (kernel connection gone first) logged
      "Could not send widget sync message" in the page console.
    * ``_config = {"responsive": True}`` — plotly.js follows the window, so the plot stays inside the
      output area at any window width.
    """

    def __init__(self, *args, **kwargs):
        self._deferred_open = True
        super().__init__(*args, **kwargs)
        self._view_count = None
        self._config = {"responsive": True, "displaylogo": False}
        self._deferred_open = False
        self.open()

    def open(self):
        if not getattr(self, "_deferred_open", False):
            super().open()

    @contextmanager
    def batch(self) -> Iterator[None]:
        """``batch_update``, except that an edit plotly.js can draw without redrawing the figure
        (``redraw_free``) goes as a zero-length ``Plotly.animate``: only the edited traces are redrawn.

        ``Plotly.update`` with new data redraws everything — defaults, every axis and its tick labels, the
        legend, every trace — which took 30–60 ms of the 60–120 ms from plotly's message to the changed frame
        in JupyterLab (a CPU profile of notebook 01); a transition redraws the edited traces only.
        ``batch_animate`` cannot be used as it is: its frame options leave ``redraw`` at plotly.js's default
        (true), a full redraw after the transition. This reuses the batch internals ``batch_update`` and
        ``batch_animate`` share (``_in_batch_mode``, ``_batch_trace_edits``, ``_perform_batch_animate``);
        ``tests/_explorers.py`` checks the message every explorer's controls send, so a plotly release that
        changes them fails the tests rather than the course."""
        with self._edits(send=True):
            yield

    @contextmanager
    def quiet(self) -> Iterator[None]:
        """Edits made to the kernel's copy of the figure only, nothing sent: the page draws them itself
        (``page.PageFrames``: from a frame it holds, or the one the kernel sends it next). plotly's own bookkeeping (``_perform_plotly_update``) keeps the copy exact, so
        whatever is sent later is computed against what the page shows."""
        with self._edits(send=False):
            yield

    @contextmanager
    def _edits(self, send: bool) -> Iterator[None]:
        """Collect the edits made inside (nested: the outermost collects), then apply them to the kernel's
        copy and, if ``send``, send them: as an instant transition where ``redraw_free``, else ``Plotly.update``."""
        if self._in_batch_mode:
            yield
            return
        self._in_batch_mode = True
        try:
            yield
        finally:
            self._in_batch_mode = False
            if send and redraw_free(self, self._batch_trace_edits, self._batch_layout_edits):
                self._perform_batch_animate(INSTANT)  # sends Plotly.animate, clears the batch
            else:
                restyle, relayout, idx = self._build_update_params_from_batch()
                if send:
                    self.plotly_update(restyle_data=restyle, relayout_data=relayout, trace_indexes=idx)
                else:
                    self._perform_plotly_update(restyle, relayout, idx)
                self._batch_layout_edits.clear()
                self._batch_trace_edits.clear()


# Plotly.animate's options for an instant change: no easing, and no redraw of the whole figure afterwards.
INSTANT = {"transition": {"duration": 0, "easing": "linear"}, "frame": {"duration": 0, "redraw": False},
           "mode": "immediate"}
ANIMATABLE = frozenset({"scatter", "bar"})  # plotly.js trace types whose layer a transition redraws
DATA_ONLY = frozenset({"x", "y", "text", "marker.color", "line.color"})  # what a transition draws in full
COLOURS = frozenset({"marker.color", "line.color"})  # drawn on the trace, but not on its legend entry


def redraw_free(fig: go.Figure, trace_edits: dict[int, dict], layout_edits: dict) -> bool:
    """True when plotly.js can show these edits by redrawing the edited traces alone: no layout edit, and no
    edit a transition would not draw (``undrawn``) — a transition neither redraws the legend nor re-runs
    autorange. (Reads the figure's own property dicts, ``fig._data`` and ``fig._layout``: going through
    ``fig.data[i]`` and ``fig.layout`` built plotly objects and cost ~2 ms a change.)"""
    if layout_edits or not trace_edits:
        return False
    return not any(undrawn(fig, i, edits) for i, edits in trace_edits.items())


def undrawn(fig: go.Figure, i: int, edits: Iterable[str]) -> set[str]:
    """Which of trace ``i``'s edited properties (plotly's dotted paths) a zero-length transition would not
    draw: all of them on a trace type without transitions (``ANIMATABLE``) or on an axis whose range is not
    fixed (no autorange after a transition); else those beyond ``DATA_ONLY``, and a colour the legend shows."""
    trace, layout = fig._data[i], fig._layout
    edits = set(edits)
    if trace.get("type", "scatter") not in ANIMATABLE or not on_fixed_axes(trace, layout):
        return edits
    shows = layout.get("showlegend") is not False and trace.get("showlegend") is not False
    return (edits - DATA_ONLY) | (edits & COLOURS if shows else set())


def on_fixed_axes(trace: dict, layout: dict) -> bool:
    """Whether a trace (its property dict) sits on an x and a y axis (of the layout's dict) with fixed ranges."""
    return all(_fixed(layout.get(_axis_key(trace.get(d + "axis") or d)) or {}) for d in ("x", "y"))


def _axis_key(axis_id: str) -> str:
    """A trace's axis id ("x", "y2") → its layout key ("xaxis", "yaxis2")."""
    return axis_id[0] + "axis" + axis_id[1:]


def _fixed(axis: Any) -> bool:
    """An axis (a layout object or its dict) with both ends of its range set and autorange off."""
    get = axis.get if isinstance(axis, dict) else lambda k: getattr(axis, k)
    r = get("range")
    return r is not None and all(v is not None for v in r) and get("autorange") in (None, False)


def fix_ranges(fig: go.Figure, frames: Iterable[Frame] = ()) -> set[str]:
    """Fix every autoranged numeric axis at about the range autorange would give over the figure's data and
    ``frames``.

    The extent of each axis's data — a trace's implicit positions 0 … n−1 where it gives none, a bar's half
    width either side of its position, 0 under bars on their value axis — padded by 5 % of its span on each
    side (half a unit when the span is 0; on a log axis in log₁₀ of the positive values; none below bars
    that stand on 0). Left alone: axes with a range or reversed, and axes holding text (categories, dates).
    An explorer whose controls only move data inside these ranges can then be updated without a redraw
    (``redraw_free``), and its axes stay put while a slider moves — the same scale before and after, as a
    comparison needs. Returns the layout keys of the axes it fixed ("xaxis", "yaxis2", …)."""
    values: dict[str, list[float]] = {}
    floors: set[str] = set()  # axes with bars standing on 0
    skip: set[str] = set()
    per_trace = [[t.to_plotly_json()] for t in fig.data]
    for frame in frames:
        for i, attrs in frame.items():
            per_trace[i].append(attrs)
    for trace, seen in zip(fig.data, per_trace):
        horizontal = trace.type == "bar" and trace.orientation == "h"
        for dim, other in (("x", "y"), ("y", "x")):
            key = _axis_key(getattr(trace, dim + "axis") or dim)
            axis = fig.layout[key]
            if _fixed(axis) or axis.autorange not in (None, True, False) or key in skip:
                skip.add(key)
                continue
            vals = values.setdefault(key, [])
            bar_positions = trace.type == "bar" and (dim == "y") == horizontal
            for attrs in seen:
                v = attrs.get(dim)
                if v is None and attrs.get(other) is not None:  # plotly puts the points at 0 … n−1
                    v = list(range(len(plain(attrs[other]))))
                if v is None:
                    continue
                try:
                    pts = [float(x) for x in np.ravel(np.asarray(plain(v), dtype=object)) if x is not None]
                except (TypeError, ValueError):  # categories or dates: autorange stays
                    skip.add(key)
                    break
                vals.extend(pts)
                if bar_positions and pts:
                    half = 0.5 * (trace.width if isinstance(trace.width, (int, float)) else 0.8 * _spacing(pts))
                    vals.extend([min(pts) - half, max(pts) + half])
            if trace.type == "bar" and not bar_positions:
                vals.append(0.0)
                floors.add(key)
    fixed = set()
    for key, vals in values.items():
        if key in skip:
            continue
        axis = fig.layout[key]
        v = np.asarray(vals, dtype=float)
        v = v[np.isfinite(v)]
        if axis.type == "log":
            v = np.log10(v[v > 0])
        if v.size == 0:
            continue
        lo, hi = float(v.min()), float(v.max())
        pad = 0.05 * (hi - lo) if hi > lo else 0.5
        low = lo if (axis.type != "log" and lo == 0.0 and key in floors) else lo - pad  # bars stand on 0
        axis.update(range=[low, hi + pad], autorange=False)
        fixed.add(key)
    return fixed


def _spacing(positions: list[float]) -> float:
    """The smallest gap between distinct bar positions (1 for a single bar), as plotly sizes bars."""
    p = np.unique(np.asarray(positions, dtype=float))
    return float(np.min(np.diff(p))) if p.size > 1 else 1.0
