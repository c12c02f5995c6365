"""fl(w + Δ) = w — vanishing updates: the learning rates SpecDef leaves an attacker fall below float resolution.

Why the paper asks for α ≥ 1e6 (PAPER.md, "SpecDef"): a lock makes the largest stable GD step shrink like
1/α² and Adam's best learning rate like 1/α. An update Δ to a weight w stored in a format with p significand
bits survives rounding only if |Δ| exceeds about half a unit in the last place of w, i.e. a relative size of
u = 2⁻ᵖ (2⁻²⁴ in float32, 2⁻⁸ in bfloat16, 2⁻¹¹ in float16). Once lr·|g| / |w| < u for most weights, the
step computes a non-zero update and then *adds nothing*: training stops, whatever the optimizer intends.

The other side of the same rounding (PAPER.md, "Numerics"): a locked layer computes W̃x, α times larger along
the top-k directions, before C cancels it, so its forward error grows like α·ε; ``forward_error`` measures it.

Conventions: updates are computed in float64 from the exact (float64) gradient — the attacker's best case —
and only the final addition w + Δ happens in the storage format, as in mixed-precision training.
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Union

import numpy as np
import torch
from torch import nn

from ..curvature.eigen import top_eigenvalues
from ..curvature.products import flatten_params, loss_fn_of
from ..lock.deform import specdef

__all__ = ["DTYPES", "as_dtype", "unit_roundoff", "vanishes", "vanishing_fraction", "smallest_update",
           "LAWS", "feasible_lr", "descent_lr", "gradient_step", "update_vanishing", "forward_error",
           "VanishingTable", "vanishing_table", "step_table", "param_groups", "task_in"]

DType = Union[str, torch.dtype]
DTYPES = {"float64": torch.float64, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
F64 = torch.float64
LAWS = {"sgd": 2, "adam": 1, "sophia": 1, "muon": 1}  # η(α) ∝ α^−p: GD's stable step ∝ 1/λ_max ∝ 1/α², a normalised one ∝ 1/α


def as_dtype(dtype: DType) -> torch.dtype:
    """"float32" / "bfloat16" / "float16" / "float64" (or the torch dtype itself) → the torch dtype."""
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise ValueError(f"dtype must be a floating format, one of {list(DTYPES)}, got {dtype}")
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def unit_roundoff(dtype: DType) -> float:
    """u = 2⁻ᵖ = ε/2: the largest relative rounding error of round-to-nearest with p significand bits.

    Example:
        >>> [unit_roundoff(d) == 2.0 ** -p for d, p in [("float32", 24), ("bfloat16", 8), ("float16", 11)]]
        [True, True, True]
    """
    return torch.finfo(as_dtype(dtype)).eps / 2


def vanishes(w: torch.Tensor, delta: torch.Tensor, dtype: DType) -> torch.Tensor:
    """fl(fl(w) + fl(Δ)) == fl(w), elementwise: True where the update is lost to rounding in ``dtype``.

    Args:
        w: weights (any shape, any float dtype; rounded to ``dtype`` first, as they would be stored).
        delta: the update, same shape (rounded to ``dtype``; an update that underflows to 0 vanishes too).
        dtype: the storage format, e.g. "float32" or ``torch.bfloat16``.

    Example:
        >>> w = torch.ones(3, dtype=torch.float64)
        >>> vanishes(w, torch.tensor([2.0 ** -25, 2.0 ** -22, 1e-3], dtype=torch.float64), "float32").tolist()
        [True, False, False]
        >>> vanishes(w, torch.tensor([2.0 ** -25, 2.0 ** -22, 1e-3], dtype=torch.float64), "bfloat16").tolist()
        [True, True, True]
    """
    dt = as_dtype(dtype)
    if w.shape != delta.shape:
        raise ValueError(f"w and delta must have the same shape, got {tuple(w.shape)} and {tuple(delta.shape)}")
    w_d = w.detach().to(dt)
    return (w_d + delta.detach().to(dt)) == w_d


def vanishing_fraction(w: torch.Tensor, delta: torch.Tensor, dtype: DType) -> float:
    """#{i : Δᵢ ≠ 0 and fl(wᵢ + Δᵢ) = wᵢ} / #{i : Δᵢ ≠ 0} — the share of intended updates rounding erases."""
    moving = delta != 0
    n = int(moving.sum())
    if n == 0:
        raise ValueError("delta is zero everywhere: no update to lose")
    return float(vanishes(w[moving], delta[moving], dtype).sum()) / n


