"""H_α = T⁻ᵀ H₁ T⁻¹: the lock throws k·m eigenvalues of ∇²ℒ out (∝ α²) and pulls k·n in (∝ 1/α²).

Why two families. Inside a locked layer (W̃ ∈ ℝ^{m×n}, C ∈ ℝ^{m×m}) the pair is a fixed linear change of
coordinates of the pair at α = 1: C = C₁S⁻¹ and W̃ = SW₁ with S = I + (α − 1)U_kU_kᵀ. So the Hessian at α is
the congruence H_α = T⁻ᵀH₁T⁻¹, where T⁻¹ multiplies the k·m entries of C along U_k (its columns C U_k) by α
and the k·n entries of W̃ along U_k (its rows U_kᵀW̃) by 1/α, and leaves every other parameter alone. The
C–C block carries u uᵀ with u = W̃h, α times longer along U_k: k·m eigenvalues grow like α². The W̃–W̃ block
carries CᵀC, which shrinks by 1/α² along U_k: k·n eigenvalues shrink like 1/α². By Sylvester's law of inertia
a congruence keeps the signs, so the thrown-out family is as often negative as the released curvature along
those directions was — and only its positive members limit gradient descent's step.

What the k·n pulled-in directions carried before the lock is measured directly: the released Hessian
restricted to the rows of W along U_k, Pᵀ∇²ℒP with P = U_k ⊗ Iₙ (``pulled_curvature``). For the read-out
layer (m = 1) that is its whole weight, the steepest part of the released spectrum; for a hidden layer a
small corner of it.

The counts use the released spectrum's own scales: "thrown out" is |λ| more than ``factor`` times the
released edge max|λ|, "pulled in" is |λ| less than the released min|λ| over ``factor``.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..curvature.products import hessian, loss_fn_of
from ..curvature.spectrum import SpectrumSweep

__all__ = ["SpectrumFamilies", "spectrum_families", "pulled_curvature"]


@dataclass(frozen=True)
class SpectrumFamilies:
    """The two families of eigenvalues a lock creates, measured on a ``SpectrumSweep``.

    A family is found by how its members scale, not by a threshold: sort |λ| at the two largest α of the grid;
    the thrown-out family is the run of largest |λ| that grew faster than α between them, the pulled-in family
    the run of smallest |λ| that shrank faster than 1/α. Every other eigenvalue is "the rest".

    Attributes:
        alphas: (A,) the lock strengths of the sweep.
        n_thrown, n_pulled: the sizes of the two families at the largest α.
        expected_thrown, expected_pulled: k·m and k·n, what the congruence predicts.
        thrown_positive, thrown_negative: the thrown-out family at the largest α, by sign.
        thrown_slope, pulled_slope: d log|λ| / d log α between the two largest α (+2, −2 predicted), of the
            thrown-out family's Σ|λ| and of the pulled-in family's largest |λ|. (Its smallest members sit near what a
            dense float64 eigensolver can resolve beside the thrown-out ones: |λ| ~ 1e-14 next to 1e12 at α = 1e6.)
        beyond, below: (A,) per α, how many |λ| lie beyond factor × the released edge / below the released
            min|λ| / factor (a threshold count, to watch the families form across the grid).
        rest_quantiles: (A, 2) median and 90th percentile of |λ| of the rest (every α: all but the n_thrown
            largest and the n_pulled smallest |λ|).
        released_quantiles: (2,) the same for the released Hessian.
        pulled_curvature: (k·n,) eigenvalues of the released Hessian on the pulled-in directions, descending |·|.
        factor: the threshold factor of ``beyond`` and ``below``.
    """
    alphas: np.ndarray
    n_thrown: int
    n_pulled: int
    expected_thrown: int
    expected_pulled: int
    thrown_positive: int
    thrown_negative: int
    thrown_slope: float
    pulled_slope: float
    beyond: np.ndarray
    below: np.ndarray
    rest_quantiles: np.ndarray
    released_quantiles: np.ndarray
    pulled_curvature: np.ndarray
    factor: float

    def rest_drift(self) -> float:
        """max |log(q(α_last) / q(α_before))| over the two quantiles of the rest: 0 once it no longer depends on α."""
        if len(self.alphas) < 2:
            return float("nan")
        return float(np.abs(np.log(self.rest_quantiles[-1] / self.rest_quantiles[-2])).max())

    def rest_shift(self, i: int = -1) -> np.ndarray:
        """(2,) the rest's median and 90th percentile at ``alphas[i]`` over the released ones."""
        return self.rest_quantiles[i] / self.released_quantiles


