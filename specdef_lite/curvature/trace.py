"""tr(H) ≈ (1/m) Σᵢ vᵢᵀ H vᵢ (Hutchinson) and Hutch++ = tr(QᵀHQ) + Hutchinson on (I − QQᵀ)H(I − QQᵀ).

Why two: Hutchinson's estimator is unbiased for any symmetric H when E[vvᵀ] = I (Rademacher v: entries
±1), with variance 2(‖H‖²_F − Σᵢ Hᵢᵢ²)/m, so its error falls only like 1/√m. A Hessian with a few large
eigenvalues — exactly what SpecDef creates, k per locked layer at ~α² — has ‖H‖_F dominated by them.
Hutch++ (Meyer, Musco, Musco & Woodruff 2021, "Hutch++: Optimal Stochastic Trace Estimation") spends a
third of its products on a sketch Q = orth(HS) of the top of the spectrum, whose trace tr(QᵀHQ) it takes
exactly, and the last third on Hutchinson over what Q leaves; its error falls like 1/m for PSD H.

Both take products only (a ``LinearOperator``, a dense matrix, or a loss through ``HessianOperator``), seed
a local ``torch.Generator``, and return a frozen ``TraceResult`` with the products spent.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .operators import HessianOperator, LinearOperator, as_operator

__all__ = ["TraceResult", "hutchinson", "hutch_plus_plus", "hessian_trace"]


@dataclass(frozen=True)
class TraceResult:
    """An estimate of tr(H) with the standard error of its stochastic part and the products it used."""

    estimate: float
    std_error: float  # sample standard deviation of the Hutchinson terms / √(their number)
    matvecs: int
    method: str
    seed: int


def _rademacher(n: int, m: int, g: torch.Generator, op: LinearOperator) -> torch.Tensor:
    """(n, m) matrix of independent ±1 entries."""
    return (torch.randint(0, 2, (n, m), generator=g) * 2 - 1).to(dtype=op.dtype, device=op.device)


def _apply(op: LinearOperator, V: torch.Tensor) -> torch.Tensor:
    """H V column by column: (n, m) -> (n, m)."""
    return torch.stack([op.matvec(V[:, j]) for j in range(V.shape[1])], dim=1)


def _mean_and_error(terms: torch.Tensor) -> tuple[float, float]:
    m = terms.numel()
    std = float(terms.std()) if m > 1 else float("nan")
    return float(terms.mean()), std / m ** 0.5


def hutchinson(op, *, matvecs: int = 100, seed: int = 0) -> TraceResult:
    """tr(H) ≈ (1/m) Σᵢ vᵢᵀ H vᵢ with m = ``matvecs`` Rademacher vectors vᵢ ∈ {±1}ⁿ.

    Unbiased, E[vᵀHv] = tr(H E[vvᵀ]) = tr(H); variance 2(‖H‖²_F − Σᵢ Hᵢᵢ²)/m.

    Example:
        >>> H = torch.diag(torch.arange(1.0, 11.0, dtype=torch.float64))  # tr = 55; diagonal: no variance
        >>> hutchinson(H, matvecs=3).estimate
        55.0
    """
    op = as_operator(op)
    if matvecs < 1:
        raise ValueError(f"matvecs must be >= 1, got {matvecs}")
    V = _rademacher(op.size, matvecs, torch.Generator().manual_seed(seed), op)
    terms = (V * _apply(op, V)).sum(0)  # vᵢᵀ H vᵢ, (m,)
    estimate, err = _mean_and_error(terms)
    return TraceResult(estimate, err, matvecs, "hutchinson", seed)


def hutch_plus_plus(op, *, matvecs: int = 99, seed: int = 0) -> TraceResult:
    """tr(H) ≈ tr(QᵀHQ) + (3/m) tr(Gᵀ(I − QQᵀ) H (I − QQᵀ)G), Q = orth(HS); S, G (n × m/3) Rademacher.

    m = ``matvecs`` is split in three equal parts (HS, HQ, H(I − QQᵀ)G), so it should be a multiple of 3
    (it is rounded down to one). ``std_error`` is that of the Hutchinson part alone; the sketched part
    is exact for the subspace it found.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> U, _ = torch.linalg.qr(torch.randn(200, 200, generator=g, dtype=torch.float64))
        >>> lam = torch.cat([torch.tensor([1e4, 5e3]), torch.rand(198, generator=g)]).double()
        >>> H = (U * lam) @ U.T
        >>> r = hutch_plus_plus(H, matvecs=30, seed=1)
        >>> round(abs(r.estimate / float(lam.sum()) - 1), 4) < 0.001, r.matvecs
        (True, 30)
    """
    op = as_operator(op)
    third = matvecs // 3
    if third < 1:
        raise ValueError(f"Hutch++ needs matvecs >= 3 (a third each for HS, HQ and the residual), got {matvecs}")
    g = torch.Generator().manual_seed(seed)
    S, G = _rademacher(op.size, third, g, op), _rademacher(op.size, third, g, op)
    Q, _ = torch.linalg.qr(_apply(op, S))  # (n, m/3), orthonormal basis of range(HS)
    sketched = float(torch.trace(Q.T @ _apply(op, Q)))  # tr(QᵀHQ), exact on span(Q)
    G_perp = G - Q @ (Q.T @ G)  # (I − QQᵀ)G
    terms = (G_perp * _apply(op, G_perp)).sum(0)  # (m/3,)
    rest, err = _mean_and_error(terms)
    return TraceResult(sketched + rest, err, 3 * third, "hutch++", seed)


def hessian_trace(loss_fn_or_op, params=None, *, method: str = "hutch++", matvecs: int = 99, seed: int = 0,
                  hvp_method: str = "auto") -> TraceResult:
    """tr(∇²ℒ(θ)) from Hessian-vector products (or the trace of any operator/matrix when ``params`` is None).

    Args:
        loss_fn_or_op: ``loss_fn(params) -> scalar`` with ``params`` given, else an operator or matrix.
        method: ``"hutch++"`` (default) or ``"hutchinson"``; matvecs: products to spend; seed: local RNG;
        hvp_method: the route of ``HessianOperator``.

    Example:
        >>> A = torch.tensor([[2.0, 1.0], [1.0, -3.0]], dtype=torch.float64)
        >>> x = {"x": torch.zeros(2, dtype=torch.float64)}
        >>> round(hessian_trace(lambda p: 0.5 * p["x"] @ A @ p["x"], x, matvecs=6).estimate, 10)  # n = 2 ≤ m/3
        -1.0
    """
    op = HessianOperator(loss_fn_or_op, params, method=hvp_method) if params is not None else as_operator(loss_fn_or_op)
    if method == "hutch++":
        return hutch_plus_plus(op, matvecs=matvecs, seed=seed)
    if method == "hutchinson":
        return hutchinson(op, matvecs=matvecs, seed=seed)
    raise ValueError(f"method must be 'hutch++' or 'hutchinson', got {method!r}")
