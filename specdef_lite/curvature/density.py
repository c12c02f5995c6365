"""φ(t) = (1/n) Σᵢ δ(t − λᵢ) ≈ (1/n_v) Σ_v Σⱼ τⱼ⁽ᵛ⁾ δ(t − θⱼ⁽ᵛ⁾) — the spectral density by stochastic Lanczos quadrature.

The whole spectrum of a Hessian nobody can form (Ghorbani, Krishnan & Xiao 2019; Lin, Saad & Yang 2016,
"Approximating spectral densities of large matrices"). For a unit vector q, qᵀ f(H) q = Σᵢ f(λᵢ)(uᵢᵀq)²
is an integral of f against a measure with weights (uᵢᵀq)² at the eigenvalues. m Lanczos steps from q give
the tridiagonal T = QᵀHQ; its eigenvalues θⱼ (nodes) and the squared first components τⱼ = (e₁ᵀsⱼ)² of its
eigenvectors (weights, Σⱼ τⱼ = 1) are the m-point Gauss quadrature of that measure, exact for every
polynomial f of degree ≤ 2m − 1: Σⱼ τⱼ θⱼᵖ = qᵀHᵖq. With q = v/‖v‖, v Rademacher (‖v‖² = n),
E[qᵀHᵖq] = tr(Hᵖ)/n, the p-th moment of φ. Averaging n_v probes gives nodes and weights whose moments
estimate the spectrum's; a Gaussian of width σ over each node turns them into a smooth curve.

The Lanczos runs here reorthogonalise fully (twice), as ``lanczos`` does: without it the quadrature
grows ghost nodes at converged eigenvalues and their weight is split among the copies.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .eigen import lanczos_vector
from .operators import HessianOperator, LinearOperator, as_operator

__all__ = ["SpectralDensity", "slq", "spectral_density"]


@dataclass(frozen=True)
class SpectralDensity:
    """Gauss quadrature nodes θ and weights τ, one row per probe: φ ≈ (1/n_v) Σ rows Σ τ δ(t − θ)."""

    nodes: torch.Tensor  # (n_v, m) Ritz values θⱼ per probe, float64
    weights: torch.Tensor  # (n_v, m) τⱼ = (e₁ᵀsⱼ)², each row sums to 1
    n: int  # size of H: n·φ counts eigenvalues
    matvecs: int
    seed: int

    def moments(self, p: int) -> torch.Tensor:
        """Σⱼ τⱼ θⱼᵖ per probe, (n_v,): each estimates tr(Hᵖ)/n, exactly qᵀHᵖq for p ≤ 2m − 1."""
        return (self.weights * self.nodes ** p).sum(1)

    def moment(self, p: int) -> tuple[float, float]:
        """(mean, standard error) over probes of the p-th moment ∫ tᵖ φ(t) dt ≈ (1/n) Σᵢ λᵢᵖ."""
        per_probe = self.moments(p)
        err = float(per_probe.std()) / math.sqrt(per_probe.numel()) if per_probe.numel() > 1 else float("nan")
        return float(per_probe.mean()), err

    def density(self, t: torch.Tensor, sigma: float) -> torch.Tensor:
        """φ_σ(t) = (1/n_v) Σ τⱼ N(t; θⱼ, σ²) on a grid t (any shape); ∫ φ_σ = 1. Multiply by n for counts."""
        t = torch.as_tensor(t, dtype=torch.float64)
        z = (t.reshape(-1, 1) - self.nodes.reshape(1, -1)) / sigma  # (grid, n_v·m)
        kernel = torch.exp(-0.5 * z ** 2) / (sigma * math.sqrt(2 * math.pi))
        return (kernel @ self.weights.reshape(-1) / self.nodes.shape[0]).reshape(t.shape)


    def per_decade(self, decades: torch.Tensor, sigma: float = 0.15, sign: int = 1) -> torch.Tensor:
        """n · density of log₁₀|λ| over the eigenvalues of one ``sign``: eigenvalues per decade of |λ|.

        For spectra spanning many decades (a lock moves eigenvalues by α²). Each node is a Gaussian of
        width ``sigma`` decades; the curve integrates (over decades) to the count of eigenvalues of that sign.
        """
        t = torch.as_tensor(decades, dtype=torch.float64)
        keep = (sign * self.nodes > 0) & (self.weights > 0)
        logs = torch.where(keep, self.nodes.abs().clamp_min(1e-300).log10(), torch.zeros_like(self.nodes))
        z = (t.reshape(-1, 1) - logs.reshape(1, -1)) / sigma  # (grid, n_v·m)
        kernel = torch.exp(-0.5 * z ** 2) / (sigma * math.sqrt(2 * math.pi))
        w = torch.where(keep, self.weights, torch.zeros_like(self.weights)).reshape(-1)
        return (self.n * kernel @ w / self.nodes.shape[0]).reshape(t.shape)


def _tridiagonal(op: LinearOperator, q: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(nodes, weights) of the Gauss quadrature of q's spectral measure: ≤ m Lanczos steps from unit q."""
    n, eps = op.size, torch.finfo(op.dtype).eps
    Q = torch.zeros(min(m, n), n, dtype=op.dtype, device=op.device)  # rows q_j
    diag, off = [], []
    for j in range(Q.shape[0]):
        Q[j] = q
        a, w = lanczos_vector(op, Q, j, off[-1] if j > 0 else 0.0)
        diag.append(a)
        beta = float(w.norm())
        scale = max(abs(d) for d in diag) + max(off, default=0.0)  # ≥ ‖T‖ / 3
        if j + 1 == Q.shape[0] or beta <= 100 * eps * scale:
            break  # invariant to rounding: later nodes would only split the weight of earlier ones
        off.append(beta)
        q = w / beta
    T = torch.diag(torch.tensor(diag, dtype=torch.float64))
    if off:
        b = torch.tensor(off, dtype=torch.float64)
        T = T + torch.diag(b, 1) + torch.diag(b, -1)  # (m', m')
    theta, S = torch.linalg.eigh(T)
    return theta, S[0] ** 2


