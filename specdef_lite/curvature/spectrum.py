"""The whole Hessian spectrum before and after the lock: which eigenvalues SpecDef throws out by ~α², and the bulk.

For the released model and for the model locked
at each α of a grid it measures the spectrum of ∇²ℒ (the attacker's loss, all released parameters) two
ways: by stochastic Lanczos quadrature (``spectral_density``: products only, what one would run on a real
model) and, the toy being small, by a dense ``eigvalsh`` as the reference the SLQ moments are checked against.

Why a family of k·m outliers: in a locked layer z = C u + b with u = W̃h, the C–C block of the Hessian is
(1/N) Σ (u uᵀ) ⊗ ∂²ℒₙ/∂z², and u is α times longer along the k directions U_k; so k·m eigenvalues (m = rows
of C) grow like α², while the curvature of every other direction is that of the released model.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .products import hessian, loss_fn_of
from ..lock.deform import specdef
from .density import SpectralDensity, spectral_density

__all__ = ["SpectrumSweep", "spectrum_sweep"]


@dataclass(frozen=True)
class SpectrumSweep:
    """Spectra of ∇²ℒ for the released model and the model locked at each α (float64 numpy, ascending).

    Attributes:
        alphas: (A,) the grid; k, layers: what was locked; rows: Σ rows of C over the locked layers (m).
        released: dense eigenvalues of the released model's Hessian, (n₀,).
        locked: dense eigenvalues of each locked model's Hessian, (A, n) (C adds parameters: n > n₀).
        released_slq, locked_slq: the same spectra by stochastic Lanczos quadrature.
    """
    alphas: np.ndarray
    k: int
    layers: tuple[str, ...]
    rows: int
    released: np.ndarray
    locked: np.ndarray
    released_slq: SpectralDensity
    locked_slq: tuple[SpectralDensity, ...]

    @property
    def edge(self) -> float:
        """max |λ| of the released Hessian: the edge of the spectrum before the lock."""
        return float(np.abs(self.released).max())

    def outliers(self, i: int, factor: float = 10.0) -> np.ndarray:
        """Eigenvalues of the model locked at ``alphas[i]`` with |λ| > factor × the released edge."""
        lam = self.locked[i]
        return lam[np.abs(lam) > factor * self.edge]

    def bulk(self, i: int, factor: float = 10.0) -> np.ndarray:
        """The other eigenvalues of the model locked at ``alphas[i]``."""
        lam = self.locked[i]
        return lam[np.abs(lam) <= factor * self.edge]

    def growth(self, count: int) -> np.ndarray:
        """d log|λ| / d log α between the two largest α for the ``count`` largest |λ| (2 = ∝ α²)."""
        a0, a1 = self.alphas[-2:]
        top = [np.sort(np.abs(lam))[::-1][:count] for lam in self.locked[-2:]]
        return np.log(top[1] / top[0]) / np.log(a1 / a0)

    def slq_outlier_count(self, i: int, factor: float = 10.0) -> float:
        """SLQ's estimate of ``len(outliers(i))``: n × the quadrature weight beyond factor × the released edge."""
        d = self.locked_slq[i]
        beyond = d.nodes.abs() > factor * self.edge
        return float(d.n * (d.weights * beyond).sum() / d.nodes.shape[0])

    def slq_moment_error(self, i: int, p: int = 2) -> float:
        """SLQ's p-th moment over the dense (1/n)Σλᵖ, minus 1, for the model locked at ``alphas[i]``."""
        return self.locked_slq[i].moment(p)[0] / float(np.mean(self.locked[i] ** p)) - 1.0


def spectrum_sweep(toy, alphas: Sequence[float], *, k: int = 1, layers: Sequence[str] | str = "2", probes: int = 8,
                   steps: int = 48, seed: int = 0) -> SpectrumSweep:
    """Spectra of the harmful-task Hessian, released and locked at each α (``toy``: ``problems.teacher_student``).

    Args:
        alphas: the α grid (each > 0); k, layers: passed to ``specdef`` (``layers`` a name or names).
        probes, steps, seed: stochastic Lanczos quadrature (``spectral_density``), the same seed at every α.

    Example:
        >>> from specdef_lite.optim.problems import teacher_student
        >>> s = spectrum_sweep(teacher_student(seed=0), [1e3, 1e4], probes=2, steps=8)
        >>> len(s.outliers(1)), s.rows, [round(float(g), 3) for g in s.growth(2)]  # k·m = 1·16 eigenvalues ∝ α²
        (16, 16, [2.0, 2.0])
    """
    layers = (layers,) if isinstance(layers, str) else tuple(layers)
    alphas = np.asarray(alphas, dtype=np.float64)
    if alphas.ndim != 1 or alphas.size == 0 or not np.all(np.isfinite(alphas) & (alphas > 0)):
        raise ValueError(f"alphas must be a non-empty list of positive finite numbers, got {alphas!r}")

    def measure(model):
        loss_fn, theta = loss_fn_of(model, toy.task)
        lam = np.linalg.eigvalsh(hessian(loss_fn, theta).to(torch.float64).numpy())
        return lam, spectral_density(loss_fn, theta, probes=probes, steps=steps, seed=seed)

    released, released_slq = measure(toy.released)
    locked, locked_slq = zip(*(measure(specdef(toy.released, float(a), k=k, targets=list(layers))) for a in alphas))
    modules = dict(toy.released.named_modules())
    rows = sum(modules[name].out_features for name in layers)
    return SpectrumSweep(alphas, k, layers, rows, released, np.stack(locked), released_slq, tuple(locked_slq))
