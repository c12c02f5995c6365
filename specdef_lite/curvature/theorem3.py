"""σ₁(∇²ℒ) ≥ sup_{r₁,r₂} σ_{r₁}(A) · σ₁(B) · σ_{r₂}(C) · cos θ₁ · cos θ₂ — Theorem 3 of PAPER.md.

The argument has two steps, and each gives one function here.

1. **Factors** (``theorem3_factors``). For any unit p, q: σ₁(ABC) ≥ |pᵀABCq|. Take p = a_{r₁} (A's r₁-th
   left singular vector) and q = c_{r₂} (C's r₂-th right singular vector). Then pᵀA = σ_{r₁}(A) ã_{r₁}ᵀ and
   Cq = σ_{r₂}(C) c̃_{r₂}, with ã_{r₁} A's r₁-th *right* and c̃_{r₂} C's r₂-th *left* singular vector, so

       σ₁(ABC) ≥ max_{r₁,r₂} σ_{r₁}(A) · σ_{r₂}(C) · |ã_{r₁}ᵀ B c̃_{r₂}|          (rigorous: ``bound``)

   Expanding B = Σᵢ σᵢ(B) uᵢvᵢᵀ, the i = 1 term is the paper's product form
   σ_{r₁}(A) σ₁(B) σ_{r₂}(C) cos θ₁ cos θ₂ with cos θ₁ = |ã_{r₁}·u₁(B)|, cos θ₂ = |v₁(B)·c̃_{r₂}|
   — *(reconstruction of the angle definitions, as in PAPER.md)*. It is reported as ``paper_form``;
   it is the bound only when B's top singular pair dominates (large α), so it is not guaranteed ≤ σ₁.
   Scaling σ₁(B) by α scales the i = 1 term, hence the bound, by ≈ α.

2. **Block** (``theorem3_bound``). The cross-block H_{β,γ} = ∂²ℒ/∂θ_β∂θ_γ of the loss Hessian between two
   parameter tensors is PᵀHQ for column selections P, Q, so σ₁(H_{β,γ}) ≤ σ₁(H) (Poincaré separation):
   every cross-block is a lower bound on the curvature. For a 3-layer MLP the block factors as A·B·C,
   e.g. ∂²f/∂θ₃∂θ₁ = (xᵀ ⊗ I)ᵀ D_{z₁} θ₂ᵀ D_{z₂} with D_z = diag(σ'(z)).

**SpecDef.** In a locked MLP x → θ₁ → tanh → (W̃ then C) → tanh → θ₃ the pre-activation is z = C W̃ h₁ + b
(= W h₁ + b, the same function). The block between θ₁ ("before") and C ("after") is
∂/∂θ₁ [δ (W̃ h₁)ᵀ]: every term carries one factor W̃, whose σ₁ is α times larger, so this bound grows
~linearly in α. The measured σ₁(H) grows ~α²: it comes from the C–C block, whose curvature is
∝ ‖W̃ h₁‖². The bound is honest but loose by a factor ~α (measured in tests/test_theorem3.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.func import grad, jacfwd

from .products import LossFn, Params

__all__ = ["Theorem3Result", "theorem3_factors", "theorem3_bound"]


@dataclass(frozen=True)
class Theorem3Result:
    """bound ≤ sigma1: a rigorous lower bound and the σ₁ it bounds (σ₁(ABC), or σ₁(H_{β,γ}) ≤ σ₁(∇²ℒ))."""

    bound: float
    sigma1: float
    r1: int | None = None  # 1-based, as in σ_{r₁}
    r2: int | None = None
    sigma_r1_A: float | None = None
    sigma1_B: float | None = None
    sigma_r2_C: float | None = None
    cos_theta1: float | None = None  # |ã_{r₁} · u₁(B)|  (reconstruction)
    cos_theta2: float | None = None  # |v₁(B) · c̃_{r₂}|  (reconstruction)
    paper_form: float | None = None  # σ_{r₁}(A) σ₁(B) σ_{r₂}(C) cos θ₁ cos θ₂
    upper: float | None = None  # ‖A‖‖B‖‖C‖ ≥ σ₁(ABC)
    block: torch.Tensor | None = None  # H_{β,γ}, (numel β, numel γ)


def theorem3_factors(A: torch.Tensor, B: torch.Tensor, C: torch.Tensor) -> Theorem3Result:
    """max_{r₁,r₂} σ_{r₁}(A) σ_{r₂}(C) |ã_{r₁}ᵀ B c̃_{r₂}| ≤ σ₁(ABC) ≤ ‖A‖‖B‖‖C‖, for A (a×m), B (m×n), C (n×c).

    Computed in float64. The (r₁, r₂) table equals |U_Aᵀ (ABC) V_C| entrywise, so ``bound`` is its largest
    entry; the angles and ``paper_form`` refer to the maximising (r₁, r₂).

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> A, B, C = (torch.randn(4, 4, generator=g, dtype=torch.float64) for _ in range(3))
        >>> r = theorem3_factors(A, B, C)
        >>> r.bound <= r.sigma1 <= r.upper
        True
        >>> round(r.bound, 3), round(r.sigma1, 3)
        (14.586, 15.986)
    """
    A, B, C = (torch.as_tensor(M).detach().to(torch.float64) for M in (A, B, C))
    if A.ndim != 2 or B.ndim != 2 or C.ndim != 2 or A.shape[1] != B.shape[0] or B.shape[1] != C.shape[0]:
        raise ValueError(f"shapes do not chain: A {tuple(A.shape)}, B {tuple(B.shape)}, C {tuple(C.shape)}")
    _, S_A, Vh_A = torch.linalg.svd(A, full_matrices=False)  # rows of Vh_A: ã_r
    U_C, S_C, _ = torch.linalg.svd(C, full_matrices=False)  # columns of U_C: c̃_r
    U_B, S_B, Vh_B = torch.linalg.svd(B, full_matrices=False)
    table = S_A[:, None] * (Vh_A @ B @ U_C) * S_C[None, :]  # (rank A, rank C): σ_{r₁}(A) ã_{r₁}ᵀ B c̃_{r₂} σ_{r₂}(C)
    i, j = divmod(int(table.abs().argmax()), table.shape[1])
    cos1 = float((Vh_A[i] @ U_B[:, 0]).abs())
    cos2 = float((Vh_B[0] @ U_C[:, j]).abs())
    return Theorem3Result(
        bound=float(table[i, j].abs()), sigma1=float(torch.linalg.matrix_norm(A @ B @ C, ord=2)),
        r1=i + 1, r2=j + 1, sigma_r1_A=float(S_A[i]), sigma1_B=float(S_B[0]), sigma_r2_C=float(S_C[j]),
        cos_theta1=cos1, cos_theta2=cos2, paper_form=float(S_A[i] * S_B[0] * S_C[j]) * cos1 * cos2,
        upper=float(S_A[0] * S_B[0] * S_C[0]))


def cross_block(loss_fn: LossFn, params: Params, before: str, after: str) -> torch.Tensor:
    """H_{β,γ} = ∂²ℒ / ∂θ_β ∂θ_γ, shape (numel θ_β, numel θ_γ), by ``jacfwd`` of the γ-gradient over θ_β."""
    params = dict(params)
    for name in (before, after):
        if name not in params:
            raise ValueError(f"{name!r} is not among the params: {', '.join(params)}")
    if before == after:
        raise ValueError("before and after must name two different parameters (a cross-block)")

    def grad_after(theta_b: torch.Tensor) -> torch.Tensor:
        return grad(lambda theta_a: loss_fn({**params, before: theta_b, after: theta_a}))(params[after])

    J = jacfwd(grad_after)(params[before])  # shape: after.shape + before.shape
    n_b, n_a = params[before].numel(), params[after].numel()
    return J.reshape(n_a, n_b).T.detach()  # (numel after, numel before) -> (numel before, numel after)


def theorem3_bound(loss_fn: LossFn, params: Params, before: str, after: str, *,
                   through: str | None = None, max_entries: int = 4_000_000) -> Theorem3Result:
    """σ₁(∇²ℒ) ≥ σ₁(H_{before,after}): the exact cross-block between two named parameters, and its σ₁.

    Args:
        loss_fn, params: as from ``loss_fn_of`` (``params`` must contain ``before`` and ``after``).
        before, after: the parameters of the layers around the sandwiched weight, e.g. ``"0.weight"`` and
            ``"2.C"`` in a locked MLP.
        through: optional name of the sandwiched weight B (in ``params``); its σ₁ is reported.
        max_entries: refuse a block with more entries (it is formed densely).

    Returns:
        ``Theorem3Result`` with ``bound = sigma1 = σ₁(H_{before,after})`` and ``block``.

    Example:
        >>> x = {"a": torch.tensor([1.0], dtype=torch.float64), "c": torch.tensor([2.0], dtype=torch.float64)}
        >>> r = theorem3_bound(lambda p: (3.0 * p["a"] * p["c"]).sum(), x, "a", "c")  # ∂²ℒ/∂a∂c = 3
        >>> round(r.bound, 6)
        3.0
    """
    n = params[before].numel() * params[after].numel() if before in params and after in params else 0
    if n > max_entries:
        raise ValueError(f"the cross-block has {n:,} entries (> max_entries={max_entries:,}); "
                         "select smaller tensors or raise max_entries")
    block = cross_block(loss_fn, params, before, after)
    s1 = float(torch.linalg.matrix_norm(block.to(torch.float64), ord=2))
    sigma1_B = None
    if through is not None:
        if through not in params or params[through].ndim != 2:
            raise ValueError(f"through={through!r} must name a 2-D weight among the params")
        sigma1_B = float(torch.linalg.matrix_norm(params[through].detach().to(torch.float64), ord=2))
    return Theorem3Result(bound=s1, sigma1=s1, sigma1_B=sigma1_B, block=block)
