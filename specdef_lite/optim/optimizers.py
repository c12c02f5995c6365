"""Optimizers the attacker can bring: θ ← θ − η·P⁻¹g for P = I (SGD), diag-RMS (Adam), |H| + λI (Newton), …

SpecDef raises σ₁(∇²ℒ) by ~α² without moving the minimiser (PAPER.md, "Why curvature sets the speed"),
so *which* P an optimizer divides by decides how much it is slowed. ``make_optimizer`` is the registry:

* ``"sgd"`` / ``"adam"``: ``torch.optim.SGD`` / ``torch.optim.Adam``, unchanged.
* ``"newton"``: damped (saddle-free) Newton (``optim.newton``), exact Hessian or CG on HVPs.
* ``"sophia"``: Sophia-H (``optim.sophia``), a clipped diagonal-Hessian-preconditioned momentum step.
* ``"muon"``: ``torch.optim.Muon`` on every 2-D parameter, Adam on the rest (``optim.muon``).

Curvature-using optimizers take ``step(closure)`` with a closure returning the loss with its graph
(``optim.contract``); they carry ``needs_closure = True``.
"""
from __future__ import annotations

import torch

from .contract import check_lr
from .muon import MuonAdam
from .newton import Newton
from .sophia import Sophia

__all__ = ["make_optimizer", "OPTIMIZERS"]

OPTIMIZERS = ("sgd", "adam", "newton", "sophia", "muon")


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
        An optimizer with ``step``, ``zero_grad``, ``state_dict`` and ``load_state_dict``. Check
        ``getattr(opt, "needs_closure", False)``: if True, call ``opt.step(closure)`` with a closure
        returning the loss with its graph.

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
    lr = check_lr(lr)
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
