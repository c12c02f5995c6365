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
GD's contraction factor max|1 − ηλᵢ| against η with 2/λ_max marked. Paths run the library's optimizers
(``make_optimizer``) on the library's quadratic (``problems.quadratic``), the same objects ``train`` uses;
``steps_vs_kappa`` measures steps-to-τ with ``race`` and ``lr_sweep`` and puts the exact GD theory on the
same axes. Costs: a path is ≤ ``steps`` optimizer steps on 2 parameters (~0.3 ms each), the contour grid
(41×41) is computed once per κ, so a slider update costs a few tens of ms the first time and a lookup after.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..display import fmt
from ._base import Explorer

__all__ = ["ConditioningExplorer", "Path", "descent_path", "KappaSweep", "steps_vs_kappa", "gd_rate",
           "loss_curves_figure", "OPTIMIZERS"]

# label shown to the learner -> (make_optimizer name, options). Newton undamped: on a quadratic it is exact.
OPTIMIZERS: dict[str, tuple[str, dict]] = {"GD": ("sgd", {}), "Adam": ("adam", {}),
                                           "Newton": ("newton", {"damping": 0.0})}
FLOOR = 1e-16  # relative loss drawn as "converged": ℒ_t/ℒ_0 below this is float64 rounding
COLORS = {"GD": "#1f77b4", "Adam": "#ff7f0e", "Newton": "#2ca02c"}


def _sl():
    import specdef_lite as sl  # lazy: the package imports its modules on first use
    return sl


def gd_rate(lr: float | np.ndarray, kappa: float) -> np.ndarray:
    """ρ(η) = max(|1 − η·1|, |1 − η·κ|): GD's contraction per step on a quadratic with λ ∈ {1, κ}; < 1 iff η < 2/κ.

    Example:
        >>> [round(float(r), 3) for r in gd_rate(np.array([0.1, 0.19, 0.21]), 10.0)]
        [0.9, 0.9, 1.1]
    """
    lr = np.asarray(lr, dtype=float)
    return np.maximum(np.abs(1.0 - lr), np.abs(1.0 - lr * kappa))


@dataclass(frozen=True)
class Path:
    """θ₀, θ₁, … of one optimizer on the quadratic, with ℒ(θ_t) (the loss *before* step t, as in ``Trace``).

    Attributes:
        theta: (T+1, 2) float64 iterates; losses: (T+1,) ℒ(θ_t).
        diverged_at: first t with ℒ_t non-finite or > explode·ℒ₀ (the run stopped there), else None.
        converged_at: first t with ℒ_t ≤ 1e-16·ℒ₀ (float64 rounding; the run stopped there), else None.
        theta_star: (2,) the minimiser; lam: (2,) the eigenvalues (1, κ).
    """
    theta: np.ndarray
    losses: np.ndarray
    diverged_at: int | None
    converged_at: int | None
    theta_star: np.ndarray
    lam: np.ndarray
    optimizer: str
    lr: float


def descent_path(kappa: float, lr: float, optimizer: str = "GD", *, steps: int = 100, seed: int = 0,
                 explode: float = 1e3) -> Path:
    """θ_{t+1} = A(θ_t) for ``optimizer`` ∈ {"GD", "Adam", "Newton"} on ℒ(θ) = ½(θ − θ*)ᵀA(θ − θ*), λ(A) = {1, κ}.

    The quadratic is ``problems.quadratic([1, κ], seed=seed)``: its rotation, θ* and θ₀ depend on the seed
    only, so changing κ changes the curvature and nothing else. Newton is undamped (exact on a quadratic).

    Example:
        >>> p = descent_path(10.0, 0.19, "GD", steps=400)
        >>> p.diverged_at, p.converged_at is not None
        (None, True)
        >>> descent_path(10.0, 0.21, "GD", steps=400).diverged_at
        37
        >>> descent_path(1000.0, 1.0, "Newton").converged_at
        1
    """
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {optimizer!r}")
    if not kappa >= 1:
        raise ValueError(f"kappa = λ_max/λ_min must be >= 1, got {kappa}")
    sl = _sl()
    model, task = sl.problems.quadratic([1.0, float(kappa)], seed=seed)
    name, kw = OPTIMIZERS[optimizer]
    opt = sl.make_optimizer(name, model.parameters(), float(lr), **kw)
    needs_closure = getattr(opt, "needs_closure", False)
    thetas, losses = [], []
    diverged_at = converged_at = None
    for t in range(steps + 1):
        thetas.append(model.theta.detach().numpy().copy())
        loss = task.value(model)
        losses.append(loss)
        if not math.isfinite(loss) or loss > explode * losses[0]:
            diverged_at = t
            break
        if loss <= FLOOR * losses[0]:
            converged_at = t
            break
        if t == steps:
            break
        if needs_closure:
            opt.step(lambda: task.loss(model))
        else:
            opt.zero_grad(set_to_none=True)
            task.loss(model).backward()
            opt.step()
    return Path(np.array(thetas), np.array(losses), diverged_at, converged_at, task.theta_star.numpy().copy(),
                np.array([1.0, float(kappa)]), optimizer, float(lr))


