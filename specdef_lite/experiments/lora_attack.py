"""T(τ; η*) per attack placement: full fine-tuning or a rank-r LoRA adapter on W, W̃, C or both, at the best η.

Does a LoRA attacker get past the lock, and does it matter where the adapter sits? On the teacher–student
toy (``problems.teacher_student``) the hidden layers are locked; then every (model, placement) pair is
attacked at its own best learning rate (``best_response.search``):

    original  full | LoRA on W            fused  full | LoRA on W (= C·W̃)
    locked    full | LoRA on W̃ | on C | on both

What the maths predicts (see ``specdef_lite.lock.lora``): an adapter on C reads W̃x, α times larger along U_k,
so its Hessian grows like α² — the lock's stiffness reaches it; an adapter on W̃ is the undefended adapter
seen through B ↦ C·B (ℒ_W̃(A, B) = ℒ_W(A, C·B), ‖C‖ = 1), so its curvature is never larger than the
undefended one but is α² smaller along U_k; on the fused layer it is the undefended attack. ``curvature``
records the largest |eigenvalue| of the Hessian over the trained parameters at the start of each attack.
"""
from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..lock.attacks import fuse
from ..curvature.products import loss_fn_of
from ..curvature.eigen import top_eigenvalues
from ..lock.deform import specdef
from ..lock.lora import adapter_size, lora
from ..optim.problems import teacher_student
from ..optim.training import train
from .best_response import BestResponse, Outcome, search

__all__ = ["LoraRun", "LoraAttacks", "lora_attacks", "start_curvature", "ATTACKS"]

ATTACKS = (("original", "full"), ("original", "weight"), ("locked", "full"), ("locked", "w_tilde"),
           ("locked", "c"), ("locked", "both"), ("fused", "full"), ("fused", "weight"))
_NAMES = {"full": "full fine-tune", "weight": "LoRA on W", "w_tilde": "LoRA on W̃", "c": "LoRA on C",
          "both": "LoRA on W̃ and C"}


@dataclass(frozen=True)
class LoraRun:
    """One attack: which model, where the update goes, how many parameters train, and its best response.

    ``curvature``: max |λ| of ∇²ℒ over the trained parameters at the start (None past ``max_params``).
    """
    model: str
    placement: str
    trainable: int
    curvature: float | None
    response: BestResponse

    @property
    def label(self) -> str:
        return f"{self.model}: {_NAMES[self.placement]}"

    @property
    def steps(self) -> str:
        """'12' at the best η, or '> 2000' (a lower bound) if no η reached τ."""
        br = self.response
        return str(br.best_steps) if br.reached else f"> {br.budget}"


@dataclass(frozen=True)
class LoraAttacks:
    """Every attack of ``ATTACKS`` at its best learning rate on one locked toy (α, k, rank r, optimizer)."""
    alpha: float
    k: int
    r: int
    optimizer: str
    layers: tuple[str, ...]
    target: float
    budget: int
    runs: tuple[LoraRun, ...]

    def run(self, model: str, placement: str) -> LoraRun:
        for x in self.runs:
            if (x.model, x.placement) == (model, placement):
                return x
        raise KeyError(f"no attack ({model!r}, {placement!r}); attacks: {[(x.model, x.placement) for x in self.runs]}")

    def rows(self) -> list[dict[str, str]]:
        """One dict per attack, for ``llm.to_markdown``: steps at η*, η*, trainable parameters, curvature."""
        return [{"model": x.model, "attack": _NAMES[x.placement], "steps to τ at η*": x.steps,
                 "η*": "—" if x.response.best_lr is None else f"{x.response.best_lr:.3g}",
                 "bracketed": "yes" if x.response.bracketed else "no", "trainable": f"{x.trainable:,}",
                 "max |λ(H)| at start": "—" if x.curvature is None else f"{x.curvature:.3g}"} for x in self.runs]


def _prepare(model: torch.nn.Module, placement: str, r: int, layers: Sequence[str], seed: int) -> torch.nn.Module:
    if placement == "full":
        return copy.deepcopy(model)
    return lora(model, r, on=placement, targets=list(layers), seed=seed)


def start_curvature(model: torch.nn.Module, task, max_params: int = 2000) -> float | None:
    """max |λ(∇²ℒ)| over the trainable parameters, by Lanczos on double-backward HVPs (peft's ParamWrapper
    re-registers a parametrization on every forward, which torch.func transforms refuse)."""
    loss_fn, params = loss_fn_of(model, task)
    if sum(p.numel() for p in params.values()) > max_params:
        return None
    res = top_eigenvalues(loss_fn, params, k=1, which="LM", hvp_method="double-backward")
    return float(res.values.abs().max())


def lora_attacks(*, alpha: float = 1e3, k: int = 1, r: int = 2, optimizer: str = "adam",
                 lrs: Sequence[float] = (1e-4, 1e-3, 1e-2, 1e-1), budget: int = 1000,
                 attacks: Sequence[tuple[str, str]] = ATTACKS, layers: Sequence[str] = ("0", "2"),
                 seed: int = 0, max_params: int = 2000, progress: bool | None = None, **problem_kw) -> LoraAttacks:
    """Each (model, placement) of ``attacks`` at its best learning rate on the teacher–student toy.

    Args:
        alpha, k: the lock of ``layers`` (the hidden layers by default).
        r: LoRA rank of every adapter.
        optimizer: a ``make_optimizer`` name; ``lrs``: the starting grid (``search`` extends it past an edge).
        budget: steps per run; a run that never reaches τ is reported as "> budget" (a lower bound).
        attacks: (model, placement) pairs, model in original / locked / fused, placement in full / weight /
            w_tilde / c / both.
        max_params: the largest trained size whose start Hessian is formed (dense) for ``curvature``.
        **problem_kw: passed to ``problems.teacher_student`` (width, depth, n, strength, …).
    """
    problem = teacher_student(seed=seed, **problem_kw)
    locked = specdef(problem.released, alpha, k, targets=list(layers))
    models = {"original": problem.released, "locked": locked, "fused": fuse(locked)}
    runs = []
    for name, placement in attacks:
        model = _prepare(models[name], placement, r, layers, seed)
        for p in model.parameters() if placement == "full" else ():
            p.requires_grad_(True)

        def run(lr: float, model=model) -> Outcome:
            tr = train(copy.deepcopy(model), problem.task, optimizer, budget, problem.target, lr=lr,
                       stop_at_target=True)
            return Outcome(lr, tr.steps_to(problem.target), tr.diverged, tr)

        br = search(run, lrs, budget=budget, target=problem.target, label=f"{name}/{placement}", progress=progress)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        assert placement == "full" or trainable == adapter_size(model)
        runs.append(LoraRun(name, placement, trainable, start_curvature(model, problem.task, max_params), br))
    return LoraAttacks(float(alpha), k, r, optimizer, tuple(layers), problem.target, budget, tuple(runs))
