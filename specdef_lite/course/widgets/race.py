"""03 — the optimizer race: T_A(τ) and η_max of each attacker's optimizer A as the lock strength α grows.

``RaceExplorer`` draws an ``experiments.race.RaceTable`` (each optimizer's best response at every α): the
loss curves at the chosen α, T(τ) against α and η_max against α with the 1/α² law of GD beside it; every
curve it shows is a ``Trace`` from the library's ``train``, computed once and cached.
"""
from __future__ import annotations

import math
import re

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ...common.display import gaps
from ...experiments.grid import nearest, snap
from ...experiments.plots import COLORS
from ...experiments.race import RaceTable
from ...experiments.tuning import LABELS
from ._base import Explorer, fit_layout, log_ticks
from .controls import alpha_slider, compact

__all__ = ["RaceExplorer", "LABELS", "COLORS"]


def _eta(lr: float) -> str:
    """A learning rate in 3 digits with a short exponent: 0.316, 3.16e-7 (slider labels and legend alike)."""
    text = f"{float(lr):.3g}"
    return re.sub(r"e([+-])0*(\d)", r"e\1\2", text)


class RaceExplorer(Explorer):
    """α slider, optimizer and η: the chosen run's loss curve at α beside every optimizer's best run at α;
    below, T(τ) against α and η_max against α (log–log, with the 1/α² law of GD and 1/α of Adam).

    Live, the η slider offers the learning rates the attacker's scan tried for the chosen optimizer at the
    chosen α (``RaceTable.sweeps``): every position is a run already in the table, so no control change
    trains anything (a Newton run not in the table cost ~350 ms). Changing α or the optimizer moves η to
    the nearest value tried there. The start: α (default the grid's first), the optimizer, and η = ``lr``
    if given, else that optimizer's best η at the start α (its largest stable η if none reached τ).
    """

    def __init__(self, table: RaceTable, *, alpha: float | None = None, optimizer: str | None = None,
                 lr: float | None = None, live: bool | None = None):
        self.table = table
        self.grid = list(table.alphas)
        opts = table.optimizers
        self._opt0 = optimizer or opts[0]
        if self._opt0 not in opts:
            raise ValueError(f"optimizer {self._opt0!r} is not in the table ({', '.join(opts)})")
        self._alpha0 = snap(alpha if alpha is not None else self.grid[0], self.grid)
        self._lr0 = float(lr) if lr is not None and np.isfinite(lr) else self._sensible_lr(self._opt0, self._alpha0)
        self._syncing = False
        super().__init__(live=live)

    def choices(self):
        return {"optimizer": self.table.optimizers}  # set() refuses an optimizer the table did not race

    def tried(self, optimizer: str, alpha: float) -> list[float]:
        """The η the attacker's scan tried for ``optimizer`` at (the grid α nearest) ``alpha``, ascending."""
        return sorted(float(v) for v in self.table.sweeps[optimizer][self.table.index(alpha)].lrs)

    def _sensible_lr(self, optimizer: str, alpha: float) -> float:
        """The η shown first: the best η, else the largest stable η, else the smallest tried (``BestResponse.shown``)."""
        return float(self.table.sweeps[optimizer][self.table.index(alpha)].shown.lr)

    def _lr_options(self, optimizer: str, alpha: float, lr: float) -> tuple[list, float]:
        """Options of the η slider at (optimizer, α) and the value nearest ``lr`` among them (log scale)."""
        tried = self.tried(optimizer, alpha)
        value = tried[nearest(tried, lr)] if lr not in tried else lr
        return [(_eta(v), v) for v in tried], value

    def make_controls(self):
        if not self.live:
            return {"alpha": self._alpha0, "optimizer": self._opt0, "lr": self._lr0}
        import ipywidgets as W
        opts = [(LABELS.get(o, o), o) for o in self.table.optimizers]
        lr_opts, lr0 = self._lr_options(self._opt0, self._alpha0, self._lr0)
        if self._lr0 != lr0:  # an η the scan did not try at the start α (given by the caller): offer it too,
            label = _eta(self._lr0)  # under a label of its own (the page tells η apart by its label)
            label = f"{self._lr0:.6g}" if label in {o[0] for o in lr_opts} else label
            lr_opts, lr0 = sorted(lr_opts + [(label, self._lr0)], key=lambda o: o[1]), self._lr0
        return {
            "alpha": alpha_slider(self._alpha0, self.grid),
            "optimizer": W.Dropdown(options=opts, value=self._opt0, description="optimizer",
                                    **compact({}, width="170px")),
            "lr": W.SelectionSlider(options=lr_opts, value=lr0, description="η", continuous_update=False,
                                    **compact({})),
        }

    def _on_change(self, change=None) -> None:
        """α or optimizer changed: first give the η slider the values tried there, then update once."""
        if self._syncing:
            return
        w = self.controls["lr"]
        if change is not None and change.get("owner") is not w:
            state = self.state()
            options, value = self._lr_options(state["optimizer"], state["alpha"], state["lr"])
            if list(w.options) != options:
                self._syncing = True
                try:  # one message to the page: it draws from the controls' state, not from a passing one
                    with w.hold_sync():
                        w.options = options  # ipywidgets selects the first option here …
                        w.value = value  # … then η goes to the value nearest the one the student had
                finally:
                    self._syncing = False
        super()._on_change(change)

    def resolve(self, state, moved):
        """α or the optimizer moved, not η: η goes to the tried value nearest the student's (as ``_on_change``
        does)."""
        if "lr" in moved:
            return state
        return {**state, "lr": self._lr_options(state["optimizer"], state["alpha"], state["lr"])[1]}

    def option_label(self, name, value):
        """η's label: the slider's own where it offers ``value``, else the one ``_lr_options`` will give it."""
        label = super().option_label(name, value)
        return _eta(value) if name == "lr" and label is None else label

    def build_figure(self) -> go.Figure:
        t = self.table
        opts = t.optimizers
        fig = make_subplots(rows=2, cols=2, specs=[[{"colspan": 2}, None], [{}, {}]], vertical_spacing=0.14,
                            subplot_titles=("harmful loss ℒ_H during the attack (each optimizer at its best η)",
                                            "steps to reach τ vs α", "largest stable η vs α"))
        n_max = max(t.steps.values())
        for o in opts:  # 0 … n-1: best run of each optimizer at α
            fig.add_trace(go.Scatter(x=[], y=[], mode="lines", name=f"{LABELS.get(o, o)} (best η)",
                                     line=dict(color=COLORS.get(o), width=1.5, dash="dot"), legendgroup=o), 1, 1)
        fig.add_trace(go.Scatter(x=[], y=[], mode="lines", name="your run", line=dict(color="black", width=3)), 1, 1)
        fig.add_trace(go.Scatter(x=[0, n_max], y=[t.target, t.target], mode="lines", name="target τ",
                                 line=dict(color="grey", dash="dash")), 1, 1)
        a = t.alphas
        for o in opts:  # steps to τ; unreached at the budget as open markers
            s = t.best_steps(o)
            fig.add_trace(go.Scatter(x=a.tolist(), y=gaps(s), mode="lines+markers", name=LABELS.get(o, o),
                                     line=dict(color=COLORS.get(o)), legendgroup=o, showlegend=False,
                                     hovertemplate="α=%{x:.0e}: %{y} steps<extra>" + LABELS.get(o, o) + "</extra>"),
                          2, 1)
            miss = np.isnan(s)
            fig.add_trace(go.Scatter(x=a[miss].tolist(), y=[t.steps[o]] * int(miss.sum()), mode="markers",
                                     marker=dict(symbol="triangle-up-open", size=11, color=COLORS.get(o)),
                                     legendgroup=o, showlegend=False,
                                     hovertemplate=f"α=%{{x:.0e}}: not reached in {t.steps[o]} steps<extra>"
                                                   f"{LABELS.get(o, o)}</extra>"), 2, 1)
        fig.add_trace(go.Scatter(x=[], y=[1, 1.6 * n_max], mode="lines", line=dict(color="black", width=1),
                                 showlegend=False, hoverinfo="skip"), 2, 1)
        lr_all = []
        for o in opts:  # η_max vs α
            m = t.max_stable_lr(o)
            lr_all += [v for v in m if np.isfinite(v)]
            fig.add_trace(go.Scatter(x=a.tolist(), y=gaps(m), mode="lines+markers", name=LABELS.get(o, o),
                                     line=dict(color=COLORS.get(o)), legendgroup=o, showlegend=False,
                                     hovertemplate="α=%{x:.0e}: η_max=%{y:.2g}<extra>" + LABELS.get(o, o) + "</extra>"),
                          2, 2)
        for o, power, text in (("sgd", 2, "∝ 1/α² (σ₁(H) ∝ α²)"), ("adam", 1, "∝ 1/α")):
            m = t.max_stable_lr(o) if o in opts else np.array([np.nan])
            if np.isfinite(m).any():  # the law, anchored at the largest α measured (where the lock dominates)
                j = int(np.flatnonzero(np.isfinite(m))[-1])
                fig.add_trace(go.Scatter(x=a.tolist(), y=(m[j] * (a[j] / a) ** power).tolist(), mode="lines",
                                         name=text, line=dict(color=COLORS[o], dash="dash", width=1)), 2, 2)
        lo_lr = min(lr_all) if lr_all else 1e-6
        fig.add_trace(go.Scatter(x=[], y=[lo_lr / 3, 10], mode="lines", line=dict(color="black", width=1),
                                 showlegend=False, hoverinfo="skip"), 2, 2)
        # your run's outcome, top right of the loss plot (text, not its legend name: a legend that changes needs
        # a redraw of the whole figure; see live.LiveFigure.batch)
        fig.add_trace(go.Scatter(x=[n_max], y=[t.loss0 * 10 ** 1.9], mode="text", text=[""], textposition="bottom left",
                                 textfont=dict(size=12), showlegend=False, hoverinfo="skip"), 1, 1)
        self._idx = dict(best=list(range(len(opts))), mine=len(opts), steps_marker=len(opts) + 2 + 2 * len(opts),
                         lr_marker=len(fig.data) - 2, status=len(fig.data) - 1)
        fig.update_xaxes(title_text="step t", range=[0, n_max], row=1, col=1)
        fig.update_yaxes(title_text="ℒ_H (log)", type="log", row=1, col=1,
                         range=[math.log10(t.target) - 1.2, math.log10(t.loss0) + 2], **log_ticks())
        fig.update_xaxes(title_text="α (log)", type="log", row=2, col=1, **log_ticks())
        fig.update_xaxes(title_text="α (log)", type="log", row=2, col=2, **log_ticks())
        fig.update_yaxes(title_text="steps to τ (log; ▵ = not reached)", type="log", row=2, col=1,
                         range=[0, math.log10(1.6 * n_max)], **log_ticks())
        fig.update_yaxes(title_text="η_max (log)", type="log", row=2, col=2, **log_ticks())
        return fit_layout(fig, height=800, top=110, legend_y=1.06)

    def compute(self, alpha, optimizer, lr) -> dict:
        t = self.table
        a = float(t.alphas[t.index(alpha)])
        frame = {}
        for i, o in zip(self._idx["best"], t.optimizers):
            tr = t.trace(o, a)
            frame[i] = {"x": list(range(len(tr.losses))), "y": gaps(tr.losses)}
        mine = t.trace(optimizer, a, lr)
        s = mine.steps_to(t.target)
        status = "diverged" if mine.diverged else (f"τ in {s} steps" if s is not None else "τ not reached")
        frame[self._idx["mine"]] = {"x": list(range(len(mine.losses))), "y": gaps(mine.losses)}
        label = LABELS.get(optimizer, optimizer)
        frame[self._idx["status"]] = {"text": [f"your run: {label}, η = {_eta(lr)}: {status}"]}
        frame[self._idx["steps_marker"]] = {"x": [a, a]}
        frame[self._idx["lr_marker"]] = {"x": [a, a]}
        return frame
