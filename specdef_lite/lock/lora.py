"""LoRA attacks through peft: a trainable rank-r B·A added to W̃, to C, to both, or to a plain layer's W.

Where the attacker puts the adapter decides what curvature it sees (PAPER.md, "SpecDef"). A locked layer
computes y = C W̃ x + b with W̃ = (I + (α−1)U_kU_kᵀ)W and C = I − (1−1/α)U_kU_kᵀ:

* ``on="c"``:  C → C + B·A, so y = W x + B·(A W̃ x). The adapter's input is W̃x, α times larger along the
  top-k directions: the loss's curvature in B grows like α² — the adapter on C sees the α-stiff lock.
* ``on="w_tilde"``: W̃ → W̃ + B·A, so y = W x + C·B·(A x). Its input is the layer's own x, and C shrinks
  its output along U_k by 1/α: the curvature in B is never above the undefended adapter's, but along U_k
  it is α² smaller — an update there needs α-times larger B (ill-conditioning, not stiffness).
* ``on="both"``: both of the above in the same layer.
* ``on="weight"``: W → W + B·A on a plain ``nn.Linear`` — the undefended model, or the fused one
  (``attacks.fuse`` restores W = C W̃, so this is the informed attacker's LoRA).

W̃ and C are parameters of ``SpecDefLinear``, not modules, so they are targeted with peft's
``LoraConfig(target_parameters=[...])`` (peft's ``lora.ParamWrapper`` adds B·A to the parameter while the
layer runs); ``SpecDefLinear`` and its state-dict keys ``W_tilde`` / ``C`` stay as they are, so released
checkpoints keep loading. Plain layers use the ordinary ``target_modules`` path. Only the adapters train
(peft freezes everything else). A is drawn from a local generator, U(−1/√fan_in, 1/√fan_in) as peft's
default, and B = 0, so the model's function is unchanged when the attack starts.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch
from torch import nn

from .deform import SpecDefLinear, deformed_layers
from .targets import is_linear

__all__ = ["PLACEMENTS", "lora", "adapter_params", "adapter_size", "is_adapter", "describe"]

PLACEMENTS = ("w_tilde", "c", "both", "weight")
_PARAMS = {"w_tilde": ("W_tilde",), "c": ("C",), "both": ("W_tilde", "C")}


def lora(model: nn.Module, r: int, on: str = "c", targets: str | Sequence[str] | None = None, *,
         scaling: float = 1.0, seed: int = 0, inplace: bool = False) -> nn.Module:
    """A peft copy of ``model`` with a rank-r adapter M → M + s·B·A (B: out×r, A: r×in) on each target's M.

    Args:
        model: the released model (not modified): locked (``SpecDefLinear`` layers) or plain.
        r: adapter rank, ≥ 1.
        on: ``"w_tilde"``, ``"c"``, ``"both"`` (locked layers) or ``"weight"`` (plain ``nn.Linear``).
        targets: layer names (a name or a list); default every deformed layer (``w_tilde``/``c``/``both``) or
            every ``nn.Linear`` (``weight``).
        scaling: s = peft's ``lora_alpha / r`` (1: the update is exactly B·A).
        seed: seeds A (a local ``torch.Generator``); B starts at 0, so the function is unchanged.
        inplace: adapt ``model`` itself (peft rewraps its target layers and freezes its parameters) instead of a
            deep copy — for a working copy that is already the attacker's own (``llm.attack``).

    Returns:
        A ``peft.PeftModel`` whose only trainable parameters are the adapters (``adapter_params``).

    Example:
        >>> from specdef_lite import problems, specdef
        >>> p = problems.teacher_student(seed=0)
        >>> m = lora(specdef(p.released, 1e3, targets=["0", "2"]), r=2, on="c")
        >>> adapter_size(m), bool(torch.equal(m(p.task.inputs), m.get_base_model()(p.task.inputs)))
        (128, True)
    """
    from peft import LoraConfig, get_peft_model
    if on not in PLACEMENTS:
        raise ValueError(f"on must be one of {PLACEMENTS}, got {on!r}")
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise ValueError(f"the adapter rank r must be a positive integer, got {r!r}")
    modules = dict(model.named_modules())
    if targets is None:
        names = deformed_layers(model) if on != "weight" else [n for n, m in modules.items() if n and is_linear(m)]
        if not names:
            raise ValueError("the model has no deformed layer: use on='weight' for a plain (or fused) model"
                             if on != "weight" else "the model has no nn.Linear layer")
    else:
        names = [targets] if isinstance(targets, str) else list(targets)
    for n in names:
        m = modules.get(n)
        if m is None or not n:
            raise ValueError(f"target {n!r} not found in the model")
        if on == "weight" and not isinstance(m, nn.Linear):
            hint = " (a locked pair: choose on='w_tilde', 'c' or 'both', or fuse it first)" if isinstance(m, SpecDefLinear) else ""
            raise ValueError(f"target {n!r} is a {type(m).__name__}, not an nn.Linear{hint}")
        if on != "weight" and not isinstance(m, SpecDefLinear):
            raise ValueError(f"target {n!r} is a {type(m).__name__}, not a locked SpecDefLinear: use on='weight'")
    kw = ({"target_modules": names} if on == "weight" else
          {"target_modules": [], "target_parameters": [f"{n}.{p}" for n in names for p in _PARAMS[on]]})
    config = LoraConfig(r=r, lora_alpha=scaling * r, lora_dropout=0.0, bias="none", **kw)
    peft_model = get_peft_model(model if inplace else copy.deepcopy(model), config)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if ".lora_A." in name:  # (r, in)
                bound = 1.0 / math.sqrt(p.shape[1])
                p.copy_(torch.rand(p.shape, generator=g, dtype=torch.float64).mul_(2 * bound).sub_(bound))
            elif ".lora_B." in name:  # (out, r)
                p.zero_()
    return peft_model


def adapter_params(model: nn.Module) -> list[str]:
    """Names of the LoRA adapter parameters (``lora_A`` / ``lora_B``) of a peft model — what the attack trains."""
    return [n for n, _ in model.named_parameters() if ".lora_A." in n or ".lora_B." in n]


def adapter_size(model: nn.Module) -> int:
    """Σ r·(in + out) over every adapted matrix: the attacker's extra parameters."""
    return sum(p.numel() for n, p in model.named_parameters() if ".lora_A." in n or ".lora_B." in n)


def is_adapter(name: str) -> bool:
    """Whether a parameter name belongs to a LoRA adapter (``lora_A`` / ``lora_B``)."""
    return ".lora_A." in name or ".lora_B." in name


_SYMBOL = {"w_tilde": "W̃", "c": "C", "both": "W̃ and C", "weight": "W"}


def describe(r: int, on: str, targets: Sequence[str]) -> str:
    """'r=8 on C of 3 layers': one LoRA attack in words."""
    return f"r={r} on {_SYMBOL[on]} of {len(targets)} layer{'s' if len(targets) != 1 else ''}"