class ConditioningExplorer(Explorer):
    """GD / Adam / Newton on a 2-D quadratic: path on the contours, loss per step, and η against 2/λ_max.

    Controls: κ (log, 1 … 1000), η (log, 1e-3 … 3) and the optimizer. λ_min = 1 and λ_max = κ, so
    2/λ_max = 2/κ. The static figure (no front end) steps its slider through the η grid at the current κ
    and optimizer.

    Args:
        kappa, lr, optimizer: the starting state.
        steps: steps drawn per path; seed: the quadratic's seed (rotation, θ*, θ₀).
        live: None (decide, see ``display.is_live``), True (FigureWidget) or False (static figure).
    """

    static_over = "lr"
    prefix = "η = "
    KAPPA_RANGE = (0.0, 3.0)  # log10 κ
    LR_RANGE = (-3.0, 0.5)  # log10 η
    PER_DECADE = 8

    def __init__(self, kappa: float = 10.0, lr: float = 0.1, optimizer: str = "GD", *, steps: int = 100,
                 seed: int = 0, grid_points: int = 41, live: bool | None = None):
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {optimizer!r}")
        self._start = dict(kappa=float(kappa), lr=float(lr), optimizer=optimizer)
        self.steps, self.seed, self.grid_points = int(steps), int(seed), int(grid_points)
        lo, hi = self.LR_RANGE
        self.grid = 10 ** np.linspace(lo, hi, int(round((hi - lo) * self.PER_DECADE)) + 1)  # η grid (static)
        self._eta_axis = 10 ** np.linspace(lo, hi, 200)
        model, task = _sl().problems.quadratic([1.0, 1.0], seed=self.seed)  # θ*, θ₀ do not depend on κ
        self.theta_star = task.theta_star.numpy().copy()
        self.theta0 = model.theta.detach().numpy().copy()
        half = 1.25 * float(np.linalg.norm(self.theta0 - self.theta_star))
        self._x = self.theta_star[0] + np.linspace(-half, half, self.grid_points)
        self._y = self.theta_star[1] + np.linspace(-half, half, self.grid_points)
        self._shown_kappa: float | None = None
        self._z: dict[float, np.ndarray] = {}  # κ -> log₁₀ ℒ on the contour grid
        super().__init__(live=live)

    # --- Explorer interface --------------------------------------------------------------------------
    def make_controls(self) -> dict[str, Any]:
        if not self.live:
            return dict(self._start)
        from ._base import log_slider, toggle
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
        fig.add_trace(go.Contour(x0=float(self._x[0]), dx=float(self._x[1] - self._x[0]), y0=float(self._y[0]),
                                 dy=float(self._y[1] - self._y[0]), z=np.zeros((self.grid_points, self.grid_points)),
                                 colorscale="Blues", reversescale=True, ncontours=24, showscale=False,
                                 line=dict(width=0.5), hoverinfo="skip", name="log₁₀ ℒ"), 1, 1)  # 0
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
        fig.update_layout(height=430, margin=dict(t=50, b=50, l=55, r=15), showlegend=False,
                          hovermode="closest")
        fig.update_annotations(font_size=14)  # the subplot titles: one line each in a 900 px output area
        return fig

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

    # --- helpers -------------------------------------------------------------------------------------
    def _kappa_traces(self, kappa: float) -> dict[int, dict]:
        return {0: {"z": self._log_loss_grid(kappa)}, 6: {"y": np.minimum(gd_rate(self._eta_axis, kappa), 2.1)},
                7: {"x": [2.0 / kappa] * 3}}

    def _log_loss_grid(self, kappa: float) -> np.ndarray:
        """log₁₀ ℒ on the (grid_points × grid_points) window, computed once per κ (cached)."""
        if kappa in self._z:
            return self._z[kappa]
        _, task = _sl().problems.quadratic([1.0, kappa], seed=self.seed)
        A = task.A.numpy()
        dx, dy = np.meshgrid(self._x - self.theta_star[0], self._y - self.theta_star[1])  # (ny, nx) each
        d = np.stack([dx, dy], axis=-1)  # (ny, nx, 2)
        z = np.log10(0.5 * np.einsum("...i,ij,...j->...", d, A, d) + 1e-300)
        self._z[kappa] = np.maximum(z, z.max() - 4.0)  # four decades of contours: the valley's shape, not the pit
        return self._z[kappa]


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


