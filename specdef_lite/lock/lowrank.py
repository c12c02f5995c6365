"""U_k of W by block Krylov, and (W̃, C) = ((I + (α−1)P)W, I − (1 − 1/α)P), P = U_kU_kᵀ, built in row blocks.

SpecDef needs only W's top-k left singular vectors U_k: C·W̃ = W holds exactly for any orthonormal U_k,
and σᵢ(W̃) = α σᵢ(W) (i ≤ k) holds as far as U_k is accurate. Large weights (GPT-2's 768×3072) get them
here, not from a full SVD.

**Block Krylov, stopped by the spectrum.** With A = W, or Wᵀ when W is tall (the basis lives on the shorter
side, where orthogonalising costs least: 768 rather than 3072 for GPT-2's c_fc), from a random block Ω
(q = k + 10 columns) the Krylov space span{AΩ, (AAᵀ)AΩ, (AAᵀ)²AΩ, …} is built one block per two passes
over W (Z = AᵀQ_b, then AZ), every block orthogonalised against the earlier ones in float64 (twice, and
a third time only where QR would blow up what is left along the basis). Rayleigh–Ritz over all blocks so
far is free (the Z's are the rows of QᵀA), so W's top left vectors are QE (A = W) or ZE = WQE (A = Wᵀ),
E the top eigenvectors of the Gram ZᵀZ; only its eigenvalues are taken per block. After each block the
top-k Ritz values σ̂ᵢ (lower bounds, rising to σᵢ) are known and the run stops when their estimated remaining rise — the last rise times ρ/(1 − ρ), ρ the
ratio of the last two rises — is below ``tol``·σ̂ᵢ at two blocks in a row (a single small rise can be a
plateau before the next direction is found). A matrix with a clear gap stops after two or three
blocks; a gap-free one (a random Gaussian weight) takes more, and only it pays for them. Subspace
iteration (``torch.svd_lowrank``, niter = 4) keeps only the last block and left σ₁(W̃)/(ασ₁(W)) at
0.95–0.97 on gap-free GPT-2-sized Gaussian matrices (TOOLCHAIN.md); the Krylov space keeps them all.

**Passes over W in its own dtype.** The Krylov products run in W's dtype (float32 passes read half the
bytes); only U_k's orthogonalisation and the Ritz problem are float64. U_k from float32 products is
accurate to ~1e-6 — far inside the promise — and exactness does not depend on it: X = U_kᵀW is then
formed in float64 from W itself.

**No full-size temporaries.** W̃ = W + (α − 1)U_k X and C = I − (1 − 1/α)U_kU_kᵀ are computed in float64
a block of rows at a time and written once into the output dtype (one rounding per entry): no float64
copy of W, no identity matrix, no float64 C (3072² entries = 75 MB each for GPT-2's c_fc).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["top_k_krylov", "KrylovInfo", "deformed_pair"]


@dataclass(frozen=True)
class KrylovInfo:
    """How ``top_k_krylov`` stopped: Krylov ``blocks`` built, ``passes`` over W, ``converged``, and ``remaining``,
    the estimated relative rise still left in σ̂ᵢ (max over i ≤ k); blocks 0 and remaining 0 for an exact SVD."""
    blocks: int
    passes: int
    converged: bool
    remaining: float

ROWS = 64  # row block for the float64 work: 64 × 3072 × 8 B = 1.5 MB, cache-resident


REORTH = 1e-3  # a third projection when QR would divide by less than this fraction of the projected block


def _orthonormalise(Y: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """Y (m, q) orthogonalised against the columns of ``basis`` (m, p) and orthonormalised, float64.

    Project twice ("twice is enough": the second pass leaves ~ε‖Y₁‖ along the basis, Y₁ the once-projected
    block), then QR. QR divides by R, so what is left along the basis grows to ~ε‖Y₁‖/σ_min(R) in Q: where Y
    had almost nothing left outside the basis, or its columns depend on each other outside it, that is O(1),
    and a basis that is not orthonormal gives Ritz values above the true singular values. Then, and only then
    (σ_min(R) < ``REORTH``·‖Y₁‖_F), Q is projected and QR'd once more.
    """
    if not basis.shape[1]:
        return torch.linalg.qr(Y).Q
    Y = Y - basis @ (basis.T @ Y)
    size = float(torch.linalg.matrix_norm(Y))  # ‖Y₁‖_F ≥ ‖Y₁‖₂
    Y = Y - basis @ (basis.T @ Y)
    Q, R = torch.linalg.qr(Y)
    if not float(torch.linalg.svdvals(R)[-1]) >= REORTH * size:  # NaN too
        Q = torch.linalg.qr(Q - basis @ (basis.T @ Q)).Q
    return Q


def _exact(W: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, KrylovInfo]:
    U, S, _ = torch.linalg.svd(W.to(torch.float64), full_matrices=False)
    return U[:, :k], S[:k], KrylovInfo(blocks=0, passes=0, converged=True, remaining=0.0)


def top_k_krylov(W: torch.Tensor, k: int, *, tol: float = 3e-4, oversample: int = 10, max_blocks: int = 40,
                 seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, KrylovInfo]:
    """U_k (m×k, float64, orthonormal) and σ̂ (k,) of W (m×n) by block Krylov; ``info`` says how it stopped.

    W with a NaN or inf gives NaN U_k and σ̂ (the caller refuses it). Returns ``(U_k, sigma, info)``, info a ``KrylovInfo``; remaining is
    the estimated relative rise left in σ̂ᵢ (max over i ≤ k), the measure of how far σᵢ(W̃)/(ασᵢ(W)) may
    fall short of 1. A matrix too small for three blocks, or one whose Krylov space would fill up before
    the Ritz values settle, gets the exact float64 SVD instead (blocks 0, remaining 0).
    """
    m, n = W.shape
    q = min(k + oversample, min(m, n))
    blocks = min(max_blocks, min(m, n) // q - 1)  # stop short of exhausting the space (rounding takes over there)
    if blocks < 3:  # small: the exact SVD is cheap
        return _exact(W, k)
    # The basis lives on W's shorter side (A = W or Wᵀ, A: s × l, s ≤ l), where orthogonalising costs least.
    s, l = min(m, n), max(m, n)
    f64, dev = torch.float64, W.device

    def along(X: torch.Tensor) -> torch.Tensor:  # A X, (s, q), from X (l, q) in W's dtype; (XᵀW)ᵀ: the fast layout
        return (W @ X if m <= n else (X.T @ W).T).to(f64)

    def back(X: torch.Tensor) -> torch.Tensor:  # AᵀX, (l, q), in W's dtype, from X (s, q)
        return (X.T @ W).T if m <= n else W @ X

    g = torch.Generator().manual_seed(seed)
    omega = torch.randn(l, q, generator=g, dtype=f64).to(device=dev, dtype=W.dtype)
    Q = torch.empty(s, q * blocks, dtype=f64, device=dev)  # the Krylov basis on the short side, block by block
    Z = torch.empty(l, q * blocks, dtype=f64, device=dev)  # Z_b = AᵀQ_b: the columns of (QᵀA)ᵀ
    G = torch.zeros(q * blocks, q * blocks, dtype=f64, device=dev)  # Gram (QᵀA)(QᵀA)ᵀ, lower triangle, by blocks
    Y = along(omega)  # (s, q)
    if not torch.isfinite(Y).all():  # a NaN or inf anywhere in W reaches every column: report, do not iterate
        nan = torch.full((k,), float("nan"), dtype=f64, device=dev)
        return (torch.full((m, k), float("nan"), dtype=f64, device=dev), nan,
                KrylovInfo(blocks=0, passes=1, converged=False, remaining=math.nan))
    Q[:, :q] = _orthonormalise(Y, Q[:, :0])
    history: list[torch.Tensor] = []
    passes, converged, remaining, b = 1, False, math.inf, 0
    while True:
        p = (b + 1) * q
        z = back(Q[:, b * q:p].to(W.dtype))  # (l, q) in W's dtype
        Z[:, b * q:p] = z
        passes += 1
        G[b * q:p, :p] = Z[:, b * q:p].T @ Z[:, :p]  # the new Gram rows (lower triangle)
        lam = torch.linalg.eigvalsh(G[:p, :p])  # ascending; σ̂ = √λ: Ritz values of A on span(Q)
        S = lam.flip(0)[:k].clamp_min(0.0).sqrt()
        history.append(S)
        if len(history) >= 3:
            d1, d2 = history[-2] - history[-3], history[-1] - history[-2]  # rises, ≥ 0 up to rounding
            rho = (d2 / d1.clamp_min(torch.finfo(f64).tiny)).clamp(0.0, 1.0)
            left = torch.where(rho < 1.0, d2.clamp_min(0.0) * rho / (1.0 - rho), torch.full_like(d2, math.inf))
            previous = remaining
            remaining = float((left / history[-1].clamp_min(torch.finfo(f64).tiny)).max())
            # two estimates in a row: one small rise between two large ones is a plateau, not convergence
            converged = remaining <= tol and previous <= tol
        if converged or b + 1 >= blocks:
            break
        Y = along(z)  # (s, q): the next block, (AAᵀ)Q_b
        passes += 1
        Q[:, p:p + q] = _orthonormalise(Y, Q[:, :p])
        b += 1
    if not converged and blocks < max_blocks:  # ran into the size of W: take the exact SVD instead
        return _exact(W, k)
    p = (b + 1) * q
    E = torch.linalg.eigh(G[:p, :p]).eigenvectors.flip(1)[:, :k]  # top-k Ritz vectors in the basis
    # W's left vectors: Q E where the basis is on W's left (m ≤ n), else W(QE) = ZE (orthogonal, norms σ̂)
    U_k = (Q[:, :p] if m <= n else Z[:, :p]) @ E
    return torch.linalg.qr(U_k).Q, S, KrylovInfo(b + 1, passes, converged, remaining)


def deformed_pair(W: torch.Tensor, U_k: torch.Tensor, alpha: float, dtype: torch.dtype, *, peaks: bool = False):
    """(W̃, C) in ``dtype``: W̃ = W + (α − 1)U_k(U_kᵀW), C = I − (1 − 1/α)U_kU_kᵀ, float64 math by row blocks.

    Two passes over W (X = U_kᵀW in float64, then W̃), one over C; the only float64 temporaries are
    ``ROWS`` rows long. ``peaks=True`` also returns, for ``guards.check_overflow``, bounds of max |entry| of W̃
    and C as stored, so that it need not read them again: W̃'s exact (the largest float64 |entry|, taken from
    the rows while in cache, rounded into ``dtype``: rounding is monotone), C's (1 + |1 − 1/α|·max_i ‖U_i‖²)
    with a 1 % margin for the roundings (|U_kU_kᵀ|_ij ≤ ‖U_i‖‖U_j‖; bfloat16 rounds by < 0.4 %).
    """
    m, n = W.shape
    U = U_k.to(device=W.device, dtype=torch.float64)  # (m, k)
    buf = torch.empty(min(ROWS, m), n, dtype=torch.float64, device=W.device)  # rows of W / W̃
    cbuf = torch.empty(min(ROWS, m), m, dtype=torch.float64, device=W.device)  # rows of C
    X = torch.zeros(U.shape[1], n, dtype=torch.float64, device=W.device)  # U_kᵀW, (k, n)
    for r0 in range(0, m, ROWS):
        r1 = min(r0 + ROWS, m)
        rows = buf[: r1 - r0]
        rows.copy_(W[r0:r1])  # W's rows in float64
        X.addmm_(U[r0:r1].T, rows)
    W_tilde = torch.empty(m, n, dtype=dtype, device=W.device)
    C = torch.empty(m, m, dtype=dtype, device=W.device)
    c = 1.0 - 1.0 / alpha
    Uc = U * -c
    extremes = []  # (min, max) of W̃'s float64 rows
    for r0 in range(0, m, ROWS):
        r1 = min(r0 + ROWS, m)
        rows = buf[: r1 - r0]
        rows.copy_(W[r0:r1])
        rows.addmm_(U[r0:r1], X, alpha=alpha - 1.0)  # W + (α − 1)U_k X, these rows
        if peaks:
            extremes.append(torch.stack(torch.aminmax(rows)))
        W_tilde[r0:r1].copy_(rows)
        block = cbuf[: r1 - r0]
        torch.mm(Uc[r0:r1], U.T, out=block)  # −c·U_kU_kᵀ, these rows
        block.diagonal(offset=r0).add_(1.0)  # I − c·U_kU_kᵀ without forming I
        C[r0:r1].copy_(block)
    if not peaks:
        return W_tilde, C
    ext = torch.stack(extremes) if extremes else torch.zeros(1, 2, dtype=torch.float64)
    peak_w = float(torch.maximum(-ext[:, 0].min(), ext[:, 1].max()).to(dtype))  # NaN stays NaN
    bound_c = (1.0 + abs(c) * float(U.square().sum(1).max())) * 1.01 if m else 0.0
    return W_tilde, C, (peak_w, bound_c)