def slq(op, *, probes: int = 10, steps: int = 60, seed: int = 0) -> SpectralDensity:
    """Stochastic Lanczos quadrature: ``probes`` Rademacher starts, ``steps`` Lanczos steps each.

    A probe whose Krylov space becomes invariant stops early; its row is padded with zero weights.

    Example:
        >>> H = torch.diag(torch.tensor([1.0, 1.0, 2.0, 5.0], dtype=torch.float64))
        >>> d = slq(H, probes=4, steps=4, seed=0)   # 3 distinct eigenvalues: 3 exact nodes per probe
        >>> round(d.moment(1)[0], 10), round(d.moment(2)[0], 10)  # tr(H)/n = 9/4, tr(H²)/n = 31/4
        (2.25, 7.75)
    """
    op = as_operator(op)
    if probes < 1 or steps < 1:
        raise ValueError(f"probes and steps must be >= 1, got probes={probes}, steps={steps}")
    g = torch.Generator().manual_seed(seed)
    width = min(steps, op.size)
    nodes = torch.zeros(probes, width, dtype=torch.float64)
    weights = torch.zeros(probes, width, dtype=torch.float64)
    matvecs = 0
    for i in range(probes):
        v = (torch.randint(0, 2, (op.size,), generator=g) * 2 - 1).to(dtype=op.dtype, device=op.device)
        theta, tau = _tridiagonal(op, v / v.norm(), steps)
        nodes[i, : len(theta)], weights[i, : len(tau)] = theta.cpu(), tau.cpu()
        matvecs += len(theta)
    return SpectralDensity(nodes, weights, op.size, matvecs, seed)


def spectral_density(loss_fn_or_op, params=None, *, probes: int = 10, steps: int = 60, seed: int = 0,
                     hvp_method: str = "auto") -> SpectralDensity:
    """φ of ∇²ℒ(θ) by stochastic Lanczos quadrature (or of any operator/matrix when ``params`` is None).

    Args:
        loss_fn_or_op: ``loss_fn(params) -> scalar`` with ``params`` given, else an operator or matrix.
        probes: random starting vectors n_v; steps: Lanczos steps m per probe (moments up to 2m − 1 exact
            per probe); seed: local RNG; hvp_method: the route of ``HessianOperator``.

    Example:
        >>> A = torch.tensor([[2.0, 1.0], [1.0, -3.0]], dtype=torch.float64)
        >>> d = spectral_density(lambda p: 0.5 * p["x"] @ A @ p["x"], {"x": torch.zeros(2, dtype=torch.float64)})
        >>> sorted(round(x, 6) for x in d.nodes[0].tolist())  # n = 2: every probe's nodes are the eigenvalues
        [-3.192582, 2.192582]
    """
    op = HessianOperator(loss_fn_or_op, params, method=hvp_method) if params is not None else as_operator(loss_fn_or_op)
    return slq(op, probes=probes, steps=steps, seed=seed)
