"""Which layers a lock replaces: y = W x + b by type (``nn.Linear``, GPT-2 ``Conv1D``) *and* by use.

A layer can be an ``nn.Linear`` by type and still not compute F.linear(x, W, b) when its parent calls it: a
subclass with its own ``forward``, hooks that rewrite its input or output, a parametrised weight, or a parent that
never calls it and reads ``.weight`` directly (``nn.MultiheadAttention``'s ``out_proj``, the fast path of
``nn.TransformerEncoderLayer``). Replacing such a layer by y = C(W̃x) + b would silently change the model, so
``resolve_targets`` refuses it and says why. A layer registered under two names is one module: it is resolved
once and ``set_module`` replaces it under every name, so no raw copy is left behind.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Union

import torch
from torch import nn

from .guards import check_model

Targets = Union[None, str, Iterable[str], Callable[[str, nn.Module], bool]]

__all__ = ["Targets", "linear_weight", "is_linear", "is_conv1d", "resolve_targets", "set_module", "module_paths",
           "unfaithful_reason"]


def linear_weight(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(W, b) of a linear layer in the y = W x + b convention, W of shape (out, in).

    Hugging Face GPT-2 ``Conv1D`` stores its weight as (in, out); it is transposed here.
    """
    if isinstance(module, nn.Linear):
        return module.weight, module.bias
    if is_conv1d(module):
        return module.weight.T, module.bias  # (in, out) -> (out, in)
    raise TypeError(f"{type(module).__name__} is not a linear layer")


def is_conv1d(module: nn.Module) -> bool:
    """True for GPT-2's ``transformers.pytorch_utils.Conv1D`` (y = x W + b, W (in, out)), recognised by name so
    transformers stays optional."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf") and getattr(module, "weight", None) is not None


def is_linear(module: nn.Module) -> bool:
    """True for a layer computing y = W x + b: an ``nn.Linear`` or a GPT-2 ``Conv1D``."""
    return isinstance(module, nn.Linear) or is_conv1d(module)


def resolve_targets(model: nn.Module, targets: Targets, *, deformed: type | tuple[type, ...] = (),
                    lockable: Callable[[nn.Module], bool] = is_linear, verb: str = "lock") -> list[str]:
    """Names of the target layers (one per module, in model order); refuses what cannot be replaced faithfully.

    Args:
        targets: None (every ``lockable`` layer), a module name, a list of names, or a predicate (name, module).
        deformed: types refused as already deformed (``specdef`` passes ``SpecDefLinear``: fuse before re-locking).
        lockable: which modules may be targets (default: ``is_linear``; ``inject`` also accepts its own layers).
        verb: what the caller does, for the error message ("lock", "inject").
    """
    check_model(model)
    modules = dict(model.named_modules(remove_duplicate=False))  # every name, also a second name of one module
    if targets is None:
        names = [n for n, m in modules.items() if lockable(m)]
        if not names:
            raise ValueError("the model has no nn.Linear (or GPT-2 Conv1D) layer to deform")
    elif callable(targets):
        names = [n for n, m in modules.items() if n and targets(n, m)]
        if not names:
            raise ValueError("the targets predicate matched no module")
    else:
        if not isinstance(targets, (str, Iterable)) or isinstance(targets, bytes):
            raise TypeError(f"targets must be None, a module name, a list of names or a predicate "
                            f"(name, module) -> bool; got {type(targets).__name__}")
        names = [targets] if isinstance(targets, str) else list(targets)
        if not names:
            raise ValueError("targets is empty")
        for n in names:
            if not isinstance(n, str):
                raise TypeError(f"targets must hold module names (str), got {n!r}")
            if n not in modules or n == "" and not lockable(model):  # "" names the model itself
                linear = [m for m, mod in modules.items() if lockable(mod)]
                shown = ", ".join(linear[:8]) + (" …" if len(linear) > 8 else "")
                raise ValueError(f"target {n!r} not found in the model; linear layers are: {shown}")
    unique, seen = [], set()
    for n in names:  # one entry per module: a layer registered under two names is locked once, under both
        if id(modules[n]) not in seen:
            seen.add(id(modules[n]))
            unique.append(n)
    names = unique
    for n in names:
        m = modules[n]
        if isinstance(m, deformed):
            raise ValueError(f"target {n!r} is already deformed ({type(m).__name__}); fuse it first to re-lock")
        if not lockable(m):
            raise ValueError(f"target {n!r} is a {type(m).__name__}, not a linear layer (nn.Linear or Conv1D)")
    paths = module_paths(model)
    problems = [f"{n!r}: {why}" for n in names if (why := unfaithful_reason(model, modules[n], paths))]
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        hint = (" Pass targets= naming the other layers." if targets is None or callable(targets)
                else " Leave it out of targets.")
        raise ValueError(f"cannot {verb} faithfully — replacing these layers would change what the model computes: "
                         + "; ".join(problems[:3]) + more + "." + hint)
    return names


def set_module(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    """Put ``new`` at ``name`` and at every other name under which the same module is registered.

    ``new`` takes the replaced module's train/eval mode. Returns the root: ``model``, or ``new`` when ``name``
    is "" (the model itself is replaced), so callers write ``model = set_module(model, name, new)``.
    """
    old = model.get_submodule(name) if name else model
    new.train(old.training)
    if not name:
        return new
    for path in module_paths(model).get(id(old), [name]) or [name]:
        if not path:
            continue  # the root is registered under "" too; it is not replaced here
        parent_name, _, child = path.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, new)
    return model


def module_paths(model: nn.Module) -> dict[int, list[str]]:
    """id(module) → every name under which it is registered (a module can be registered twice)."""
    paths: dict[int, list[str]] = {}
    for n, m in model.named_modules(remove_duplicate=False):
        paths.setdefault(id(m), [])
        if n not in paths[id(m)]:
            paths[id(m)].append(n)
    return paths


_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


def unfaithful_reason(model: nn.Module, module: nn.Module, paths: dict[int, list[str]]) -> str | None:
    """Why replacing ``module`` by y = C(W̃x) + b would not compute what it computed, or None if it would."""
    if isinstance(module, nn.Linear) and type(module).forward is not nn.Linear.forward:
        return f"{type(module).__name__} subclasses nn.Linear with its own forward"
    hooks = [h for h in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
             if getattr(module, h, None)]
    if hooks:
        return f"it has {', '.join(h.strip('_').replace('_', ' ') for h in hooks)} (remove them first)"
    if getattr(module, "parametrizations", None):
        return "its weight is parametrized (torch.nn.utils.parametrize.remove_parametrizations first)"
    for path in paths.get(id(module), []):
        parent_name = path.rpartition(".")[0]
        if not path:
            continue
        parent = model.get_submodule(parent_name) if parent_name else model
        if type(parent).__module__.startswith("torch.nn.") and not isinstance(parent, _CONTAINERS):
            return (f"its parent {type(parent).__name__} reads its weight directly instead of calling it "
                    f"(as torch's attention and transformer layers do)")
    return None

