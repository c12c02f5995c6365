"""Static figures of the experiments' results — what the notebooks show beside their explorers.

Each function takes a result (a ``Trace`` dict, ``KappaSweep``, ``RaceTable``, ``ParameterBill``, …) and
returns a plain ``plotly.graph_objects.Figure``; nothing here computes a number a notebook asserts. Two
conventions hold everywhere: a run that diverged ends with a ✕, and a best response that never reached τ
within its budget B is a **lower bound**, drawn at B + 1 as an open upward triangle (the true value lies
above it).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .best_response import slowdown
from .tuning import LABELS

__all__ = ["COLORS", "PALETTE", "loss_curves_figure", "kappa_figure", "slowdown_figure", "bill_figure",
           "start_figure", "placements_figure"]

COLORS = {"sgd": "#1f77b4", "adam": "#ff7f0e", "newton": "#2ca02c", "sophia": "#d62728", "muon": "#9467bd",
          "GD": "#1f77b4", "GD best": "#17becf", "Adam": "#ff7f0e", "Newton": "#2ca02c"}
PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"]
BOUND = dict(symbol="triangle-up-open", size=12, line=dict(width=2))  # marker of a lower bound


def _tau_line(fig: go.Figure, tau: float, x_max: int, **cell) -> None:
    """τ as a dashed trace labelled at its own height: an ``add_hline`` annotation on a log axis is placed at y = τ
    in log₁₀ units (far from the line), so the label is a text point of the line itself."""
    fig.add_trace(go.Scatter(x=[0, x_max], y=[tau, tau], mode="lines+text", text=["", "target τ "],
                             textposition="top left", line=dict(color="grey", dash="dash", width=1),
                             textfont=dict(color="grey"), name="target τ", showlegend=False,
                             hoverinfo="skip"), **cell)


def _log_losses(losses) -> np.ndarray:
    y = np.asarray(losses, dtype=float)
    return np.where(np.isfinite(y), np.maximum(y, 1e-32), np.nan)


def loss_curves_figure(traces: Mapping, *, title: str = "", tau: float | None = None,
                       y_title: str = "loss ℒ(θ_t)", dashes: Mapping[str, str] | None = None) -> go.Figure:
    """Loss per step (log y) for {label: Trace}; a diverged run ends with a ✕ at its last loss; τ dashed and labelled on its line."""
    fig = go.Figure()
    for j, (label, tr) in enumerate(traces.items()):
        color = PALETTE[j % len(PALETTE)]
        y = _log_losses(tr.losses)
        fig.add_trace(go.Scatter(y=y, mode="lines", name=label,
                                 line=dict(color=color, dash=(dashes or {}).get(label, "solid"))))
        if getattr(tr, "diverged_at", None) is not None:
            fig.add_trace(go.Scatter(x=[len(y) - 1], y=[y[-1]], mode="markers", showlegend=False,
                                     marker=dict(symbol="x", size=12, color=color)))
    if tau is not None:
        _tau_line(fig, tau, max([len(tr.losses) - 1 for tr in traces.values()] + [1]))
    fig.update_xaxes(title_text="step t")
    fig.update_yaxes(type="log", title_text=y_title, exponentformat="power")
    fig.update_layout(height=380, width=900, title=title, legend=dict(x=1.02, y=1.0))
    return fig


def kappa_figure(sweep) -> go.Figure:
    """Log-log steps to τ against κ (a ``KappaSweep``): measured points, GD's exact theory, and a slope-1 guide."""
    fig = go.Figure()
    k = sweep.kappas
    fig.add_trace(go.Scatter(x=k, y=sweep.theory, mode="lines", line=dict(color=COLORS["GD"], width=1),
                             name="GD theory: ½Σᵢλᵢcᵢ²(1 − λᵢ/κ)²ᵗ ≤ τ"))
    gd = sweep.steps["GD"]
    if np.isfinite(gd).any():
        anchor = int(np.nanargmax(np.where(np.isfinite(gd), k, np.nan)))
        fig.add_trace(go.Scatter(x=k, y=gd[anchor] * k / k[anchor], mode="lines",
                                 line=dict(color="grey", dash="dash"), name="slope 1 (steps ∝ κ)"))
    names = {"GD": "GD, η = 1/λ_max", "GD best": "GD, its best η", "Newton": "Newton, η = 1",
             "Adam": "Adam, its best η"}
    for label, s in sweep.steps.items():
        text = [f"η = {x:.3g}" for x in sweep.lrs[label]]
        fig.add_trace(go.Scatter(x=k, y=s, mode="markers+lines", text=text, name=names.get(label, label),
                                 marker=dict(size=9, color=COLORS.get(label)),
                                 line=dict(dash="dot", color=COLORS.get(label))))
    fig.update_xaxes(type="log", title_text="condition number κ = λ_max/λ_min", exponentformat="power", dtick=1)
    fig.update_yaxes(type="log", title_text=f"steps to ℒ ≤ τ = {sweep.tau:.0e}", exponentformat="power", dtick=1)
    fig.update_layout(height=420, width=900, legend=dict(x=1.02, y=1.0),
                      title=f"Steps to the target vs κ (GD: log-log slope {sweep.slope():.2f})")
    return fig


