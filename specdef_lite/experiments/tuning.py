"""η* = argmin_η T_A(τ; η) on the toy path: ``best_response`` searches learning rates over ``training.train``.

``search`` (``best_response.py``) knows nothing about models; this module plugs the course's own
training loop into it. Each learning rate trains a deep copy of the model with ``train(…,
stop_at_target=True)``: a run stops once its loss has stayed ≤ τ for ``window`` steps, so a fast run
costs about T + window steps and only runs that never arrive pay the whole budget. A run reaches τ
only if it *stays* below it (``Trace.steps_to``), and divergence is data (``Trace.diverged``).

``lr_grid`` is the attacker's log grid (round values 10^(j/per_decade)), and ``around`` builds a short
grid about a guess — the search then extends it by itself as far as the best needs.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import numpy as np
from torch import nn

from ..optim.training import Trace, train
from .best_response import BestResponse, Outcome, search

__all__ = ["best_response", "outcome", "closest", "lr_grid", "spanning", "around", "anchor", "tracking_grid", "LABELS"]

# the optimizer names of ``make_optimizer`` as the course shows them
LABELS = {"sgd": "GD", "adam": "Adam", "newton": "Newton", "sophia": "Sophia", "muon": "Muon"}


def outcome(trace: Trace, lr: float, target: float) -> Outcome:
    """T(τ; η) of one run: steps to reach τ and stay below it (None if never), diverged, and the trace."""
    return Outcome(float(lr), trace.steps_to(target), trace.diverged, trace)


def best_response(model: nn.Module, task, optimizer: str, *, lrs: Sequence[float], steps: int, target: float,
                  window: int = 10, explode: float = 1e3, max_extend: int = 8, label: str = "",
                  progress: bool | None = None, **optimizer_kw) -> BestResponse:
    """min_η T_A(τ; η) for ``optimizer`` on ``model``: every lr of ``lrs`` (extended past an edge while the best sits on it).

    Args:
        model: not modified (every lr trains its own deep copy).
        task: anything with ``task.loss(model)`` (see ``specdef_lite.optim.problems``).
        optimizer: a ``make_optimizer`` name; ``**optimizer_kw`` go to it (e.g. Newton's ``damping``).
        lrs: a log-spaced starting grid; its step ratio is the step of every extension.
        steps: the budget B of every run; target: τ.
        window: a run stops after staying ≤ τ for this many steps.
        max_extend: at most this many extra learning rates per side (see ``search``).

    Returns:
        A ``BestResponse``; each ``Outcome.result`` is the run's ``Trace``.

    Example:
        >>> from specdef_lite.optim.problems import quadratic
        >>> model, task = quadratic([1.0, 10.0], seed=0)
        >>> br = best_response(model, task, "sgd", lrs=[0.01, 0.02], steps=200, target=1e-6)
        >>> br.best_lr, br.best_steps, br.bracketed  # η* ≈ 2/(1 + κ) = 0.18, found from a grid far below it
        (0.16, 38, True)
    """
    name = label or LABELS.get(optimizer, optimizer)

    def run(lr: float) -> Outcome:
        tr = train(copy.deepcopy(model), task, optimizer, steps, target, lr=lr, optimizer_kw=optimizer_kw,
                   explode=explode, stop_at_target=True, window=window, label=f"{name} lr={lr:.3g}")
        return outcome(tr, lr, target)

    return search(run, lrs, budget=steps, target=target, label=name, max_extend=max_extend, progress=progress,
                  closeness=_final_loss)


def _final_loss(o: Outcome) -> float:
    """How close a run that never reached τ came: its last loss (NaN counts as farthest)."""
    final = o.result.final
    return final if math.isfinite(final) else math.inf


def closest(response: BestResponse) -> Outcome | None:
    """The best outcome if τ was reached; otherwise the non-diverged run whose loss ended lowest (None if all diverged)."""
    if response.best is not None:
        return response.best
    stable = [o for o in response.outcomes if not o.diverged]
    return min(stable, key=lambda o: (_final_loss(o), o.lr)) if stable else None


def lr_grid(lo: float, hi: float, per_decade: int = 2) -> np.ndarray:
    """η grid from hi down to lo (descending): the round values 10^(j/per_decade) in [lo, hi].

    Example:
        >>> [float(f"{v:.3g}") for v in lr_grid(0.01, 1.0, 2)]
        [1.0, 0.316, 0.1, 0.0316, 0.01]
    """
    if not 0 < lo <= hi:
        raise ValueError(f"need 0 < lo <= hi, got lo={lo}, hi={hi}")
    j_hi = math.floor(math.log10(hi) * per_decade + 1e-9)
    j_lo = math.ceil(math.log10(lo) * per_decade - 1e-9)
    if j_lo > j_hi:
        raise ValueError(f"no 10^(j/{per_decade}) lies in [{lo}, {hi}]")
    return 10.0 ** (np.arange(j_hi, j_lo - 1, -1) / per_decade)


def spanning(lrs: Sequence[float], per_decade: int = 2) -> np.ndarray:
    """The round values 10^(j/per_decade) from the largest at or below min(lrs) to the smallest at or above max(lrs),
    ascending: any starting grid at the resolution every search of a comparison shares.

    Example:
        >>> [float(f"{v:.3g}") for v in spanning([0.02, 0.5])]
        [0.01, 0.0316, 0.1, 0.316, 1.0]
    """
    lo, hi = float(min(lrs)), float(max(lrs))
    if not 0 < lo <= hi:
        raise ValueError(f"learning rates must be > 0, got {list(lrs)}")
    j = np.arange(math.floor(math.log10(lo) * per_decade + 1e-9), math.ceil(math.log10(hi) * per_decade - 1e-9) + 1)
    return np.array([float(f"{10.0 ** (i / per_decade):.12g}") for i in j])


def around(lr: float, *, below: int = 1, above: int = 1, per_decade: int = 2) -> np.ndarray:
    """lr·q^j for j = −below … above, q = 10^(1/per_decade), ascending: a short grid about a guess.

    Example:
        >>> [float(f"{v:.3g}") for v in around(1e-3, below=2, above=1)]
        [0.0001, 0.000316, 0.001, 0.00316]
    """
    if not (lr > 0 and math.isfinite(lr)):
        raise ValueError(f"lr must be a positive finite number, got {lr}")
    j = np.arange(-int(below), int(above) + 1)
    return np.array([float(f"{lr * 10.0 ** (i / per_decade):.12g}") for i in j])


def anchor(response: BestResponse) -> float:
    """Where the next search starts from: the best η, else the η whose run ended lowest (if the runs are
    ``Trace``s), else the largest stable η, else the smallest η tried."""
    near = closest(response) if all(hasattr(o.result, "final") for o in response.outcomes) else None
    return next((float(lr) for lr in (response.best_lr, near and near.lr, response.max_stable_lr) if lr is not None),
                float(response.lrs.min()))


def tracking_grid(previous: BestResponse, growth: float, *, per_decade: int = 2,
                  slope: float | None = None) -> np.ndarray:
    """A short grid for a lock ``growth`` times stronger than the one ``previous`` answered.

    Without ``slope`` it starts at ``anchor(previous)``, reaches down by growth² — the steepest law a lock
    imposes, η_max ∝ 1/α² — and one grid step up. With ``slope`` (d log η*/d log α seen so far, clipped to
    [−2, 0]) it is three points about the η that slope predicts. Either way ``search`` extends it while the
    best lands on an edge, so a wrong guess costs runs, not correctness.

    Example:
        >>> from specdef_lite.experiments.best_response import BestResponse, Outcome
        >>> prev = BestResponse("GD", 0.1, 50, (Outcome(0.01, 20, False),), Outcome(0.01, 20, False), False)
        >>> [float(f"{v:.3g}") for v in tracking_grid(prev, 10 ** 0.5)]
        [0.001, 0.00316, 0.01, 0.0316]
        >>> [float(f"{v:.3g}") for v in tracking_grid(prev, 10, slope=-1.0)]
        [0.000316, 0.001, 0.00316]
    """
    center = anchor(previous)
    if slope is not None and math.isfinite(slope):
        guess = center * float(growth) ** min(0.0, max(-2.0, float(slope)))
        return around(guess, below=1, above=1, per_decade=per_decade)
    down = max(1, math.ceil(2 * math.log10(max(float(growth), 1.0)) * per_decade - 1e-9))
    return around(center, below=down, above=1, per_decade=per_decade)