# --- steps to τ against κ -------------------------------------------------------------------------------

@dataclass(frozen=True)
class KappaSweep:
    """Steps to reach ℒ ≤ τ on the quadratic λ(A) = {1, κ}, per optimizer, against κ.

    Attributes:
        kappas: (n,) condition numbers; tau: the target loss τ (absolute, the attacker's threshold).
        steps: label → (n,) float array, steps to τ (NaN where not reached within ``max_steps``).
        lrs: label → (n,) the learning rate used (GD: 1/λ_max; Newton: 1; Adam: its best on the grid).
        theory: (n,) GD at η = 1/λ_max from the closed form ℒ_t = ½ Σᵢ λᵢ cᵢ² (1 − ηλᵢ)^{2t}.
    """
    kappas: np.ndarray
    tau: float
    steps: dict[str, np.ndarray]
    lrs: dict[str, np.ndarray]
    theory: np.ndarray
    max_steps: int
    extra: dict = field(default_factory=dict)

    def slope(self, label: str = "GD", kappa_min: float = 0.0) -> float:
        """d log(steps) / d log κ, a least-squares fit over κ ≥ ``kappa_min`` (1 = linear in κ)."""
        k, s = self.kappas, self.steps[label]
        ok = (k >= kappa_min) & np.isfinite(s) & (s > 0)
        if ok.sum() < 2:
            return float("nan")
        return float(np.polyfit(np.log(k[ok]), np.log(s[ok]), 1)[0])

    def figure(self) -> go.Figure:
        """Log-log steps to τ against κ: measured points, GD's exact theory, and a slope-1 guide."""
        fig = go.Figure()
        k = self.kappas
        fig.add_trace(go.Scatter(x=k, y=self.theory, mode="lines", line=dict(color=COLORS["GD"], width=1),
                                 name="GD theory: ½Σᵢλᵢcᵢ²(1 − λᵢ/κ)²ᵗ ≤ τ"))
        gd = self.steps["GD"]
        anchor = int(np.nanargmax(np.where(np.isfinite(gd), k, np.nan))) if np.isfinite(gd).any() else None
        if anchor is not None:
            fig.add_trace(go.Scatter(x=k, y=gd[anchor] * k / k[anchor], mode="lines",
                                     line=dict(color="grey", dash="dash"), name="slope 1 (steps ∝ κ)"))
        for label, s in self.steps.items():
            lr = self.lrs[label]
            text = [f"η = {x:.3g}" for x in lr]
            fig.add_trace(go.Scatter(x=k, y=s, mode="markers+lines", marker=dict(size=9, color=COLORS.get(label)),
                                     line=dict(dash="dot", color=COLORS.get(label)), text=text,
                                     name={"GD": "GD, η = 1/λ_max", "Newton": "Newton, η = 1",
                                           "Adam": "Adam, best η of its grid"}.get(label, label)))
        fig.update_xaxes(type="log", title_text="condition number κ = λ_max/λ_min", exponentformat="power", dtick=1)
        fig.update_yaxes(type="log", title_text=f"steps to ℒ ≤ τ = {self.tau:.0e}", exponentformat="power", dtick=1)
        fig.update_layout(height=420, width=900, legend=dict(x=1.02, y=1.0),
                          title=f"Steps to the target vs κ (GD: log-log slope {self.slope():.2f})")
        return fig


def _gd_theory_steps(kappa: float, tau: float, seed: int, max_steps: int, rotate: bool = True) -> float:
    """First t with ½ Σᵢ λᵢ cᵢ² (1 − λᵢ/κ)^{2t} ≤ τ (GD at η = 1/λ_max; c = Qᵀ(θ₀ − θ*)); NaN past max_steps."""
    model, task = _sl().problems.quadratic([1.0, float(kappa)], seed=seed, rotate=rotate)
    lam, Q = np.linalg.eigh(task.A.numpy())
    c = Q.T @ (model.theta.detach().numpy() - task.theta_star.numpy())
    t = np.arange(max_steps + 1)[:, None]
    loss = 0.5 * (lam * c ** 2 * (1.0 - lam / kappa) ** (2 * t)).sum(axis=1)  # (max_steps + 1,)
    hit = np.flatnonzero(loss <= tau)
    return float(hit[0]) if hit.size else float("nan")