def slowdown_figure(alphas: Sequence[float], slowdowns: Mapping[str, Sequence], *,
                    title: str = "Best-response slowdown against α") -> go.Figure:
    """T_locked(τ; η*)/T_undefended(τ; η*) against α, log–log, one line per optimizer; lower bounds as open ▵ with "≥".

    ``slowdowns``: optimizer name → one ``Slowdown`` per α (e.g. ``RaceTable.slowdowns``).
    """
    fig = go.Figure()
    a = np.asarray(alphas, dtype=float)
    top = 1.0
    for o, sds in slowdowns.items():
        ratio = np.array([s.ratio for s in sds])
        bound = np.array([s.lower_bound for s in sds], dtype=bool)
        top = max(top, float(ratio.max()))
        color, name = COLORS.get(o, "black"), LABELS.get(o, o)
        text = [f"{'≥ ' if b else ''}{r:.3g}× ({s.locked.summary()})" for r, b, s in zip(ratio, bound, sds)]
        fig.add_trace(go.Scatter(x=a, y=ratio, mode="lines+markers", name=name, legendgroup=o, text=text,
                                 hovertemplate="α=%{x:.0e}: %{text}<extra>" + name + "</extra>",
                                 line=dict(color=color), marker=dict(size=11, color=color,
                                                                     symbol=np.where(bound, "triangle-up-open",
                                                                                     "circle").tolist())))
    fig.add_trace(go.Scatter(x=[a.min(), a.max()], y=[1.0, 1.0], mode="lines+text", text=["", "not slowed (1×) "],
                             textposition="bottom left", line=dict(color="grey", dash="dot", width=1),
                             textfont=dict(color="grey"), showlegend=False, hoverinfo="skip"))
    fig.update_xaxes(type="log", title_text="lock strength α", exponentformat="power", dtick=1)
    fig.update_yaxes(type="log", title_text="slowdown, each at its best η (▵: lower bound, never reached τ)",
                     exponentformat="power", range=[-0.3, np.log10(top) + 0.4])
    fig.update_layout(height=460, width=900, title=title, legend=dict(x=1.02, y=1.0))
    return fig


def bill_figure(bill) -> go.Figure:
    """Two panels from a ``ParameterBill``: added parameters vs depth L (one line per width; straight lines
    through 0 of slope d²) and vs width d (log–log, one line per depth; slope 2), with L·d² drawn dashed."""
    widths, depths, added = bill.widths, bill.depths, bill.added
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


def _twin(trace, earlier: Mapping[str, object]) -> str | None:
    """The label of an earlier run whose losses equal these to 1e-9 (relative), else None."""
    y = np.asarray(trace.losses, dtype=float)
    for label, other in earlier.items():
        z = np.asarray(other.losses, dtype=float)
        if z.shape == y.shape and np.allclose(y, z, rtol=1e-9, atol=0, equal_nan=True):
            return label
    return None