def pulled_curvature(model, task, layers: Sequence[str], k: int = 1) -> np.ndarray:
    """eig(Pᵀ H_WW P), P = U_k ⊗ Iₙ per layer: the released curvature along the k·n directions a lock pulls to 0.

    ``H_WW`` is the Hessian of the harmful loss in the layer's weight W (m×n, flattened row by row, so the
    direction u vᵀ is the vector u ⊗ v); U_k its top-k left singular vectors (float64 SVD, as ``specdef``).

    Example:
        >>> from specdef_lite.optim.problems import teacher_student
        >>> toy = teacher_student(seed=0)
        >>> mu = pulled_curvature(toy.released, toy.task, ["4"])   # the read-out row: its whole weight
        >>> mu.shape, f"{abs(mu).max():.3f}"
        ((16,), '1.724')
    """
    out = []
    for name in layers:
        W = dict(model.named_modules())[name].weight.detach().to(torch.float64)  # (m, n)
        U_k = torch.linalg.svd(W, full_matrices=False).U[:, :k].numpy()          # (m, k)
        loss_fn, theta = loss_fn_of(model, task, params=[f"{name}.weight"])
        H = hessian(loss_fn, theta).to(torch.float64).numpy()                   # (m·n, m·n)
        P = np.kron(U_k, np.eye(W.shape[1]))                                     # (m·n, k·n): u ⊗ v
        out.append(np.linalg.eigvalsh(P.T @ H @ P))
    mu = np.concatenate(out)
    return mu[np.argsort(-np.abs(mu))]


def spectrum_families(spectrum: SpectrumSweep, toy, *, factor: float = 10.0) -> SpectrumFamilies:
    """The thrown-out and pulled-in families of ``spectrum`` (sizes, signs, slopes), threshold counts per α, the rest.

    Args:
        spectrum: a ``spectrum_sweep`` of ``toy`` with at least two α (its k and layers are the lock's).
        toy: the ``teacher_student`` problem the sweep was run on (for the layers' shapes and ``pulled_curvature``).
        factor: the thresholds of the per-α counts ``beyond`` / ``below``.

    Example:
        >>> from specdef_lite.optim.problems import teacher_student
        >>> from specdef_lite.curvature.spectrum import spectrum_sweep
        >>> toy = teacher_student(width=8, seed=0)                    # the middle 8×8 layer: m = n = 8
        >>> fam = spectrum_families(spectrum_sweep(toy, [1.0, 1e4, 1e6], probes=1, steps=4), toy)
        >>> (fam.n_thrown, fam.n_pulled), (fam.expected_thrown, fam.expected_pulled), fam.beyond.tolist()
        ((8, 8), (8, 8), [0, 8, 8])
        >>> round(fam.thrown_slope, 1), round(fam.pulled_slope, 1), (fam.thrown_positive, fam.thrown_negative)
        (2.0, -2.0, (3, 5))
    """
    if len(spectrum.alphas) < 2:
        raise ValueError("spectrum_families needs a sweep over at least two α")
    modules = dict(toy.released.named_modules())
    k = spectrum.k
    m = sum(modules[n].out_features for n in spectrum.layers)
    n_in = sum(modules[n].in_features for n in spectrum.layers)
    released = np.abs(spectrum.released)
    a0, a1 = (np.sort(np.abs(lam))[::-1] for lam in spectrum.locked[-2:])   # descending |λ| at the two largest α
    g = spectrum.alphas[-1] / spectrum.alphas[-2]
    ratio = a1 / a0

    def run(mask: np.ndarray) -> int:                                       # length of the leading run of True
        return int(np.argmin(mask)) if not mask.all() else mask.size

    n_out, n_into = run(ratio > g), run(ratio[::-1] < 1 / g)
    top = spectrum.locked[-1][np.argsort(-np.abs(spectrum.locked[-1]))[:n_out]]

    def slope(s0: float, s1: float) -> float:
        return float(np.log(s1 / s0) / np.log(g)) if s0 > 0 and s1 > 0 else float("nan")

    rest_q = []
    for lam in spectrum.locked:
        a = np.sort(np.abs(lam))[::-1]
        rest_q.append(np.quantile(a[n_out:a.size - n_into], [0.5, 0.9]))
    beyond = np.array([(np.abs(lam) > factor * released.max()).sum() for lam in spectrum.locked])
    below = np.array([(np.abs(lam) < released.min() / factor).sum() for lam in spectrum.locked])
    return SpectrumFamilies(spectrum.alphas, n_out, n_into, k * m, k * n_in, int((top > 0).sum()), int((top < 0).sum()),
                            slope(a0[:n_out].sum(), a1[:n_out].sum()),
                            slope(a0[a0.size - n_into], a1[a1.size - n_into]) if n_into else float("nan"),
                            beyond, below, np.array(rest_q), np.quantile(released, [0.5, 0.9]),
                            pulled_curvature(toy.released, toy.task, spectrum.layers, k), float(factor))
