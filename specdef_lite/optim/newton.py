"""θ ← θ − lr·(|H| + λI)⁻¹g — damped, saddle-free Newton, with the exact Hessian or conjugate gradient on HVPs.

SpecDef raises σ₁(∇²ℒ) by ~α² without moving the minimiser (PAPER.md, "Why curvature sets the speed");
Newton divides every eigen-direction by its own curvature, so it is the optimizer the lock should slow least.

Cost: the exact path builds the P×P Hessian with P batched double-backward passes through one gradient graph
(``curvature.gradgraph.GradientGraph``) and takes an eigendecomposition (O(P³)); past ``max_exact`` parameters
it switches to CG, ≤ ``cg_iters`` Hessian-vector products a step.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..curvature.gradgraph import GradientGraph
from .contract import Closure, check_lr

__all__ = ["Newton", "NewtonInfo", "conjugate_gradient"]


@dataclass(frozen=True)
class NewtonInfo:
    """What the last Newton step saw: the path, and H's extreme eigenvalues (exact) or CG's iterations (cg).

    Attributes:
        path: "exact" (dense H, eigendecomposition) or "cg" (conjugate gradient on HVPs).
        lam_min, lam_max: the extreme eigenvalues of H (exact path with a finite H), else None.
        cg_iters: CG iterations taken (cg path), else None.
        negative_curvature: whether CG met pᵀ(H + λI)p ≤ 0 (cg path), else None.
        finite: False when H or g was non-finite (the run diverged; the step was NaN).
    """
    path: str
    lam_min: float | None = None
    lam_max: float | None = None
    cg_iters: int | None = None
    negative_curvature: bool | None = None
    finite: bool = True


def conjugate_gradient(matvec: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, *, iters: int,
                       tol: float) -> tuple[torch.Tensor, int, bool]:
    """x ≈ M⁻¹b by conjugate gradient, stopping at ‖r‖ ≤ tol·‖b‖ or at negative curvature pᵀMp ≤ 0.

    Returns (x, iterations, hit_negative_curvature). On negative curvature at the first iteration x = b
    (a plain gradient step, as in Steihaug's truncated Newton); later, the last iterate is kept.

    Example:
        >>> M = torch.tensor([[4.0, 1.0], [1.0, 3.0]], dtype=torch.float64)
        >>> x, it, neg = conjugate_gradient(lambda v: M @ v, torch.tensor([1.0, 2.0], dtype=torch.float64),
        ...                                 iters=10, tol=1e-12)
        >>> [round(t, 6) for t in x.tolist()], it, neg  # M⁻¹b in n = 2 iterations
        ([0.090909, 0.636364], 2, False)
    """
    x = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rr = r @ r
    b_norm = b.norm()
    for it in range(1, iters + 1):
        Mp = matvec(p)
        pMp = p @ Mp
        if not pMp > 0:
            return (b.clone() if it == 1 else x), it, True
        a = rr / pMp
        x = x + a * p
        r = r - a * Mp
        rr_new = r @ r
        if rr_new.sqrt() <= tol * b_norm:
            return x, it, False
        p = r + (rr_new / rr) * p
        rr = rr_new
    return x, iters, False


class Newton(torch.optim.Optimizer):
    """θ ← θ − lr·(|H| + λI)⁻¹ g — damped, saddle-free Newton (exact H when P ≤ ``max_exact``, else CG on HVPs).

    With H = V diag(μ) Vᵀ the exact path forms d = V diag(1/(|μᵢ| + λ)) Vᵀ g: every eigen-direction is
    divided by its own curvature, so the α²-stiff directions SpecDef creates are rescaled for free, and
    negative curvature is followed downhill rather than up (Dauphin et al. 2014, "saddle-free Newton").
    ``saddle_free=False`` solves (H + λI) d = g instead (plain damped Newton, attracted by saddles).

    Past ``max_exact`` parameters it solves (H + λI) d = g by conjugate gradient on HVPs, stopping at
    negative curvature (Steihaug): |H| is not available from HVPs alone, so the CG path is damped Newton,
    not saddle-free, whatever ``saddle_free`` says.

    Args:
        params: the parameters (a single group; all are treated as one vector θ of size P).
        lr: step scale (1 = full Newton step).
        damping: λ ≥ 0 (absolute, in the units of H).
        saddle_free: use |μᵢ| on the exact path.
        max_exact: largest P for the dense Hessian (P² entries, one eigendecomposition per step).
        cg_iters, cg_tol: CG budget and relative residual tolerance.

    Use with ``step(closure)``, the closure returning ℒ(θ) with its graph (no ``.backward()``).
    ``self.info`` (a ``NewtonInfo``) reports the last step. Newton keeps no state between steps: its
    ``state_dict`` holds the hyper-parameters only.

    Example:
        >>> A = torch.tensor([[3.0, 1.0], [1.0, 2.0]], dtype=torch.float64)
        >>> theta = torch.zeros(2, dtype=torch.float64, requires_grad=True)
        >>> b = torch.tensor([1.0, -1.0], dtype=torch.float64)
        >>> opt = Newton([theta], lr=1.0, damping=0.0)
        >>> _ = opt.step(lambda: 0.5 * theta @ A @ theta - b @ theta)
        >>> [round(v, 6) for v in theta.tolist()]  # A⁻¹b in one step
        [0.6, -0.8]
    """
    needs_closure = True

    def __init__(self, params, lr: float = 1.0, *, damping: float = 1e-3, saddle_free: bool = True,
                 max_exact: int = 2000, cg_iters: int = 100, cg_tol: float = 1e-10):
        lr = check_lr(lr)
        if not (damping >= 0 and math.isfinite(damping)):
            raise ValueError(f"damping must be a finite number >= 0, got {damping}")
        defaults = dict(lr=lr, damping=float(damping), saddle_free=saddle_free, max_exact=int(max_exact),
                        cg_iters=int(cg_iters), cg_tol=float(cg_tol))
        super().__init__(params, defaults)
        if len(self.param_groups) != 1:
            raise ValueError("Newton treats all parameters as one vector: pass a single parameter group")
        self.info: NewtonInfo | None = None

    def step(self, closure: Closure | None = None) -> torch.Tensor:  # type: ignore[override]
        if closure is None:
            raise ValueError("Newton needs step(closure) with closure() returning the loss with its graph")
        group = self.param_groups[0]
        params = [p for p in group["params"] if p.requires_grad]
        with torch.enable_grad():
            loss = closure()
            graph = GradientGraph.of_loss(loss, params)
            g = graph.gradient()  # (P,)
            lam = group["damping"]
            if graph.n <= group["max_exact"]:
                H = graph.dense(verify=False)  # (P, P); a diverged step may make it non-finite
                d = self._exact_direction(0.5 * (H + H.T), g, lam, group["saddle_free"])
            else:
                d, iters, neg = conjugate_gradient(lambda v: graph.hvp(v) + lam * v, g,
                                                   iters=group["cg_iters"], tol=group["cg_tol"])
                self.info = NewtonInfo("cg", cg_iters=iters, negative_curvature=neg)
        with torch.no_grad():
            for p, dp in zip(params, graph.split(d)):
                p.sub_(group["lr"] * dp)
        return loss.detach()

    def _exact_direction(self, H: torch.Tensor, g: torch.Tensor, lam: float, saddle_free: bool) -> torch.Tensor:
        if not (torch.isfinite(H).all() and torch.isfinite(g).all()):
            self.info = NewtonInfo("exact", finite=False)
            return torch.full_like(g, float("nan"))  # the run diverged: let the next loss say so
        mu, V = torch.linalg.eigh(H)  # H = V diag(μ) Vᵀ
        self.info = NewtonInfo("exact", lam_min=float(mu[0]), lam_max=float(mu[-1]))
        if saddle_free:
            return V @ ((V.T @ g) / (mu.abs() + lam))  # (|H| + λI)⁻¹ g
        return torch.linalg.solve(H + lam * torch.eye(g.numel(), dtype=g.dtype, device=g.device), g)
