"""The attacker's side (PAPER.md, "The limit"): fuse, layer injection, their parameter bill, blind detection.

SpecDef only reparameterises: the released model still computes f. An attacker who knows that can
  * **fuse** each pair back, W = C·W̃ — the undefended model exactly, zero extra parameters; or
  * **inject** a trainable D, initialised to I, after each pair (y = D·C·W̃x + b) and train only the Ds.
    The function is preserved, so each D sees the activations and Jacobians of the *undefended* model and
    its Hessian does not depend on α. Cost: one out×out matrix per deformed layer — linear in model size.
    (The construction is our reconstruction of the paper's theorem; see PAPER.md.)

Detection needs no metadata: a deformed pair leaves fingerprints in the singular values alone —
C has singular values {1/α (k times), 1, …, 1}, and W̃ has k singular values split off by a factor α.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .deform import SpecDefLinear, deformed_layers
from .guards import check_model, real_number
from .targets import Targets, is_linear, linear_weight, resolve_targets, set_module

__all__ = ["fuse", "inject", "InjectedLinear", "param_overhead", "ParamOverhead", "detect", "detect_scores",
           "DetectScores", "WeightScore"]


def fuse(model: nn.Module) -> nn.Module:
    """Copy of ``model`` with every (W̃, C) pair replaced by one ``nn.Linear`` holding W = C·W̃ (float64 product).

    Example:
        >>> from specdef_lite.lock.deform import specdef
        >>> net = nn.Linear(6, 4).double()
        >>> back = fuse(specdef(net, alpha=1e4, k=2))
        >>> float((back.weight - net.weight).detach().abs().max()) < 1e-10
        True
    """
    check_model(model)
    names = deformed_layers(model) + [n for n, m in model.named_modules() if isinstance(m, InjectedLinear)]
    if not names:
        raise ValueError("the model has no deformed (SpecDefLinear) or injected layer to fuse")
    fused = copy.deepcopy(model)
    for name in sorted(set(names), key=len, reverse=True):  # inner modules first
        layer = fused.get_submodule(name) if name else fused
        W = _fused_weight(layer)
        b = layer.bias
        new = nn.Linear(W.shape[1], W.shape[0], bias=b is not None, device=W.device, dtype=W.dtype)
        with torch.no_grad():
            new.weight.copy_(W)
            if b is not None:
                new.bias.copy_(b)
        fused = set_module(fused, name, new)
    return fused


def _fused_weight(layer: nn.Module) -> torch.Tensor:
    """The (out, in) matrix a deformed or injected layer applies before its bias, multiplied in float64."""
    if isinstance(layer, SpecDefLinear):
        W = layer.C.detach().double() @ layer.W_tilde.detach().double()  # (out,out)@(out,in)
        return W.to(layer.W_tilde.dtype)
    if isinstance(layer, InjectedLinear):
        inner = layer.inner
        inner = _fused_weight(inner) if isinstance(inner, (SpecDefLinear, InjectedLinear)) else linear_weight(inner)[0]
        return (layer.D.detach().double() @ inner.detach().double()).to(layer.D.dtype)
    raise TypeError(type(layer).__name__)


def _out_dtype_device(layer: nn.Module) -> tuple[int, torch.dtype, torch.device]:
    """(out features, dtype, device) of the matrix a linear, deformed or injected layer applies."""
    if isinstance(layer, SpecDefLinear):
        return layer.out_features, layer.W_tilde.dtype, layer.W_tilde.device
    if isinstance(layer, InjectedLinear):
        return layer.D.shape[0], layer.D.dtype, layer.D.device
    W, _ = linear_weight(layer)
    return W.shape[0], W.dtype, W.device


def _pre_bias(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What a linear, deformed or injected layer computes before adding its bias."""
    if isinstance(layer, SpecDefLinear):
        return layer.pair(x)
    if isinstance(layer, InjectedLinear):
        return F.linear(_pre_bias(layer.inner, x), layer.D)
    W, _ = linear_weight(layer)
    return F.linear(x, W)