def smallest_update(dtype: DType, w: float = 1.0) -> float:
    """min{Δ > 0 : fl(w + Δ) ≠ w} in ``dtype``, found by bisection on real arithmetic (float64 Δ).

    For w = 1 this is half the gap to the next number, u = 2⁻ᵖ (a tie rounds to even, back to 1, so the
    answer lies just above u): 2⁻²⁴ in float32, 2⁻⁸ in bfloat16 — not ε, which is the gap itself.
    Δ is rounded to ``dtype`` before the addition, as ``vanishes`` does.

    Example:
        >>> round(smallest_update("float32") / 2.0 ** -24, 2), round(smallest_update("bfloat16") / 2.0 ** -8, 2)
        (1.0, 1.0)
    """
    dt = as_dtype(dtype)
    w_t = torch.tensor(w, dtype=F64)
    if w_t.to(dt) == 0:
        raise ValueError("w must be non-zero in the chosen dtype")
    lo, hi = 0.0, abs(w)  # fl(w + lo) == w, fl(w + hi) != w
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        if bool(vanishes(w_t, torch.tensor(mid, dtype=F64), dt)):
            lo = mid
        else:
            hi = mid
    return hi


def feasible_lr(alpha: float | np.ndarray, lr1: float, optimizer: str = "sgd") -> float | np.ndarray:
    """η(α) = η₁/α² for GD ("sgd"), η₁/α for Adam-type optimizers — the step a lock at strength α leaves.

    η₁ is the attacker's learning rate on the undefended model (α = 1). The exponents are the laws PAPER.md
    states ("SpecDef"): σ₁(∇²ℒ) ∝ α² caps GD, while Adam's normalised step is capped by the α-times larger
    activations C sees. ``experiments.race_table`` measures them.

    Example:
        >>> feasible_lr(1e3, 0.3, "sgd"), feasible_lr(1e3, 1e-2, "adam")
        (3e-07, 1e-05)
    """
    if optimizer not in LAWS:
        raise ValueError(f"optimizer must be one of {', '.join(LAWS)}, got {optimizer!r}")
    eta = lr1 / np.asarray(alpha, dtype=float) ** LAWS[optimizer]
    return float(eta) if eta.ndim == 0 else eta


def descent_lr(model: nn.Module, task) -> float:
    """η = 1/λ_max(∇²ℒ) — the descent-lemma step (half the GD stability limit 2/λ_max), measured by Lanczos."""
    loss_fn, theta = loss_fn_of(model, task)
    lam = float(top_eigenvalues(loss_fn, theta, which="LA").values[0])
    if not lam > 0:
        raise ValueError(f"the Hessian has no positive eigenvalue (λ_max = {lam:g}); no descent step exists")
    return 1.0 / lam