def start_figure(f: np.ndarray, f_locked: np.ndarray, runs: Mapping[str, tuple], tau: float) -> go.Figure:
    """f' against f on the utility inputs (left: the lock keeps f), and each model's attack at its best η (right).

    Args:
        f, f_locked: the released and locked models' outputs on the same inputs.
        runs: legend label → (``Trace``, ``BestResponse``) — the run drawn and the search it came from; a
            response that never reached τ is drawn dashed and labelled with its lower bound.
        tau: the target, drawn dashed with its label on the line.

    A run whose losses equal an earlier run's (to 1e-9) would hide under it: it is drawn thinner and dashed
    on top, with "coincides with …" in its legend entry, so both stay visible.
    """
    diff = float(np.max(np.abs(np.asarray(f) - np.asarray(f_locked))))
    fig = make_subplots(rows=1, cols=2, subplot_titles=(f"same function: max |f − f'| = {diff:.1e}",
                                                        "harder to fine-tune: each model at its best η"))
    fig.add_trace(go.Scatter(x=f, y=f_locked, mode="markers", name="utility inputs", marker=dict(size=5)), 1, 1)
    lim = [float(np.min(f)), float(np.max(f))]
    fig.add_trace(go.Scatter(x=lim, y=lim, mode="lines", line=dict(dash="dot", color="grey"), name="f' = f"), 1, 1)
    colors = ["#2ca02c", "#d62728", "#ff7f0e", "#1f77b4"]
    drawn: dict[str, object] = {}
    for j, (label, (trace, br)) in enumerate(runs.items()):
        twin = _twin(trace, drawn)
        drawn[label] = trace
        lr = trace.label.rpartition("lr=")[2] if "lr=" in trace.label else "?"
        if br.reached:
            name = f"{label}: {br.best_steps} steps (η = {lr})"
        else:
            name = f"{label}: τ not reached, ≥ {br.lower_bound} steps (largest stable η = {lr})"
        if twin:
            name += f" — coincides with {twin}"
        fig.add_trace(go.Scatter(y=_log_losses(trace.losses), mode="lines", name=name,
                                 line=dict(color=colors[j % len(colors)], width=2 if twin else 3,
                                           dash="dash" if twin or not br.reached else "solid")), 1, 2)
    _tau_line(fig, tau, max([len(tr.losses) - 1 for tr, _ in runs.values()] + [1]), row=1, col=2)
    fig.update_xaxes(title_text="f(x), released model", row=1, col=1)
    fig.update_yaxes(title_text="f'(x), locked model", row=1, col=1)
    fig.update_xaxes(title_text="gradient-descent step", row=1, col=2)
    fig.update_yaxes(title_text="harmful loss (MSE)", type="log", exponentformat="power", row=1, col=2)
    fig.update_layout(height=460, legend=dict(orientation="h", y=-0.22))
    return fig


def placements_figure(responses: Mapping[str, object], reference: str, *, title: str = "") -> go.Figure:
    """Two panels from {attack label: ``BestResponse``}: steps to τ against η for every learning rate tried (left;
    ✕ diverged, open ▵ at B + 1 not reached), and each attack's best-response slowdown against ``reference``'s best
    (right, log; open ▵ and "≥" where it never reached τ: a lower bound)."""
    ref = responses[reference]
    fig = make_subplots(rows=1, cols=2, column_widths=[0.55, 0.45], horizontal_spacing=0.14,
                        subplot_titles=("steps to τ against the learning rate η", f"slowdown against {reference}, each at its best η"))
    labels = list(responses)
    for j, label in enumerate(labels):
        br, color = responses[label], PALETTE[j] if j < len(PALETTE) else "#7f7f7f"
        ys = [o.steps if o.steps is not None else br.budget + 1 for o in br.outcomes]
        symbols = ["x" if o.diverged else "circle" if o.steps is not None else "triangle-up-open" for o in br.outcomes]
        fig.add_trace(go.Scatter(x=br.lrs, y=ys, mode="lines+markers", name=label, legendgroup=label,
                                 line=dict(color=color), marker=dict(symbol=symbols, size=10, color=color)), 1, 1)
        s = slowdown(br, ref)  # refuses a reference that never reached τ
        ratio, text = s.ratio, s.summary()
        fig.add_trace(go.Scatter(x=[ratio], y=[label], mode="markers+text", text=[text], textposition="middle right",
                                 showlegend=False, legendgroup=label,
                                 marker=dict(size=12, color=color, symbol="circle" if br.reached else "triangle-up-open")),
                      1, 2)
    fig.add_trace(go.Scatter(x=[1.0, 1.0], y=[labels[0], labels[-1]], mode="lines", line=dict(color="grey", dash="dot"),
                             showlegend=False, hoverinfo="skip"), 1, 2)
    fig.add_hline(y=ref.budget + 1, line_dash="dot", line_color="grey", row=1, col=1,
                  annotation_text="B + 1: not reached (▵) / diverged (✕)")
    top = max(slowdown(br, ref).ratio for br in responses.values())
    fig.update_xaxes(type="log", title_text="learning rate η", exponentformat="power", row=1, col=1)
    fig.update_yaxes(title_text="steps to reach and stay below τ", row=1, col=1)
    fig.update_xaxes(type="log", title_text="slowdown (1×: not slowed)", range=[-0.5, np.log10(max(top, 1.0)) + 0.6],
                     row=1, col=2)
    fig.update_yaxes(autorange="reversed", row=1, col=2)
    fig.update_layout(height=460, width=1000, title=title, legend=dict(orientation="h", y=-0.2))
    return fig
