"""H y = λ y for the few extreme eigenvalues of a symmetric operator, from products v ↦ H v only.

Two textbook solvers share one result type, ``EigenResult`` (values, vectors, residuals ‖Hy − λy‖,
iterations, converged, matvecs):

* ``lanczos`` builds an orthonormal Krylov basis Q = [q₁ … q_m] of span{v, Hv, …, H^{m−1}v} with
  QᵀHQ = T tridiagonal; the eigenvalues of the small T (Ritz values) converge to the extreme eigenvalues
  of H, at both ends at once, far faster than power iteration when the gap is small.
  **Full reorthogonalisation.** In floating point the three-term recurrence loses orthogonality exactly
  when a Ritz value converges (Paige), and the basis then re-discovers it: "ghost" copies of the top
  eigenvalue appear and multiplicities become wrong. We orthogonalise every new vector against the whole
  basis, twice ("twice is enough", Kahan–Parlett). That costs O(n m) per step and n·m memory; our m is
  small (default ≤ 100) and each product is a Hessian-vector product, which costs far more anyway.
  **Invariant subspaces and repeated eigenvalues.** A Krylov space holds one direction per distinct
  eigenvalue, so when it becomes invariant (β ≈ 0) the run restarts from a random vector orthogonal to Q
  and goes on until a restart can no longer change the top k: a repeated eigenvalue is then reported
  with its multiplicity. A multiplicity hidden inside a Krylov space that never becomes invariant cannot
  be seen by any single-vector Krylov method (ARPACK's included).
* ``power_iteration`` repeats v ← Hv/‖Hv‖; it converges like (|λ₂|/|λ₁|)ᵗ. For k > 1 it deflates by
  projecting out the vectors already found. It finds the largest *magnitude* eigenvalue; for the
  largest (or smallest) *algebraic* one it shifts, H + ρI with ρ = |λ|_max ≥ every |λ|.

``which``: ``"LM"`` largest magnitude (σ₁ of a symmetric H = |λ|_max, what the step-size limit 2/L
needs), ``"LA"`` largest algebraic, ``"SA"`` smallest algebraic. Hessians away from a minimum have
negative eigenvalues, so LM and LA can differ.

Convergence: stop when every wanted residual ‖Hy − λy‖ ≤ tol·|λ|_max. The default tol = √ε_mach
(1.5e-8 in float64) makes the eigenvalue error ~tol²·|λ|_max/gap, i.e. near machine precision.
Seeds go to a local ``torch.Generator``; the global RNG is never touched.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .operators import HessianOperator, LinearOperator, as_operator

__all__ = ["EigenResult", "lanczos", "power_iteration", "top_eigenvalues", "lanczos_vector"]
WHICH = ("LM", "LA", "SA")


@dataclass(frozen=True)
class EigenResult:
    """Eigenpairs H yᵢ = λᵢ yᵢ, ordered by ``which``: values (k,), vectors (n, k), residuals (k,)."""

    values: torch.Tensor
    vectors: torch.Tensor
    residuals: torch.Tensor  # ‖H yᵢ − λᵢ yᵢ‖, measured
    iterations: int
    converged: bool
    matvecs: int  # products with H, including residual checks


def lanczos_vector(op: LinearOperator, Q: torch.Tensor, j: int, beta_prev: float) -> tuple[float, torch.Tensor]:
    """(αⱼ, w): αⱼ = qⱼᵀHqⱼ and w = Hqⱼ − αⱼqⱼ − βⱼ₋₁qⱼ₋₁, then w −= Q Qᵀ w twice (full reorthogonalisation).

    One step of the recurrence for every Lanczos here (``lanczos``, ``density.slq``); ``Q`` holds q₀…qⱼ as rows.
    """
    q = Q[j]
    w = op.matvec(q)
    alpha = float(q @ w)
    w = w - alpha * q - (beta_prev * Q[j - 1] if j > 0 else 0.0)
    for _ in range(2):  # full reorthogonalisation, twice ("twice is enough", Parlett)
        w = w - Q[: j + 1].T @ (Q[: j + 1] @ w)
    return alpha, w


def _order(values: torch.Tensor, which: str) -> torch.Tensor:
    key = {"LM": values.abs(), "LA": values, "SA": -values}[which]
    return torch.argsort(key, descending=True, stable=True)


def _check(op: LinearOperator, k: int, which: str) -> None:
    if which not in WHICH:
        raise ValueError(f"which must be one of {WHICH}, got {which!r}")
    if not 1 <= k <= op.size:
        raise ValueError(f"k must be between 1 and the operator size {op.size}, got {k}")


def _random_unit(n: int, g: torch.Generator, op: LinearOperator, basis: torch.Tensor | None = None) -> torch.Tensor:
    v = torch.randn(n, generator=g, dtype=op.dtype).to(op.device)
    for _ in range(2 if basis is not None and len(basis) else 0):
        v = v - basis.T @ (basis @ v)  # basis (m, n)
    return v / v.norm()


def _eigh_tridiagonal(diag: list[float], offdiag: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """eigh of the small (m, m) tridiagonal T in float64, on one thread.

    This runs once per Lanczos step. Threaded LAPACK on a matrix this small only spins: measured on a
    shared 2-core CPU (load ≈ 7), NumPy's OpenBLAS eigh took 36 ms at m = 150 and 400 ms at m = 300,
    against 2–5 ms and 9–17 ms on one thread. torch's thread count is restored at once (≈ 0.2 µs).
    """
    T = torch.diag(torch.tensor(diag, dtype=torch.float64))
    if offdiag:
        b = torch.tensor(offdiag, dtype=torch.float64)
        T = T + torch.diag(b, 1) + torch.diag(b, -1)  # (m, m)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return torch.linalg.eigh(T)
    finally:
        torch.set_num_threads(threads)


def _block_can_add(diag: list[float], offdiag: list[float], block: int, k: int, which: str, slack: float) -> bool:
    """After an invariant run: could a further restart still change the top-k?

    A run started from a random vector orthogonal to the earlier runs has a component in every eigenspace
    of H on their complement, so when it becomes invariant its Ritz values are *all* the distinct
    eigenvalues left there; each later run finds a subset of them. If none of this run's values beats
    the k-th wanted value of the earlier runs, nothing can (a tie adds a copy that changes no value).
    """
    if block == 0:
        return True
    key = {"LM": np.abs, "LA": lambda x: x, "SA": lambda x: -x}[which]
    earlier = np.sort(key(_eigh_tridiagonal(diag[:block], offdiag[:block - 1])[0].numpy()))[::-1]
    current = key(_eigh_tridiagonal(diag[block:], offdiag[block:])[0].numpy())
    return len(earlier) < k or bool(current.max() > earlier[k - 1] + slack)


def lanczos(op, *, k: int = 1, which: str = "LM", max_iter: int | None = None, tol: float | None = None,
            seed: int = 0) -> EigenResult:
    """Top-k eigenpairs of symmetric H from the Ritz pairs of T = QᵀHQ, Q an m-step Krylov basis.

    Args:
        op: a ``LinearOperator`` or anything ``as_operator`` accepts (e.g. a dense symmetric matrix).
        k: number of eigenpairs; which: ``"LM"``, ``"LA"`` or ``"SA"``.
        max_iter: Krylov dimension m at most (default min(n, max(100, 2k))); tol: default √ε_mach.

    Example:
        >>> H = torch.diag(torch.tensor([-5.0, 3.0, 2.0, 1.0, 0.5], dtype=torch.float64))
        >>> [round(x, 6) for x in lanczos(H, k=2).values.tolist()]
        [-5.0, 3.0]
        >>> round(lanczos(H, which="LA").values.item(), 6)
        3.0
    """
    op = as_operator(op)
    _check(op, k, which)
    n = op.size
    m_max = min(n, max_iter if max_iter is not None else max(100, 2 * k))
    if m_max < k:
        raise ValueError(f"max_iter={max_iter} is below k={k}: m Lanczos steps give at most m Ritz pairs")
    tol = torch.finfo(op.dtype).eps ** 0.5 if tol is None else tol
    eps = torch.finfo(op.dtype).eps
    g = torch.Generator().manual_seed(seed)
    Q = torch.zeros(m_max, n, dtype=op.dtype, device=op.device)  # rows q_j
    diag, offdiag = [], []  # T's α_j and β_j
    q, matvecs, converged, block = _random_unit(n, g, op), 0, False, 0  # block: where the current Krylov run began
    for j in range(m_max):
        Q[j] = q
        a, w = lanczos_vector(op, Q, j, offdiag[-1] if j > 0 else 0.0)
        matvecs += 1
        diag.append(a)
        beta = float(w.norm())
        theta, S = _eigh_tridiagonal(diag, offdiag)  # Ritz values, T's eigenvectors (j+1, j+1)
        idx = _order(theta, which)[:k]
        scale = float(theta.abs().max())
        invariant = beta <= 100 * eps * max(scale, eps)  # span(Q) is invariant under H: Ritz pairs are exact
        if j + 1 >= k:
            # after a restart only an invariant run is conclusive: a run that found another copy of a
            # wanted value may not have found the last one
            if not invariant and block == 0 and bool((beta * S[-1, idx].abs() <= tol * scale).all()):
                converged = True  # ‖H Q s − θ Q s‖ = β_m |s_m|: the Lanczos residual, for free
                break
            if invariant and (j + 1 == n or not _block_can_add(diag, offdiag, block, k, which, tol * scale)):
                converged = True
                break
        if j + 1 == m_max:
            break
        if invariant:  # restart orthogonal to Q: the complement may hold more copies or wanted values
            offdiag.append(0.0)
            q, block = _random_unit(n, g, op, Q[: j + 1]), j + 1
        else:
            offdiag.append(beta)
            q = w / beta
    m = len(diag)
    Y = Q[:m].T @ S[:, idx].to(dtype=op.dtype, device=op.device)  # (n, m) @ (m, k): Ritz vectors (n, k)
    values = theta[idx].to(dtype=op.dtype, device=op.device)
    residuals = torch.stack([(op.matvec(Y[:, i]) - values[i] * Y[:, i]).norm() for i in range(len(idx))])
    return EigenResult(values, Y, residuals, m, converged, matvecs + len(idx))


def power_iteration(op, *, k: int = 1, which: str = "LM", max_iter: int = 1000, tol: float | None = None,
                    seed: int = 0) -> EigenResult:
    """v ← Hv/‖Hv‖, λ = vᵀHv, k times with deflation (v ⟂ eigenvectors found); LA/SA via H ± ρI.

    Args: as ``lanczos``; ``max_iter`` bounds the steps per eigenvalue.

    Example:
        >>> H = torch.diag(torch.tensor([-5.0, 3.0, 2.0, 1.0], dtype=torch.float64))
        >>> r = power_iteration(H, k=2, tol=1e-12)
        >>> [round(x, 6) for x in r.values.tolist()], r.converged
        ([-5.0, 3.0], True)
    """
    op = as_operator(op)
    _check(op, k, which)
    tol = torch.finfo(op.dtype).eps ** 0.5 if tol is None else tol
    if which != "LM":  # shift: H + ρI (LA) or ρI − H (SA) has spectrum in [0, 2ρ], LM there = LA/SA here
        top = power_iteration(op, k=1, max_iter=max_iter, tol=tol, seed=seed)
        rho, sign = float(top.values[0].abs()), 1.0 if which == "LA" else -1.0
        shifted = as_operator(lambda v: sign * op.matvec(v) + rho * v, op.size, op.dtype, op.device)
        r = power_iteration(shifted, k=k, max_iter=max_iter, tol=tol * 0.5, seed=seed + 1)
        values = sign * (r.values - rho)
        return EigenResult(values, r.vectors, r.residuals, top.iterations + r.iterations,
                           top.converged and r.converged, top.matvecs + r.matvecs)
    g = torch.Generator().manual_seed(seed)
    n = op.size
    V = torch.zeros(0, n, dtype=op.dtype, device=op.device)  # eigenvectors found, rows
    values, residuals, iterations, all_converged = [], [], 0, True
    for _ in range(k):
        v, converged = _random_unit(n, g, op, V), False
        for _ in range(max_iter):
            w = op.matvec(v)
            iterations += 1
            lam = float(v @ w)
            res = float((w - lam * v).norm())
            if res <= tol * max([abs(lam)] + [abs(x) for x in values]):
                converged = True
                break
            w = w - V.T @ (V @ w)  # deflate: stay orthogonal to the found eigenvectors
            w_norm = float(w.norm())
            if w_norm == 0.0:  # v is in the null space of the deflated H
                converged = res == 0.0
                break
            v = w / w_norm
        V = torch.cat([V, v[None]])
        values.append(lam)
        residuals.append(res)
        all_converged &= converged
    vals = torch.tensor(values, dtype=op.dtype, device=op.device)
    order = _order(vals, "LM")
    return EigenResult(vals[order], V.T[:, order].contiguous(),  # V rows (k, n) -> columns (n, k)
                       torch.tensor(residuals, dtype=op.dtype, device=op.device)[order], iterations, all_converged,
                       iterations)


def top_eigenvalues(loss_fn_or_op, params=None, *, k: int = 1, method: str = "lanczos", which: str = "LM",
                    seed: int = 0, max_iter: int | None = None, tol: float | None = None,
                    hvp_method: str = "auto") -> EigenResult:
    """λ₁ … λ_k of ∇²ℒ(θ) via Hessian-vector products (or of any operator/matrix when ``params`` is None).

    Args:
        loss_fn_or_op: ``loss_fn(params) -> scalar`` with ``params`` given, else an operator or matrix.
        method: ``"lanczos"`` or ``"power"``; hvp_method: see ``HessianOperator``; the rest as in ``lanczos``.

    Example:
        >>> A = torch.tensor([[2.0, 1.0], [1.0, -3.0]], dtype=torch.float64)
        >>> r = top_eigenvalues(lambda p: 0.5 * p["x"] @ A @ p["x"], {"x": torch.zeros(2, dtype=torch.float64)})
        >>> round(r.values.item(), 6), r.converged
        (-3.192582, True)
    """
    if params is not None:
        op = HessianOperator(loss_fn_or_op, params, method=hvp_method)
    else:
        op = as_operator(loss_fn_or_op)
    if method == "lanczos":
        return lanczos(op, k=k, which=which, max_iter=max_iter, tol=tol, seed=seed)
    if method == "power":
        return power_iteration(op, k=k, which=which, max_iter=max_iter or 1000, tol=tol, seed=seed)
    raise ValueError(f"method must be 'lanczos' or 'power', got {method!r}")