def gradient_step(model: nn.Module, task, lr: float, optimizer: str = "sgd") -> tuple[torch.Tensor, torch.Tensor]:
    """(w, Δ), both flat float64: Δ = −η·g (GD) or Adam's first step Δ = −η·g/(|g| + 1e-8) (m̂ = g, v̂ = g²).

    ``g`` is the exact gradient of ``task.loss(model)`` over the trainable parameters, taken on a float64
    copy of the model (the model itself is not touched).
    """
    net = copy.deepcopy(model).to(F64)
    params = [p for p in net.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    task64 = task_in(task, F64)
    grads = torch.autograd.grad(task64.loss(net), params, allow_unused=True, materialize_grads=True)
    w, g = flatten_params([p.detach() for p in params]), flatten_params(grads)  # (P,) each
    if optimizer == "sgd":
        delta = -lr * g
    elif optimizer == "adam":
        delta = -lr * g / (g.abs() + 1e-8)
    else:
        raise ValueError(f"optimizer must be 'sgd' or 'adam', got {optimizer!r}")
    return w, delta


def update_vanishing(model: nn.Module, task, lr: float, dtype: DType, optimizer: str = "sgd") -> float:
    """Fraction of one step's non-zero updates that vanish when the weights are stored in ``dtype``.

    Example:
        >>> from specdef_lite.optim.problems import teacher_student
        >>> p = teacher_student(seed=0)
        >>> update_vanishing(p.released, p.task, 0.3, "float32")
        0.0
        >>> round(update_vanishing(specdef(p.released, 1e4), p.task, 0.3 / 1e8, "bfloat16"), 3)
        0.999
    """
    w, delta = gradient_step(model, task, lr, optimizer)
    return vanishing_fraction(w, delta, dtype)


def forward_error(model: nn.Module, alpha: float, inputs: torch.Tensor, dtype: DType, *, k: int = 1,
                  targets=None) -> float:
    """‖f̃(x) − f(x)‖ / ‖f(x)‖ with f̃ = the model locked at α and run in ``dtype``, f the float64 original.

    Grows like α·ε for a locked model (PAPER.md, "Numerics"); at α = 1 it is the format's own rounding.
    """
    dt = as_dtype(dtype)
    net64 = copy.deepcopy(model).to(F64)
    x64 = inputs.detach().to(F64)
    with torch.no_grad():
        ref = net64(x64)
        out = specdef(net64, alpha, k=k, targets=targets).to(dt)(x64.to(dt)).to(F64)
    return float((out - ref).norm() / ref.norm())


@dataclass(frozen=True)
class VanishingTable:
    """Per α: the feasible learning rates, each step's relative updates |Δᵢ|/|wᵢ|, and which of them vanish.

    Attributes:
        alphas: (A,) the lock strengths.
        lrs: optimizer → (A,) the learning rate used at each α.
        rel_updates: optimizer → (A, P) float64 |Δᵢ|/|wᵢ| (NaN where Δᵢ = 0 or wᵢ = 0).
        vanished: (optimizer, dtype) → (A, P) bool, fl(wᵢ + Δᵢ) = wᵢ (False where Δᵢ = 0).
        groups: (P,) the kind of each parameter entry: "W̃", "C" or "other" (biases, plain layers).
        forward_errors: dtype → (A,) ``forward_error`` of the locked model on the task's inputs.
        dtypes: the dtype names.
    """
    alphas: np.ndarray
    lrs: dict[str, np.ndarray]
    rel_updates: dict[str, np.ndarray]
    vanished: dict[tuple[str, str], np.ndarray]
    groups: np.ndarray
    forward_errors: dict[str, np.ndarray] = field(default_factory=dict)
    dtypes: tuple[str, ...] = ()

    def fraction(self, optimizer: str, dtype: str, group: str | None = None) -> np.ndarray:
        """(A,) share of the moving entries (of one ``group``, or all) whose update vanished, per α."""
        moving = ~np.isnan(self.rel_updates[optimizer]) | self.vanished[(optimizer, dtype)]
        if group is not None:
            moving = moving & (self.groups == group)[None, :]
        lost = self.vanished[(optimizer, dtype)] & moving
        return lost.sum(1) / np.maximum(moving.sum(1), 1)


def param_groups(model: nn.Module) -> np.ndarray:
    """(P,) "W̃" / "C" / "other" for every entry of the trainable parameters, in ``gradient_step``'s order."""
    labels = []
    for name, p in model.named_parameters():
        if p.requires_grad:
            leaf = name.rpartition(".")[2]
            labels += [{"W_tilde": "W̃", "C": "C"}.get(leaf, "other")] * p.numel()
    return np.array(labels)


def vanishing_table(model: nn.Module, task, alphas: Sequence[float], lr1: dict[str, float], *,
                    dtypes: Sequence[str] = ("float32", "bfloat16", "float16"), k: int = 1, targets=None,
                    gd_lr: str = "measured") -> VanishingTable:
    """For each α: lock, take one feasible step per optimizer, and test fl(wᵢ + Δᵢ) = wᵢ in each dtype.

    Args:
        model, task: the released model and the attacker's task (e.g. from ``teacher_student()``).
        lr1: optimizer ("sgd" / "adam") → η₁, its learning rate at α = 1.
        gd_lr: "measured" → GD uses η = min(η₁, 1/λ_max(α)) from Lanczos (``descent_lr``);
            "law" → η₁/α² (``feasible_lr``). Adam always uses η₁/α.
        k, targets: passed to ``specdef``.

    Example:
        >>> from specdef_lite.optim.problems import teacher_student
        >>> p = teacher_student(width=4, n=8, seed=0)
        >>> tab = vanishing_table(p.released, p.task, [1.0, 1e8], {"sgd": 0.3}, dtypes=["float32"])
        >>> tab.fraction("sgd", "float32").round(2).tolist()
        [0.0, 0.99]
    """
    alphas = list(alphas)

    def lr_at(o: str, i: int, locked: nn.Module) -> float:  # GD at min(η₁, 1/λ_max) when measured, else the law
        measured = o == "sgd" and gd_lr == "measured"
        return min(lr1[o], descent_lr(locked, task)) if measured else float(feasible_lr(float(alphas[i]), lr1[o], o))
    return step_table(model, task, alphas, list(lr1), lr_at, dtypes=dtypes, k=k, targets=targets)


def step_table(model: nn.Module, task, alphas: Sequence[float], optimizers: Sequence[str],
               lr_at: Callable[[str, int, nn.Module], float], *, dtypes: Sequence[str] = ("float32", "bfloat16"),
               k: int = 1, targets=None) -> VanishingTable:
    """For each αᵢ: lock, take one step Δ at η = ``lr_at(optimizer, i, locked)``, test fl(w + Δ) = w per dtype.

    The loop behind ``vanishing_table`` (η from a law or Lanczos) and ``experiments.low_precision.vanishing_at``
    (η the attacker's measured best response); ``optimizers`` are "sgd" and/or "adam" (``gradient_step``).
    """
    alphas = np.asarray(list(alphas), dtype=float)
    for d in dtypes:
        as_dtype(d)
    lrs, rel = {o: np.zeros(len(alphas)) for o in optimizers}, {o: [] for o in optimizers}
    lost: dict[tuple[str, str], list[np.ndarray]] = {(o, d): [] for o in optimizers for d in dtypes}
    groups = param_groups(specdef(model, 1.0, k=k, targets=targets))  # the same entries at every α
    for i, a in enumerate(alphas):
        locked = specdef(model, float(a), k=k, targets=targets)
        for o in optimizers:
            lrs[o][i] = lr_at(o, i, locked)
            w, delta = gradient_step(locked, task, float(lrs[o][i]), o)  # flat float64 (P,)
            rel[o].append(np.where(((delta == 0) | (w == 0)).numpy(), np.nan, (delta.abs() / w.abs()).numpy()))
            for d in dtypes:
                lost[(o, d)].append((vanishes(w, delta, d) & (delta != 0)).numpy())
    errors = {d: np.array([forward_error(model, float(a), task.inputs, d, k=k, targets=targets) for a in alphas])
              for d in dtypes} if getattr(task, "inputs", None) is not None else {}
    return VanishingTable(alphas, lrs, {o: np.stack(v) for o, v in rel.items()},
                          {key: np.stack(v) for key, v in lost.items()}, groups, errors, tuple(dtypes))


def task_in(task, dtype: DType):
    """The task with its floating tensors in ``dtype`` (a shallow copy; tasks are small)."""
    dtype = as_dtype(dtype)
    t = copy.copy(task)
    for name in ("inputs", "targets", "H", "minimiser"):
        v = getattr(t, name, None)
        if isinstance(v, torch.Tensor) and v.is_floating_point():
            object.__setattr__(t, name, v.to(dtype))  # a frozen ToyTask too (t is a copy)
    return t
