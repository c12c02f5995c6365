"""Explorer: controls + one figure + a cached ``frame(state)``; live it is a FigureWidget, headless a static slider.

The pattern of STYLE.md §8: build the figure once with every trace it will need; a control change only
looks the new state up in a cache (or computes it once) and assigns trace data inside one batch, so the
browser gets one message per change: live, the axes are fixed over what the controls reach (``fix_ranges``)
and the names in the legend never change, so that message is a transition that redraws only the edited
traces (``live.LiveFigure.batch``) rather than the whole figure. Once the page is there, it holds the
frames one student action away (``page.PageFrames``, filled by ``page_wanted``) and draws a change itself on
the control's own event, the kernel only keeping its copy in step. The same ``frame`` function feeds
the static figure, whose own plotly slider steps through the precomputed frames of one control (α), so a
page without a kernel keeps a working slider. Tests call ``explorer.set(alpha=…)`` and read traces.
"""
from __future__ import annotations

import itertools
import math
import time
from collections.abc import Collection, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go

from ...common.display import explorer_bundle, fmt, is_live, plain, slider_figure
from .controls import accepted_range, on_options
from .live import Frame, LiveFigure, fix_ranges
from .page import PageFrames, Wanted, neighbours, page_key, position, positions

class Explorer:
    """One interactive figure. Subclasses define ``controls``, ``build_figure()`` and ``compute(**state)``.

    ``static_over`` names the control whose grid the static figure's slider steps through (usually α).
    """

    static_over: str = "alpha"
    prefix: str = "α = "
    PAGE_ALL_STATES = 64  # live: the page gets every state (after the next ones) where there are at most this many

    def __init__(self, *, live: bool | None = None):
        self.live = is_live(live)
        self._cache: dict[tuple, Frame] = {}
        self.latencies: list[float] = []
        self.controls = self.make_controls()  # name -> ipywidget (live) or plain default value
        # Fill the plain figure with the first state *before* wrapping it: a FigureWidget whose traces are
        # updated before the browser first draws it lost their x arrays in JupyterLab (caught by
        # tests/test_browser.py: curves drawn against their indices).
        live, self.live = self.live, False
        self.figure = self.build_figure()
        self.figure.update_layout(autosize=True, width=None)  # as wide as the output area, whatever the window
        self.apply(self.state())
        self.live = live
        self._box = None
        self.page: PageFrames | None = None  # live: the frames the browser holds, to draw a change itself
        self.fixed_axes: set[str] = set()  # live: the axes fix_ranges fixed (the rest the explorer set itself)
        if live:  # axes fixed over what the controls reach, so a control change needs no redraw (``redraw_free``)
            self.fixed_axes = fix_ranges(self.figure, self.range_frames())
        if live:  # plain lists only: see display.plain (a numpy array here logs a ValueError on every update)
            self.figure = LiveFigure(data=[plain(t.to_plotly_json()) for t in self.figure.data],
                                      layout=plain(self.figure.layout.to_plotly_json()))
            for name, w in self.controls.items():
                w.observe(self._on_change, names="value")
            self.page = PageFrames(self.figure, self.controls.values(), self.page_wanted)
            self.figure.observe(self._on_relayout, names="_js2py_relayout")

    # --- to override ---------------------------------------------------------------------------------
    def make_controls(self) -> dict[str, Any]:
        raise NotImplementedError

    def build_figure(self) -> go.Figure:
        raise NotImplementedError

    def compute(self, **state) -> Frame:
        raise NotImplementedError

    def range_frames(self) -> Iterable[Frame]:
        """Frames whose data the live figure's autoranged axes must hold (``fix_ranges``), beyond the figure's
        own data. Default none: the controls only move data inside what the figure already shows."""
        return ()

    def page_frame(self, state: dict[str, Any]) -> Frame:
        """Everything the state shows that a control may change: what the page draws from any other state.
        Default ``frame``; an explorer whose ``apply`` adds traces of its own adds them here too."""
        return self.frame(**state)

    def resolve(self, state: dict[str, Any], moved: Collection[str]) -> dict[str, Any]:
        """The state the live explorer settles in when the controls ``moved`` take their values in ``state``
        (default: that state; an explorer whose ``_on_change`` adjusts other controls does the same here)."""
        return state

    def option_label(self, name: str, value: Any) -> str | None:
        """The label a selection control shows for ``value`` (default: from its options)."""
        return position(self.controls[name], value=value)

    def static_grid(self) -> Sequence[Any]:
        """Values of ``static_over`` the static slider shows (default: the control's options)."""
        return self.grid

    # --- machinery -----------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {n: getattr(w, "value", w) for n, w in self.controls.items()}

    def frame(self, **state) -> Frame:
        """``compute`` memoised on the state, so moving a slider back costs only a lookup."""
        key = tuple(sorted((n, float(f"{v:.12g}") if isinstance(v, float) else v) for n, v in state.items()))
        if key not in self._cache:  # (12 digits: a slider's 10^x from JavaScript and from Python, one key)
            self._cache[key] = self.compute(**state)
        return self._cache[key]

    def apply(self, state: dict[str, Any]) -> None:
        self._assign(self.frame(**state))

    def _assign(self, frame: Frame) -> None:
        """Write a frame into the figure: one message when live (``LiveFigure.batch``), none once the page
        draws the changes itself (``page``; the kernel's copy is kept in step, ``LiveFigure.quiet``)."""
        if self.live:
            with (self.figure.quiet() if self.page is not None and self.page.ready else self.figure.batch()):
                for i, attrs in frame.items():
                    self.figure.data[i].update(plain(attrs))
        else:
            for i, attrs in frame.items():
                self.figure.data[i].update(plain(attrs))

    def _on_change(self, _change=None) -> None:
        if getattr(self, "_holding", False):  # set() assigns several controls, then applies once
            return
        t0 = time.perf_counter()
        self.apply(self.state())
        if self.page is not None:
            self.page.refresh()  # the page's frame of this state if it lacks it; the next ones when idle
        self.latencies.append(time.perf_counter() - t0)

    def _on_relayout(self, change) -> None:
        """The student zoomed, panned or autoscaled an axis: the page's frames were judged on the old axes."""
        if any(k.startswith(("xaxis", "yaxis")) for k in ((change["new"] or {}).get("relayout_data") or {})):
            self.page.reset()

    def page_key(self, state: dict[str, Any]) -> str:
        """The key under which the page files ``state``'s frame (the controls' positions, ``page.position``)."""
        return page_key(self.option_label(n, state[n]) if getattr(w, "options", None) is not None
                        else position(w, value=state[n]) for n, w in self.controls.items())

    def page_wanted(self) -> Iterator[Wanted]:
        """What the page should hold, most urgent first: the current state, then each state one student action
        away (``page.neighbours``), filed under the key the page computes at that action (the other controls
        as they stand) and under the key of the state it settles in (``resolve``); then, where the controls
        reach at most ``PAGE_ALL_STATES`` states and moving one never moves another, every state."""
        state = self.state()
        here = {n: position(w) for n, w in self.controls.items()}
        yield (self.page_key(state),), lambda: self.page_frame(state)
        for name, w in self.controls.items():
            for value, pos in neighbours(w):
                new = self.resolve({**state, name: value}, {name})
                keys = (page_key({**here, name: pos}.values()), self.page_key(new))
                yield tuple(dict.fromkeys(keys)), (lambda s=new: self.page_frame(s))
        if type(self).resolve is Explorer.resolve:  # where the states are few, then all of them (a far jump too)
            grids = [positions(w) for w in self.controls.values()]
            if math.prod(map(len, grids)) <= self.PAGE_ALL_STATES:
                for combo in itertools.product(*grids):
                    s = dict(zip(self.controls, (v for v, _ in combo)))
                    yield (page_key(p for _, p in combo),), (lambda s=s: self.page_frame(s))

    def choices(self) -> dict[str, Sequence[Any]]:
        """Control → the values it may take, where that is a fixed list (override; live widgets add theirs)."""
        return {}

    def set(self, **values) -> "Explorer":
        """Set controls (as a student would) and update the figure; works live and headless.

        Every value is checked before any is stored (``check``): a value the explorer cannot show raises a
        ValueError that says why, and leaves the explorer — its controls and its figure — as it was.
        """
        self.check(**values)
        self._holding = True
        try:
            for name, v in values.items():
                w = self.controls[name]
                if hasattr(w, "value"):
                    w.value = on_options(w, v)  # live: the figure is updated once, below
                else:
                    self.controls[name] = v
        finally:
            self._holding = False
        self._on_change() if self.live else self.apply(self.state())
        return self

    def check(self, **values) -> dict[str, Any]:
        """The state ``set(**values)`` would give, or ValueError (nothing stored): unknown controls, a value of
        the wrong kind (a number for a number, a whole number for a whole one, text for a choice), NaN/inf, a
        choice not offered, an α outside the explorer's precomputed grid, or a state whose frame fails."""
        unknown = [n for n in values if n not in self.controls]
        if unknown:
            raise ValueError(f"unknown control {unknown[0]!r}; controls are {sorted(self.controls)}")
        state = self.state()
        choices = dict(self.choices())
        for name, w in self.controls.items():
            options = getattr(w, "options", None)
            if options and name not in choices:
                choices[name] = [o[1] if isinstance(o, tuple) else o for o in options]
        for name, v in values.items():
            _check_kind(name, v, state[name])
            allowed = choices.get(name)
            if allowed is not None and isinstance(v, str) and v not in allowed:
                raise ValueError(f"{name}={v!r} is not offered here; choose one of {', '.join(map(str, allowed))}")
            w = self.controls[name]
            lo, hi = accepted_range(w, getattr(self, "grid", None) if name == "alpha" else None)
            if lo is not None and not lo <= float(v) <= hi:
                raise ValueError(f"{name}={v!r} lies outside this explorer's range {lo:.3g} … {hi:.3g}")
        new = {**state, **values}
        if self.live:  # the state resolve() predicts (03: η moved to a value tried there), not one never shown
            new = self.resolve(new, set(values))
        try:
            self.frame(**new)
        except Exception as e:  # noqa: BLE001 - a user's value the maths rejects: say why, keep the old state
            raise ValueError(f"{type(self).__name__} cannot show "
                             f"{', '.join(f'{n}={v!r}' for n, v in values.items())}: {e}") from e
        return new

    def static_figure(self) -> go.Figure:
        """A plain figure whose slider steps through ``static_grid()`` with the other controls as they are."""
        fig = go.Figure(self.figure)
        state = self.state()
        grid = list(self.static_grid())
        frames = [self.frame(**{**state, self.static_over: v}) for v in grid]
        labels = [_label(v) for v in grid]
        current = state[self.static_over]
        active = min(range(len(grid)), key=lambda i: abs(np.log10(float(grid[i])) - np.log10(float(current)))
                     if isinstance(current, (int, float)) and current > 0 else (grid[i] != current))
        return slider_figure(fig, frames, labels, prefix=self.prefix, active=active)

    def widget(self):
        """The ipywidgets layout: one row of controls (wrapping only where the output area is too narrow)
        above the figure, which fills the output area's width. Built once: every display shows the same box."""
        import ipywidgets as W
        if self._box is None:
            row = W.HBox(list(self.controls.values()),
                         layout=W.Layout(flex_flow="row wrap", align_items="center", width="100%",
                                         justify_content="flex-start", grid_gap="0px 18px"))
            self._box = W.VBox([row, self.figure], layout=W.Layout(width="100%"))
        return self._box

    def _ipython_display_(self):
        from IPython.display import display

        from ...common.display import show
        if self.live:
            display(explorer_bundle(self.widget(), self.figure, _name(self)), raw=True)
        else:
            show(self.static_figure())


