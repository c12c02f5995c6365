"""04 — the attacker's view: T_A(τ) of the locked model against fusing (W = C·W̃) and layer injection (D = I).

PAPER.md, "The limit": SpecDef reparameterises without changing what the model computes, so an attacker who
knows that can undo it. ``attack_table`` runs the same optimizer on, for every α of a grid,

* the **locked** model, with the attacker's best η for it (``scan_lrs``) — the defence working;
* the **fused** model ``fuse(locked)``, at the η that is best for the undefended model;
* the **injected** model ``inject(locked)`` (only the identity-initialised Ds train), at the η that is best
  for the *same injection into the undefended model* — the fair reference, because injection trains other
  parameters than a full fine-tune;

next to two α-free references: the undefended model's full fine-tune and its injection. ``AttackerExplorer``
puts all five loss curves on one plot with an α slider, and T(τ) against α beside it. ``parameter_bill``
and ``bill_figure`` count what injection costs: one out×out matrix per deformed layer, L·d² for L layers of
width d — linear in depth, linear in model size. (Layer injection is our reconstruction of the paper's
construction; see PAPER.md.)
"""
from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots
from tqdm.auto import tqdm

from .. import Trace, deformed_layers, detect, fuse, inject, param_overhead, specdef, train
from ._base import Explorer, alpha_slider, log_ticks, nearest, snap
from .race import LABELS, _finite, lr_grid, scan_lrs

__all__ = ["AttackTable", "attack_table", "AttackerExplorer", "parameter_bill", "bill_figure", "CURVES"]

# curve key -> (legend label, colour, dash, width)
CURVES = {
    "original": ("undefended, full fine-tune", "black", "solid", 3),
    "injected_ref": ("undefended + injection", "#7f7f7f", "solid", 3),
    "locked": ("locked, full fine-tune (best η)", "#d62728", "solid", 2),
    "fused": ("attacker: fuse(locked)", "#1f77b4", "dot", 3),
    "injected": ("attacker: inject(locked)", "#2ca02c", "dash", 3),
}


@dataclass
class AttackTable:
    """Per α the attacker's runs on the locked, fused and injected model, plus the two undefended references.

    Attributes:
        alphas: (A,) lock strengths; optimizer: the one optimizer every run uses.
        runs: "locked" / "fused" / "injected" → A traces; refs: "original" / "injected_ref" → one trace.
        lrs: "locked" → (A,) best η per α; "original" / "injected_ref" → the η the attacks reuse.
        detected: per α, the layers ``detect`` flags on the locked model; deformed: the layers really locked.
        fuse_error: (A,) max |W_fused − W| / max |W| over the locked layers (float64).
        steps, target: step budget and τ.
    """
    alphas: np.ndarray
    optimizer: str
    runs: dict[str, list[Trace]]
    refs: dict[str, Trace]
    lrs: dict[str, object]
    detected: list[list[str]]
    deformed: list[str]
    fuse_error: np.ndarray
    steps: int
    target: float
    extra: dict = field(default_factory=dict)

    def steps_to(self, key: str) -> np.ndarray:
        """(A,) T(τ) of one attack ("locked", "fused", "injected"); NaN where τ was not reached."""
        return np.array([np.nan if (s := tr.steps_to(self.target)) is None else s for tr in self.runs[key]],
                        dtype=float)

    def ref_steps(self, key: str) -> float:
        """T(τ) of a reference ("original", "injected_ref"); NaN if not reached."""
        s = self.refs[key].steps_to(self.target)
        return float("nan") if s is None else float(s)

    def ratio(self, attack: str) -> np.ndarray:
        """(A,) T(τ) of the attack / T(τ) of its undefended reference (fused → original, injected → injected_ref)."""
        ref = {"fused": "original", "injected": "injected_ref", "locked": "original"}[attack]
        return self.steps_to(attack) / self.ref_steps(ref)

    def index(self, alpha: float) -> int:
        return nearest(self.alphas, alpha)


