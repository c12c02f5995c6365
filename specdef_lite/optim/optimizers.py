"""Optimizers the attacker can bring: θ ← θ − η·P⁻¹g for P = I (SGD), diag-RMS (Adam), |H| + λI (Newton), …

SpecDef raises σ₁(∇²ℒ) by ~α² without moving the minimiser (PAPER.md, "Why curvature sets the speed"),
so *which* P an optimizer divides by decides how much it is slowed:

* ``"sgd"`` / ``"adam"``: ``torch.optim.SGD`` / ``torch.optim.Adam``, unchanged.
* ``"newton"``: damped (saddle-free) Newton, θ ← θ − lr·(|H| + λI)⁻¹g, with the exact Hessian for small
  models and conjugate gradient on Hessian-vector products (HVPs) otherwise.
* ``"sophia"``: Sophia-H (Liu et al. 2023, arXiv:2305.14342): a clipped, diagonal-Hessian-preconditioned
  momentum step, the diagonal from Hutchinson's estimator u ⊙ (Hu).
* ``"muon"``: ``torch.optim.Muon`` (orthogonalised momentum) on every 2-D parameter, Adam on the rest,
  since Muon only accepts matrices.

Curvature-using optimizers (``Newton``, ``Sophia``) follow torch's closure protocol with one twist: the
closure returns the loss *with its graph* and does **not** call ``.backward()``; the optimizer takes
gradients and HVPs itself with ``torch.autograd.grad(create_graph=True)``. They carry the class attribute
``needs_closure = True``; ``train`` reads it and passes ``closure = lambda: task.loss(model)``.

Cost: the exact Newton path builds the P×P Hessian with P batched double-backward passes and takes an
eigendecomposition (O(P³)); past ``max_exact`` parameters it switches to CG, ≤ ``cg_iters`` HVPs a step.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable

import torch

__all__ = ["make_optimizer", "Newton", "Sophia", "MuonAdam", "OPTIMIZERS"]

OPTIMIZERS = ("sgd", "adam", "newton", "sophia", "muon")

Closure = Callable[[], torch.Tensor]


def _check_lr(lr: float) -> float:
    if isinstance(lr, bool) or not isinstance(lr, numbers.Real):
        raise ValueError(f"lr must be a positive finite number, got {lr!r}")
    lr = float(lr)
    if not math.isfinite(lr) or lr <= 0:
        raise ValueError(f"lr must be a positive finite number, got {lr}")
    return lr


def _flat(tensors: Iterable[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def _split(v: torch.Tensor, like: list[torch.Tensor]) -> list[torch.Tensor]:
    out, i = [], 0
    for p in like:
        out.append(v[i:i + p.numel()].view_as(p))  # (numel,) -> p.shape
        i += p.numel()
    return out


def _grad_with_graph(loss: torch.Tensor, params: list[torch.Tensor]) -> list[torch.Tensor]:
    """∇ℒ with create_graph=True (so HVPs can follow); zeros for parameters the loss does not use."""
    return list(torch.autograd.grad(loss, params, create_graph=True, allow_unused=True, materialize_grads=True))


def _hvp(g: torch.Tensor, params: list[torch.Tensor], v: torch.Tensor) -> torch.Tensor:
    """H v = ∇(∇ℒ · v) by double backward on the flat gradient g (which must carry a graph)."""
    if not g.requires_grad:  # ℒ is linear in θ: H = 0
        return torch.zeros_like(v)
    Hv = torch.autograd.grad(g, params, grad_outputs=v, retain_graph=True, allow_unused=True,
                             materialize_grads=True)
    return _flat(Hv)


def _dense_hessian(g: torch.Tensor, params: list[torch.Tensor]) -> torch.Tensor:
    """H (P×P) from the flat gradient g: row i = ∇(gᵢ), all rows in one batched double backward."""
    P = g.numel()
    if not g.requires_grad:
        return torch.zeros(P, P, dtype=g.dtype, device=g.device)
    eye = torch.eye(P, dtype=g.dtype, device=g.device)  # (P, P): one basis vector per row
    try:
        rows = torch.autograd.grad(g, params, grad_outputs=eye, retain_graph=True, is_grads_batched=True,
                                   allow_unused=True, materialize_grads=True)
        H = torch.cat([r.reshape(P, -1) for r in rows], dim=1)  # (P, numel_j) each -> (P, P)
    except RuntimeError:  # an op without a vmap rule: fall back to one backward per row
        H = torch.stack([_hvp(g, params, eye[i]) for i in range(P)])
    return 0.5 * (H + H.T)


def conjugate_gradient(matvec: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, *, iters: int,
                       tol: float) -> tuple[torch.Tensor, int, bool]:
    """x ≈ M⁻¹b by conjugate gradient, stopping at ‖r‖ ≤ tol·‖b‖ or at negative curvature pᵀMp ≤ 0.

    Returns (x, iterations, hit_negative_curvature). On negative curvature at the first iteration x = b
    (a plain gradient step, as in Steihaug's truncated Newton); later, the last iterate is kept.
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
    ``self.info`` reports the last step: path ("exact" / "cg"), extreme eigenvalues or CG iterations.

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
        lr = _check_lr(lr)
        if not (damping >= 0 and math.isfinite(damping)):
            raise ValueError(f"damping must be a finite number >= 0, got {damping}")
        defaults = dict(lr=lr, damping=float(damping), saddle_free=saddle_free, max_exact=int(max_exact),
                        cg_iters=int(cg_iters), cg_tol=float(cg_tol))
        super().__init__(params, defaults)
        if len(self.param_groups) != 1:
            raise ValueError("Newton treats all parameters as one vector: pass a single parameter group")
        self.info: dict = {}

    def step(self, closure: Closure | None = None) -> torch.Tensor:  # type: ignore[override]
        if closure is None:
            raise ValueError("Newton needs step(closure) with closure() returning the loss with its graph")
        group = self.param_groups[0]
        params = [p for p in group["params"] if p.requires_grad]
        with torch.enable_grad():
            loss = closure()
            g = _flat(_grad_with_graph(loss, params))  # (P,)
            lam = group["damping"]
            if g.numel() <= group["max_exact"]:
                H = _dense_hessian(g, params).detach()  # (P, P)
                d = self._exact_direction(H, g.detach(), lam, group["saddle_free"])
            else:
                d, iters, neg = conjugate_gradient(lambda v: _hvp(g, params, v).detach() + lam * v, g.detach(),
                                                   iters=group["cg_iters"], tol=group["cg_tol"])
                self.info = {"path": "cg", "cg_iters": iters, "negative_curvature": neg}
        with torch.no_grad():
            for p, dp in zip(params, _split(d, params)):
                p.sub_(group["lr"] * dp)
        return loss.detach()

    def _exact_direction(self, H: torch.Tensor, g: torch.Tensor, lam: float, saddle_free: bool) -> torch.Tensor:
        if not (torch.isfinite(H).all() and torch.isfinite(g).all()):
            self.info = {"path": "exact", "finite": False}
            return torch.full_like(g, float("nan"))  # the run diverged: let the next loss say so
        mu, V = torch.linalg.eigh(H)  # H = V diag(μ) Vᵀ
        self.info = {"path": "exact", "lam_min": float(mu[0]), "lam_max": float(mu[-1])}
        if saddle_free:
            return V @ ((V.T @ g) / (mu.abs() + lam))  # (|H| + λI)⁻¹ g
        return torch.linalg.solve(H + lam * torch.eye(g.numel(), dtype=g.dtype, device=g.device), g)


class Sophia(torch.optim.Optimizer):
    """θ ← θ − lr·clip(m / max(ρ·h, ε), 1) — Sophia-H (Liu et al. 2023), h an EMA of Hutchinson's u ⊙ (Hu).

    Per step: m ← β₁m + (1 − β₁)g. Every ``k`` steps (from the first): draw a Rademacher u, compute
    u ⊙ (Hu) (unbiased for diag H, since E[uuᵀ] = I) and update h ← β₂h + (1 − β₂)·u⊙(Hu). The update is
    a Newton step on the diagonal, m/(ρh), clipped elementwise to [−1, 1], so no coordinate moves more
    than lr per step; where h ≤ 0 (negative curvature) the max with ε turns it into a sign step.
    Decoupled weight decay θ ← θ(1 − lr·wd) as in the paper (default 0 here). Notation follows the paper's
    Algorithm 3 (there γ, here ``rho``).

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
        lr = _check_lr(lr)
        if not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"betas must lie in [0, 1), got {betas}")
        if rho <= 0 or k < 1:
            raise ValueError(f"rho must be > 0 and k >= 1, got rho={rho}, k={k}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), rho=float(rho), eps=float(eps), k=int(k),
                                      weight_decay=float(weight_decay)))
        self._gen = torch.Generator().manual_seed(seed)
        self._t = 0

    def step(self, closure: Closure | None = None) -> torch.Tensor:  # type: ignore[override]
        if closure is None:
            raise ValueError("Sophia needs step(closure) with closure() returning the loss with its graph")
        self._t += 1
        params = [p for group in self.param_groups for p in group["params"] if p.requires_grad]
        refresh = (self._t - 1) % self.param_groups[0]["k"] == 0
        with torch.enable_grad():
            loss = closure()
            if refresh:
                grads = _grad_with_graph(loss, params)
                g = _flat(grads)
                u = torch.randint(0, 2, g.shape, generator=self._gen).to(g) * 2 - 1  # Rademacher ±1
                uHu = _split(u * _hvp(g, params, u), params)  # u ⊙ (Hu), one HVP
                grads = [gr.detach() for gr in grads]
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


class MuonAdam:
    """Muon on the matrices, Adam on the rest: W ← W − lr·√max(1, m/n)·NS₅(momentum), b ← Adam(b).

    ``torch.optim.Muon`` accepts 2-D parameters only (its Newton–Schulz orthogonalisation is defined
    for matrices and runs in bfloat16 whatever the parameter dtype), so biases and other non-matrix
    parameters go to ``torch.optim.Adam`` with ``adam_lr`` (default: the same lr). Weight decay defaults
    to 0 (torch's Muon default is 0.1), so the attack is a pure descent method like the others.
    Exposes ``step``, ``zero_grad``, ``param_groups``, ``state_dict`` and ``load_state_dict``.
    """
    needs_closure = False

    def __init__(self, params, lr: float, *, adam_lr: float | None = None, weight_decay: float = 0.0,
                 momentum: float = 0.95, nesterov: bool = True, ns_steps: int = 5, betas=(0.9, 0.999)):
        lr = _check_lr(lr)
        adam_lr = lr if adam_lr is None else _check_lr(adam_lr)
        params = [p for p in params if p.requires_grad]
        if not params:
            raise ValueError("MuonAdam got no trainable parameters")
        matrices = [p for p in params if p.ndim == 2]
        others = [p for p in params if p.ndim != 2]
        self.optimizers: list[torch.optim.Optimizer] = []
        if matrices:
            self.optimizers.append(torch.optim.Muon(matrices, lr=lr, weight_decay=weight_decay, momentum=momentum,
                                                    nesterov=nesterov, ns_steps=ns_steps))
        if others:
            self.optimizers.append(torch.optim.Adam(others, lr=adam_lr, betas=betas))

    @property
    def param_groups(self) -> list[dict]:
        return [g for opt in self.optimizers for g in opt.param_groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def step(self, closure: Closure | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for opt in self.optimizers:
            opt.step()
        return loss

    def state_dict(self) -> list[dict]:
        return [opt.state_dict() for opt in self.optimizers]

    def load_state_dict(self, state: list[dict]) -> None:
        for opt, st in zip(self.optimizers, state):
            opt.load_state_dict(st)


def make_optimizer(name: str, params, lr: float, **kw):
    """θ ← θ − lr·P⁻¹g with P chosen by ``name``: "sgd", "adam", "newton", "sophia" or "muon".

    Args:
        name: one of ``OPTIMIZERS`` (case-insensitive).
        params: an iterable of parameters (e.g. ``model.parameters()``); parameters with
            ``requires_grad=False`` are skipped, so an injected-layer attack trains only its new layers.
        lr: the step size, positive and finite.
        **kw: passed on — torch's SGD/Adam options (momentum, betas, …), ``Newton``'s (damping,
            saddle_free, max_exact, …), ``Sophia``'s (betas, rho, k, …) or ``MuonAdam``'s (adam_lr, …).

    Returns:
        An optimizer with ``step`` and ``zero_grad``. Check ``getattr(opt, "needs_closure", False)``:
        if True, call ``opt.step(closure)`` with a closure returning the loss with its graph.

    Raises:
        ValueError: unknown name (the message lists the names), lr ≤ 0 or not finite, no parameters.

    Example:
        >>> w = torch.ones(3, dtype=torch.float64, requires_grad=True)
        >>> opt = make_optimizer("sgd", [w], lr=0.25)
        >>> (w @ w).backward(); opt.step()
        >>> w.tolist()
        [0.5, 0.5, 0.5]
    """
    key = str(name).lower()
    if key not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
    lr = _check_lr(lr)
    params = [p for p in params if not isinstance(p, torch.Tensor) or p.requires_grad]
    if not params:
        raise ValueError("no trainable parameters (all have requires_grad=False)")
    if key == "sgd":
        return torch.optim.SGD(params, lr=lr, **kw)
    if key == "adam":
        return torch.optim.Adam(params, lr=lr, **kw)
    if key == "newton":
        return Newton(params, lr=lr, **kw)
    if key == "sophia":
        return Sophia(params, lr=lr, **kw)
    return MuonAdam(params, lr=lr, **kw)
