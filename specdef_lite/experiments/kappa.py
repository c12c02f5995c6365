"""T(τ) against κ on ℒ(θ) = ½(θ − θ*)ᵀA(θ − θ*), λ(A) = {1, κ}: GD at 1/λ_max and at its best η, Newton, Adam.

PAPER.md, "Why curvature sets the speed". In A's eigenbasis GD multiplies
each coordinate by 1 − ηλᵢ per step, so it is stable iff η < 2/λ_max, and at η = 1/λ_max the flat
direction shrinks by 1 − 1/κ per step: T(τ) ≈ (κ/2)·ln(ℒ_flat/τ), linear in κ. The attacker is not bound
to 1/λ_max: its best response (``best_response``) is near 2/(λ_min + λ_max), where both directions shrink
by (κ − 1)/(κ + 1) — still linear in κ. Newton at η = 1 lands in one step whatever κ (no step count can be
lower, so η = 1 is its best response). Adam gets its best response over a learning-rate range.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from ..optim.problems import quadratic
from .best_response import BestResponse
from .slope import loglog_slope
from .sweep import race
from .tuning import around, best_response

__all__ = ["gd_rate", "KappaSweep", "steps_vs_kappa", "gd_theory_steps", "best_fixed_step_steps"]


def gd_rate(lr: float | np.ndarray, kappa: float) -> np.ndarray:
    """ρ(η) = max(|1 − η·1|, |1 − η·κ|): GD's contraction per step on a quadratic with λ ∈ {1, κ}; < 1 iff η < 2/κ.

    Example:
        >>> [round(float(r), 3) for r in gd_rate(np.array([0.1, 0.19, 0.21]), 10.0)]
        [0.9, 0.9, 1.1]
    """
    lr = np.asarray(lr, dtype=float)
    return np.maximum(np.abs(1.0 - lr), np.abs(1.0 - lr * kappa))


def gd_theory_steps(kappa: float, tau: float, seed: int, max_steps: int, rotate: bool = True,
                    lr: float | None = None) -> float:
    """First t with ½ Σᵢ λᵢ cᵢ² (1 − ηλᵢ)^{2t} ≤ τ (c = Qᵀ(θ₀ − θ*), η = 1/λ_max by default); NaN past max_steps.

    Example:
        >>> gd_theory_steps(10.0, 1e-8, 0, 2000)
        84.0
    """
    model, task = quadratic([1.0, float(kappa)], seed=seed, rotate=rotate)
    lam, Q = np.linalg.eigh(task.A.numpy())
    c = Q.T @ (model.theta.detach().numpy() - task.theta_star.numpy())
    eta = 1.0 / float(kappa) if lr is None else float(lr)
    t = np.arange(max_steps + 1)[:, None]
    loss = 0.5 * (lam * c ** 2 * (1.0 - eta * lam) ** (2 * t)).sum(axis=1)  # (max_steps + 1,)
    hit = np.flatnonzero(loss <= tau)
    return float(hit[0]) if hit.size else float("nan")


@dataclass(frozen=True)
class KappaSweep:
    """Steps to reach ℒ ≤ τ on the quadratic λ(A) = {1, κ}, per optimizer, against κ.

    Attributes:
        kappas: (n,) condition numbers; tau: the target loss τ (absolute, the attacker's threshold).
        steps: label → (n,) float array, steps to τ (NaN where not reached within ``max_steps``). Labels:
            "GD" (η = 1/λ_max), "GD best" (its best response), "Newton" (η = 1), "Adam" (its best response).
        lrs: label → (n,) the learning rate used (for a best response: the best η, NaN if none reached τ).
        theory: (n,) GD at η = 1/λ_max from the closed form ℒ_t = ½ Σᵢ λᵢ cᵢ² (1 − ηλᵢ)^{2t}.
        responses: label → n ``BestResponse``s, for the labels that were searched.
        max_steps: the budget of every run; rotate, seed: the quadratic (see ``problems.quadratic``).
    """
    kappas: np.ndarray
    tau: float
    steps: dict[str, np.ndarray]
    lrs: dict[str, np.ndarray]
    theory: np.ndarray
    max_steps: int
    responses: dict[str, tuple[BestResponse, ...]] = field(default_factory=dict)
    rotate: bool = True
    seed: int = 0

    def slope(self, label: str = "GD", kappa_min: float = 0.0) -> float:
        """d log(steps) / d log κ, a least-squares fit over κ ≥ ``kappa_min`` (1 = linear in κ)."""
        return loglog_slope(self.kappas, self.steps[label], x_min=kappa_min)

    def figure(self):
        """Log-log steps to τ against κ (``plots.kappa_figure``)."""
        from .plots import kappa_figure
        return kappa_figure(self)


def steps_vs_kappa(kappas: Sequence[float], *, tau: float = 1e-8, max_steps: int = 20000, seed: int = 0,
                   adam_lrs: Sequence[float] | None = (0.03, 0.1, 0.3, 1.0), newton: bool = True,
                   gd_best: bool = True, adam_max_steps: int | None = None, rotate: bool = True,
                   progress: bool = False) -> KappaSweep:
    """T(τ) = min{t : ℒ(θ_s) ≤ τ for all s ≥ t} against κ: GD at η = 1/λ_max and at its best η, Newton at η = 1, Adam at its best η.

    Each run is the library's ``train`` on ``problems.quadratic([1, κ], seed=seed)``, stopped 10 steps after
    it reaches τ. Best responses start from a short grid (GD: 1/κ and 10^(1/8)/κ, Adam: ``adam_lrs``) that
    ``best_response`` extends until the best is bracketed.

    Args:
        kappas: condition numbers (≥ 1); tau: the absolute target loss τ.
        max_steps: step budget per run; adam_max_steps: Adam's (default ``max_steps``).
        adam_lrs: Adam's starting learning-rate grid (None: skip Adam); newton: include Newton;
            gd_best: include GD's best response.
        rotate: False puts A's eigenvectors on the coordinate axes (Adam's per-coordinate scaling then
            matches the curvature directions; with the default rotation it does not).

    Example:
        >>> sw = steps_vs_kappa([10, 100], tau=1e-8, max_steps=2000, adam_lrs=None)
        >>> sw.steps["GD"].tolist(), sw.theory.tolist(), sw.steps["Newton"].tolist()
        ([84.0, 879.0], [84.0, 879.0], [1.0, 1.0])
        >>> sw.steps["GD best"].tolist(), round(sw.slope("GD best"), 2)
        ([47.0, 493.0], 1.02)
    """
    kappas = np.asarray(sorted(float(k) for k in kappas))
    if kappas.size == 0 or (kappas < 1).any():
        raise ValueError(f"kappas must be a non-empty list of numbers >= 1, got {kappas.tolist()}")
    labels = ["GD"] + (["GD best"] if gd_best else []) + (["Newton"] if newton else []) + (["Adam"] if adam_lrs else [])
    steps = {lab: np.full(kappas.size, np.nan) for lab in labels}
    lrs = {lab: np.full(kappas.size, np.nan) for lab in labels}
    responses: dict[str, list[BestResponse]] = {lab: [] for lab in labels if lab in ("GD best", "Adam")}
    theory = np.array([gd_theory_steps(k, tau, seed, max_steps, rotate) for k in kappas])
    for i, kappa in enumerate(tqdm(kappas, disable=not progress, desc="κ", leave=False)):
        model, task = quadratic([1.0, kappa], seed=seed, rotate=rotate)
        specs = {"GD": ("sgd", 1.0 / kappa)}
        if newton:
            specs["Newton"] = {"name": "newton", "lr": 1.0, "damping": 0.0}
        for lab, tr in race(model, task, specs, max_steps, tau, stop_at_target=True).items():
            s = tr.steps_to(tau)
            steps[lab][i] = np.nan if s is None else s
            lrs[lab][i] = 1.0 / kappa if lab == "GD" else 1.0
        searched = {}
        if gd_best:
            searched["GD best"] = best_response(model, task, "sgd", lrs=around(1.0 / kappa, below=0, above=1,
                                                                                per_decade=8),
                                                steps=max_steps, target=tau, label="GD")
        if adam_lrs:
            searched["Adam"] = best_response(model, task, "adam", lrs=list(adam_lrs),
                                             steps=adam_max_steps or max_steps, target=tau)
        for lab, br in searched.items():
            responses[lab].append(br)
            steps[lab][i] = np.nan if br.best_steps is None else br.best_steps
            lrs[lab][i] = np.nan if br.best_lr is None else br.best_lr
    return KappaSweep(kappas, float(tau), steps, lrs, theory, int(max_steps),
                      {lab: tuple(v) for lab, v in responses.items()}, rotate, seed)


def best_fixed_step_steps(kappa: float, eps: float) -> int:
    """⌈log ε / log((κ − 1)/(κ + 1))⌉: GD steps at η = 2/(1 + κ) for ‖θ − θ*‖ to shrink by ε (κ > 1).

    Example:
        >>> best_fixed_step_steps(10.0, 1e-4)
        46
    """
    if not kappa > 1:
        raise ValueError(f"kappa must be > 1, got {kappa}")
    return math.ceil(math.log(eps) / math.log((kappa - 1) / (kappa + 1)))
