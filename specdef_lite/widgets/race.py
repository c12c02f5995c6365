"""03 — the optimizer race: T_A(τ) and η_max of each attacker's optimizer A as the lock strength α grows.

``race_table`` locks the released model at every α of a coarse grid and lets each optimizer tune its learning
rate the way an attacker would: scanning down from a large η until runs stop diverging, then a little further
while steps-to-target keep improving (``scan_lrs``). That is much cheaper than a full ``lr_sweep`` at every α
(a lock at α = 1e6 pushes GD's stable η down to ~1e-13) and finds the same stability edge and best η, as long as
the best η lies within ``below_edge`` decades of the edge (for GD it sits at the edge). ``RaceExplorer`` draws
the table: the loss curves at the
chosen α, T(τ) against α and η_max against α with the 1/α² law of GD beside it; every curve it shows is a
``Trace`` from the library's ``train``, computed once and cached.
"""
from __future__ import annotations

import copy
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots
from tqdm.auto import tqdm

from ..deform import specdef
from .. import Sweep, Trace, train
from ._base import Explorer, alpha_slider, log_ticks, nearest, snap

__all__ = ["lr_grid", "scan_lrs", "RaceTable", "race_table", "loglog_slope", "RaceExplorer", "LABELS", "COLORS"]

LABELS = {"sgd": "GD", "adam": "Adam", "newton": "Newton", "sophia": "Sophia", "muon": "Muon"}
COLORS = {"sgd": "#1f77b4", "adam": "#ff7f0e", "newton": "#2ca02c", "sophia": "#d62728", "muon": "#9467bd"}


def lr_grid(lo: float, hi: float, per_decade: int = 2) -> np.ndarray:
    """η grid from hi down to lo (descending): the round values 10^(j/per_decade) in [lo, hi].

    Example:
        >>> [float(f"{v:.3g}") for v in lr_grid(0.01, 1.0, 2)]
        [1.0, 0.316, 0.1, 0.0316, 0.01]
    """
    if not 0 < lo <= hi:
        raise ValueError(f"need 0 < lo <= hi, got lo={lo}, hi={hi}")
    j_hi = math.floor(math.log10(hi) * per_decade + 1e-9)
    j_lo = math.ceil(math.log10(lo) * per_decade - 1e-9)
    if j_lo > j_hi:
        raise ValueError(f"no 10^(j/{per_decade}) lies in [{lo}, {hi}]")
    return 10.0 ** (np.arange(j_hi, j_lo - 1, -1) / per_decade)


def loglog_slope(x: Sequence[float], y: Sequence[float | None]) -> float:
    """Least-squares slope of log y against log x over the finite, positive points (NaN if fewer than 2)."""
    x = np.asarray(x, dtype=float)
    y = np.array([np.nan if v is None else v for v in y], dtype=float)
    ok = np.isfinite(y) & (y > 0) & np.isfinite(x) & (x > 0)
    if ok.sum() < 2:
        return float("nan")
    return float(np.polyfit(np.log(x[ok]), np.log(y[ok]), 1)[0])


