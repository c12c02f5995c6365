"""T_A(τ; η*_A(α)) for every optimizer A and lock strength α, against the undefended model's best.

For each optimizer the undefended (released) model gets its best response first; then the model is
locked at every α of a grid and the optimizer gets its best response again. The slowdown at α is
locked best over undefended best, each at its own best learning rate (``slowdown``); a lock the
attacker never gets past within the budget gives a lower bound.

Why a tracking grid: a lock at α = 10⁶ pushes GD's stable η down to ~10⁻¹³, so a full grid at every α
would cost dozens of runs. The first α starts from a short grid about the undefended best η, reaching down
as far as the steepest law a lock could impose (η ∝ 1/α², σ₁(∇²ℒ) ∝ α²) and one step up; later α start
from three points about the η that the trend of the last two answers predicts. ``search`` then extends
each grid by itself while the best sits on an edge, so the answer is still a bracketed optimum (or says
it is not), never an assumption about the law.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from ..lock.deform import specdef
from ..optim.training import Trace, train
from .best_response import BestResponse, Slowdown, slowdown
from .first_look import top_curvature
from .grid import nearest
from .tuning import LABELS, anchor, best_response, spanning, tracking_grid

__all__ = ["RaceTable", "race_table"]


@dataclass(frozen=True)
class RaceTable:
    """Best responses per (optimizer, α) and of the undefended model: the attacker tuned against every lock.

    Attributes:
        alphas: (A,) the lock strengths, ascending.
        responses: optimizer → A ``BestResponse``s on the locked model, in the order of ``alphas``.
        reference: optimizer → its ``BestResponse`` on the undefended (released) model.
        steps: optimizer → the step budget B each run had.
        target: τ; loss0: the harmful loss of the released model (the same at every α: the lock
            preserves the function).
        released, task, k, targets, optimizer_kw: what is needed to rerun any (α, optimizer, η).
    """
    alphas: np.ndarray
    responses: dict[str, tuple[BestResponse, ...]]
    reference: dict[str, BestResponse]
    steps: dict[str, int]
    target: float
    loss0: float
    released: object = field(default=None, compare=False, repr=False)
    task: object = field(default=None, compare=False, repr=False)
    k: int = 1
    targets: object = None
    optimizer_kw: dict = field(default_factory=dict)

    @property
    def optimizers(self) -> list[str]:
        return list(self.responses)

    @property
    def sweeps(self) -> dict[str, tuple[BestResponse, ...]]:
        """The learning rates tried per (optimizer, α) — the same objects as ``responses``."""
        return self.responses

    def _per_alpha(self, optimizer: str, f) -> np.ndarray:
        return np.array([f(br) for br in self.responses[optimizer]], dtype=float)

    def best_steps(self, optimizer: str) -> np.ndarray:
        """(A,) T(τ) at the best η, NaN where no η reached τ within the budget."""
        return self._per_alpha(optimizer, lambda b: np.nan if b.best_steps is None else b.best_steps)

    def lower_bound(self, optimizer: str) -> np.ndarray:
        """(A,) T(τ) at the best η, or B + 1 where τ was never reached (the true value is at least that)."""
        return self._per_alpha(optimizer, lambda b: b.lower_bound)

    def reached(self, optimizer: str) -> np.ndarray:
        return np.array([b.reached for b in self.responses[optimizer]], dtype=bool)

    def bracketed(self, optimizer: str) -> np.ndarray:
        return np.array([b.bracketed for b in self.responses[optimizer]], dtype=bool)

    def best_lr(self, optimizer: str) -> np.ndarray:
        """(A,) the η with the fewest steps to τ, NaN where none reached it."""
        return self._per_alpha(optimizer, lambda b: np.nan if b.best_lr is None else b.best_lr)

    def max_stable_lr(self, optimizer: str) -> np.ndarray:
        """(A,) the largest η tried that (with every smaller η tried) did not diverge; NaN if none."""
        return self._per_alpha(optimizer, lambda b: np.nan if b.max_stable_lr is None else b.max_stable_lr)

    def slowdowns(self, optimizer: str) -> tuple[Slowdown, ...]:
        """Per α: T_locked(τ; η*) / T_undefended(τ; η*), each at its own best η (a lower bound if never reached)."""
        return tuple(slowdown(br, self.reference[optimizer]) for br in self.responses[optimizer])

    def slowdown_ratio(self, optimizer: str) -> np.ndarray:
        """(A,) the slowdown ratios (lower bounds where ``slowdown_is_bound``)."""
        return np.array([s.ratio for s in self.slowdowns(optimizer)])

    def slowdown_is_bound(self, optimizer: str) -> np.ndarray:
        """(A,) True where the locked model never reached τ: the slowdown is larger than the ratio."""
        return np.array([s.lower_bound for s in self.slowdowns(optimizer)], dtype=bool)

    def index(self, alpha: float) -> int:
        return nearest(self.alphas, alpha)

    def trace(self, optimizer: str, alpha: float, lr: float | None = None) -> Trace:
        """The run of ``optimizer`` at (the grid α nearest) ``alpha`` with η = ``lr`` (default: its best η;
        failing that, its largest stable η). Looked up in the table, or trained now if that η was not tried."""
        br = self.responses[optimizer][self.index(alpha)]
        if lr is None:
            lr = br.best_lr if br.best_lr is not None else br.max_stable_lr
            if lr is None:
                return br.outcomes[0].result
        hit = np.flatnonzero(np.isclose(br.lrs, lr, rtol=1e-6, atol=0))
        if hit.size:
            return br.outcomes[int(hit[0])].result
        return train(self.locked(alpha), self.task, optimizer, self.steps[optimizer], self.target, lr=float(lr),
                     optimizer_kw=self.optimizer_kw.get(optimizer, {}), stop_at_target=True,
                     label=f"{LABELS.get(optimizer, optimizer)} lr={lr:.2g}")

    def lam_max(self) -> np.ndarray:
        """(A,) λ_max(∇²ℒ) — the largest eigenvalue, by Lanczos — at the released weights of each locked model.

        2/λ_max is gradient descent's *local* stability limit: exact on the quadratic that matches the loss at
        the start. On the real, non-quadratic loss the curvature changes along the path, so the
        measured ``max_stable_lr`` may sit above it; ``max_stable_lr(o) · lam_max() / 2`` says by how much.
        """
        return np.array([top_curvature(self.locked(a), self.task) for a in self.alphas])

    def locked(self, alpha: float):
        """A fresh copy of the released model locked at the grid α nearest ``alpha``."""
        return specdef(self.released, float(self.alphas[self.index(alpha)]), k=self.k, targets=self.targets)


def _next_grid(history: list[tuple[float, BestResponse]], alpha: float, per_decade: int) -> np.ndarray:
    """``tracking_grid`` from the last answer, with the slope of the last two locked answers once there are two."""
    a_prev, br_prev = history[-1]
    slope = None
    if len(history) >= 3 and history[-2][0] < a_prev:
        a0, br0 = history[-2]
        slope = math.log(anchor(br_prev) / anchor(br0)) / math.log(a_prev / a0)
    return tracking_grid(br_prev, alpha / a_prev, per_decade=per_decade, slope=slope)


def race_table(problem, alphas: Sequence[float], lrs: Mapping[str, Sequence[float]], steps: int | Mapping[str, int], *,
               k: int = 1, targets=None, optimizer_kw: Mapping[str, dict] | None = None, per_decade: int = 2,
               max_extend: int = 8, progress: bool = False) -> RaceTable:
    """η*_A(α) and T_A(τ; η*) for every optimizer A and every α, and A's best response on the undefended model.

    Args:
        problem: a ``ToyProblem`` (``released``, ``task``, ``target``), e.g. ``teacher_student()``.
        alphas: lock strengths (a log grid: the explorer's α slider steps through it).
        lrs: optimizer name → the η range where its search on the undefended model starts, e.g.
            ``{"sgd": [0.1, 1.0], "newton": [0.03, 0.3]}``; it is sampled at ``per_decade`` points a decade
            (``spanning``) so that every search of the table has the same resolution, and extended as needed.
        steps: the step budget B, one for all or per optimizer (Newton steps cost a dense Hessian each).
        k, targets: passed to ``specdef``; optimizer_kw: per-optimizer options (e.g. Newton's damping).
        per_decade: points per decade of every tracking grid (its step is the search's extension step).
        max_extend: see ``search``. progress: a ``tqdm.auto`` bar over (α, optimizer).

    Raises:
        ValueError: if an optimizer's undefended model never reaches τ (no reference to slow down from).

    Example:
        >>> from specdef_lite.optim.problems import teacher_student
        >>> p = teacher_student(width=4, n=16, seed=0)
        >>> tab = race_table(p, [10.0, 100.0], {"sgd": [0.1, 1.0]}, steps=60)
        >>> [f"{v:.2g}" for v in tab.max_stable_lr("sgd")]  # α ×10 → η_max ×1/100
        ['0.032', '0.00032']
        >>> [s.summary() for s in tab.slowdowns("sgd")]
        ['7.33×', '12×']
    """
    alphas = np.sort(np.asarray(list(alphas), dtype=float))
    budget = {o: int(steps if isinstance(steps, (int, np.integer)) else steps[o]) for o in lrs}
    kw = {o: dict((optimizer_kw or {}).get(o, {})) for o in lrs}
    task, target = problem.task, problem.target
    bar = tqdm(total=(len(alphas) + 1) * len(lrs), disable=not progress, desc="race", leave=False)

    def respond(model, o, grid):
        br = best_response(model, task, o, lrs=grid, steps=budget[o], target=target, max_extend=max_extend,
                           progress=False, **kw[o])
        bar.update(1)
        return br

    try:
        reference = {}
        for o, grid in lrs.items():
            reference[o] = respond(problem.released, o, spanning(grid, per_decade))
            if not reference[o].reached:
                raise ValueError(f"the undefended model never reaches τ = {target:.3g} with {LABELS.get(o, o)} "
                                 f"within {budget[o]} steps ({reference[o].summary()}): raise its steps or widen lrs")
        responses: dict[str, list[BestResponse]] = {o: [] for o in lrs}
        previous = {o: [(1.0, reference[o])] for o in lrs}  # (α, best response) so far, per optimizer
        for a in alphas:
            locked = specdef(problem.released, float(a), k=k, targets=targets)
            for o in lrs:
                bar.set_postfix_str(f"α={a:.0e} {LABELS.get(o, o)}", refresh=False)
                br = respond(locked, o, _next_grid(previous[o], float(a), per_decade))
                responses[o].append(br)
                previous[o].append((float(a), br))
    finally:
        bar.close()
    return RaceTable(alphas, {o: tuple(v) for o, v in responses.items()}, reference, budget, float(target),
                     float(task.value(problem.released)), problem.released, task, k, targets, kw)
