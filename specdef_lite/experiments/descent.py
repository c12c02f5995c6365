"""θ₀, θ₁, … of GD, Adam or Newton on ℒ(θ) = ½(θ − θ*)ᵀA(θ − θ*), λ(A) = {1, κ}: iterates and losses.

``train`` records losses only; a path also needs the iterates θ_t, so this loop records both. The quadratic
is ``problems.quadratic``'s; the steps are the library's optimizers' update rules (``make_optimizer``'s
"sgd", "adam" and undamped "newton") written out in float64 numpy for this 2-parameter problem:

* GD:     θ ← θ − η·g,                 g = A(θ − θ*)
* Adam:   m ← m + (1 − β₁)(g − m),  v ← β₂v + (1 − β₂)g²,  θ ← θ − (η/(1 − β₁ᵗ))·m / (√v/√(1 − β₂ᵗ) + ε)
* Newton: θ ← θ − η·A⁻¹g

Why not run ``torch.optim`` here, as ``train`` does: on 2 parameters its per-step overhead (autograd, the
optimizer's bookkeeping) made a 100-step path cost 30–100 ms, which an explorer pays on every first visit
of a slider position; these loops take well under 1 ms. ``tests/test_widgets_course.py`` checks that the
losses match ``train``'s with the library's optimizers step for step. A path stops when it diverges
(ℒ > explode·ℒ₀ or non-finite) or converges (ℒ ≤ 10⁻¹⁶·ℒ₀, float64 rounding).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from ..optim.contract import check_lr
from ..optim.problems import quadratic

__all__ = ["Path", "descent_path", "quadratic_arrays", "OPTIMIZERS", "FLOOR"]

# label shown to the learner -> (make_optimizer name, options) of the update rule a path follows (module
# docstring). Newton undamped: on a quadratic it is exact. Adam with torch.optim.Adam's defaults.
OPTIMIZERS: dict[str, tuple[str, dict]] = {"GD": ("sgd", {}), "Adam": ("adam", {}),
                                           "Newton": ("newton", {"damping": 0.0})}
ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8
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
    A, theta_star, theta0 = quadratic_arrays(float(kappa), int(seed))
    lr = check_lr(lr)
    with np.errstate(over="ignore", invalid="ignore"):  # a diverging run overflows: its loss says so below
        return _path(A, theta_star, theta0, float(kappa), lr, optimizer, int(steps), float(explode))


def _path(A: np.ndarray, theta_star: np.ndarray, theta0: np.ndarray, kappa: float, lr: float, optimizer: str,
          steps: int, explode: float) -> Path:
    theta = theta0.copy()
    m = np.zeros(2)
    v = np.zeros(2)
    thetas, losses = [], []
    diverged_at = converged_at = None
    for t in range(steps + 1):
        thetas.append(theta.copy())
        r = theta - theta_star
        loss = float(0.5 * r @ (A @ r))
        losses.append(loss)
        if not math.isfinite(loss) or loss > explode * losses[0]:
            diverged_at = t
            break
        if loss <= FLOOR * losses[0]:
            converged_at = t
            break
        if t == steps:
            break
        g = A @ r
        if optimizer == "GD":
            theta = theta - lr * g
        elif optimizer == "Newton":
            theta = theta - lr * np.linalg.solve(A, g)
        else:  # Adam, as torch.optim.Adam computes it (single-tensor path)
            (b1, b2), k = ADAM_BETAS, t + 1
            m = m + (1 - b1) * (g - m)
            v = v * b2 + (1 - b2) * g * g
            denom = np.sqrt(v) / math.sqrt(1 - b2 ** k) + ADAM_EPS
            theta = theta - (lr / (1 - b1 ** k)) * m / denom
    return Path(np.array(thetas), np.array(losses), diverged_at, converged_at, theta_star.copy(),
                np.array([1.0, kappa]), optimizer, lr)


@lru_cache(maxsize=64)
def quadratic_arrays(kappa: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(A, θ*, θ₀) of ``problems.quadratic([1, κ], seed=seed)`` as read-only float64 arrays, cached (a slider
    revisits κ; building the problem costs milliseconds, a path well under one)."""
    model, task = quadratic([1.0, kappa], seed=seed)
    out = (task.A.numpy().copy(), task.theta_star.numpy().copy(), model.theta.detach().numpy().copy())
    for a in out:
        a.setflags(write=False)
    return out
