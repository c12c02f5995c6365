"""03 — the optimizer race: T_A(τ) and η_max of each attacker's optimizer A as the lock strength α grows.

``RaceExplorer`` draws an ``experiments.race.RaceTable`` (each optimizer's best response at every α): the
loss curves at the chosen α, T(τ) against α and η_max against α with the 1/α² law of GD beside it; every
curve it shows is a ``Trace`` from the library's ``train``, computed once and cached.
"""
from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..experiments.plots import COLORS
from ..experiments.race import RaceTable
from ..experiments.tuning import LABELS
from ._base import Explorer, alpha_slider, snap

__all__ = ["RaceExplorer", "LABELS", "COLORS"]


def _finite(values) -> list:
    """Floats for plotly; non-finite entries (a diverged loss) become None, i.e. a gap."""
    return [float(v) if np.isfinite(v) else None for v in np.asarray(values, dtype=float)]


class RaceExplorer(Explorer):
    """α slider, optimizer and η: the chosen run's loss curve at α beside every optimizer's best run at α;
    below, T(τ) against α and η_max against α (log–log, with the 1/α² law of GD and 1/α of Adam)."""

    def __init__(self, table: RaceTable, *, alpha: float | None = None, optimizer: str | None = None,
                 lr: float | None = None, live: bool | None = None):
        self.table = table
        self.grid = list(table.alphas)
        opts = table.optimizers
        self._opt0 = optimizer or opts[0]
        if self._opt0 not in opts:
            raise ValueError(f"optimizer {self._opt0!r} is not in the table ({', '.join(opts)})")
        all_lrs = sorted({float(v) for o in opts for s in table.sweeps[o] for v in s.lrs})
        self.lr_options = all_lrs
        lr0 = lr if lr is not None else table.best_lr(self._opt0)[0]
        self._lr0 = float(lr0) if lr0 is not None and np.isfinite(lr0) else all_lrs[len(all_lrs) // 2]
        self._alpha0 = snap(alpha if alpha is not None else self.grid[0], self.grid)
        super().__init__(live=live)

    def choices(self):
        return {"optimizer": self.table.optimizers}  # set() refuses an optimizer the table did not race

    def make_controls(self):
        if not self.live:
            return {"alpha": self._alpha0, "optimizer": self._opt0, "lr": self._lr0}
        import ipywidgets as W
        g = np.log10(self.grid)
        per_decade = (len(g) - 1) / (g[-1] - g[0]) if len(g) > 1 and g[-1] > g[0] else 1
        opts = [(LABELS.get(o, o), o) for o in self.table.optimizers]
        lr_opts = [(f"{v:.2g}", v) for v in self.lr_options]
        if self._lr0 not in self.lr_options:
            lr_opts = sorted(lr_opts + [(f"{self._lr0:.2g}", self._lr0)], key=lambda t: t[1])
        return {
            "alpha": alpha_slider(self._alpha0, lo=self.grid[0], hi=self.grid[-1], per_decade=per_decade),
            "optimizer": W.Dropdown(options=opts, value=self._opt0, description="optimizer"),
            "lr": W.SelectionSlider(options=lr_opts, value=self._lr0, description="η", continuous_update=False),
        }

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
            fig.add_trace(go.Scatter(x=a.tolist(), y=_finite(s), mode="lines+markers", name=LABELS.get(o, o),
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
            fig.add_trace(go.Scatter(x=a.tolist(), y=_finite(m), mode="lines+markers", name=LABELS.get(o, o),
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
        self._idx = dict(best=list(range(len(opts))), mine=len(opts), steps_marker=len(opts) + 2 + 2 * len(opts),
                         lr_marker=len(fig.data) - 1)
        fig.update_xaxes(title_text="step t", range=[0, n_max], row=1, col=1)
        fig.update_yaxes(title_text="ℒ_H (log)", type="log", row=1, col=1,
                         range=[math.log10(t.target) - 1.2, math.log10(t.loss0) + 2])
        fig.update_xaxes(title_text="α (log)", type="log", row=2, col=1)
        fig.update_xaxes(title_text="α (log)", type="log", row=2, col=2)
        fig.update_yaxes(title_text="steps to τ (log; ▵ = not reached)", type="log", row=2, col=1,
                         range=[0, math.log10(1.6 * n_max)])
        fig.update_yaxes(title_text="η_max (log)", type="log", row=2, col=2)
        fig.update_layout(height=800, margin=dict(t=110, b=40, l=60, r=20),
                          legend=dict(orientation="h", yanchor="bottom", y=1.06, x=0, xanchor="left"))
        return fig

    def compute(self, alpha, optimizer, lr) -> dict:
        t = self.table
        a = float(t.alphas[t.index(alpha)])
        frame = {}
        for i, o in zip(self._idx["best"], t.optimizers):
            tr = t.trace(o, a)
            frame[i] = {"x": list(range(len(tr.losses))), "y": _finite(tr.losses)}
        mine = t.trace(optimizer, a, lr)
        s = mine.steps_to(t.target)
        status = "diverged" if mine.diverged else (f"τ in {s} steps" if s is not None else "τ not reached")
        frame[self._idx["mine"]] = {"x": list(range(len(mine.losses))), "y": _finite(mine.losses),
                                    "name": f"your run: {LABELS.get(optimizer, optimizer)}, η={lr:.2g} ({status})"}
        frame[self._idx["steps_marker"]] = {"x": [a, a]}
        frame[self._idx["lr_marker"]] = {"x": [a, a]}
        return frame
