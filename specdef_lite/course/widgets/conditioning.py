"""Notebook 01: θ_{t+1} − θ* = (I − ηA)(θ_t − θ*) — gradient descent on a 2-D quadratic with λ(A) = {1, κ}.

The picture behind every later notebook (PAPER.md, "Why curvature sets the speed"). In A's eigenbasis
each coordinate of θ − θ* is multiplied by 1 − ηλᵢ per step, so

* GD is stable iff |1 − ηλᵢ| < 1 for every i, i.e. **η < 2/λ_max**;
* at the safe step η = 1/λ_max the flat direction shrinks by 1 − 1/κ per step, so reaching a loss τ takes
  **≈ (κ/2)·ln(ℒ_flat/τ) steps — linear in κ**;
* Newton divides each direction by its own curvature, θ ← θ − ηA⁻¹∇ℒ, and lands in **one** step at η = 1.

Why λ_min = 1 and λ_max = κ (rather than λ_max = 1): raising κ then raises the top curvature, exactly
what SpecDef does to a network, and the learner watches a learning rate that was fine become unstable.

``ConditioningExplorer`` draws the path of GD, Adam or Newton on the loss contours, the loss per step and
GD's contraction factor max|1 − ηλᵢ| against η with 2/λ_max marked. Its data come from the experiments
layer: paths from ``experiments.descent.descent_path``, ρ(η) from ``experiments.kappa.gd_rate``.
The contours are the level sets ½ dᵀAd = c, ellipses with semi-axes √(2c/λᵢ) along A's eigenvectors, drawn
as lines from that formula (not a plotly contour trace: that one cannot change without redrawing the whole
figure, see ``live.LiveFigure.batch``).
Costs: a path is ≤ ``steps`` steps of a numpy loop on 2 parameters (well under 1 ms a path), and live, the
contours of every κ the slider reaches are computed when the explorer is built (~0.4 s), so a control
change costs a few ms in Python (most of it plotly validating and serialising the numbers it sends).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ...common.display import fmt
from ...experiments.descent import OPTIMIZERS, Path, descent_path, quadratic_arrays
from ...experiments.kappa import gd_rate
from ._base import Explorer, fit_layout
from .page import positions

__all__ = ["ConditioningExplorer"]

COLORS = {"GD": "#1f77b4", "Adam": "#ff7f0e", "Newton": "#2ca02c"}


class ConditioningExplorer(Explorer):
    """GD / Adam / Newton on a 2-D quadratic: path on the contours, loss per step, and η against 2/λ_max.

    Controls: κ (log, 1 … 1000), η (log, 1e-3 … 3) and the optimizer. λ_min = 1 and λ_max = κ, so
    2/λ_max = 2/κ. The static figure (no front end) steps its slider through the η grid at the current κ
    and optimizer.

    Args:
        kappa, lr, optimizer: the starting state.
        steps: steps drawn per path; seed: the quadratic's seed (rotation, θ*, θ₀).
        levels: contour levels, equally spaced in log₁₀ ℒ over the four decades below the window's largest ℒ.
        live: None (decide, see ``display.is_live``), True (FigureWidget) or False (static figure).
    """

    static_over = "lr"
    prefix = "η = "
    KAPPA_RANGE = (0.0, 3.0)  # log10 κ
    LR_RANGE = (-3.0, 0.5)  # log10 η
    PER_DECADE = 8

    def __init__(self, kappa: float = 10.0, lr: float = 0.1, optimizer: str = "GD", *, steps: int = 100,
                 seed: int = 0, levels: int = 24, live: bool | None = None):
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {optimizer!r}")
        self._start = dict(kappa=float(kappa), lr=float(lr), optimizer=optimizer)
        self.steps, self.seed, self.levels = int(steps), int(seed), int(levels)
        if self.levels < 2:
            raise ValueError(f"levels must be at least 2, got {levels}")
        lo, hi = self.LR_RANGE
        self.grid = 10 ** np.linspace(lo, hi, int(round((hi - lo) * self.PER_DECADE)) + 1)  # η grid (static)
        self._eta_axis = 10 ** np.linspace(lo, hi, 200)
        _, theta_star, theta0 = quadratic_arrays(1.0, self.seed)  # θ*, θ₀ do not depend on κ
        self.theta_star, self.theta0 = theta_star.copy(), theta0.copy()
        half = 1.25 * float(np.linalg.norm(self.theta0 - self.theta_star))
        self._x = self.theta_star[0] + np.array([-half, half])  # the window's θ₁ and θ₂ ranges
        self._y = self.theta_star[1] + np.array([-half, half])
        self._shown_kappa: float | None = None
        self._contours: dict[float, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}  # κ -> (levels, x, y)
        super().__init__(live=live)
        if self.live:  # every κ the slider reaches, now (~0.1 s; the first costs ~0.4 s): a κ move is then a lookup
            for kappa, _ in positions(self.controls["kappa"]):
                self.contours(kappa)

    # --- Explorer interface --------------------------------------------------------------------------
    def make_controls(self) -> dict[str, Any]:
        if not self.live:
            return dict(self._start)
        from .controls import log_slider, toggle
        return {
            "kappa": log_slider(self._start["kappa"], 10 ** self.KAPPA_RANGE[0], 10 ** self.KAPPA_RANGE[1],
                                self.PER_DECADE, "κ"),
            "lr": log_slider(self._start["lr"], 10 ** self.LR_RANGE[0], 10 ** self.LR_RANGE[1], self.PER_DECADE, "η"),
            "optimizer": toggle(list(OPTIMIZERS), self._start["optimizer"], "optimizer"),
        }

    def build_figure(self) -> go.Figure:
        fig = make_subplots(rows=1, cols=3, column_widths=[0.34, 0.33, 0.33], horizontal_spacing=0.075,
                            subplot_titles=("path on the contours of log₁₀ ℒ", "loss per step",
                                            "GD's contraction ρ(η) per step"))
        fig.add_trace(go.Scatter(x=[], y=[], mode="lines", line=dict(color="#6a9ccf", width=1), hoverinfo="skip",
                                 showlegend=False, name="contours of log₁₀ ℒ"), 1, 1)  # 0
        fig.add_trace(go.Scatter(x=[], y=[], mode="lines+markers", marker=dict(size=4), line=dict(width=2),
                                 name="path"), 1, 1)  # 1
        fig.add_trace(go.Scatter(x=[self.theta_star[0]], y=[self.theta_star[1]], mode="markers",
                                 marker=dict(symbol="star", size=14, color="gold", line=dict(width=1)),
                                 name="θ* (minimum)"), 1, 1)  # 2
        fig.add_trace(go.Scatter(x=[self.theta0[0]], y=[self.theta0[1]], mode="markers",
                                 marker=dict(symbol="circle-open", size=11, color="black"), name="θ₀ (start)"),
                      1, 1)  # 3
        fig.add_trace(go.Scatter(x=[], y=[], mode="lines", line=dict(width=2), name="ℒ(θ_t)/ℒ(θ₀)"), 1, 2)  # 4
        fig.add_trace(go.Scatter(x=[], y=[], mode="text", textposition="bottom left", showlegend=False,
                                 textfont=dict(size=12)), 1, 2)  # 5: verdict text
        fig.add_trace(go.Scatter(x=self._eta_axis, y=np.zeros_like(self._eta_axis), mode="lines",
                                 line=dict(color="#555"), name="ρ(η) = max|1 − ηλᵢ|"), 1, 3)  # 6
        fig.add_trace(go.Scatter(x=[], y=[0.0, 1.9, 2.1], mode="lines+text", line=dict(color="crimson", dash="dash"),
                                 text=["", " 2/λ_max", ""], textposition="middle right", name="2/λ_max",
                                 textfont=dict(color="crimson")), 1, 3)  # 7
        fig.add_trace(go.Scatter(x=[], y=[], mode="markers", marker=dict(size=12, color="crimson"),
                                 name="current η"), 1, 3)  # 8
        fig.add_trace(go.Scatter(x=10 ** np.array(self.LR_RANGE), y=[1.0, 1.0], mode="lines",
                                 line=dict(color="grey", dash="dot"), name="ρ = 1: stability edge"), 1, 3)  # 9
        lo, hi = self._x[0], self._x[-1]
        fig.update_xaxes(title_text="θ₁", range=[lo, hi], constrain="domain", row=1, col=1)
        fig.update_yaxes(title_text="θ₂", range=[self._y[0], self._y[-1]], scaleanchor="x", scaleratio=1,
                         constrain="domain", row=1, col=1)
        fig.update_xaxes(title_text="step t", range=[0, self.steps], row=1, col=2)
        fig.update_yaxes(title_text="ℒ(θ_t) / ℒ(θ₀)", type="log", range=[-16.5, 3.5], exponentformat="power",
                         dtick=3, row=1, col=2)
        fig.update_xaxes(title_text="learning rate η", type="log", range=list(self.LR_RANGE),
                         exponentformat="power", dtick=1, row=1, col=3)
        fig.update_yaxes(title_text="ρ(η) (GD converges iff ρ < 1)", range=[0, 2.1], row=1, col=3)
        return fit_layout(fig, height=430, top=50, bottom=50, left=55, hovermode="closest")

    def compute(self, *, kappa: float, lr: float, optimizer: str) -> dict[int, dict]:
        p = descent_path(kappa, lr, optimizer, steps=self.steps, seed=self.seed)
        rel = np.maximum(p.losses / p.losses[0], 10 ** -16.4)
        rho = float(gd_rate(lr, kappa))
        return {
            1: {"x": p.theta[:, 0], "y": p.theta[:, 1], "line": {"color": COLORS[optimizer]},
                "marker": {"color": COLORS[optimizer]}},
            4: {"x": np.arange(len(rel)), "y": rel, "line": {"color": COLORS[optimizer]}},
            5: {"x": [self.steps], "y": [10 ** 3.3], "text": [_verdict(p, kappa, self.steps)]},
            8: {"x": [lr], "y": [min(rho, 2.05)]},
        }

    def apply(self, state: dict[str, Any]) -> None:
        """Assign the frame; the κ-only traces (contours, ρ(η), the 2/λ_max line) only when κ changed."""
        kappa = float(state["kappa"])
        frame = dict(self.frame(**state))
        if kappa != self._shown_kappa:
            frame.update(self._kappa_traces(kappa))
        self._assign(frame)
        self._shown_kappa = kappa

    def page_frame(self, state: dict[str, Any]) -> dict[int, dict]:
        """The frame and the κ-only traces: the page may arrive at this state from another κ."""
        return {**self.frame(**state), **self._kappa_traces(float(state["kappa"]))}

    # --- helpers -------------------------------------------------------------------------------------
    def _kappa_traces(self, kappa: float) -> dict[int, dict]:
        _, x, y = self.contours(kappa)
        # drawn to 1e-4 (a hundredth of a pixel here): 4 decimals, not 17 digits, per number sent to the page
        return {0: {"x": np.round(x, 4), "y": np.round(y, 4)},
                6: {"y": np.minimum(gd_rate(self._eta_axis, kappa), 2.1)}, 7: {"x": [2.0 / kappa] * 3}}

    def contours(self, kappa: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(c, x, y): the levels ℒ = cⱼ and their ellipses θ* + Q diag(√(2cⱼ/λ)) (cos t, sin t), one after
        the other, NaN between two (a gap). The levels are equally spaced in log₁₀ ℒ over the four decades
        below the largest ℒ in the window (at a corner: ℒ is convex), as a contour plot of log₁₀ ℒ would show
        the valley's shape rather than the pit. Computed once per κ (cached)."""
        kappa = float(f"{float(kappa):.12g}")  # the slider's 10^x from JavaScript and from Python: one key
        if kappa not in self._contours:
            A = quadratic_arrays(float(kappa), self.seed)[0]
            lam, Q = np.linalg.eigh(A)
            corners = np.array([[x, y] for x in self._x for y in self._y]) - self.theta_star
            top = float(np.max(0.5 * np.einsum("ni,ij,nj->n", corners, A, corners)))
            c = top * 10.0 ** np.linspace(-4.0, 0.0, self.levels)
            # 64 chords an ellipse (off the true curve by < 0.2 px at this size), then a gap
            t = np.append(np.linspace(0.0, 2 * np.pi, 65), np.nan)
            unit = np.stack([np.cos(t), np.sin(t)])  # (2, 66)
            pts = [self.theta_star[:, None] + Q @ (np.sqrt(2 * cj / lam)[:, None] * unit) for cj in c]
            xy = np.concatenate(pts, axis=1)
            self._contours[kappa] = (c, xy[0], xy[1])
        return self._contours[kappa]


def _verdict(p: Path, kappa: float, steps: int) -> str:
    ratio = p.lr * kappa / 2
    head = f"{p.optimizer}, η = {fmt(p.lr, trim=False)} = {ratio:.2f} × 2/λ_max"
    if p.diverged_at is not None:
        tail = f"diverged at step {p.diverged_at}"
    elif p.converged_at is not None:
        tail = f"converged in {p.converged_at} steps"
    else:
        tail = f"after {steps} steps ℒ/ℒ₀ = {p.losses[-1] / p.losses[0]:.1e}"
    return f"{head}<br>{tail}"
