"""η* = argmin_η T_A(τ; η) — the attacker's best response: the fewest steps to reach τ over a bracketed lr range.

An attacker tunes its learning rate, so every "is it slowed?" question of the course compares the
*best response* of the locked model with that of the undefended one (DESIGN.md, "The attacker's best
response is the unit of comparison"). This module holds that one idea, independent of what is being
trained: ``search`` takes a function ``run(lr) -> Outcome`` (one attack at one learning rate) and a
log-spaced grid, and returns every outcome plus the best one.

Why the grid extends by itself: a best learning rate that sits on the edge of the grid is a property
of the grid, not of the attacker (Newton, run at two learning rates only, looked stopped by the lock;
with η scanned it was not). So while the best sits on an edge, ``search`` tries one more
grid step beyond it; the answer is *bracketed* once a slower, never-arriving or diverging learning rate
has been tried on each side of it.

Why a lower bound: a run that never reaches τ within its budget of B steps says only T ≥ B + 1.
``BestResponse.lower_bound`` and ``Slowdown.lower_bound`` carry that, so a plot can draw it as an
arrow and prose can say "at least".
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tqdm.auto import tqdm

__all__ = ["Outcome", "BestResponse", "search", "Slowdown", "slowdown"]


@dataclass(frozen=True)
class Outcome:
    """T(τ; η) for one attack at one learning rate η: steps to reach τ and stay below it, or None.

    Attributes:
        lr: the learning rate η.
        steps: steps to reach τ and stay below it; None if not within the budget (or the run diverged).
        diverged: the run blew up (non-finite or exploding loss).
        result: the Trace / AttackResult behind it (not compared, not printed).
    """
    lr: float
    steps: int | None
    diverged: bool
    result: Any = field(default=None, compare=False, repr=False)

    @property
    def reached(self) -> bool:
        return self.steps is not None


@dataclass(frozen=True)
class BestResponse:
    """min_η T(τ; η) over every learning rate tried, with the whole sweep.

    Attributes:
        label: free text (the optimizer, the model).
        target: τ.
        budget: B, the step budget of every run.
        outcomes: one ``Outcome`` per learning rate tried, ascending lr.
        best: fewest steps (the smaller lr on ties); None if no lr reached τ.
        bracketed: ``best`` has a tried lr on each side that was slower, never reached τ or diverged.

    Example:
        >>> outs = (Outcome(0.1, 30, False), Outcome(0.2, 12, False), Outcome(0.4, None, True))
        >>> br = BestResponse("gd", 1e-3, 50, outs, outs[1], True)
        >>> br.best_lr, br.best_steps, br.lower_bound, br.max_stable_lr, br.shown.lr
        (0.2, 12, 12, 0.2, 0.2)
    """
    label: str
    target: float
    budget: int
    outcomes: tuple[Outcome, ...]
    best: Outcome | None
    bracketed: bool

    @property
    def best_lr(self) -> float | None:
        return None if self.best is None else self.best.lr

    @property
    def best_steps(self) -> int | None:
        return None if self.best is None else self.best.steps

    @property
    def lrs(self) -> np.ndarray:
        """Every learning rate tried, ascending (float64)."""
        return np.array([o.lr for o in self.outcomes], dtype=np.float64)

    @property
    def steps(self) -> tuple[int | None, ...]:
        """T(τ; η) per learning rate tried (None: not reached)."""
        return tuple(o.steps for o in self.outcomes)

    @property
    def diverged(self) -> np.ndarray:
        """Per learning rate tried: did the run diverge (bool array)."""
        return np.array([o.diverged for o in self.outcomes], dtype=bool)

    @property
    def reached(self) -> bool:
        return self.best is not None

    @property
    def lower_bound(self) -> int:
        """best_steps if τ was reached; otherwise B + 1 (the true best response is at least that)."""
        return self.budget + 1 if self.best is None else int(self.best.steps)

    @property
    def max_stable_lr(self) -> float | None:
        """The largest tried η such that it and every smaller tried η did not diverge; None if the smallest did."""
        stable = np.logical_and.accumulate(~self.diverged) if self.outcomes else np.array([], bool)
        return float(self.lrs[np.flatnonzero(stable)[-1]]) if stable.size and stable[0] else None

    @property
    def shown(self) -> Outcome | None:
        """The outcome to draw: the best; if none reached τ, the largest stable lr; else the smallest lr tried."""
        if self.best is not None:
            return self.best
        lr = self.max_stable_lr
        if lr is None:
            return self.outcomes[0] if self.outcomes else None
        return next(o for o in self.outcomes if o.lr == lr)

    def summary(self) -> str:
        """One line for prose: 'η* = 0.2: 12 steps (bracketed)' or 'τ not reached within 50 steps (T ≥ 51)'."""
        name = f"{self.label}: " if self.label else ""
        if self.best is None:
            lo, hi = (self.lrs.min(), self.lrs.max()) if self.outcomes else (math.nan, math.nan)
            return (f"{name}τ not reached within {self.budget} steps at any η in [{lo:.2g}, {hi:.2g}] "
                    f"(T ≥ {self.lower_bound})")
        tag = "bracketed" if self.bracketed else "not bracketed: best at the edge of the range tried"
        return f"{name}η* = {self.best_lr:.3g}: {self.best_steps} steps ({tag})"


def _worse(o: Outcome, best: Outcome) -> bool:
    """o is slower than best, never reached τ, or diverged."""
    return o.diverged or o.steps is None or o.steps > best.steps


def _best(outcomes: Sequence[Outcome]) -> Outcome | None:
    reached = [o for o in outcomes if o.steps is not None and not o.diverged]
    return min(reached, key=lambda o: (o.steps, o.lr)) if reached else None


def _open_sides(outcomes: Sequence[Outcome], best: Outcome) -> tuple[bool, bool]:
    """(below, above): True where no tried lr on that side of best is worse than it."""
    below = not any(_worse(o, best) for o in outcomes if o.lr < best.lr)
    above = not any(_worse(o, best) for o in outcomes if o.lr > best.lr)
    return below, above


def search(run: Callable[[float], Outcome], lrs: Sequence[float], *, budget: int, target: float,
           label: str = "", max_extend: int = 8, progress: bool | None = None,
           closeness: Callable[[Outcome], float] | None = None) -> BestResponse:
    """η* = argmin_η T(τ; η): run every lr of the grid, extending it by one grid step past an edge while the best sits on it.

    Args:
        run: one attack at one learning rate → ``Outcome`` (its ``steps`` must count within ``budget``).
        lrs: a log-spaced grid (any order; duplicates dropped). Its step ratio q = (max/min)^(1/(n−1))
            is the step of every extension (q = 10 for a single lr).
        budget: B, the step budget each ``run`` uses (for ``lower_bound``).
        target: τ (recorded in the result).
        max_extend: at most this many extra lrs per side.
        progress: a ``tqdm.auto`` bar over runs; None → only when a front end is watching.
        closeness: optional score of a run that did not reach τ (smaller = closer, e.g. its final loss):
            it steers the search when nothing reaches τ, so the lower bound is measured where the attacker
            gets closest, not wherever the grid happened to start.

    Extension rules: while the best sits on an edge (no worse lr tried beyond it), try lr·q (or lr/q)
    beyond that edge. If nothing reached τ: extend downward while the smallest lr diverged (a lock needs
    η ~ 1/α); then, with ``closeness``, past whichever edge the closest non-diverged run sits on, and
    without it, upward while the largest lr neither diverged nor reached τ (too slow to arrive).

    Example:
        >>> T = lambda lr: Outcome(lr, None, True) if lr > 1.0 else Outcome(lr, round(10 * abs(math.log10(lr / 0.1))) + 5, False)
        >>> br = search(T, [1e-4, 1e-3], budget=100, target=0.0)
        >>> br.best_lr, br.best_steps, br.bracketed, len(br.outcomes)
        (0.1, 5, True, 5)
    """
    if budget < 0:
        raise ValueError(f"budget must be >= 0, got {budget}")
    grid = sorted({float(lr) for lr in lrs})
    if not grid:
        raise ValueError("lrs is empty")
    if not all(math.isfinite(lr) and lr > 0 for lr in grid):
        raise ValueError(f"learning rates must be finite and > 0, got {grid}")
    q = (grid[-1] / grid[0]) ** (1.0 / (len(grid) - 1)) if len(grid) > 1 else 10.0
    if progress is None:
        from ..common.display import is_live
        progress = is_live()
    bar = tqdm(total=len(grid), disable=not progress, desc=label or "best response", leave=False)
    outcomes: dict[float, Outcome] = {}

    def tried(lr: float) -> Outcome:
        out = run(lr)
        if not isinstance(out, Outcome):
            raise TypeError(f"run(lr) must return an Outcome, got {type(out).__name__}")
        if out.steps is not None and out.steps > budget:
            raise ValueError(f"run({lr:.3g}) reports {out.steps} steps, beyond the budget {budget}")
        outcomes[lr] = out
        bar.update(1)
        return out

    try:
        for lr in grid:
            tried(lr)
        ext = {"below": 0, "above": 0}

        def extend(side: str) -> bool:
            if ext[side] >= max_extend:
                return False
            ext[side] += 1
            edge = min(outcomes) if side == "below" else max(outcomes)
            bar.total += 1
            tried(float(f"{(edge / q if side == 'below' else edge * q):.12g}"))  # 1e-3·10 → 0.01, not 0.010000000000000002
            return True

        while True:
            ordered = [outcomes[lr] for lr in sorted(outcomes)]
            best = _best(ordered)
            if best is not None:
                below, above = _open_sides(ordered, best)
                if not ((below and extend("below")) or (above and extend("above"))):
                    break
            else:
                low, high = ordered[0], ordered[-1]
                if low.diverged and extend("below"):
                    continue
                stable = [o for o in ordered if not o.diverged]
                if closeness is not None and stable:
                    near = min(stable, key=lambda o: (closeness(o), o.lr))
                    side = "below" if near is low else "above" if near is high else None
                    if side is not None and extend(side):
                        continue
                elif closeness is None and not high.diverged and high.steps is None and extend("above"):
                    continue
                break
    finally:
        bar.close()
    ordered = tuple(outcomes[lr] for lr in sorted(outcomes))
    best = _best(ordered)
    bracketed = best is not None and not any(_open_sides(ordered, best))
    return BestResponse(label, float(target), int(budget), ordered, best, bracketed)


@dataclass(frozen=True)
class Slowdown:
    """T_locked(τ; η*_locked) / T_original(τ; η*_original) — each model at its own best learning rate.

    Attributes:
        locked, original: the two best responses.
        ratio: locked steps / original steps (with ``locked.lower_bound`` = B + 1 when it never reached τ).
        lower_bound: True when the locked model never reached τ: the slowdown is larger than ``ratio``.
    """
    locked: BestResponse
    original: BestResponse
    ratio: float
    lower_bound: bool

    def summary(self) -> str:
        """'12.5×' or '≥ 40×' (a lower bound)."""
        return f"{'≥ ' if self.lower_bound else ''}{self.ratio:.3g}×"


def slowdown(locked: BestResponse, original: BestResponse) -> Slowdown:
    """T_locked / T_original at each model's best response; a lower bound when the locked model never reached τ.

    Raises:
        ValueError: if the original never reached τ (no reference), reached it at step 0 (τ is not a
            target), or the two were measured against different targets.

    Example:
        >>> o = BestResponse("orig", 0.1, 100, (Outcome(1.0, 20, False),), Outcome(1.0, 20, False), False)
        >>> l = BestResponse("locked", 0.1, 100, (Outcome(1.0, None, True),), None, False)
        >>> s = slowdown(l, o); s.ratio, s.lower_bound, s.summary()
        (5.05, True, '≥ 5.05×')
    """
    if not math.isclose(locked.target, original.target, rel_tol=1e-9, abs_tol=0.0):
        raise ValueError(f"the two best responses use different targets: {locked.target} vs {original.target}")
    if original.best is None:
        raise ValueError(f"the original model never reached τ = {original.target:.3g} within {original.budget} "
                         "steps: there is no reference to slow down from (raise the budget or widen the lrs)")
    if original.best_steps == 0:
        raise ValueError(f"the original model starts below τ = {original.target:.3g}: choose a lower target")
    return Slowdown(locked, original, locked.lower_bound / original.best_steps, locked.best is None)
