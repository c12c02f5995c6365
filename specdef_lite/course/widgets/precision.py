"""05 — vanishing updates: where each step's relative update |Δᵢ|/|wᵢ| falls against the format's resolution.

``PrecisionExplorer`` draws a ``precision.VanishingTable``: on the left the histogram of log₁₀|Δᵢ|/|wᵢ| of one
feasible step (GD at 1/λ_max, or Adam at η₁/α), split by the kind of weight (W̃, C, the rest), over the band
where fl(w + Δ) = w starts to happen in the chosen format (relative size u/2 … u, u = 2⁻ᵖ); on the right the
share of updates that vanish against α, and the forward error of the locked model in that format against α
with the α·u guide. Everything is precomputed over the α grid; a control change is a lookup.
"""
from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ...common.display import fmt
from ...experiments.grid import nearest, snap
from ...optim.precision import VanishingTable, unit_roundoff
from ._base import Explorer, fit_layout, log_ticks
from .controls import alpha_slider, toggle

__all__ = ["PrecisionExplorer", "GROUPS", "BINS"]

GROUPS = {"W̃": "#d62728", "C": "#1f77b4", "other": "#7f7f7f"}  # kind of weight -> colour
BINS = np.arange(-32.0, 2.01, 0.5)  # log10 |Δ|/|w| bin edges; smaller values go to the first bin
OPT_STYLE = {"sgd": ("GD, η = 1/λ_max", "solid"), "adam": ("Adam, η = η₁/α", "dash")}


def _hist(values: np.ndarray) -> list[int]:
    v = np.log10(values[np.isfinite(values) & (values > 0)])
    v = np.clip(v, BINS[0] + 1e-9, BINS[-1] - 1e-9)
    return np.histogram(v, BINS)[0].tolist()