def scan_lrs(model, task, optimizer: str, lrs: Sequence[float], steps: int, target: float, *,
             below_edge: float = 2.0, patience: int = 2, explode: float = 1e3, window: int = 10,
             **optimizer_kw) -> Sweep:
    """The attacker's tuning: η from large to small; stop ``below_edge`` decades under the first stable η, or
    after ``patience`` runs in a row that did not beat the best steps-to-τ so far (counted only once some η has
    reached τ: a plateau at too large an η can look like "no progress"). Returns a ``Sweep`` over the η tried.

    For GD one decade below the edge is plenty (below it a smaller η only slows a run down); Adam-type
    optimizers have their best η up to ~1.5 decades under their stability edge.

    Each run is ``train(copy, task, optimizer, steps, target, lr=η, stop_at_target=True)`` — the same runs
    and the same definitions (divergence, *staying* below τ) as ``lr_sweep``; only fewer of them.
    """
    grid = np.sort(np.asarray(list(lrs), dtype=float))[::-1]
    if grid.size == 0:
        raise ValueError("lrs is empty")
    tried: list[tuple[float, Trace]] = []
    edge = None
    best, since_best = None, 0
    for lr in grid:
        if edge is not None and lr < edge / 10 ** below_edge * (1 - 1e-9):
            break
        tr = train(copy.deepcopy(model), task, optimizer, steps, target, lr=float(lr), optimizer_kw=optimizer_kw,
                   explode=explode, stop_at_target=True, window=window, label=f"{LABELS.get(optimizer, optimizer)} "
                   f"lr={lr:.2g}")
        tried.append((float(lr), tr))
        if tr.diverged:
            continue
        edge = lr if edge is None else edge
        s = tr.steps_to(target)
        if s is not None and (best is None or s < best):
            best, since_best = s, 0
        elif best is not None:  # patience counts only once some η has reached τ
            since_best += 1
            if since_best >= patience:
                break
    tried.sort(key=lambda t: t[0])
    lr_arr = np.array([t[0] for t in tried])
    traces = [t[1] for t in tried]
    hits = [tr.steps_to(target) for tr in traces]
    diverged = np.array([tr.diverged for tr in traces])
    reached = [(s, lr) for s, lr in zip(hits, lr_arr) if s is not None]
    best_steps, best_lr = min(reached) if reached else (None, None)
    stable = np.logical_and.accumulate(~diverged)
    max_stable = float(lr_arr[np.flatnonzero(stable)[-1]]) if stable[0] else None
    return Sweep(lr_arr, traces, hits, diverged, None if best_lr is None else float(best_lr), best_steps,
                 max_stable, float(target), name=optimizer,
                 extra={"scan": "descending", "below_edge": below_edge, "patience": patience, "steps": steps})


@dataclass
class RaceTable:
    """One ``Sweep`` per (optimizer, α): the attacker's tuned runs against a lock of every strength.

    Attributes:
        alphas: (A,) the lock strengths, ascending.
        sweeps: optimizer → A sweeps (``scan_lrs``), in the order of ``alphas``.
        steps: optimizer → the step budget each run had.
        target: τ; loss0: the harmful loss of the released model (the same at every α: the lock
            preserves the function).
        released, task, k, targets, optimizer_kw: what is needed to rerun any (α, optimizer, η).
    """
    alphas: np.ndarray
    sweeps: dict[str, list[Sweep]]
    steps: dict[str, int]
    target: float
    loss0: float
    released: object = None
    task: object = None
    k: int = 1
    targets: object = None
    optimizer_kw: dict = field(default_factory=dict)

    @property
    def optimizers(self) -> list[str]:
        return list(self.sweeps)

    def best_steps(self, optimizer: str) -> np.ndarray:
        """(A,) T(τ) at the best η, NaN where no η reached τ within the budget."""
        return np.array([np.nan if s.best_steps is None else s.best_steps for s in self.sweeps[optimizer]])

    def best_lr(self, optimizer: str) -> np.ndarray:
        """(A,) the η with the fewest steps to τ, NaN where none reached it."""
        return np.array([np.nan if s.best_lr is None else s.best_lr for s in self.sweeps[optimizer]])

    def max_stable_lr(self, optimizer: str) -> np.ndarray:
        """(A,) the largest η tried that (with every smaller η tried) did not diverge; NaN if none."""
        return np.array([np.nan if s.max_stable_lr is None else s.max_stable_lr for s in self.sweeps[optimizer]])

    def index(self, alpha: float) -> int:
        return nearest(self.alphas, alpha)

    def trace(self, optimizer: str, alpha: float, lr: float | None = None) -> Trace:
        """The run of ``optimizer`` at (the grid α nearest) ``alpha`` with η = ``lr`` (default: its best η;
        failing that, its largest stable η). Looked up in the table, or trained now if that η was not tried."""
        sw = self.sweeps[optimizer][self.index(alpha)]
        if lr is None:
            lr = sw.best_lr if sw.best_lr is not None else sw.max_stable_lr
            if lr is None:
                return sw.traces[0]
        hit = np.flatnonzero(np.isclose(sw.lrs, lr, rtol=1e-6, atol=0))
        if hit.size:
            return sw.traces[int(hit[0])]
        locked = self.locked(alpha)
        return train(locked, self.task, optimizer, self.steps[optimizer], self.target, lr=float(lr),
                     optimizer_kw=self.optimizer_kw.get(optimizer, {}), stop_at_target=True,
                     label=f"{LABELS.get(optimizer, optimizer)} lr={lr:.2g}")

    def locked(self, alpha: float):
        """A fresh copy of the released model locked at the grid α nearest ``alpha``."""
        return specdef(self.released, float(self.alphas[self.index(alpha)]), k=self.k, targets=self.targets)


