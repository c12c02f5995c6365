"""T_A(τ; η*) with the locked model stored and trained in float32 or bfloat16 — does the attack really stall?

``precision.vanishing_table`` predicts from *one* step whether fl(w + Δ) = w; this experiment runs the whole
attack. The locked model and the task are cast to ``dtype`` (weights, activations, gradients and the
optimizer's update all live there, as when fine-tuning a checkpoint stored in that format), and the attacker
gets its best response *in that format* — it tunes η for the arithmetic it actually has. Alongside, the run
at the best η (else the lowest run that did not diverge) is repeated once to count how many weight entries
changed at all.
"""
from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..deform import specdef
from ..precision import as_dtype, task_in
from ..training import Trace, train
from .best_response import BestResponse
from .tuning import LABELS, best_response, closest

__all__ = ["PrecisionRun", "precision_attack", "share_of_way"]


@dataclass(frozen=True)
class PrecisionRun:
    """One attack on the locked toy in one storage format, at the attacker's best response in that format.

    Attributes:
        alpha, optimizer, dtype: the lock strength, the optimizer name and the format ("float32", …).
        response: the best response (every lr tried, each run's ``Trace`` in its ``Outcome.result``).
        shown: the run at the best η; if none reached τ, the run that got lowest without diverging (the
            attacker's best effort within the budget); None if every η diverged.
        moved: share of trainable entries whose stored value changed during ``shown`` (0 = training stalled
            completely: every update rounded away).
        loss0: ℒ of the locked model evaluated in ``dtype`` before training (the lock's own rounding shows here).
    """
    alpha: float
    optimizer: str
    dtype: str
    response: BestResponse
    shown: Trace | None
    moved: float
    loss0: float

    @property
    def progress(self) -> float:
        """1 − ℒ_final/ℒ₀ of the shown run (0: no progress at all; NaN if nothing was shown or it diverged)."""
        if self.shown is None or self.shown.diverged or self.loss0 == 0:
            return float("nan")
        return 1.0 - self.shown.final / self.loss0


def precision_attack(problem, alpha: float, optimizer: str, dtype: str, *, lrs: Sequence[float], steps: int,
                     k: int = 1, targets=None, max_extend: int = 8, **optimizer_kw) -> PrecisionRun:
    """Best response of ``optimizer`` on ``specdef(released, α)`` stored and trained in ``dtype``, and its weight movement.

    Args:
        problem: a ``ToyProblem`` (``released``, ``task``, ``target``; τ is kept as it is).
        alpha, k, targets: the lock (built in float64, then cast to ``dtype``).
        optimizer: a ``make_optimizer`` name; ``**optimizer_kw`` its options.
        dtype: "float64", "float32", "bfloat16" or "float16".
        lrs, steps, max_extend: as in ``best_response``.

    Example:
        >>> from specdef_lite.problems import teacher_student
        >>> p = teacher_student(width=4, n=16, seed=0)
        >>> r = precision_attack(p, 1e4, "sgd", "bfloat16", lrs=[1e-9, 1e-8], steps=30)
        >>> r.response.reached, f"{r.moved:.3f}", r.loss0 > 2 * p.task.value(p.released)  # bf16 breaks the lock itself
        (False, '0.011', True)
    """
    dt = as_dtype(dtype)
    locked = specdef(problem.released, float(alpha), k=k, targets=targets).to(dt)
    task = task_in(problem.task, dt)
    label = f"{LABELS.get(optimizer, optimizer)}, {dtype}, α = {alpha:.0e}"
    br = best_response(locked, task, optimizer, lrs=lrs, steps=steps, target=problem.target, max_extend=max_extend,
                       label=label, progress=False, **optimizer_kw)
    near = closest(br)
    lr = None if near is None else near.lr
    shown, moved = None, 0.0
    if lr is not None:
        model = copy.deepcopy(locked)
        before = [p.detach().clone() for p in model.parameters() if p.requires_grad]
        shown = train(model, task, optimizer, steps, problem.target, lr=lr, optimizer_kw=optimizer_kw,
                      stop_at_target=True, label=label)
        after = [p.detach() for p in model.parameters() if p.requires_grad]
        changed = sum(int((a != b).sum()) for a, b in zip(after, before))
        moved = changed / sum(b.numel() for b in before)
    return PrecisionRun(float(alpha), optimizer, str(dtype), br, shown, float(moved), task.value(locked))


def share_of_way(run: PrecisionRun, reference: PrecisionRun, start: float) -> float:
    """(ℒ_start − ℒ_run)/(ℒ_start − ℒ_ref): the share of the reference run's way down from ``start`` that ``run`` covered.

    ``start`` is the loss both set out from in exact arithmetic (the released model's float64 loss), so a run in
    a format that broke the lock does not get credit for repairing its own rounding. NaN if either run has no
    shown trace or the reference did not go down at all.

    Example:
        >>> from specdef_lite.experiments.best_response import BestResponse
        >>> run = lambda final: PrecisionRun(1.0, "sgd", "x", BestResponse("", 0.0, 1, (), None, False),
        ...                                 Trace(np.array([1.0, final])), 1.0, 1.0)
        >>> share_of_way(run(0.6), run(0.2), start=1.0)
        0.5
    """
    if run.shown is None or reference.shown is None or not start > reference.shown.final:
        return float("nan")
    return (start - run.shown.final) / (start - reference.shown.final)