class PrecisionExplorer(Explorer):
    """α slider, storage format and optimizer: which updates of one feasible step survive fl(w + Δ)."""

    def __init__(self, table: VanishingTable, *, alpha: float | None = None, dtype: str = "float32",
                 optimizer: str = "sgd", live: bool | None = None):
        if dtype not in table.dtypes:
            raise ValueError(f"dtype {dtype!r} is not in the table ({', '.join(table.dtypes)})")
        if optimizer not in table.lrs:
            raise ValueError(f"optimizer {optimizer!r} is not in the table ({', '.join(table.lrs)})")
        self.table = table
        self.grid = list(table.alphas)
        self._init = dict(alpha=snap(alpha if alpha is not None else self.grid[len(self.grid) // 2], self.grid),
                          dtype=dtype, optimizer=optimizer)
        super().__init__(live=live)

    def choices(self):
        return {"dtype": list(self.table.dtypes), "optimizer": list(self.table.lrs)}  # what the table holds

    def make_controls(self):
        if not self.live:
            return dict(self._init)
        return {"alpha": alpha_slider(self._init["alpha"], self.grid),
                "dtype": toggle(list(self.table.dtypes), self._init["dtype"], "format", button_width="78px"),
                "optimizer": toggle([(OPT_STYLE.get(o, (o,))[0].split(",")[0], o) for o in self.table.lrs],
                                    self._init["optimizer"], "optimizer", button_width="58px")}

    def build_figure(self) -> go.Figure:
        t = self.table
        fig = make_subplots(rows=2, cols=2, specs=[[{"rowspan": 2}, {}], [None, {}]], column_widths=[0.55, 0.45],
                            horizontal_spacing=0.1, vertical_spacing=0.16,
                            subplot_titles=("one feasible step: relative updates |Δᵢ|/|wᵢ|",
                                            "share of updates that vanish", "forward error of the locked model"))
        centers = (0.5 * (BINS[:-1] + BINS[1:])).tolist()
        for g, c in GROUPS.items():  # 0, 1, 2: histograms by kind of weight
            fig.add_trace(go.Bar(x=centers, y=[], name=f"{g} entries", marker_color=c, opacity=0.6,
                                 width=0.5, hovertemplate="10^%{x}: %{y} entries<extra>" + g + "</extra>"), 1, 1)
        fig.add_trace(go.Scatter(x=[], y=[], fill="toself", mode="lines", line=dict(width=0),
                                 fillcolor="rgba(0,0,0,0.15)", name="rounding band u/2 … u",
                                 hoverinfo="skip"), 1, 1)  # 3
        fig.add_trace(go.Scatter(x=[], y=[], mode="lines", line=dict(color="black", dash="dash"),
                                 name="relative resolution u of the format", hoverinfo="skip"), 1, 1)  # 4
        a = t.alphas.tolist()
        for o in t.lrs:  # 5, 6: vanishing share vs α
            label, dash = OPT_STYLE.get(o, (o, "solid"))
            fig.add_trace(go.Scatter(x=a, y=[], mode="lines+markers", name=label, line=dict(color="black", dash=dash),
                                     legendgroup=o), 1, 2)
        fig.add_trace(go.Scatter(x=[], y=[], mode="markers", marker=dict(size=14, color="#ff7f0e",
                                 symbol="circle-open", line=dict(width=3)), showlegend=False,
                                 hoverinfo="skip"), 1, 2)  # 5 + n_opt: current α
        if t.forward_errors:
            fig.add_trace(go.Scatter(x=a, y=[], mode="lines+markers",
                                     name="forward error ‖f̃ − f‖/‖f‖ in that format",
                                     line=dict(color="#9467bd")), 2, 2)
            fig.add_trace(go.Scatter(x=a, y=[], mode="lines", name="α·u guide", line=dict(color="#9467bd", dash="dot")),
                          2, 2)
            fig.add_trace(go.Scatter(x=[], y=[], mode="markers", marker=dict(size=14, color="#ff7f0e",
                                     symbol="circle-open", line=dict(width=3)), showlegend=False,
                                     hoverinfo="skip"), 2, 2)
        # the format, η and the share lost, in the top of the histogram (a fifth of its height kept free of bars):
        # text, not a legend name, since a legend that changes needs a redraw of the whole figure (live.LiveFigure.batch)
        top = 1.25 * self._counts_max()
        fig.add_trace(go.Scatter(x=[BINS[0] + 0.5], y=[top], mode="text", text=[""], textposition="bottom right",
                                 textfont=dict(size=12), showlegend=False, hoverinfo="skip"), 1, 1)
        n_opt = len(t.lrs)
        self._idx = dict(hist=[0, 1, 2], band=3, line=4, frac=list(range(5, 5 + n_opt)), frac_marker=5 + n_opt,
                         err=6 + n_opt if t.forward_errors else None, status=len(fig.data) - 1)
        fig.update_xaxes(title_text="log₁₀ |Δᵢ|/|wᵢ|  (left of the band: lost to rounding)", row=1, col=1,
                         range=[BINS[0], BINS[-1]])
        fig.update_yaxes(title_text="parameter entries", range=[0, top], row=1, col=1)
        fig.update_layout(barmode="overlay")
        fig.update_xaxes(title_text="α (log)", type="log", row=1, col=2, **log_ticks())
        fig.update_yaxes(title_text="fraction fl(w + Δ) = w", range=[-0.05, 1.05], row=1, col=2)
        fig.update_xaxes(title_text="α (log)", type="log", row=2, col=2, **log_ticks())
        fig.update_yaxes(title_text="relative error (log)", type="log", row=2, col=2, exponentformat="power")
        return fit_layout(fig, height=680, top=120, legend_y=1.08)

    def _counts_max(self) -> int:
        """The tallest histogram bar over every α and optimizer (the bars do not depend on the format)."""
        t = self.table
        return max([1] + [max(_hist(rel[t.groups == g]) or [0]) for o in t.lrs for rel in t.rel_updates[o]
                          for g in GROUPS])

    def range_frames(self):
        """One frame per format (the forward error and the α·u guide move with it; the rest is α-indexed)."""
        state = self.state()
        return [self.frame(**{**state, "dtype": d}) for d in self.table.dtypes]

    def compute(self, alpha, dtype, optimizer) -> dict:
        t = self.table
        i = nearest(t.alphas, alpha)
        a = float(t.alphas[i])
        u = unit_roundoff(dtype)
        rel = t.rel_updates[optimizer][i]
        frame = {}
        ymax = 1
        for j, g in zip(self._idx["hist"], GROUPS):
            counts = _hist(rel[t.groups == g])
            ymax = max(ymax, max(counts) if counts else 0)
            frame[j] = {"y": counts}
        lo, hi = math.log10(u / 2), math.log10(u)
        top = 1.05 * ymax
        frame[self._idx["band"]] = {"x": [lo, hi, hi, lo, lo], "y": [0, 0, top, top, 0]}
        lr = float(t.lrs[optimizer][i])
        lost = float(t.fraction(optimizer, dtype)[i])
        frame[self._idx["line"]] = {"x": [hi, hi], "y": [0, top]}
        frame[self._idx["status"]] = {"text": [f"{dtype}: u = 2^{round(math.log2(u))}<br>η = {fmt(lr)}: "
                                               f"{100 * lost:.1f} % vanish"]}
        for j, o in zip(self._idx["frac"], t.lrs):
            frame[j] = {"y": t.fraction(o, dtype).tolist()}
        frame[self._idx["frac_marker"]] = {"x": [a], "y": [lost]}
        if self._idx["err"] is not None:
            e = t.forward_errors[dtype]
            k = self._idx["err"]
            frame[k] = {"y": e.tolist()}
            frame[k + 1] = {"y": (t.alphas * u).tolist()}
            frame[k + 2] = {"x": [a], "y": [float(e[i])]}
        return frame
