"""T_A(τ) = min{t : ℒ(θ_s) ≤ τ for all s ≥ t} — the attacker's steps-to-target, measured by running A.

PAPER.md's threat model counts the steps an attacker's optimizer A needs to bring the harmful loss
below τ. ``train`` runs A on a fixed full batch and records every loss in a ``Trace``. Sweeps over
learning rates and optimizers are experiments built on it (``specdef_lite.experiments``: ``best_response``,
``lr_sweep``, ``race``).

Two definitions matter and are fixed here once for the whole course:

* **Divergence** is data, never an exception: a step whose loss is non-finite or exceeds ``explode`` ×
  the initial loss ends the run, and ``Trace.diverged_at`` records it.
* **Reaching the target** means *staying* there: a diverging step can throw a saturating network into a
  region that happens to sit below τ for a moment, so ``steps_to`` returns the first t after which the
  loss stays ≤ τ for the rest of the run (or for ``window`` steps). A run that dips and climbs back does
  not count.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .optimizers import make_optimizer
from .problems import Task

__all__ = ["Trace", "train"]


@dataclass(frozen=True)
class Trace:
    """ℒ(θ₀), ℒ(θ₁), …: the loss before each step, plus where (if anywhere) the run diverged.

    Attributes:
        losses: float64 array, ``losses[t]`` = loss after t steps (``losses[0]`` = the initial loss).
        diverged_at: the first step t whose loss was non-finite or > explode × losses[0]; the run
            stopped there (it is the last entry of ``losses``). None if it never diverged.
        label: free text for plots (the optimizer and lr, for instance).

    Example:
        >>> tr = Trace(np.array([4.0, 2.0, 0.5, 2.0, 0.4, 0.3]))
        >>> tr.steps_to(1.0), tr.steps_to(1.0, window=1), tr.reached(0.1), tr.final
        (4, 2, False, 0.3)
    """
    losses: np.ndarray
    diverged_at: int | None = None
    label: str = ""

    def __post_init__(self):
        object.__setattr__(self, "losses", np.asarray(self.losses, dtype=np.float64))

    @property
    def steps(self) -> int:
        """Number of optimizer steps taken (``len(losses) − 1``)."""
        return len(self.losses) - 1

    @property
    def final(self) -> float:
        """The last recorded loss (inf or nan if the run diverged that way)."""
        return float(self.losses[-1])

    @property
    def diverged(self) -> bool:
        return self.diverged_at is not None

    def steps_to(self, target: float, *, window: int | None = None) -> int | None:
        """T(τ) = first t with ℒ_s ≤ τ for every s ≥ t (or for t ≤ s < t + window); None if there is none.

        A diverged run ends on its divergent (above-τ) loss, so with ``window=None`` it never counts;
        with a window it counts only if it stayed below τ for ``window`` steps before diverging.
        """
        below = self.losses <= target  # NaN compares False
        if window is None:
            stays = np.logical_and.accumulate(below[::-1])[::-1]  # stays[t] = all(below[t:])
        else:
            if window < 1:
                raise ValueError(f"window must be >= 1, got {window}")
            bad = np.concatenate([[0], np.cumsum(~below)])  # bad[t] = #above-τ steps before t
            n = len(below)
            ends = np.minimum(np.arange(n) + window, n)
            stays = (bad[ends] - bad[:n]) == 0
            # a window cut short by the end of the run only counts if the run ended without diverging
            if self.diverged_at is not None:
                stays &= np.arange(n) + window <= n
        hits = np.flatnonzero(stays)
        return int(hits[0]) if hits.size else None

    def reached(self, target: float, *, window: int | None = None) -> bool:
        """Whether ``steps_to(target, window=window)`` is not None."""
        return self.steps_to(target, window=window) is not None


def _params(model: nn.Module) -> list[torch.Tensor]:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters (all have requires_grad=False)")
    return params


def train(model: nn.Module, task: Task, optimizer, steps: int, target: float | None = None, *,
          lr: float | None = None, optimizer_kw: dict | None = None, explode: float = 1e3,
          stop_at_target: bool = False, window: int = 10, progress: bool = False, label: str = "") -> Trace:
    """θ_{t+1} = A(θ_t, ∇ℒ(θ_t)) for t < ``steps``, recording ℒ(θ_t); trains ``model`` **in place**.

    Args:
        model: trained in place (pass ``copy.deepcopy(model)`` to keep the original); only parameters
            with ``requires_grad=True`` move.
        task: a ``Task``: ``task.loss(model)`` a scalar tensor with its graph, ``task.value(model)`` a float.
        optimizer: a built optimizer (torch's, or one from ``make_optimizer``), or a name for
            ``make_optimizer`` — then ``lr=`` is required and ``optimizer_kw`` is passed on.
        steps: number of optimizer steps (≥ 0); the trace holds up to steps + 1 losses.
        target: τ; only used when ``stop_at_target`` is set.
        explode: a loss > explode × ℒ(θ₀), or non-finite, marks divergence and ends the run (if ℒ(θ₀) = 0
            only non-finite losses do).
        stop_at_target: end the run once the loss has stayed ≤ τ for ``window`` consecutive steps; the
            trace's ``steps_to(τ)`` is then the first of those steps.
        progress: show a ``tqdm.auto`` bar.

    Optimizers with ``needs_closure = True`` get ``step(closure)`` with ``closure = lambda: task.loss(model)``
    and report ℒ(θ_t) as its return value; others get the usual zero_grad / backward / step. One forward
    per step either way. (A closure optimizer has already taken step t when a run stops at t, so its model
    is then one step ahead of the trace.)

    Example:
        >>> from specdef_lite.optim.problems import quadratic
        >>> model, task = quadratic([1.0, 4.0], seed=0)
        >>> tr = train(model, task, "sgd", steps=60, lr=0.4)
        >>> tr.steps, tr.diverged_at, tr.final < 1e-12
        (60, None, True)
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if not explode > 1:
        raise ValueError(f"explode must be > 1, got {explode}")
    if stop_at_target and target is None:
        raise ValueError("stop_at_target needs a target")
    if isinstance(optimizer, str):
        if lr is None:
            raise ValueError(f"optimizer given by name ({optimizer!r}): pass lr=")
        optimizer = make_optimizer(optimizer, _params(model), lr, **(optimizer_kw or {}))
    elif lr is not None or optimizer_kw:
        raise ValueError("lr / optimizer_kw only apply when the optimizer is given by name")
    needs_closure = getattr(optimizer, "needs_closure", False)

    def closure() -> torch.Tensor:
        return task.loss(model)

    losses: list[float] = []
    diverged_at = None
    limit = math.inf
    run_below = 0
    bar = tqdm(total=steps, disable=not progress, desc=label or "train", leave=False)
    try:
        for t in range(steps + 1):
            if t == steps:  # the final loss needs no step after it
                loss_t = task.value(model)
            elif needs_closure:
                loss_t = float(optimizer.step(closure))
            else:
                optimizer.zero_grad(set_to_none=True)
                loss = task.loss(model)
                loss_t = float(loss.detach())
                if math.isfinite(loss_t):
                    loss.backward()
            losses.append(loss_t)
            if t == 0:
                limit = explode * loss_t if loss_t > 0 else math.inf
            if not math.isfinite(loss_t) or loss_t > limit:
                diverged_at = t
                break
            if stop_at_target:
                run_below = run_below + 1 if loss_t <= target else 0
                if run_below >= window:
                    break
            if t == steps:
                break
            if not needs_closure:  # a closure optimizer already stepped inside optimizer.step(closure)
                optimizer.step()
            bar.update(1)
            if progress:
                bar.set_postfix(loss=f"{loss_t:.3g}", refresh=False)
    finally:
        bar.close()
    return Trace(np.array(losses), diverged_at, label)