def race_table(problem, alphas: Sequence[float], lrs: Mapping[str, Sequence[float]], steps: int | Mapping[str, int], *,
               k: int = 1, targets=None, optimizer_kw: Mapping[str, dict] | None = None,
               below_edge: Mapping[str, float] | None = None, patience: int = 2,
               progress: bool = False) -> RaceTable:
    """T_A(τ) and η_max for every optimizer A and every α: lock, then ``scan_lrs`` — the data of notebook 03.

    Args:
        problem: a ``ToyProblem`` (``released``, ``task``, ``target``), e.g. ``teacher_student()``.
        alphas: lock strengths (a log grid: the explorer's α slider steps through it).
        lrs: optimizer name → its η grid, e.g. ``{"sgd": lr_grid(1e-13, 3), "newton": [1.0, 0.5, 0.25]}``.
        steps: the step budget, one for all or per optimizer (Newton steps cost a dense Hessian each).
        k, targets: passed to ``specdef``; optimizer_kw: per-optimizer options (e.g. Newton's damping).
        below_edge: optimizer → decades scanned under its stability edge (default 1 for "sgd", 2 otherwise);
        patience: see ``scan_lrs``. progress: a ``tqdm.auto`` bar over (α, optimizer).

    Example:
        >>> from specdef_lite.problems import teacher_student
        >>> p = teacher_student(width=4, n=16, seed=0)
        >>> tab = race_table(p, [10.0, 100.0], {"sgd": lr_grid(1e-5, 1.0, 2)}, steps=60)
        >>> [f"{v:.2g}" for v in tab.max_stable_lr("sgd")]  # α ×10 → η_max ×1/100
        ['0.032', '0.00032']
    """
    alphas = np.sort(np.asarray(list(alphas), dtype=float))
    budget = {o: int(steps if isinstance(steps, (int, np.integer)) else steps[o]) for o in lrs}
    kw = {o: dict((optimizer_kw or {}).get(o, {})) for o in lrs}
    depth = {o: float((below_edge or {}).get(o, 1.0 if o == "sgd" else 2.0)) for o in lrs}
    sweeps: dict[str, list[Sweep]] = {o: [] for o in lrs}
    bar = tqdm(total=len(alphas) * len(lrs), disable=not progress, desc="race", leave=False)
    try:
        for a in alphas:
            locked = specdef(problem.released, float(a), k=k, targets=targets)
            for o, grid in lrs.items():
                bar.set_postfix_str(f"α={a:.0e} {LABELS.get(o, o)}", refresh=False)
                sweeps[o].append(scan_lrs(locked, problem.task, o, grid, budget[o], problem.target,
                                          below_edge=depth[o], patience=patience, **kw[o]))
                bar.update(1)
    finally:
        bar.close()
    return RaceTable(alphas, sweeps, budget, float(problem.target), float(problem.task.value(problem.released)),
                     problem.released, problem.task, k, targets, kw)


