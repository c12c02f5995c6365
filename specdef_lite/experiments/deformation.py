"""W̃ = W + (α − 1) U_k Σ_k V_kᵀ, C W̃ = W over a grid of α: σᵢ(W̃), max|f − f'|, σ₁(∇²ℒ) per α.

One sweep over a log grid of α answers three questions for a small network:

* **spectrum** — σᵢ(W̃) = α σᵢ(W) for i ≤ k, the rest untouched;
* **function** — max |f − f'| over held-out inputs stays at float64 rounding (≈ α·ε·max|f|) for SpecDef,
  while the scale-only ablation (no C) changes the outputs by O(1);
* **curvature** — σ₁(∇²ℒ) of the attacker's loss in the released parameters (measured here: it grows like
  α², since the curvature with respect to C scales with ‖W̃h‖²), beside Theorem 3's rigorous lower bound
  σ₁(H_{θ₁,C}) ≤ σ₁(∇²ℒ), which grows like α (PAPER.md, Theorem 3; its angle definitions are a
  reconstruction).

Cost: one σ₁(∇²ℒ) is a Lanczos run of ~6–16 Hessian-vector products (~0.1 s on the toy). HVPs use double
backward: on these small MLPs it is ~2× faster than forward-over-reverse and gives the same numbers.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..curvature.products import loss_fn_of, unflatten_like
from ..lock.deform import linear_weight, scale_only, specdef
from ..curvature.eigen import top_eigenvalues
from ..curvature.theorem3 import theorem3_bound
from .grid import nearest
from .slope import loglog_slope

__all__ = ["DeformationPoint", "DeformationSweep", "deformation_sweep"]

EPS64 = float(np.finfo(np.float64).eps)


@dataclass(frozen=True)
class DeformationPoint:
    """One α of a sweep: σ₁(W̃) = α·σ₁(W), max|f − f'|, σ₁(∇²ℒ) ≥ bound, 2/σ₁(∇²ℒ)."""
    alpha: float
    sigma1_W_tilde: float
    err_specdef: float
    err_scale_only: float
    sigma1_H: float
    bound: float
    max_stable_lr: float
    top_in_C: float


@dataclass(frozen=True)
class DeformationSweep:
    """SpecDef of one layer over a grid of α: σ(W̃), max|f − f'|, σ₁(∇²ℒ) ≥ Theorem 3's bound (float64).

    Attributes:
        alphas: (n,) the grid; k: singular values scaled; layer: the deformed layer's name.
        sigma_W: (r,) singular values of W, descending; sigma_W_tilde: (n, r) those of W̃ at each α.
        err_specdef, err_scale_only: (n,) max |f(x) − f'(x)| over the inputs, locked vs released and
            scale-only vs released.
        f_max: max |f(x)| of the released model on the same inputs (the scale of its outputs).
        sigma1_H: (n,) σ₁(∇²ℒ) = |λ|_max of the harmful-task loss in the locked model's parameters.
        bound: (n,) Theorem 3's lower bound σ₁(H_{before, layer.C}) ≤ σ₁(∇²ℒ).
        top_in_C: (n,) share of the top eigenvector's squared norm on the compensation C (1 = all of it).
        converged: (n,) whether each Lanczos run met its tolerance.
    """
    alphas: np.ndarray
    k: int
    layer: str
    before: str
    sigma_W: np.ndarray
    sigma_W_tilde: np.ndarray
    err_specdef: np.ndarray
    err_scale_only: np.ndarray
    f_max: float
    sigma1_H: np.ndarray
    bound: np.ndarray
    top_in_C: np.ndarray
    converged: np.ndarray

    def index(self, alpha: float) -> int:
        """Index of the grid point nearest to ``alpha`` on a log scale."""
        return nearest(self.alphas, alpha)

    def at(self, alpha: float) -> DeformationPoint:
        """Every quantity at the grid point nearest to ``alpha`` (log scale)."""
        i = self.index(alpha)
        return DeformationPoint(float(self.alphas[i]), float(self.sigma_W_tilde[i, 0]), float(self.err_specdef[i]),
                                float(self.err_scale_only[i]), float(self.sigma1_H[i]), float(self.bound[i]),
                                float(self.max_stable_lr[i]), float(self.top_in_C[i]))

    def slope(self, name: str = "sigma1_H", alpha_min: float = 100.0) -> float:
        """d log y / d log α by least squares over α ≥ ``alpha_min`` (2 for σ₁(∇²ℒ), 1 for the bound)."""
        ok = self.alphas >= alpha_min
        if ok.sum() < 2:
            raise ValueError(f"need two grid points with α ≥ {alpha_min}, have {int(ok.sum())}")
        return loglog_slope(self.alphas, getattr(self, name), x_min=alpha_min)

    @property
    def max_stable_lr(self) -> np.ndarray:
        """2/σ₁(∇²ℒ) at each α: gradient descent's stability limit at the released point (PAPER.md)."""
        return 2.0 / self.sigma1_H