class InjectedLinear(nn.Module):
    """y = D · inner(x)_{without bias} + b — a frozen released layer with a trainable D (out×out) after it.

    D starts at I, so the model's function is unchanged at injection time. ``inner`` may itself be injected
    (a second injection freezes the first D and adds a new one).
    """

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner
        m, dtype, device = _out_dtype_device(inner)
        self.D = nn.Parameter(torch.eye(m, dtype=dtype, device=device))  # (out, out)
        for p in self.inner.parameters():
            p.requires_grad_(False)

    @property
    def bias(self) -> torch.Tensor | None:
        return self.inner.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = _pre_bias(self, x)
        return h if self.bias is None else h + self.bias


def inject(model: nn.Module, targets: Targets = None) -> nn.Module:
    """Layer injection: freeze every released parameter, insert a trainable D = I after each target.

    Args:
        model: the released model (not modified).
        targets: None → every deformed (``SpecDefLinear``) layer; otherwise module names or a predicate,
            which may also name plain linear layers (to run the same attack on an undefended model).

    Returns:
        A copy whose only trainable parameters are the injected ``D`` matrices (``*.D``).
    """
    check_model(model)
    if targets is None:
        # every deformed pair, wrapped at its outermost injected layer if it was injected before
        outer = [n for n, m in model.named_modules() if isinstance(m, InjectedLinear)]
        names = []
        for n in deformed_layers(model):
            wrappers = [o for o in outer if n.startswith(o + ".") or o == "" and n]
            name = min(wrappers, key=len) if wrappers else n
            if name not in names:
                names.append(name)
        if not names:
            raise ValueError("the model has no deformed layer; pass targets= to inject after plain linear layers")
    names = resolve_targets(model, names if targets is None else targets, lockable=_injectable, verb="inject")
    attacked = copy.deepcopy(model)
    for p in attacked.parameters():
        p.requires_grad_(False)
    for name in names:
        attacked = set_module(attacked, name, InjectedLinear(attacked.get_submodule(name) if name else attacked))
    return attacked


def _injectable(module: nn.Module) -> bool:
    return is_linear(module) or isinstance(module, (SpecDefLinear, InjectedLinear))


@dataclass(frozen=True)
class ParamOverhead:
    """The attacker's bill: parameters before/after an attack, and how many are trainable afterwards."""
    params_before: int
    params_after: int
    added: int
    ratio: float
    trainable_after: int


def param_overhead(before: nn.Module, after: nn.Module) -> ParamOverhead:
    """added = |θ_after| − |θ_before|; ratio = |θ_after| / |θ_before|.

    Example:
        >>> from specdef_lite.lock.deform import specdef
        >>> net = nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 1))
        >>> bill = param_overhead(net, inject(specdef(net, 10.0, targets=["0"])))
        >>> bill.added, bill.trainable_after
        (128, 64)
    """
    check_model(before)
    check_model(after)
    n_before = sum(p.numel() for p in before.parameters())
    n_after = sum(p.numel() for p in after.parameters())
    if n_before == 0:
        raise ValueError("the model before the attack has no parameters: there is no bill to compare against")
    trainable = sum(p.numel() for p in after.parameters() if p.requires_grad)
    return ParamOverhead(n_before, n_after, n_after - n_before, n_after / n_before, trainable)


@dataclass(frozen=True)
class WeightScore:
    """One 2-D weight's fingerprints: ``gap`` = max_{i≤4} σᵢ/σᵢ₊₁, ``unit`` = share of σ within 1e-4 of 1, σ_min."""
    name: str
    shape: tuple[int, int]
    gap: float
    unit: float
    sigma_min: float

    def flagged(self, gap: float, unit: float) -> bool:
        """A compensation C (square, ≥ ``unit`` of σ at 1, σ_min < 1/``gap``) or a W̃ (top gap > ``gap``)."""
        square = self.shape[0] == self.shape[1]
        return (square and self.unit >= unit and self.sigma_min < 1.0 / gap) or self.gap > gap


