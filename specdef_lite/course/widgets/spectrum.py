"""Notebook 02's spectral-density figure: eigenvalues of ∇²ℒ per decade of |λ|, released vs locked, an α slider.

A static figure (no kernel needed): ``display.slider_figure`` steps through the α grid of a
``spectrum.SpectrumSweep`` by restyling the locked model's traces, so the HTML book keeps a working slider.
The x axis is |λ| on a log scale (a lock moves eigenvalues by α², many decades); positive eigenvalues are
solid, negative ones dotted (by |λ|). Curves are stochastic Lanczos quadrature; the dense eigenvalues the
lock threw out (|λ| beyond 10× the released edge) are marked on top, as the check.
"""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import torch

from ...common.display import slider_figure
from ...curvature.spectrum import SpectrumSweep
from ...experiments.grid import nearest

__all__ = ["spectrum_figure"]

SIGMA = 0.15  # Gaussian width in decades of |λ|
GREY, BLUE = "#7f7f7f", "#1f77b4"


def _curves(d, grid: np.ndarray) -> tuple[list[float], list[float]]:
    t = torch.as_tensor(grid)
    return d.per_decade(t, SIGMA, sign=1).tolist(), d.per_decade(t, SIGMA, sign=-1).tolist()


def spectrum_figure(sweep: SpectrumSweep, alpha: float | None = None, *, floor: float = 1e-3) -> go.Figure:
    """Eigenvalues per decade of |λ| (log-log), released (grey) vs locked at α (blue), with an α slider.

    Args:
        sweep: from ``spectrum_sweep``; alpha: the slider's starting point (nearest grid value; default the
            largest); floor: smallest |λ| on the axis, as a fraction of the released edge.
    """
    lo = np.log10(floor * sweep.edge)
    hi = np.log10(max(np.abs(lam).max() for lam in sweep.locked)) + 0.5
    grid = np.linspace(lo, hi, 400)  # decades of |λ|
    x = (10.0 ** grid).tolist()
    fig = go.Figure()
    pos, neg = _curves(sweep.released_slq, grid)
    fig.add_scatter(x=x, y=pos, name=f"released, λ > 0 ({sweep.released.size} parameters)", line=dict(color=GREY))
    fig.add_scatter(x=x, y=neg, name="released, λ < 0 (by |λ|)", line=dict(color=GREY, dash="dot"))
    fig.add_scatter(x=x, y=pos, name="locked, λ > 0", line=dict(color=BLUE, width=2.5))
    fig.add_scatter(x=x, y=neg, name="locked, λ < 0 (by |λ|)", line=dict(color=BLUE, width=2.5, dash="dot"))
    fig.add_scatter(x=[], y=[], mode="markers", name="thrown out (dense eigvalsh, check)",
                    marker=dict(symbol="line-ns-open", size=14, color="#d62728"))
    frames, labels = [], []
    for i, a in enumerate(sweep.alphas):
        pos, neg = _curves(sweep.locked_slq[i], grid)
        out = np.abs(sweep.outliers(i))
        frames.append({2: {"y": pos}, 3: {"y": neg}, 4: {"x": out.tolist(), "y": [0.3] * out.size}})
        labels.append(f"{a:.0e}".replace("e+0", "e").replace("e+", "e"))
    active = len(frames) - 1 if alpha is None else nearest(sweep.alphas, alpha)
    slider_figure(fig, frames, labels, prefix="α = ", active=active)
    fig.add_vline(x=sweep.edge, line=dict(color=GREY, dash="dash", width=1))
    fig.add_annotation(x=np.log10(sweep.edge), y=1.0, yref="paper", text="released edge", showarrow=False,
                       xanchor="left", font=dict(size=11, color=GREY))
    fig.update_xaxes(type="log", title="|λ| of ∇²ℒ", range=[lo, hi])
    fig.update_yaxes(type="log", title="eigenvalues per decade of |λ|", range=[-1, np.log10(sweep.locked.shape[1]) + 0.3])
    fig.update_layout(title=f"The Hessian's spectrum before and after the lock (k = {sweep.k}, "
                            f"layer{'s' if len(sweep.layers) > 1 else ''} {', '.join(sweep.layers)})",
                      width=900, height=460, legend=dict(x=1.02, y=1, font=dict(size=11)),
                      margin=dict(l=60, r=20, t=50, b=50))
    return fig