def _before_of(model: torch.nn.Module, layer: str) -> str:
    linear = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    if layer not in linear:
        raise ValueError(f"layer {layer!r} is not a linear layer of the model; linear layers: {linear}")
    i = linear.index(layer)
    if i == 0:
        raise ValueError(f"layer {layer!r} is the first linear layer: Theorem 3 needs a layer before it")
    return f"{linear[i - 1]}.weight"


def deformation_sweep(problem, alphas: Sequence[float], *, k: int = 1, layer: str = "2", before: str | None = None,
                      inputs: torch.Tensor | None = None, hvp_method: str = "double-backward",
                      progress: bool = False) -> DeformationSweep:
    """For each α: σ(W̃), max|f − f'| (SpecDef and scale-only), σ₁(∇²ℒ_H) and Theorem 3's bound, in float64.

    Args:
        problem: a ``problems.ToyProblem`` (``released`` model, harmful ``task``, ``utility`` inputs).
        alphas: the grid (sorted ascending in the result); k: singular values to scale.
        layer: the linear layer to deform; before: the parameter of the layer before it for Theorem 3's
            cross-block (default: the previous linear layer's weight).
        inputs: where to compare f and f' (default: the utility inputs).
        hvp_method: passed to ``top_eigenvalues``.

    Example:
        >>> from specdef_lite import problems
        >>> sw = deformation_sweep(problems.teacher_student(seed=0), [1.0, 1e2, 1e4])
        >>> [round(float(r), 6) for r in sw.sigma_W_tilde[:, 0] / sw.sigma_W[0]]
        [1.0, 100.0, 10000.0]
        >>> bool((sw.err_specdef < 1e-9).all()), bool(sw.err_scale_only[-1] > 0.1)
        (True, True)
        >>> round(sw.slope(), 3), bool((sw.bound <= sw.sigma1_H).all())
        (2.0, True)
    """
    from tqdm.auto import tqdm
    released = problem.released
    before = before or _before_of(released, layer)
    X = problem.utility.inputs if inputs is None else inputs
    grid = np.sort(np.asarray(list(alphas), dtype=np.float64))
    with torch.no_grad():
        f0 = released(X)
        W, _ = linear_weight(released.get_submodule(layer))
        sigma_W = torch.linalg.svdvals(W.detach().double()).numpy()
    n, r = grid.size, sigma_W.size
    sig_t, err1, err2 = np.zeros((n, r)), np.zeros(n), np.zeros(n)
    s1, bnd, in_C, conv = np.zeros(n), np.zeros(n), np.zeros(n), np.zeros(n, dtype=bool)
    for i, alpha in enumerate(tqdm(grid, disable=not progress, desc=f"α sweep (k={k})", leave=False)):
        locked = specdef(released, float(alpha), k=k, targets=layer)
        scaled = scale_only(released, float(alpha), k=k, targets=layer)
        with torch.no_grad():
            err1[i] = float((locked(X) - f0).abs().max())
            err2[i] = float((scaled(X) - f0).abs().max())
            sig_t[i] = torch.linalg.svdvals(locked.get_submodule(layer).W_tilde.detach().double()).numpy()
        loss_fn, theta = loss_fn_of(locked, problem.task)
        eig = top_eigenvalues(loss_fn, theta, k=1, hvp_method=hvp_method, seed=0)
        s1[i], conv[i] = abs(float(eig.values[0])), bool(eig.converged)
        in_C[i] = float(unflatten_like(eig.vectors[:, 0], theta)[f"{layer}.C"].pow(2).sum())  # ‖v‖ = 1
        bnd[i] = theorem3_bound(loss_fn, theta, before, f"{layer}.C", through=f"{layer}.W_tilde").bound
    return DeformationSweep(grid, int(k), layer, before, sigma_W, sig_t, err1, err2,
                            float(f0.abs().max()), s1, bnd, in_C, conv)