@dataclass(frozen=True)
class DetectScores:
    """``WeightScore`` of every 2-D weight with ≥ 2 singular values, in ``named_parameters`` order.

    Iterating gives the scores; ``scores[name]`` the one of a parameter.
    """
    weights: tuple[WeightScore, ...]

    def __iter__(self):
        return iter(self.weights)

    def __len__(self) -> int:
        return len(self.weights)

    def __getitem__(self, name: str) -> WeightScore:
        for w in self.weights:
            if w.name == name:
                return w
        raise KeyError(name)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(w.name for w in self.weights)


def detect_scores(model: nn.Module) -> DetectScores:
    """For every 2-D weight: ``gap`` = max_{i≤4} σᵢ/σᵢ₊₁ and ``unit`` = fraction of σ within 1e-4 of 1.

    A compensation C = I − (1 − 1/α)U_kU_kᵀ has unit ≈ 1 − k/m and its smallest σ = 1/α; a W̃ has gap ≈ α.

    Example:
        >>> from specdef_lite.lock.deform import specdef
        >>> C = detect_scores(specdef(nn.Linear(8, 8).double(), alpha=1e3, k=2))["C"]
        >>> C.shape, C.unit, round(1 / C.sigma_min)
        ((8, 8), 0.75, 1000)
    """
    check_model(model)
    scores = []
    for name, p in model.named_parameters():
        if p.ndim != 2 or min(p.shape) < 2:
            continue
        if not torch.isfinite(p).all():
            raise ValueError(f"parameter {name!r} holds NaN or inf: its singular values (and so detection) are undefined")
        s = torch.linalg.svdvals(p.detach().double())
        top = s[: min(5, s.numel())]
        gap = float((top[:-1] / top[1:].clamp_min(1e-300)).max())
        unit = float(((s - 1).abs() < 1e-4).double().mean())
        scores.append(WeightScore(name, (p.shape[0], p.shape[1]), gap, unit, float(s[-1])))
    return DetectScores(tuple(scores))


def detect(model: nn.Module, *, gap: float = 20.0, unit: float = 0.5) -> list[str]:
    """Blind detection: names of modules whose weights look like a SpecDef pair, from singular values alone.

    A module is flagged if one of its 2-D parameters is square with ≥ ``unit`` of its singular values at 1
    and its smallest < 1/``gap`` (a compensation C), or has a spectral gap σᵢ/σᵢ₊₁ > ``gap`` among its top
    five (a W̃ with α > gap). Names and module types are ignored, so renaming does not hide a pair.

    How it fails: α below ~``gap`` hides in the natural spread of trained spectra (false negatives); layers
    with a genuinely huge gap (embeddings, low-rank adapters, weights near rank one) are flagged too (false
    positives); and a defender who merged C into the next layer where no non-linearity intervenes would
    leave only the W̃ fingerprint. A layer with a single output or input (a scalar read-out) has one
    singular value and so no spectrum to read: its pair (a 1×n W̃, a 1×1 C = 1/α) is invisible here.

    Example:
        >>> from specdef_lite.lock.deform import specdef
        >>> torch.manual_seed(0) and None
        >>> net = nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 1))
        >>> detect(specdef(net, 1e3, targets=["2"]))
        ['2']
        >>> detect(net)
        []
    """
    gap = real_number("gap", gap)
    if gap <= 1:
        raise ValueError(f"gap must be > 1 (a ratio σᵢ/σᵢ₊₁ ≥ 1 always), got {gap}")
    unit = real_number("unit", unit)
    if unit > 1:
        raise ValueError(f"unit must be a fraction in (0, 1], got {unit}")
    flagged = []
    for score in detect_scores(model):
        module = score.name.rpartition(".")[0]
        if score.flagged(gap, unit) and module not in flagged:
            flagged.append(module)
    return flagged