def steps_vs_kappa(kappas: Sequence[float], *, tau: float = 1e-8, max_steps: int = 20000, seed: int = 0,
                   adam_lrs: Sequence[float] | None = (0.03, 0.1, 0.3, 1.0), newton: bool = True,
                   adam_max_steps: int | None = None, rotate: bool = True, progress: bool = False) -> KappaSweep:
    """T(τ) = min{t : ℒ(θ_s) ≤ τ for all s ≥ t} against κ: GD at η = 1/λ_max, Newton at η = 1, Adam at its best η.

    Each run is the library's ``race`` / ``lr_sweep`` on ``problems.quadratic([1, κ], seed=seed)``, stopped
    10 steps after it reaches τ. The GD theory line is the closed form on the same quadratic.

    Args:
        kappas: condition numbers (≥ 1); tau: the absolute target loss τ.
        max_steps: step budget per run; adam_max_steps: Adam's (default ``max_steps``).
        adam_lrs: Adam's learning-rate grid (None: skip Adam); newton: include Newton.
        rotate: False puts A's eigenvectors on the coordinate axes (Adam's per-coordinate scaling then
            matches the curvature directions; with the default rotation it does not).

    Example:
        >>> sw = steps_vs_kappa([10, 100], tau=1e-8, max_steps=2000, adam_lrs=None)
        >>> sw.steps["GD"].tolist(), sw.theory.tolist(), sw.steps["Newton"].tolist()
        ([84.0, 879.0], [84.0, 879.0], [1.0, 1.0])
    """
    from tqdm.auto import tqdm
    sl = _sl()
    kappas = np.asarray(sorted(float(k) for k in kappas))
    if kappas.size == 0 or (kappas < 1).any():
        raise ValueError(f"kappas must be a non-empty list of numbers >= 1, got {kappas.tolist()}")
    labels = ["GD"] + (["Newton"] if newton else []) + (["Adam"] if adam_lrs else [])
    steps = {lab: np.full(kappas.size, np.nan) for lab in labels}
    lrs = {lab: np.full(kappas.size, np.nan) for lab in labels}
    theory = np.array([_gd_theory_steps(k, tau, seed, max_steps, rotate) for k in kappas])
    for i, kappa in enumerate(tqdm(kappas, disable=not progress, desc="κ", leave=False)):
        model, task = sl.problems.quadratic([1.0, kappa], seed=seed, rotate=rotate)
        specs = {"GD": ("sgd", 1.0 / kappa)}
        if newton:
            specs["Newton"] = {"name": "newton", "lr": 1.0, "damping": 0.0}
        runs = sl.race(model, task, specs, max_steps, tau, stop_at_target=True)
        for lab, tr in runs.items():
            s = tr.steps_to(tau)
            steps[lab][i] = np.nan if s is None else s
            lrs[lab][i] = 1.0 / kappa if lab == "GD" else 1.0
        if adam_lrs:
            sw = sl.lr_sweep(model, task, "adam", list(adam_lrs), adam_max_steps or max_steps, tau)
            steps["Adam"][i] = np.nan if sw.best_steps is None else sw.best_steps
            lrs["Adam"][i] = np.nan if sw.best_lr is None else sw.best_lr
    return KappaSweep(kappas, float(tau), steps, lrs, theory, int(max_steps), extra={"rotate": rotate, "seed": seed})


def loss_curves_figure(traces: dict, *, title: str = "", tau: float | None = None,
                       y_title: str = "loss ℒ(θ_t)") -> go.Figure:
    """Loss per step (log y) for a dict {label: Trace}; a diverged run ends with a ✕ at its last loss."""
    fig = go.Figure()
    palette = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"]
    for j, (label, tr) in enumerate(traces.items()):
        color = palette[j % len(palette)]
        losses = np.asarray(tr.losses, dtype=float)
        y = np.where(np.isfinite(losses), np.maximum(losses, 1e-32), np.nan)
        fig.add_trace(go.Scatter(y=y, mode="lines", name=label, line=dict(color=color)))
        if getattr(tr, "diverged_at", None) is not None:
            fig.add_trace(go.Scatter(x=[len(y) - 1], y=[y[-1]], mode="markers", showlegend=False,
                                     marker=dict(symbol="x", size=12, color=color)))
    if tau is not None:
        fig.add_hline(y=tau, line_dash="dash", line_color="grey", annotation_text="τ")
    fig.update_xaxes(title_text="step t")
    fig.update_yaxes(type="log", title_text=y_title, exponentformat="power")
    fig.update_layout(height=380, width=900, title=title, legend=dict(x=1.02, y=1.0))
    return fig
