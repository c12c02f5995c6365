"""04 — the attacker's view: T_A(τ) of the locked model against fusing (W = C·W̃) and layer injection (D = I).

``AttackerExplorer`` draws an ``experiments.attack.AttackTable`` (every attack at its best response, per α,
next to the two α-free undefended references): all five loss curves on one plot with an α slider, and T(τ)
against α beside it. (Layer injection is our reconstruction of the paper's construction; see PAPER.md.)
"""
from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ...common.display import gaps
from ...experiments.attack import AttackTable
from ...experiments.grid import snap
from ...experiments.tuning import LABELS
from ._base import Explorer, fit_layout, log_ticks
from .controls import alpha_slider

__all__ = ["AttackerExplorer", "CURVES"]

# curve key -> (legend label, colour, dash, width)
CURVES = {
    "original": ("undefended, full fine-tune", "black", "solid", 3),
    "injected_ref": ("undefended + injection", "#7f7f7f", "solid", 3),
    "locked": ("locked, full fine-tune (best η)", "#d62728", "solid", 2),
    "fused": ("attacker: fuse(locked)", "#1f77b4", "dot", 3),
    "injected": ("attacker: inject(locked)", "#2ca02c", "dash", 3),
}


class AttackerExplorer(Explorer):
    """α slider: the locked model's best fine-tune against fuse and injection, all with the same optimizer,
    on one loss plot; beside it T(τ) against α for each attack and the undefended references."""

    def __init__(self, table: AttackTable, *, alpha: float | None = None, live: bool | None = None):
        self.table = table
        self.grid = list(table.alphas)
        self._alpha0 = snap(alpha if alpha is not None else self.grid[-1], self.grid)
        super().__init__(live=live)

    def make_controls(self):
        if not self.live:
            return {"alpha": self._alpha0}
        return {"alpha": alpha_slider(self._alpha0, self.grid)}

    def build_figure(self) -> go.Figure:
        t = self.table
        opt = LABELS.get(t.optimizer, t.optimizer)
        fig = make_subplots(rows=1, cols=2, column_widths=[0.58, 0.42], horizontal_spacing=0.11,
                            subplot_titles=(f"harmful loss ℒ_H, {opt} on every model",
                                            "steps to reach τ vs α"))
        for key in ("original", "injected_ref"):  # 0, 1: α-free references
            label, color, dash, width = CURVES[key]
            tr = t.refs[key]
            fig.add_trace(go.Scatter(x=list(range(len(tr.losses))), y=gaps(tr.losses), mode="lines", name=label,
                                     line=dict(color=color, dash=dash, width=width), opacity=0.45,
                                     legendgroup=key), 1, 1)
        for key in ("locked", "fused", "injected"):  # 2, 3, 4: runs at the chosen α
            label, color, dash, width = CURVES[key]
            fig.add_trace(go.Scatter(x=[], y=[], mode="lines", name=label, legendgroup=key,
                                     line=dict(color=color, dash=dash, width=width)), 1, 1)
        fig.add_trace(go.Scatter(x=[0, t.steps], y=[t.target, t.target], mode="lines", name="target τ",
                                 line=dict(color="grey", dash="dash", width=1)), 1, 1)  # 5
        a = t.alphas.tolist()
        for key in ("original", "injected_ref"):  # 6, 7: reference T(τ) as flat lines
            label, color, _, _ = CURVES[key]
            fig.add_trace(go.Scatter(x=[a[0], a[-1]], y=[t.ref_steps(key)] * 2, mode="lines", showlegend=False,
                                     line=dict(color=color, width=6), opacity=0.3, legendgroup=key,
                                     hovertemplate=f"{label}: %{{y}} steps<extra></extra>"), 1, 2)
        for key in ("locked", "fused", "injected"):  # 8, 9, 10: T(τ) per α; unreached drawn at the budget
            label, color, dash, _ = CURVES[key]
            s = t.steps_to(key)
            y = np.where(np.isnan(s), t.steps, s)
            fig.add_trace(go.Scatter(x=a, y=y.tolist(), mode="lines+markers", showlegend=False, legendgroup=key,
                                     line=dict(color=color, dash=dash),
                                     marker=dict(symbol=["triangle-up-open" if m else "circle" for m in np.isnan(s)],
                                                 size=10),
                                     customdata=["not reached" if m else "" for m in np.isnan(s)],
                                     hovertemplate=f"{label}<br>α=%{{x:.0e}}: %{{y}} steps %{{customdata}}"
                                                   "<extra></extra>"), 1, 2)
        fig.add_trace(go.Scatter(x=[], y=[1, 1.6 * t.steps], mode="lines", line=dict(color="black", width=1),
                                 showlegend=False, hoverinfo="skip"), 1, 2)  # 11: current α
        # 12: each run's outcome at α, in the empty corner below τ (text, not the legend: a legend that changes
        # needs a redraw of the whole figure; see live.LiveFigure.batch)
        fig.add_trace(go.Scatter(x=[t.steps], y=[t.target * 10 ** -1.15], mode="text", text=[""],
                                 textposition="top left", textfont=dict(size=12), showlegend=False,
                                 hoverinfo="skip"), 1, 1)
        loss0 = t.extra.get("loss0", t.target * 10)
        fig.update_xaxes(title_text="step t", range=[0, t.steps], row=1, col=1)
        fig.update_yaxes(title_text="ℒ_H (log)", type="log", row=1, col=1,
                         range=[math.log10(t.target) - 1.2, math.log10(loss0) + 0.5], **log_ticks())
        fig.update_xaxes(title_text="α (log)", type="log", row=1, col=2, **log_ticks())
        fig.update_yaxes(title_text="steps to τ (log; ▵ = not reached)", type="log", row=1, col=2,
                         range=[0, math.log10(1.6 * t.steps)], **log_ticks())
        return fit_layout(fig, height=540, top=120, legend_y=1.1)

    def compute(self, alpha) -> dict:
        t = self.table
        i = t.index(alpha)
        a = float(t.alphas[i])
        frame, notes = {}, []
        for j, key in zip((2, 3, 4), ("locked", "fused", "injected")):
            tr = t.runs[key][i]
            s = tr.steps_to(t.target)
            note = f"τ in {s} steps" if s is not None else ("diverged" if tr.diverged else "τ not reached")
            frame[j] = {"x": list(range(len(tr.losses))), "y": gaps(tr.losses)}
            label, color, _, _ = CURVES[key]
            notes.append(f'<span style="color:{color}">{label}: {note}</span>')
        frame[11] = {"x": [a, a]}
        frame[12] = {"text": ["<br>".join(notes)]}
        return frame
