"""T_A(τ; η*) of the locked model against fusing (W = C·W̃) and layer injection (D = I), per α.

PAPER.md, "The limit": SpecDef reparameterises without changing what the model computes, so an attacker who
knows that can undo it. ``attack_table`` runs one optimizer, always at its best response, on

* the **locked** model — the defence working;
* the **fused** model ``fuse(locked)``, compared with the undefended model's full fine-tune;
* the **injected** model ``inject(locked)`` (only the identity-initialised Ds train), compared with the
  *same injection into the undefended model* — the fair reference, because injection trains other
  parameters than a full fine-tune.

Each comparison is a ``Slowdown`` (each model at its own best η). Fused and injected searches start at the
reference's best η (that is where an attacker who knows the construction starts) and extend from there;
the locked model's search tracks its best η from one α to the next. (Layer injection is our
reconstruction of the paper's construction; see PAPER.md.)
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from ..lock.attacks import detect, fuse, inject, param_overhead
from ..lock.deform import deformed_layers, specdef
from ..optim.training import Trace
from .best_response import BestResponse, Slowdown, slowdown
from .grid import nearest
from .tuning import around, best_response, spanning, tracking_grid

__all__ = ["AttackTable", "attack_table", "REFERENCE"]

# attack → the undefended run it is compared with
REFERENCE = {"locked": "original", "fused": "original", "injected": "injected_ref"}


def _shown(br: BestResponse) -> Trace:
    """The run to draw: at the best η, else the largest stable η, else the first η tried."""
    return br.shown.result


@dataclass(frozen=True)
class AttackTable:
    """Per α the attacker's best responses on the locked, fused and injected model, plus the two undefended references.

    Attributes:
        alphas: (A,) lock strengths; optimizer: the one optimizer every run uses.
        responses: "locked" / "fused" / "injected" → A ``BestResponse``s.
        reference: "original" / "injected_ref" → the undefended model's ``BestResponse``.
        runs: "locked" / "fused" / "injected" → A traces at the best η (else the largest stable η);
            refs: "original" / "injected_ref" → the reference's trace at its best η.
        lrs: "locked" / "fused" / "injected" → (A,) best η (NaN if none reached τ); "original" /
            "injected_ref" → the references' best η.
        detected: per α, the layers ``detect`` flags on the locked model; deformed: the layers really locked.
        fuse_error: (A,) max |W_fused − W| / max |W| over the locked layers (float64).
        steps, target: step budget B and τ; extra: "loss0" (released harmful loss), "injected_params".
    """
    alphas: np.ndarray
    optimizer: str
    responses: dict[str, tuple[BestResponse, ...]]
    reference: dict[str, BestResponse]
    runs: dict[str, tuple[Trace, ...]]
    refs: dict[str, Trace]
    lrs: dict[str, object]
    detected: tuple[tuple[str, ...], ...]
    deformed: tuple[str, ...]
    fuse_error: np.ndarray
    steps: int
    target: float
    extra: dict = field(default_factory=dict)

    def steps_to(self, key: str) -> np.ndarray:
        """(A,) T(τ) at the best η of one attack ("locked", "fused", "injected"); NaN where τ was not reached."""
        return np.array([np.nan if b.best_steps is None else b.best_steps for b in self.responses[key]], dtype=float)

    def ref_steps(self, key: str) -> float:
        """T(τ) of a reference ("original", "injected_ref") at its best η; NaN if not reached."""
        s = self.reference[key].best_steps
        return float("nan") if s is None else float(s)

    def slowdowns(self, attack: str) -> tuple[Slowdown, ...]:
        """Per α: the attack's best response over its reference's (``REFERENCE``), a lower bound if never reached."""
        return tuple(slowdown(br, self.reference[REFERENCE[attack]]) for br in self.responses[attack])

    def ratio(self, attack: str) -> np.ndarray:
        """(A,) T(τ) of the attack / T(τ) of its reference, each at its best η (lower bounds where never reached)."""
        return np.array([s.ratio for s in self.slowdowns(attack)])

    def index(self, alpha: float) -> int:
        return nearest(self.alphas, alpha)


def attack_table(problem, alphas: Sequence[float], *, optimizer: str = "sgd", steps: int = 200,
                 lrs: Sequence[float] | None = None, k: int = 1, targets=None, per_decade: int = 2,
                 progress: bool = False, **optimizer_kw) -> AttackTable:
    """Defender vs attacker for every α: lock, then the best response on the locked, fused and injected models.

    Args:
        problem: a ``ToyProblem`` (``released``, ``task``, ``target``).
        alphas: lock strengths (the explorer's slider steps through them), ascending in the result.
        optimizer: one ``make_optimizer`` name for every run ("sgd" by default), ``**optimizer_kw`` its options.
        steps: the step budget of every run.
        lrs: the η range where the undefended references' searches start (default 1e-3 … 3), sampled at
            ``per_decade`` points a decade (``spanning``); every search extends past an edge while its best sits there.
        k, targets: passed to ``specdef``. per_decade: points a decade of every grid built here.
        progress: a ``tqdm.auto`` bar over α.

    Raises:
        ValueError: if an undefended reference never reaches τ within the budget.

    Example:
        >>> from specdef_lite.optim.problems import teacher_student
        >>> p = teacher_student(width=4, n=16, seed=0)
        >>> tab = attack_table(p, [1.0, 1e4], steps=100)
        >>> tab.ratio("fused").tolist(), tab.ratio("injected").tolist()
        ([1.0, 1.0], [1.0, 1.0])
    """
    alphas = np.sort(np.asarray(list(alphas), dtype=float))
    grid = spanning([1e-3, 3.0] if lrs is None else lrs, per_decade)
    task, target, released = problem.task, problem.target, problem.released

    def respond(model, lrs_, label):
        return best_response(model, task, optimizer, lrs=lrs_, steps=steps, target=target, label=label,
                             progress=False, **optimizer_kw)

    names = deformed_layers(specdef(released, 2.0, k=k, targets=targets))
    ref_inj_model = inject(released, targets=names)
    reference = {"original": respond(released, grid, "undefended"),
                 "injected_ref": respond(ref_inj_model, grid, "undefended + injection")}
    for key, br in reference.items():
        if not br.reached:
            raise ValueError(f"the undefended model ({key}) does not reach τ within {steps} steps "
                             f"({br.summary()}); raise steps or widen lrs")
    start = {"fused": around(reference["original"].best_lr, per_decade=per_decade),
             "injected": around(reference["injected_ref"].best_lr, per_decade=per_decade)}
    responses: dict[str, list[BestResponse]] = {"locked": [], "fused": [], "injected": []}
    detected, errs = [], []
    W0 = {n: released.get_submodule(n).weight.detach().double() for n in names}
    previous = (1.0, reference["original"])
    for a in tqdm(alphas, disable=not progress, desc="attacks", leave=False):
        locked = specdef(released, float(a), k=k, targets=targets)
        br = respond(locked, tracking_grid(previous[1], a / previous[0], per_decade=per_decade), f"locked α={a:.0e}")
        responses["locked"].append(br)
        previous = (float(a), br)
        fused = fuse(locked)
        errs.append(max(float((fused.get_submodule(n).weight.detach().double() - W).abs().max() / W.abs().max())
                        for n, W in W0.items()))
        responses["fused"].append(respond(fused, start["fused"], f"fused α={a:.0e}"))
        responses["injected"].append(respond(inject(locked), start["injected"], f"injected α={a:.0e}"))
        detected.append(tuple(detect(locked)))
    best = lambda brs: np.array([np.nan if b.best_lr is None else b.best_lr for b in brs])  # noqa: E731
    return AttackTable(
        alphas, optimizer, {key: tuple(v) for key, v in responses.items()}, reference,
        {key: tuple(_shown(b) for b in v) for key, v in responses.items()},
        {key: _shown(b) for key, b in reference.items()},
        {**{key: best(v) for key, v in responses.items()},
         **{key: float(b.best_lr) for key, b in reference.items()}},
        tuple(detected), tuple(names), np.array(errs), int(steps), float(target),
        extra={"loss0": float(task.value(released)),
               "injected_params": param_overhead(released, ref_inj_model).trainable_after})
