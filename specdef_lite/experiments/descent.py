"""θ₀, θ₁, … of GD, Adam or Newton on ℒ(θ) = ½(θ − θ*)ᵀA(θ − θ*), λ(A) = {1, κ}: iterates and losses.

``train`` records losses only; a path also needs the iterates θ_t, so this loop records both. It is the
same optimizer (``make_optimizer``) on the same quadratic (``problems.quadratic``) that ``train`` would
run, and ``tests/test_experiments.py`` checks that its losses match ``train``'s step for step. A path
stops when it diverges (ℒ > explode·ℒ₀ or non-finite) or converges (ℒ ≤ 10⁻¹⁶·ℒ₀, float64 rounding).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..optim.optimizers import make_optimizer
from ..optim.problems import quadratic

__all__ = ["Path", "descent_path", "OPTIMIZERS", "FLOOR"]

# label shown to the learner -> (make_optimizer name, options). Newton undamped: on a quadratic it is exact.
OPTIMIZERS: dict[str, tuple[str, dict]] = {"GD": ("sgd", {}), "Adam": ("adam", {}),
                                           "Newton": ("newton", {"damping": 0.0})}
FLOOR = 1e-16  # relative loss drawn as "converged": ℒ_t/ℒ_0 below this is float64 rounding


@dataclass(frozen=True)
class Path:
    """θ₀, θ₁, … of one optimizer on the quadratic, with ℒ(θ_t) (the loss *before* step t, as in ``Trace``).

    Attributes:
        theta: (T+1, 2) float64 iterates; losses: (T+1,) ℒ(θ_t).
        diverged_at: first t with ℒ_t non-finite or > explode·ℒ₀ (the run stopped there), else None.
        converged_at: first t with ℒ_t ≤ 1e-16·ℒ₀ (float64 rounding; the run stopped there), else None.
        theta_star: (2,) the minimiser; lam: (2,) the eigenvalues (1, κ).
    """
    theta: np.ndarray
    losses: np.ndarray
    diverged_at: int | None
    converged_at: int | None
    theta_star: np.ndarray
    lam: np.ndarray
    optimizer: str
    lr: float


def descent_path(kappa: float, lr: float, optimizer: str = "GD", *, steps: int = 100, seed: int = 0,
                 explode: float = 1e3) -> Path:
    """θ_{t+1} = A(θ_t) for ``optimizer`` ∈ {"GD", "Adam", "Newton"} on ℒ(θ) = ½(θ − θ*)ᵀA(θ − θ*), λ(A) = {1, κ}.

    The quadratic is ``problems.quadratic([1, κ], seed=seed)``: its rotation, θ* and θ₀ depend on the seed
    only, so changing κ changes the curvature and nothing else. Newton is undamped (exact on a quadratic).

    Example:
        >>> p = descent_path(10.0, 0.19, "GD", steps=400)
        >>> p.diverged_at, p.converged_at is not None
        (None, True)
        >>> descent_path(10.0, 0.21, "GD", steps=400).diverged_at
        37
        >>> descent_path(1000.0, 1.0, "Newton").converged_at
        1
    """
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {optimizer!r}")
    if not kappa >= 1:
        raise ValueError(f"kappa = λ_max/λ_min must be >= 1, got {kappa}")
    model, task = quadratic([1.0, float(kappa)], seed=seed)
    name, kw = OPTIMIZERS[optimizer]
    opt = make_optimizer(name, model.parameters(), float(lr), **kw)
    needs_closure = getattr(opt, "needs_closure", False)
    thetas, losses = [], []
    diverged_at = converged_at = None
    for t in range(steps + 1):
        thetas.append(model.theta.detach().numpy().copy())
        loss = task.value(model)
        losses.append(loss)
        if not math.isfinite(loss) or loss > explode * losses[0]:
            diverged_at = t
            break
        if loss <= FLOOR * losses[0]:
            converged_at = t
            break
        if t == steps:
            break
        if needs_closure:
            opt.step(lambda: task.loss(model))
        else:
            opt.zero_grad(set_to_none=True)
            task.loss(model).backward()
            opt.step()
    return Path(np.array(thetas), np.array(losses), diverged_at, converged_at, task.theta_star.numpy().copy(),
                np.array([1.0, float(kappa)]), optimizer, float(lr))
