"""Explorer: controls + one figure + a cached ``frame(state)``; live it is a FigureWidget, headless a static slider.

The pattern of STYLE.md §8: build the figure once with every trace it will need; a control change only
looks the new state up in a cache (or computes it once) and assigns trace data inside
``fig.batch_update()``, so the browser gets one message per change. The same ``frame`` function feeds
the static figure, whose own plotly slider steps through the precomputed frames of one control (α), so a
page without a kernel keeps a working slider. Tests call ``explorer.set(alpha=…)`` and read traces.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go

from ..display import is_live, slider_figure
from ..experiments.grid import log_grid, nearest, snap  # noqa: F401 - the explorers' α grids

Frame = dict[int, dict[str, Any]]  # trace index -> {"x": ..., "y": ..., ...}


class Explorer:
    """One interactive figure. Subclasses define ``controls``, ``build_figure()`` and ``compute(**state)``.

    ``static_over`` names the control whose grid the static figure's slider steps through (usually α).
    """

    static_over: str = "alpha"
    prefix: str = "α = "

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
        self.apply(self.state())
        self.live = live
        if live:
            self.figure = go.FigureWidget(self.figure)
        if self.live:
            for name, w in self.controls.items():
                w.observe(self._on_change, names="value")

    # --- to override ---------------------------------------------------------------------------------
    def make_controls(self) -> dict[str, Any]:
        raise NotImplementedError

    def build_figure(self) -> go.Figure:
        raise NotImplementedError

    def compute(self, **state) -> Frame:
        raise NotImplementedError

    def static_grid(self) -> Sequence[Any]:
        """Values of ``static_over`` the static slider shows (default: the control's options)."""
        return self.grid

    # --- machinery -----------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {n: getattr(w, "value", w) for n, w in self.controls.items()}

    def frame(self, **state) -> Frame:
        """``compute`` memoised on the state, so moving a slider back costs only a lookup."""
        key = tuple(sorted(state.items()))
        if key not in self._cache:
            self._cache[key] = self.compute(**state)
        return self._cache[key]

    def apply(self, state: dict[str, Any]) -> None:
        self._assign(self.frame(**state))

    def _assign(self, frame: Frame) -> None:
        """Write a frame into the figure: one ``batch_update`` message when live."""
        if self.live:
            with self.figure.batch_update():
                for i, attrs in frame.items():
                    self.figure.data[i].update(attrs)
        else:
            for i, attrs in frame.items():
                self.figure.data[i].update(attrs)

    def _on_change(self, _change=None) -> None:
        t0 = time.perf_counter()
        self.apply(self.state())
        self.latencies.append(time.perf_counter() - t0)

    def set(self, **values) -> "Explorer":
        """Set controls (as a student would) and update the figure; works live and headless."""
        for name, v in values.items():
            if name not in self.controls:
                raise ValueError(f"unknown control {name!r}; controls are {sorted(self.controls)}")
            w = self.controls[name]
            if hasattr(w, "value"):
                w.value = v  # live: the observer updates the figure
            else:
                self.controls[name] = v
        if not self.live:
            self.apply(self.state())
        return self

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
        """The ipywidgets layout: controls above the figure."""
        import ipywidgets as W
        return W.VBox([W.HBox(list(self.controls.values())), self.figure])

    def _ipython_display_(self):
        from IPython.display import display

        from ..display import show
        if self.live:
            display(self.widget())
        else:
            show(self.static_figure())


def _label(v: Any) -> str:
    if isinstance(v, (int, float, np.floating)):
        return f"{float(v):.3g}"
    return str(v)


def alpha_slider(value: float = 1.0, lo: float = 1.0, hi: float = 1e6, per_decade: int = 4, **kw):
    """A log slider for α with a readout in the symbol; values snap to the explorer's precomputed grid."""
    import ipywidgets as W
    return W.FloatLogSlider(value=value, base=10, min=np.log10(lo), max=np.log10(hi), step=1 / per_decade,
                            description="α", readout_format=".0e", continuous_update=False, **kw)
