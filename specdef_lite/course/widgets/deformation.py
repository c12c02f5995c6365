"""Notebook 02: W̃ = W + (α − 1) U_k Σ_k V_kᵀ, C W̃ = W — what SpecDef does to the spectrum, the function and ∇²ℒ.

The explorer draws ``experiments.deformation.deformation_sweep``: σ(W̃), max |f − f'| for SpecDef and the
scale-only ablation, and σ₁(∇²ℒ) beside Theorem 3's lower bound, over a log grid of α.

Why precompute: one σ₁(∇²ℒ) is a Lanczos run of ~6–16 Hessian-vector products (~0.1 s here), far too slow
for a slider. ``DeformationExplorer`` therefore sweeps the whole α grid once per k (lazily, cached), and a
slider update is a lookup plus an assignment of a few short arrays (STYLE.md §8). HVPs use double
backward: on these small MLPs it is ~2× faster than forward-over-reverse and gives the same numbers.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from ...common.display import fmt, gaps, is_live
from ...experiments.deformation import DeformationPoint, DeformationSweep, deformation_sweep
from ...experiments.grid import log_grid, snap
from ...lock.deform import linear_weight
from ...optim.problems import teacher_student
from ._base import Explorer, fit_layout, log_ticks

__all__ = ["DeformationExplorer"]

EPS64 = float(np.finfo(np.float64).eps)


class DeformationExplorer(Explorer):
    """SpecDef on a small MLP: spectrum before/after, max|f − f'| vs α, σ₁(∇²ℒ) vs α beside Theorem 3's bound.

    Controls: α (log slider, 1 … ``alpha_max``, snapped to the grid) and k. Live, every k the slider reaches
    is swept over the whole α grid when the explorer is built (k_max sweeps, ~0.3 s each at 25 α values),
    so every control change is a lookup (``sweep(k)``, ``frame``); headless, only the k shown is swept.

    Args:
        problem: a ``problems.ToyProblem`` (default ``teacher_student(seed=seed)``: 8 → 16 → 16 → 1, tanh).
        alpha, k: the starting state; k_max: the k slider's maximum.
        layer: the deformed layer ("2", the hidden 16×16 weight B of Theorem 3's three-layer picture).
        per_decade, alpha_max: the α grid, ``log_grid(1, alpha_max, per_decade)``.
        live: None (decide), True (FigureWidget) or False (static figure).
    """

    static_over = "alpha"
    prefix = "α = "

    def __init__(self, problem=None, *, alpha: float = 1e2, k: int = 1, k_max: int = 4, layer: str = "2",
                 per_decade: int = 4, alpha_max: float = 1e6, seed: int = 0, progress: bool = False,
                 live: bool | None = None):
        self.problem = problem if problem is not None else teacher_student(seed=seed)
        self.layer, self.k_max, self.progress = layer, int(k_max), progress
        self.grid = log_grid(1.0, alpha_max, per_decade)
        self.per_decade = per_decade
        self._start = dict(alpha=snap(alpha, self.grid),
                           k=int(k))
        if not 1 <= self._start["k"] <= self.k_max:
            raise ValueError(f"k must lie in 1 … k_max={self.k_max}, got {k}")
        self._sweeps: dict[int, DeformationSweep] = {}
        W, _ = linear_weight(self.problem.released.get_submodule(layer))
        self._sigma_W = torch.linalg.svdvals(W.detach().double()).numpy()
        if is_live(live):  # a first visit of k = 2 … k_max would otherwise cost a whole sweep (0.6–0.9 s)
            for kk in range(1, self.k_max + 1):
                self.sweep(kk)
        super().__init__(live=live)

    def sweep(self, k: int | None = None) -> DeformationSweep:
        """The α sweep for ``k`` (default: the current k), computed on first use and cached."""
        k = int(self.state()["k"] if k is None else k)
        if k not in self._sweeps:
            self._sweeps[k] = deformation_sweep(self.problem, self.grid, k=k, layer=self.layer,
                                                progress=self.progress)
        return self._sweeps[k]

    # --- Explorer interface --------------------------------------------------------------------------
    def make_controls(self) -> dict[str, Any]:
        if not self.live:
            return dict(self._start)
        import ipywidgets as W
        from .controls import alpha_slider
        return {"alpha": alpha_slider(self._start["alpha"], self.grid),
                "k": W.IntSlider(value=self._start["k"], min=1, max=self.k_max, description="k",
                                 continuous_update=False, layout=W.Layout(width="220px"),
                                 style={"description_width": "initial"})}

    def build_figure(self) -> go.Figure:
        fig = make_subplots(rows=1, cols=3, horizontal_spacing=0.085,
                            subplot_titles=("σᵢ of the deformed layer", "same function? max |f − f'|",
                                            "curvature σ₁(∇²ℒ) of the attack"))
        idx = np.arange(1, self._sigma_W.size + 1)
        a = self.grid
        grey, blue, red, green = "#888", "#1f77b4", "#d62728", "#2ca02c"
        fig.add_trace(go.Scatter(x=idx, y=self._sigma_W, mode="markers", name="σᵢ(W), before",
                                 marker=dict(symbol="circle-open", size=10, color=grey)), 1, 1)  # 0
        fig.add_trace(go.Scatter(x=idx, y=self._sigma_W, mode="markers", name="σᵢ(W̃), after",
                                 marker=dict(size=7, color=blue)), 1, 1)  # 1
        fig.add_trace(go.Scatter(x=a, y=np.ones_like(a), mode="lines+markers", name="SpecDef (W̃ then C)",
                                 line=dict(color=blue), marker=dict(size=4)), 1, 2)  # 2
        fig.add_trace(go.Scatter(x=a, y=np.ones_like(a), mode="lines+markers", name="scale only (no C)",
                                 line=dict(color=red), marker=dict(size=4)), 1, 2)  # 3
        fig.add_trace(go.Scatter(x=a, y=a * EPS64, mode="lines", name="α·ε₆₄·max|f| (rounding)",
                                 line=dict(color=grey, dash="dot")), 1, 2)  # 4 (scaled by f_max in apply)
        fig.add_trace(go.Scatter(x=[], y=[], mode="markers", name="current α", showlegend=False,
                                 marker=dict(size=13, color=[blue, red], line=dict(width=1, color="black"))),
                      1, 2)  # 5
        fig.add_trace(go.Scatter(x=a, y=np.ones_like(a), mode="lines+markers", name="σ₁(∇²ℒ), measured",
                                 line=dict(color=blue, width=2), marker=dict(size=5)), 1, 3)  # 6
        fig.add_trace(go.Scatter(x=a, y=np.ones_like(a), mode="lines+markers",
                                 name="Theorem 3 lower bound σ₁(H[θ₁, C])", line=dict(color=green),
                                 marker=dict(size=5, symbol="triangle-up")), 1, 3)  # 7
        fig.add_trace(go.Scatter(x=a, y=np.ones_like(a), mode="lines", name="slope-2 guide ∝ α² (×10 above)",
                                 line=dict(color=grey, dash="dash")), 1, 3)  # 8
        fig.add_trace(go.Scatter(x=[], y=[], mode="markers", showlegend=False, name="current α",
                                 marker=dict(size=13, color=[blue, green], line=dict(width=1, color="black"))),
                      1, 3)  # 9
        fig.add_trace(go.Scatter(x=[], y=[], mode="text", textposition="bottom right", showlegend=False,
                                 textfont=dict(size=12)), 1, 3)  # 10: verdict
        fig.update_xaxes(title_text="index i", row=1, col=1)
        fig.update_yaxes(title_text="σᵢ", type="log", row=1, col=1, **log_ticks())
        for col in (2, 3):
            fig.update_xaxes(title_text="α", type="log", exponentformat="power", dtick=2, row=1, col=col)
        fig.update_yaxes(title_text="max |f − f'|", type="log", exponentformat="power", row=1, col=2)
        fig.update_yaxes(title_text="σ₁ (log scale)", type="log", exponentformat="power", row=1, col=3)
        return fit_layout(fig, height=540, top=125, legend_y=1.1, left=55, hovermode="closest")

    def range_frames(self):
        """Every (α, k) the controls reach, all swept already when live: the axes hold them all."""
        return [self.frame(alpha=a, k=k) for k in self._sweeps for a in self.grid]

    def compute(self, *, alpha: float, k: int) -> dict[int, dict]:
        sw = self.sweep(k)
        i = sw.index(alpha)
        a = sw.alphas
        guide = 10 * sw.sigma1_H[-1] * (a / a[-1]) ** 2  # ×10 above the largest α, where σ₁ ∝ α² holds
        text = (f"α = {fmt(a[i])}, k = {k}<br>σ₁(∇²ℒ) = {fmt(sw.sigma1_H[i])} (×{fmt(sw.sigma1_H[i] / sw.sigma1_H[0])}"
                f" vs α = 1)<br>bound = {fmt(sw.bound[i])}<br>GD needs η < 2/σ₁ = {fmt(sw.max_stable_lr[i])}")
        return {
            1: {"y": sw.sigma_W_tilde[i]},
            2: {"y": gaps(sw.err_specdef, log=True)},
            3: {"y": gaps(sw.err_scale_only, log=True)},
            4: {"y": a * EPS64 * sw.f_max},
            5: {"x": [a[i], a[i]], "y": gaps([sw.err_specdef[i], sw.err_scale_only[i]], log=True)},
            6: {"y": sw.sigma1_H},
            7: {"y": sw.bound},
            8: {"y": guide},
            9: {"x": [a[i], a[i]], "y": [sw.sigma1_H[i], sw.bound[i]]},
            10: {"x": [a[0]], "y": [self._text_top(sw)], "text": [text]},
        }

    def _text_top(self, sw: DeformationSweep) -> float:
        """Where the verdict hangs from: 3.5 decades above the highest curve of this k (its slope-2 guide at
        the largest α), so its four lines sit above every curve shown with it."""
        return 10 ** 3.5 * 10 * float(sw.sigma1_H[-1])

    def at(self, alpha: float | None = None, k: int | None = None) -> DeformationPoint:
        """The numbers shown at (α, k) (default: the current state), for prose and tests."""
        state = self.state()
        return self.sweep(state["k"] if k is None else k).at(state["alpha"] if alpha is None else alpha)