def _check_kind(name: str, value: Any, current: Any) -> None:
    """ValueError unless ``value`` is the same kind of thing as the control's ``current`` value."""
    is_num = isinstance(current, (int, float, np.integer, np.floating)) and not isinstance(current, bool)
    if is_num:
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise ValueError(f"{name} must be a number, got {value!r}")
        if not np.isfinite(float(value)):
            raise ValueError(f"{name} must be finite, got {value!r}")
        if isinstance(current, (int, np.integer)) and float(value) != int(value):
            raise ValueError(f"{name} must be a whole number, got {value!r}")
    elif isinstance(current, str) and not isinstance(value, str):
        raise ValueError(f"{name} must be one of the offered names (text), got {value!r}")


def _name(explorer: Explorer) -> str:
    """'explorer' with a hint of which: ConditioningExplorer → 'conditioning explorer'."""
    return type(explorer).__name__.replace("Explorer", "").lower() + " explorer"


def _label(v: Any) -> str:
    if isinstance(v, (int, float, np.floating)):
        return fmt(v)
    return str(v)


def fit_layout(fig: go.Figure, *, height: int, top: int, legend_y: float | None = None, left: int = 60,
               bottom: int = 45, **layout: Any) -> go.Figure:
    """``fig`` sized for a 900 px output area: legend as one row above the plots (at ``legend_y``; None: no
    legend), subplot titles at 14 px so each stays on one line. ``layout``: further ``update_layout`` keywords."""
    if legend_y is None:
        layout.setdefault("showlegend", False)
    else:
        layout["legend"] = dict(orientation="h", yanchor="bottom", y=legend_y, x=0, xanchor="left", font_size=12)
    fig.update_layout(height=height, margin=dict(t=top, b=bottom, l=left, r=15), **layout)
    fig.update_annotations(font_size=14)
    return fig


def log_ticks() -> dict:
    """Tick settings for a log axis that stay legible: one label a decade, as a power of ten.

    plotly's default on a log axis spanning a few decades labels every 2 and 5 as well, in small print that
    crowds the axis (notebook 04's steps axis). Decade labels are also the cheapest to draw: a change that
    needs a full redraw (``live.redraw_free`` says when) redraws every axis, and tick arrays and minor ticks
    measurably slowed notebook 03's updates when every update did."""
    return dict(dtick=1, exponentformat="power")
