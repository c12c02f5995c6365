"""T_A(τ; η*) with the locked model stored and trained in float32 or bfloat16 — does the attack really stall?

``vanishing_at`` predicts from *one* step whether fl(w + Δ) = w, at the learning rate the attacker really uses
(``attacker_lrs``: its measured best response where a race ran, a labelled extrapolation beyond);
``precision_attack`` runs the whole attack. The locked model and the task are cast to ``dtype`` (weights, activations, gradients and the
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

from ..lock.deform import specdef
from ..optim.precision import LAWS, VanishingTable, as_dtype, step_table, task_in
from ..optim.training import Trace, train
from .best_response import BestResponse
from .grid import nearest
from .tuning import LABELS, anchor, best_response, closest

__all__ = ["PrecisionRun", "precision_attack", "share_of_way", "AttackerLrs", "attacker_lrs", "vanishing_at",
           "param_names", "LAWS"]



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
        n_moved, n_weights: the counts behind ``moved`` (entries that changed, trainable entries in all).
    """
    alpha: float
    optimizer: str
    dtype: str
    response: BestResponse
    shown: Trace | None
    moved: float
    loss0: float
    n_moved: int = 0
    n_weights: int = 0

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
        >>> from specdef_lite.optim.problems import teacher_student
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
    shown, moved, changed = None, 0.0, 0
    n_weights = sum(p.numel() for p in locked.parameters() if p.requires_grad)
    if lr is not None:
        model = copy.deepcopy(locked)
        before = [p.detach().clone() for p in model.parameters() if p.requires_grad]
        shown = train(model, task, optimizer, steps, problem.target, lr=lr, optimizer_kw=optimizer_kw,
                      stop_at_target=True, label=label)
        after = [p.detach() for p in model.parameters() if p.requires_grad]
        changed = sum(int((a != b).sum()) for a, b in zip(after, before))
        moved = changed / sum(b.numel() for b in before)
    return PrecisionRun(float(alpha), optimizer, str(dtype), br, shown, float(moved), task.value(locked), int(changed),
                        int(n_weights))


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


@dataclass(frozen=True)
class AttackerLrs:
    """η(α) per optimizer on a grid of α, and where each value comes from.

    Attributes:
        alphas: (A,) the grid.
        lrs: optimizer → (A,) the learning rate.
        source: optimizer → (A,) "measured" (a best response at that α: its best η, or the η whose run ended
            lowest), "interpolated" (log–log between two measured α) or "law" (extrapolated past the largest
            measured α along η ∝ α^−p, ``LAWS``).
    """
    alphas: np.ndarray
    lrs: dict[str, np.ndarray]
    source: dict[str, np.ndarray]

    def measured_up_to(self, optimizer: str) -> float:
        """The largest α at which η was measured (NaN if none)."""
        a = self.alphas[self.source[optimizer] == "measured"]
        return float(a.max()) if a.size else float("nan")


def attacker_lrs(race, alphas: Sequence[float]) -> AttackerLrs:
    """The learning rate the attacker uses at each α: measured by ``race`` (a ``RaceTable``) where it ran, else a labelled guess.

    At an α of the race's grid: ``anchor`` of that best response (the best η, or the η that got closest to τ).
    Between two of them: log–log interpolation. Past the largest: the law η ∝ α^−p from the last measured point
    (p = 2 for GD, 1 for normalised optimizers). Below the smallest α of the race (α < 1): the undefended best.

    Example:
        >>> from specdef_lite.optim.problems import teacher_student
        >>> from specdef_lite.experiments.race import race_table
        >>> p = teacher_student(width=4, n=16, seed=0)
        >>> r = attacker_lrs(race_table(p, [1.0, 100.0], {"sgd": [0.1, 1.0]}, steps=60), [1.0, 10.0, 100.0, 1e4])
        >>> r.source["sgd"].tolist(), [f"{v:.2g}" for v in r.lrs["sgd"]]
        (['measured', 'interpolated', 'measured', 'law'], ['0.32', '0.0056', '0.0001', '1e-08'])
    """
    alphas = np.asarray(list(alphas), dtype=float)
    grid = np.log10(race.alphas)
    lrs, source = {}, {}
    for o in race.optimizers:
        measured = np.log10([anchor(br) for br in race.responses[o]])
        eta, src = np.zeros(len(alphas)), np.empty(len(alphas), dtype=object)
        for i, a in enumerate(alphas):
            x = np.log10(a)
            j = nearest(race.alphas, a)
            if np.isclose(grid[j], x, atol=1e-9):
                eta[i], src[i] = 10 ** measured[j], "measured"
            elif x < grid[0]:
                eta[i], src[i] = race.reference[o].best_lr, "measured"
            elif x < grid[-1]:
                eta[i], src[i] = 10 ** np.interp(x, grid, measured), "interpolated"
            else:
                eta[i], src[i] = 10 ** (measured[-1] - LAWS.get(o, 1) * (x - grid[-1])), "law"
        lrs[o], source[o] = eta, src.astype(str)
    return AttackerLrs(alphas, lrs, source)


def param_names(model) -> np.ndarray:
    """(P,) the parameter name of every trainable entry, in ``precision.gradient_step``'s order."""
    return np.array([n for n, p in model.named_parameters() if p.requires_grad for _ in range(p.numel())])


def vanishing_at(model, task, lrs: AttackerLrs, *, dtypes: Sequence[str] = ("float32", "bfloat16"), k: int = 1,
                 targets=None) -> VanishingTable:
    """For each α of ``lrs``: lock, take one step at η(α) per optimizer, and test fl(wᵢ + Δᵢ) = wᵢ in each dtype.

    As ``precision.vanishing_table``, but at the learning rates the attacker really uses (``attacker_lrs``)
    instead of a law: Δ from the exact float64 gradient (GD: −η·g; Adam: its first step −η·g/(|g| + 1e-8)).
    Optimizers other than "sgd" and "adam" are skipped (``gradient_step`` knows those two).

    Example:
        >>> from specdef_lite.optim.problems import teacher_student
        >>> p = teacher_student(width=4, n=8, seed=0)
        >>> eta = AttackerLrs(np.array([1.0, 1e8]), {"sgd": np.array([0.3, 3e-17])}, {"sgd": np.array(["law"] * 2)})
        >>> vanishing_at(p.released, p.task, eta, dtypes=["float32"]).fraction("sgd", "float32").round(2).tolist()
        [0.0, 0.99]
    """
    opts = [o for o in lrs.lrs if o in ("sgd", "adam")]
    return step_table(model, task, lrs.alphas, opts, lambda o, i, _locked: float(lrs.lrs[o][i]), dtypes=dtypes,
                      k=k, targets=targets)