def _eta(lr: float) -> str:
    """A learning rate in 3 digits with a short exponent: 0.316, 3.16e-7 (slider labels and legend alike)."""
    text = f"{float(lr):.3g}"
    return re.sub(r"e([+-])0*(\d)", r"e\1\2", text)


def _finite(values) -> list:
    """Floats for plotly; non-finite entries (a diverged loss) become None, i.e. a gap."""
    return [float(v) if np.isfinite(v) else None for v in np.asarray(values, dtype=float)]


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

    def tried(self, optimizer: str, alpha: float) -> list[float]:
        """The η the attacker's scan tried for ``optimizer`` at (the grid α nearest) ``alpha``, ascending."""
        return sorted(float(v) for v in self.table.sweeps[optimizer][self.table.index(alpha)].lrs)

    def _sensible_lr(self, optimizer: str, alpha: float) -> float:
        sw = self.table.sweeps[optimizer][self.table.index(alpha)]
        for lr in (sw.best_lr, sw.max_stable_lr):
            if lr is not None and np.isfinite(lr):
                return float(lr)
        tried = self.tried(optimizer, alpha)
        return tried[0]

    def _lr_options(self, optimizer: str, alpha: float, lr: float) -> tuple[list, float]:
        """Options of the η slider at (optimizer, α) and the value nearest ``lr`` among them (log scale)."""
        tried = self.tried(optimizer, alpha)
        value = tried[nearest(tried, lr)] if lr not in tried else lr
        return [(_eta(v), v) for v in tried], value

    def make_controls(self):
        if not self.live:
            return {"alpha": self._alpha0, "optimizer": self._opt0, "lr": self._lr0}
        import ipywidgets as W
        from ._base import _compact
        opts = [(LABELS.get(o, o), o) for o in self.table.optimizers]
        lr_opts, lr0 = self._lr_options(self._opt0, self._alpha0, self._lr0)
        if self._lr0 != lr0:  # an η the scan did not try at the start α (given by the caller): offer it too
            lr_opts, lr0 = sorted(lr_opts + [(_eta(self._lr0), self._lr0)], key=lambda o: o[1]), self._lr0
        return {
            "alpha": alpha_slider(self._alpha0, self.grid),
            "optimizer": W.Dropdown(options=opts, value=self._opt0, description="optimizer",
                                    **_compact({}, width="170px")),
            "lr": W.SelectionSlider(options=lr_opts, value=lr0, description="η", continuous_update=False,
                                    **_compact({})),
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
                try:
                    w.options = options  # ipywidgets selects the first option here …
                    w.value = value  # … then η goes to the value nearest the one the student had
                finally:
                    self._syncing = False
        super()._on_change(change)

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
                         range=[math.log10(t.target) - 1.2, math.log10(t.loss0) + 2], **log_ticks())
        fig.update_xaxes(title_text="α (log)", type="log", row=2, col=1, **log_ticks())
        fig.update_xaxes(title_text="α (log)", type="log", row=2, col=2, **log_ticks())
        fig.update_yaxes(title_text="steps to τ (log; ▵ = not reached)", type="log", row=2, col=1,
                         range=[0, math.log10(1.6 * n_max)], **log_ticks())
        fig.update_yaxes(title_text="η_max (log)", type="log", row=2, col=2, **log_ticks())
        fig.update_layout(height=800, margin=dict(t=110, b=45, l=60, r=15),
                          legend=dict(orientation="h", yanchor="bottom", y=1.06, x=0, xanchor="left", font_size=12))
        fig.update_annotations(font_size=14)
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
                                    "name": f"your run: {LABELS.get(optimizer, optimizer)}, η={_eta(lr)} ({status})"}
        frame[self._idx["steps_marker"]] = {"x": [a, a]}
        frame[self._idx["lr_marker"]] = {"x": [a, a]}
        return frame