def attack_table(problem, alphas: Sequence[float], *, optimizer: str = "sgd", steps: int = 200,
                 lrs: Sequence[float] | None = None, k: int = 1, targets=None, progress: bool = False,
                 **optimizer_kw) -> AttackTable:
    """Defender vs attacker for every α: lock, then fine-tune the locked, fused and injected models.

    Args:
        problem: a ``ToyProblem`` (``released``, ``task``, ``target``).
        alphas: lock strengths (the explorer's slider steps through them).
        optimizer: one ``make_optimizer`` name for every run ("sgd" by default), ``**optimizer_kw`` its options.
        steps: the step budget of every run.
        lrs: the η grid the attacker scans (default ``lr_grid(1e-13, 3)``); each scan stops ~2.5 decades below
            the stability edge, so a wide grid costs little.
        k, targets: passed to ``specdef``. progress: a ``tqdm.auto`` bar over α.

    Example:
        >>> from specdef_lite.problems import teacher_student
        >>> p = teacher_student(width=4, n=16, seed=0)
        >>> tab = attack_table(p, [1.0, 1e4], steps=100)
        >>> tab.ratio("fused").tolist(), tab.ratio("injected").tolist()
        ([1.0, 1.0], [1.0, 1.0])
    """
    alphas = np.sort(np.asarray(list(alphas), dtype=float))
    grid = lr_grid(1e-13, 3.0, 2) if lrs is None else np.asarray(list(lrs), dtype=float)
    task, target = problem.task, problem.target
    released = problem.released

    def run(model, lr, label):  # train() works in place: always on a copy
        return train(copy.deepcopy(model), task, optimizer, steps, target, lr=float(lr), optimizer_kw=optimizer_kw,
                     stop_at_target=True, label=label)

    # the undefended references, each at its own best η (the attacks below reuse these η)
    names = deformed_layers(specdef(released, 2.0, k=k, targets=targets))
    ref_inj_model = inject(released, targets=names)
    sw_orig = scan_lrs(released, task, optimizer, grid, steps, target, **optimizer_kw)
    sw_inj = scan_lrs(ref_inj_model, task, optimizer, grid, steps, target, **optimizer_kw)
    if sw_orig.best_lr is None or sw_inj.best_lr is None:
        raise ValueError("the undefended model does not reach τ within the budget; raise steps or widen lrs")
    lr_orig, lr_inj = sw_orig.best_lr, sw_inj.best_lr
    refs = {"original": run(released, lr_orig, "undefended"),
            "injected_ref": run(ref_inj_model, lr_inj, "undefended + injection")}
    runs: dict[str, list[Trace]] = {"locked": [], "fused": [], "injected": []}
    lr_locked, detected, errs = [], [], []
    W0 = {n: released.get_submodule(n).weight.detach().double() for n in names}
    for a in tqdm(alphas, disable=not progress, desc="attacks", leave=False):
        locked = specdef(released, float(a), k=k, targets=targets)
        sw = scan_lrs(locked, task, optimizer, grid, steps, target, **optimizer_kw)
        best = sw.best_lr if sw.best_lr is not None else sw.max_stable_lr
        i = int(np.flatnonzero(sw.lrs == best)[0]) if best is not None else 0
        runs["locked"].append(sw.traces[i])
        lr_locked.append(np.nan if best is None else best)
        fused = fuse(locked)
        errs.append(max(float((fused.get_submodule(n).weight.detach().double() - W).abs().max() / W.abs().max())
                        for n, W in W0.items()))
        runs["fused"].append(run(fused, lr_orig, f"fused α={a:.0e}"))
        runs["injected"].append(run(inject(locked), lr_inj, f"injected α={a:.0e}"))
        detected.append(detect(locked))
    return AttackTable(alphas, optimizer, runs, refs,
                       {"locked": np.array(lr_locked), "original": lr_orig, "injected_ref": lr_inj},
                       detected, names, np.array(errs), steps, float(target),
                       extra={"loss0": float(task.value(released)), "injected_params": param_overhead(
                           released, ref_inj_model).trainable_after})


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
            fig.add_trace(go.Scatter(x=list(range(len(tr.losses))), y=_finite(tr.losses), mode="lines", name=label,
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
        loss0 = t.extra.get("loss0", t.target * 10)
        fig.update_xaxes(title_text="step t", range=[0, t.steps], row=1, col=1)
        fig.update_yaxes(title_text="ℒ_H (log)", type="log", row=1, col=1,
                         range=[math.log10(t.target) - 1.2, math.log10(loss0) + 0.5], **log_ticks())
        fig.update_xaxes(title_text="α (log)", type="log", row=1, col=2, **log_ticks())
        fig.update_yaxes(title_text="steps to τ (log; ▵ = not reached)", type="log", row=1, col=2,
                         range=[0, math.log10(1.6 * t.steps)], **log_ticks())
        fig.update_layout(height=540, margin=dict(t=120, b=45, l=60, r=15),
                          legend=dict(orientation="h", yanchor="bottom", y=1.1, x=0, xanchor="left", font_size=12))
        fig.update_annotations(font_size=14)
        return fig

    def compute(self, alpha) -> dict:
        t = self.table
        i = t.index(alpha)
        a = float(t.alphas[i])
        frame = {}
        for j, key in zip((2, 3, 4), ("locked", "fused", "injected")):
            tr = t.runs[key][i]
            s = tr.steps_to(t.target)
            note = f"τ in {s} steps" if s is not None else ("diverged" if tr.diverged else "τ not reached")
            frame[j] = {"x": list(range(len(tr.losses))), "y": _finite(tr.losses),
                        "name": f"{CURVES[key][0]} ({note})"}
        frame[11] = {"x": [a, a]}
        return frame


def parameter_bill(widths: Sequence[int], depths: Sequence[int], *, k: int = 1) -> dict[str, np.ndarray]:
    """added[i, j] = |θ(inject(lock(f)))| − |θ(lock(f))| for an MLP f with depths[j] square tanh layers of width
    widths[i] (all locked), counted by ``param_overhead`` on the real models: L·d² (one d×d D per layer).

    Returns:
        {"widths": (W,), "depths": (D,), "added": (W, D) injected parameters, "params": (W, D) parameters of
        the undefended model, "locked_extra": (W, D) parameters the lock itself added (the C matrices)}.

    Example:
        >>> bill = parameter_bill([4, 8], [1, 3])
        >>> bill["added"].tolist()
        [[16, 48], [64, 192]]
    """
    from ..problems import mlp
    W, D = len(widths), len(depths)
    added, params, extra = (np.zeros((W, D), dtype=np.int64) for _ in range(3))
    for i, d in enumerate(widths):
        for j, L in enumerate(depths):
            net = mlp([int(d)] * (int(L) + 1) + [1], seed=0)  # L square d×d layers, then a d → 1 read-out
            hidden = [str(2 * h) for h in range(int(L))]
            locked = specdef(net, 2.0, k=k, targets=hidden)
            added[i, j] = param_overhead(locked, inject(locked)).added
            params[i, j] = sum(p.numel() for p in net.parameters())
            extra[i, j] = param_overhead(net, locked).added
    return {"widths": np.asarray(widths), "depths": np.asarray(depths), "added": added, "params": params,
            "locked_extra": extra}


def bill_figure(bill: dict[str, np.ndarray]) -> go.Figure:
    """Two panels from ``parameter_bill``: added parameters vs depth L (one line per width; straight lines
    through 0 of slope d²) and vs width d (log–log, one line per depth; slope 2), with L·d² drawn dashed."""
    widths, depths, added = bill["widths"], bill["depths"], bill["added"]
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.12,
                        subplot_titles=("injected parameters vs depth L", "injected parameters vs width d"))
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2"]
    for i, d in enumerate(widths):
        c = palette[i % len(palette)]
        fig.add_trace(go.Scatter(x=depths.tolist(), y=added[i].tolist(), mode="markers", name=f"d = {d}",
                                 marker=dict(color=c, size=9), legendgroup=f"d{d}"), 1, 1)
        fig.add_trace(go.Scatter(x=[0, int(depths.max())], y=[0, int(depths.max()) * int(d) ** 2], mode="lines",
                                 line=dict(color=c, dash="dash", width=1), showlegend=False, legendgroup=f"d{d}",
                                 hoverinfo="skip"), 1, 1)
    for j, L in enumerate(depths):
        c = palette[(j + 3) % len(palette)]
        fig.add_trace(go.Scatter(x=widths.tolist(), y=added[:, j].tolist(), mode="markers", name=f"L = {L}",
                                 marker=dict(color=c, size=9, symbol="square"), legendgroup=f"L{L}"), 1, 2)
        fig.add_trace(go.Scatter(x=widths.tolist(), y=(int(L) * widths.astype(float) ** 2).tolist(), mode="lines",
                                 line=dict(color=c, dash="dash", width=1), showlegend=False, legendgroup=f"L{L}",
                                 hoverinfo="skip"), 1, 2)
    fig.update_xaxes(title_text="depth L (locked layers)", row=1, col=1)
    fig.update_yaxes(title_text="added parameters", row=1, col=1)
    fig.update_xaxes(title_text="width d (log)", type="log", row=1, col=2)
    fig.update_yaxes(title_text="added parameters (log)", type="log", row=1, col=2)
    fig.update_layout(height=420, margin=dict(t=60, b=40, l=60, r=20),
                      annotations=list(fig.layout.annotations) + [dict(
                          text="dashed: L·d²", x=0.99, y=0.02, xref="paper", yref="paper", showarrow=False,
                          font=dict(size=11, color="grey"))])
    return fig
