"""T_A(τ; η) over a fixed grid (``lr_sweep``) and over several optimizers (``race``) — the plain sweeps.

``lr_sweep`` is ``best_response`` with the grid held fixed (no extension): it shows T(τ; η) at exactly the
learning rates asked for, e.g. the paper's fixed grid. Its summary (best η, fewest steps, largest stable η)
comes from the same ``BestResponse`` as every other comparison in the course, so "best" means the same
thing everywhere: fewest steps to reach τ and stay below it, the smaller η on ties. ``race`` runs several
optimizers once each, at given learning rates, into a ``Race`` (label → ``Trace``, read-only).
"""
from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from torch import nn
from tqdm.auto import tqdm

from ..optim.training import Trace, train
from .best_response import BestResponse, Outcome, search

__all__ = ["Sweep", "Race", "lr_sweep", "race"]


@dataclass(frozen=True)
class Sweep:
    """One optimizer over a fixed learning-rate grid: a ``Trace`` per lr and its summary.

    Attributes:
        lrs: the grid, ascending (float64 array).
        traces: one ``Trace`` per lr.
        steps_to: T(τ) per lr, None where the target was not reached (or the run diverged first).
        diverged: bool array, True where the run diverged.
        best_lr / best_steps: the lr with the fewest steps to τ (the smaller lr on ties), and that count;
            None if no lr reached τ.
        max_stable_lr: the largest lr such that it and every smaller lr of the grid did not diverge
            (the edge of the stable region, robust to an isolated lucky run); None if the smallest diverged.
        target: τ.
        response: the same sweep as a ``BestResponse`` (with ``bracketed`` saying whether the grid
            brackets the best η or leaves it on an edge).
    """
    lrs: np.ndarray
    traces: tuple[Trace, ...]
    steps_to: tuple[int | None, ...]
    diverged: np.ndarray
    best_lr: float | None
    best_steps: int | None
    max_stable_lr: float | None
    target: float
    name: str = ""
    response: BestResponse | None = field(default=None, compare=False, repr=False)

    @classmethod
    def of(cls, response: BestResponse, name: str = "") -> "Sweep":
        """The sweep that a ``BestResponse`` holds (each outcome's ``result`` must be its ``Trace``)."""
        return cls(response.lrs, tuple(o.result for o in response.outcomes), response.steps, response.diverged,
                   response.best_lr, response.best_steps, response.max_stable_lr, response.target,
                   name or response.label, response)


def lr_sweep(model: nn.Module, task, optimizer_name: str, lrs: Sequence[float], steps: int, target: float, *,
             window: int | None = None, stop_at_target: bool = True, explode: float = 1e3,
             progress: bool = False, **optimizer_kw) -> Sweep:
    """T_A(τ; η) at every η of a fixed grid, and η* = argmin, η_max = the largest stable η — one deep copy per lr.

    Args:
        model: not modified (each lr trains its own deep copy).
        task, steps, target: as in ``train``; ``explode`` likewise.
        optimizer_name: a ``make_optimizer`` name; ``**optimizer_kw`` go to it.
        lrs: the learning rates (sorted ascending in the result). Nothing is added: for the attacker's best
            response over a range that brackets the optimum use ``best_response``.
        window: passed to ``Trace.steps_to`` (None = the loss must stay ≤ τ to the end of the run).
        stop_at_target: stop each run once it has stayed ≤ τ for 10 steps (or ``window``) — much faster;
            with it, "the end of the run" is that window.

    Example:
        >>> from specdef_lite.optim.problems import quadratic
        >>> model, task = quadratic([1.0, 10.0], seed=0)
        >>> sw = lr_sweep(model, task, "sgd", [0.05, 0.1, 0.15, 0.19, 0.21], steps=200, target=1e-6)
        >>> sw.best_lr, sw.max_stable_lr, sw.diverged.tolist(), sw.response.bracketed
        (0.15, 0.19, [False, False, False, False, True], True)
    """
    if len(list(lrs)) == 0:
        raise ValueError("lrs is empty")

    def run(lr: float):
        tr = train(copy.deepcopy(model), task, optimizer_name, steps, target, lr=lr, optimizer_kw=optimizer_kw,
                   explode=explode, stop_at_target=stop_at_target, window=window or 10,
                   label=f"{optimizer_name} lr={lr:.3g}")
        return Outcome(lr, tr.steps_to(target, window=window), tr.diverged, tr)

    br = search(run, lrs, budget=steps, target=target, label=optimizer_name, max_extend=0, progress=progress)
    return Sweep.of(br, optimizer_name)


@dataclass(frozen=True)
class Race(Mapping[str, Trace]):
    """label → ``Trace``: each optimizer trained once from the same model for ``steps`` steps (a read-only mapping).

    Attributes:
        traces: label → Trace, in the order the optimizers were given.
        steps: the budget every run had; target: τ where runs stopped at it, else None.
    """
    traces: Mapping[str, Trace]
    steps: int
    target: float | None = None

    def __getitem__(self, label: str) -> Trace:
        return self.traces[label]

    def __iter__(self) -> Iterator[str]:
        return iter(self.traces)

    def __len__(self) -> int:
        return len(self.traces)


def race(model: nn.Module, task, optimizers: dict[str, tuple[str, float] | dict], steps: int,
         target: float | None = None, *, explode: float = 1e3, stop_at_target: bool = False,
         progress: bool = False) -> Race:
    """label → Trace (a ``Race``) — each optimizer trains its own deep copy of ``model`` on ``task`` for ``steps`` steps.

    Args:
        optimizers: label → ``(name, lr)`` or a dict ``{"name": ..., "lr": ..., **optimizer options}``,
            e.g. ``{"GD": ("sgd", 0.1), "Newton": {"name": "newton", "lr": 1.0, "damping": 1e-3}}``.
        target: τ, used only with ``stop_at_target``; compare with ``trace.steps_to(τ)`` afterwards.

    Example:
        >>> from specdef_lite.optim.problems import quadratic
        >>> model, task = quadratic([1.0, 100.0], seed=0)
        >>> runs = race(model, task, {"GD": ("sgd", 0.019),
        ...                               "Newton": {"name": "newton", "lr": 1.0, "damping": 0.0}}, steps=50)
        >>> runs["GD"].steps_to(1e-8), runs["Newton"].steps_to(1e-8)
        (None, 1)
    """
    out: dict[str, Trace] = {}
    for label, spec in tqdm(optimizers.items(), disable=not progress, desc="race", leave=False):
        if isinstance(spec, dict):
            spec = dict(spec)
            if "name" not in spec or "lr" not in spec:
                raise ValueError(f"optimizer spec {label!r} needs 'name' and 'lr', got {sorted(spec)}")
            name, lr = spec.pop("name"), spec.pop("lr")
            kw = spec
        else:
            name, lr = spec
            kw = {}
        out[label] = train(copy.deepcopy(model), task, name, steps, target, lr=lr, optimizer_kw=kw,
                           explode=explode, stop_at_target=stop_at_target, label=label)
    return Race(out, int(steps), target if stop_at_target else None)
