"""θ ← θ − lr·clip(m / max(ρ·h, ε), 1) — Sophia-H (Liu et al. 2023, arXiv:2305.14342), h from Hutchinson's u ⊙ (Hu).

A clipped, diagonal-Hessian-preconditioned momentum step: the diagonal is estimated by one Hessian-vector
product with a Rademacher u every ``k`` steps, taken through the gradient graph of the step's own loss
(``curvature.gradgraph.GradientGraph.of_loss``), so a refresh costs about one extra backward pass.
"""
from __future__ import annotations

import torch

from ..curvature.gradgraph import GradientGraph
from .contract import Closure, check_lr

__all__ = ["Sophia"]


class Sophia(torch.optim.Optimizer):
    """θ ← θ − lr·clip(m / max(ρ·h, ε), 1) — Sophia-H (Liu et al. 2023), h an EMA of Hutchinson's u ⊙ (Hu).

    Per step: m ← β₁m + (1 − β₁)g. Every ``k`` steps (from the first): draw a Rademacher u, compute
    u ⊙ (Hu) (unbiased for diag H, since E[uuᵀ] = I) and update h ← β₂h + (1 − β₂)·u⊙(Hu). The update is
    a Newton step on the diagonal, m/(ρh), clipped elementwise to [−1, 1], so no coordinate moves more
    than lr per step; where h ≤ 0 (negative curvature) the max with ε turns it into a sign step.
    Decoupled weight decay θ ← θ(1 − lr·wd) as in the paper (default 0 here). Notation follows the paper's
    Algorithm 3 (there γ, here ``rho``).

    All state lives in ``self.state``: per parameter ``m`` and ``h``; under the key ``"hutchinson"`` the step
    count and the state of the Rademacher generator, so ``state_dict`` / ``load_state_dict`` resume a run
    exactly, draws included.

    Args:
        params: parameters or parameter groups.
        lr: η, the largest move of any coordinate in one step.
        betas: (β₁, β₂); rho: ρ; eps: ε; k: Hessian refresh interval; seed: for the Rademacher draws.

    Use with ``step(closure)``, the closure returning ℒ(θ) with its graph (no ``.backward()``).

    Example:
        >>> theta = torch.tensor([4.0, -4.0], dtype=torch.float64, requires_grad=True)
        >>> A = torch.diag(torch.tensor([1.0, 100.0], dtype=torch.float64))
        >>> opt = Sophia([theta], lr=1.0, rho=1.0, betas=(0.0, 0.0), k=1)
        >>> for _ in range(20):
        ...     _ = opt.step(lambda: 0.5 * theta @ A @ theta)
        >>> theta.tolist()  # clipped steps of 1, then the diagonal Newton step lands: κ = 100 costs nothing
        [0.0, 0.0]
    """
    needs_closure = True

    def __init__(self, params, lr: float = 1e-3, *, betas: tuple[float, float] = (0.965, 0.99), rho: float = 0.04,
                 eps: float = 1e-12, k: int = 10, weight_decay: float = 0.0, seed: int = 0):
        lr = check_lr(lr)
        if not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"betas must lie in [0, 1), got {betas}")
        if rho <= 0 or k < 1:
            raise ValueError(f"rho must be > 0 and k >= 1, got rho={rho}, k={k}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), rho=float(rho), eps=float(eps), k=int(k),
                                      weight_decay=float(weight_decay)))
        self.state["hutchinson"] = {"step": 0, "generator": torch.Generator().manual_seed(seed).get_state()}

    def _rademacher(self, n: int, like: torch.Tensor) -> torch.Tensor:
        """u ∈ {−1, +1}ⁿ from the stored generator state, which then moves on (the entry is replaced, not mutated)."""
        gen = torch.Generator()
        gen.set_state(self.state["hutchinson"]["generator"])
        u = torch.randint(0, 2, (n,), generator=gen).to(like) * 2 - 1
        self.state["hutchinson"] = {**self.state["hutchinson"], "generator": gen.get_state()}
        return u

    def step(self, closure: Closure | None = None) -> torch.Tensor:  # type: ignore[override]
        if closure is None:
            raise ValueError("Sophia needs step(closure) with closure() returning the loss with its graph")
        t = self.state["hutchinson"]["step"] + 1
        self.state["hutchinson"] = {**self.state["hutchinson"], "step": t}
        params = [p for group in self.param_groups for p in group["params"] if p.requires_grad]
        refresh = (t - 1) % self.param_groups[0]["k"] == 0
        with torch.enable_grad():
            loss = closure()
            if refresh:
                graph = GradientGraph.of_loss(loss, params)
                u = self._rademacher(graph.n, graph.g[0])  # Rademacher ±1, (P,)
                uHu = graph.split(u * graph.hvp(u))  # u ⊙ (Hu), one HVP
                grads = [gr.detach() for gr in graph.g]
            else:
                grads = list(torch.autograd.grad(loss, params, allow_unused=True, materialize_grads=True))
        index = {id(p): i for i, p in enumerate(params)}
        with torch.no_grad():
            for group in self.param_groups:
                b1, b2 = group["betas"]
                for p in group["params"]:
                    if id(p) not in index:
                        continue
                    i = index[id(p)]
                    st = self.state[p]
                    if not st:
                        st["m"] = torch.zeros_like(p)
                        st["h"] = torch.zeros_like(p)
                    st["m"].mul_(b1).add_(grads[i], alpha=1 - b1)
                    if refresh:
                        st["h"].mul_(b2).add_(uHu[i], alpha=1 - b2)
                    if group["weight_decay"]:
                        p.mul_(1 - group["lr"] * group["weight_decay"])
                    ratio = st["m"] / torch.clamp(group["rho"] * st["h"], min=group["eps"])
                    p.sub_(group["lr"] * ratio.clamp(-1.0, 1.0))
        return loss.detach()
