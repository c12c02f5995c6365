"""max|f − f'| = 0 yet T(τ; η*) grows: GD's best response on the released, locked and fused models, with λ_max(∇²ℒ).

The whole argument in one experiment on a ``ToyProblem``: lock the released model at α (``specdef``), check the
function on the utility inputs, give gradient descent its best response on each model (the attacker tunes η),
and measure the top curvature λ_max(∇²ℒ) of the attack loss released, at α and at 10α — η_max ≈ 2/λ_max, and
once the lock's curvature dominates, λ_max ≈ c·α².
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..curvature.eigen import top_eigenvalues
from ..curvature.products import loss_fn_of
from ..lock.attacks import fuse
from ..lock.deform import specdef
from .best_response import BestResponse, Slowdown, slowdown
from .tuning import best_response

__all__ = ["FirstLook", "first_look", "top_curvature"]


def top_curvature(model: torch.nn.Module, task) -> float:
    """λ_max(∇²ℒ) of ``task``'s loss in ``model``'s parameters (the largest algebraic eigenvalue, by Lanczos)."""
    return float(top_eigenvalues(*loss_fn_of(model, task), which="LA").values[0])


@dataclass(frozen=True)
class FirstLook:
    """The lock at one α: what it keeps (f) and what it costs the attacker (steps at the best η, λ_max).

    Attributes:
        alpha: the lock's strength; f_released, f_locked: (n,) outputs on the utility inputs.
        released, locked, fused: gradient descent's best response on each model.
        lam: λ_max(∇²ℒ) of the released model, the model locked at α, and at 10α.
    """
    alpha: float
    f_released: np.ndarray
    f_locked: np.ndarray
    released: BestResponse
    locked: BestResponse
    fused: BestResponse
    lam: tuple[float, float, float]

    @property
    def max_diff(self) -> float:
        """max |f(x) − f'(x)| over the utility inputs (0 up to float64 rounding)."""
        return float(np.abs(self.f_released - self.f_locked).max())

    @property
    def lock_slowdown(self) -> Slowdown:
        return slowdown(self.locked, self.released)

    @property
    def fuse_slowdown(self) -> Slowdown:
        return slowdown(self.fused, self.released)

    @property
    def lam_slope(self) -> float:
        """d log λ_max / d log α from α to 10α (2 once the lock's curvature dominates)."""
        return math.log10(self.lam[2] / self.lam[1])

    @property
    def lam_c(self) -> float:
        """c in λ_max ≈ c·α², read at 10α."""
        return self.lam[2] / (10 * self.alpha) ** 2


def first_look(toy, alpha: float, *, k: int = 1, lrs: Sequence[float], steps: int) -> FirstLook:
    """GD's best response on ``toy.released``, ``specdef(released, α)`` and its ``fuse``, within ``steps`` steps.

    Args:
        toy: a ``problems.ToyProblem`` (released model, harmful task, utility inputs, target τ).
        lrs: gradient descent's starting learning-rate grid (extended past an edge while the best sits there).
    """
    locked = specdef(toy.released, alpha, k=k)
    with torch.no_grad():
        X = toy.utility.inputs
        f, f_locked = toy.released(X).squeeze(-1), locked(X).squeeze(-1)
    models = {"released": toy.released, "locked": locked, "fused": fuse(locked)}
    br = {n: best_response(m, toy.task, "sgd", lrs=lrs, steps=steps, target=toy.target) for n, m in models.items()}
    lam = (top_curvature(toy.released, toy.task), top_curvature(locked, toy.task),
           top_curvature(specdef(toy.released, 10 * alpha, k=k), toy.task))
    return FirstLook(float(alpha), f.numpy(), f_locked.numpy(), br["released"], br["locked"], br["fused"], lam)
