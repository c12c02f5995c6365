"""SpecDef: W = U Σ Vᵀ  →  W̃ = U Σ̃ Vᵀ with Σ̃ = diag(α,…,α,1,…,1) Σ, followed by C = I − (1 − 1/α) U_k U_kᵀ.

The defence of PAPER.md ("SpecDef"): one algebraic pass, no training. Every target linear layer
y = W x + b becomes ``SpecDefLinear``: y = C (W̃ x) + b. Because P = U_k U_kᵀ is an orthogonal projector,

    C W̃ = (I − (1 − 1/α) P)(I + (α − 1) P) W = W        (P² = P)

holds exactly for *any* orthonormal U_k, so a partial SVD (``method="lowrank"``) keeps the lock exact;
only how precisely the top-k singular values get multiplied by α depends on how accurate U_k is.

Why float64: the SVD and the products are formed in float64 and cast back once, so the stored W̃ and C
carry one rounding each. In float32 the layer still computes W̃x (α times larger along U_k) before C
cancels it, so its forward error grows like α·ε_machine; ``compute_dtype=torch.float64`` runs the
deformed layers in float64 to remove that error at a speed cost (see ``precision`` in the course).

Guards (``guards``): before anything is allocated, ``specdef`` estimates the forward error of the lock in the
dtype the pairs will be stored in (≈ c·α·ε, ``forward_error_estimate``) and the bytes of every C (m × m), and
refuses layers that a lock would not reproduce faithfully (a subclass with its own ``forward``, hooks, a
parametrised weight, a layer whose parent reads ``.weight`` directly, as ``nn.MultiheadAttention`` does).
"""
from __future__ import annotations

import copy
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from .guards import (MAX_BYTES, MAX_ERROR, PrecisionWarning, check_alpha_k, check_bytes, check_model,
                     check_overflow, check_precision, forward_error_estimate, resolve_dtype)
from .lowrank import deformed_pair, top_k_krylov
from .targets import Targets, linear_weight, resolve_targets, set_module

__all__ = ["SpecDefLinear", "specdef", "scale_only", "deformed_layers", "deform_weight", "linear_weight",
           "spectrum_ratio", "forward_error_estimate", "PrecisionWarning"]


class SpecDefLinear(nn.Module):
    """y = C (W̃ x) + b — a deformed linear layer: W̃ (out×in), then compensation C (out×out), then bias.

    Both ``W_tilde`` and ``C`` are ordinary trainable parameters, as in the released model of the paper.
    ``alpha`` and ``k`` are kept as buffers so that a reloaded checkpoint still says what it is; dtype casts of
    the model (``.half()``, ``.to(torch.bfloat16)``) move them to the new device but never round them (α = 1e5
    would become inf in float16). ``compute_dtype`` (optional) runs the two products in that dtype (e.g.
    float64) and casts back; the pair stays stored in it when the rest of the model is cast.
    """

    def __init__(self, W_tilde: torch.Tensor, C: torch.Tensor, bias: torch.Tensor | None,
                 alpha: float, k: int, compute_dtype: torch.dtype | None = None):
        super().__init__()
        self.W_tilde = nn.Parameter(W_tilde)  # (out, in)
        self.C = nn.Parameter(C)  # (out, out)
        self.bias = None if bias is None else nn.Parameter(bias)  # (out,)
        self.register_buffer("alpha", torch.tensor(float(alpha), dtype=torch.float64, device=W_tilde.device))
        self.register_buffer("k", torch.tensor(int(k), dtype=torch.int64, device=W_tilde.device))
        self.compute_dtype = compute_dtype

    @property
    def in_features(self) -> int:
        return self.W_tilde.shape[1]

    @property
    def out_features(self) -> int:
        return self.W_tilde.shape[0]

    def _apply(self, fn, recurse=True):
        """``nn.Module._apply`` (behind ``.to``, ``.half``, ``.cuda`` …) with two exceptions: α and k keep their
        dtype, and with a ``compute_dtype`` so do W̃ and C; all of them still follow device moves."""
        keep = {id(self.alpha), id(self.k)}
        if self.compute_dtype is not None:
            keep |= {id(self.W_tilde), id(self.C)}

        def apply_keeping_dtype(t):
            if id(t) not in keep:
                return fn(t)
            probe = fn(torch.empty(0, dtype=t.dtype, device=t.device))  # where and in what fn would put t
            return fn(t) if probe.dtype == t.dtype else t.to(probe.device)
        return super()._apply(apply_keeping_dtype, recurse)

    def pair(self, x: torch.Tensor) -> torch.Tensor:
        """C (W̃ x), without the bias."""
        if self.compute_dtype is not None and self.compute_dtype != x.dtype:
            cd = self.compute_dtype
            h = F.linear(F.linear(x.to(cd), self.W_tilde.to(cd)), self.C.to(cd))
            return h.to(x.dtype)
        if self.W_tilde.dtype != x.dtype:
            raise TypeError(f"input dtype {x.dtype} != layer dtype {self.W_tilde.dtype}")
        return F.linear(F.linear(x, self.W_tilde), self.C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pair(x)
        return h if self.bias is None else h + self.bias

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"alpha={float(self.alpha):g}, k={int(self.k)}, bias={self.bias is not None}"
                + ("" if self.compute_dtype is None else f", compute_dtype={self.compute_dtype}"))


def _top_k_svd(W: torch.Tensor, k: int, method: str, name: str):
    """U_k (m×k, float64, orthonormal) and σ_k (k,) of W; raises if k exceeds its numerical rank.

    ``"full"``: float64 SVD. ``"lowrank"``: block Krylov in W's dtype (``lowrank.top_k_krylov``), as many
    blocks as the spectral gap needs; a warning names the layer if σ₁(W̃)/(α σ₁(W)) may fall below 0.999.
    """
    m, n = W.shape
    if k > min(m, n):
        raise ValueError(f"k={k} exceeds the rank bound min(out, in)={min(m, n)} of layer {name!r}")
    if method == "full":
        U, S, _ = torch.linalg.svd(W.to(torch.float64), full_matrices=False)
        eps = torch.finfo(torch.float64).eps
    elif method == "lowrank":
        U, S, info = top_k_krylov(W, k)
        eps = torch.finfo(W.dtype).eps
        if not info.converged and info.remaining > 1e-3:
            warnings.warn(f"layer {name!r}: the partial SVD stopped after {info.blocks} Krylov blocks with the top "
                          f"singular values still rising (~{info.remaining:.1e} relative): σ₁(W̃)/(α σ₁(W)) may be "
                          f"below 0.999; method='full' keeps the promise exactly", RuntimeWarning, stacklevel=4)
    else:
        raise ValueError(f"method must be 'full' or 'lowrank', got {method!r}")
    tol = max(m, n) * eps * (S[0] if S.numel() else 0.0)
    rank = int((S > tol).sum()) if method == "full" else None
    if (rank is not None and k > rank) or S[k - 1] <= tol:
        raise ValueError(f"k={k} exceeds the numerical rank{'' if rank is None else f' ({rank})'} of layer {name!r}")
    return U[:, :k], S[:k]


def _reuse_replaced_weights(model: nn.Module, names: list[str]) -> dict[int, nn.Parameter]:
    """A ``copy.deepcopy`` memo that keeps the target layers' weights uncopied: each is read once, then its
    layer is replaced by a ``SpecDefLinear`` holding new W̃ and C, so copying it first only costs time and
    memory (85M parameters for GPT-2 small's 48 projections). A weight also used by a module that is not
    a target (tied, e.g. an LM head with the embedding) is copied as usual, so the copy never shares a
    tensor with ``model``.
    """
    targets = {id((model.get_submodule(n) if n else model).weight) for n in names}  # the Parameter itself
    owners: dict[int, set[str]] = {}
    for full, p in model.named_parameters(remove_duplicate=False):
        owners.setdefault(id(p), set()).add(full.rpartition(".")[0])
    weights = {id(p): p for p in model.parameters()}
    return {i: weights[i] for i in targets if i in weights and owners.get(i, set()) <= set(names)}


def deform_weight(W: torch.Tensor, alpha: float, k: int, method: str, name: str,
                   dtype: torch.dtype = torch.float64):
    """(W̃, C) in ``dtype``: W̃ = (I + (α − 1) U_k U_kᵀ) W = W + (α − 1) U_k Σ_k V_kᵀ,  C = I − (1 − 1/α) U_k U_kᵀ.

    Computed in float64 and rounded once into ``dtype`` (``lowrank.deformed_pair``, by row blocks: no
    float64 copy of W or C, no identity). The projector form keeps C W̃ = W exact even when U_k comes
    from an approximate (partial) SVD. Refused (ValueError, ``check_overflow``) when an entry of W̃ or C
    rounds to ±inf in ``dtype``; the bounds ``deformed_pair`` takes while the rows are in cache spare that
    check a second pass over them.
    """
    W = W.detach()
    bad = f"layer {name!r} has non-finite weights (NaN or inf); cannot take its SVD"
    if method == "full" and not torch.isfinite(W).all():
        raise ValueError(bad)
    with torch.no_grad():
        U_k, S_k = _top_k_svd(W, k, method, name)
    if not (torch.isfinite(S_k).all() and torch.isfinite(U_k).all()):  # a NaN or inf in W reaches every Ritz value
        raise ValueError(bad)
    with torch.no_grad():
        W_tilde, C, peaks = deformed_pair(W, U_k, float(alpha), dtype, peaks=True)
    check_overflow(name, W_tilde, C, dtype, alpha, peaks=peaks)
    return W_tilde, C


def _check_method(method: str) -> None:
    if method not in ("full", "lowrank"):
        raise ValueError(f"method must be 'full' or 'lowrank', got {method!r}")


def _plan(model: nn.Module, alpha, k, targets: Targets, method: str):
    """Validated (α, k, names, {name: W}) of a lock, before anything is copied or allocated."""
    alpha, k = check_alpha_k(alpha, k)
    _check_method(method)
    names = resolve_targets(model, targets, deformed=SpecDefLinear)
    weights = {n: linear_weight(model.get_submodule(n) if n else model)[0] for n in names}
    return alpha, k, names, weights


def specdef(model: nn.Module, alpha: float, k: int = 1, targets: Targets = None, *,
            method: str = "full", compute_dtype: torch.dtype | None = None, max_error: float | None = MAX_ERROR,
            max_bytes: int | None = MAX_BYTES) -> nn.Module:
    """Locked copy of ``model``: each target W → (W̃, C) with σᵢ(W̃) = α σᵢ(W) for i ≤ k and C W̃ = W.

    Args:
        model: any module tree; it is deep-copied and never modified.
        alpha: α > 0, finite; the top-k singular values are multiplied by α.
        k: how many singular values to scale, 1 ≤ k ≤ rank(W) for every target.
        targets: None (every ``nn.Linear`` / GPT-2 ``Conv1D``), a module name, a list of names, or a
            predicate ``(name, module) -> bool``. A layer registered under two names is locked under both.
        method: ``"full"`` float64 SVD (exact σ) or ``"lowrank"`` (block Krylov to the top-k singular
            vectors, as many passes as the spectral gap needs; for big layers).
        compute_dtype: optional dtype in which the deformed layers store W̃, C and compute (e.g.
            ``torch.float64``); inputs and outputs keep the model's dtype. Rounding W̃ to float32 alone
            already costs ~α·ε, so computing in float64 only helps if the pair is stored in float64 too.
        max_error: refuse when the estimated relative forward error c·α·ε of the storage format
            (``forward_error_estimate``) exceeds it, warn (``PrecisionWarning``) above a tenth of it; None: no check.
        max_bytes: refuse when the largest C (m×m in float64 while locking) or all Cs stored together exceed it.

    Returns:
        A new module; targets are replaced by ``SpecDefLinear`` with the original dtype (unless
        ``compute_dtype``) and device.

    Raises:
        ValueError: bad α, k, targets or method; a target that cannot be replaced faithfully (a subclass
            with its own forward, hooks, a parametrised weight, a parent that reads ``.weight``); a format in
            which the lock would destroy the function or overflow; a C above ``max_bytes``.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> net = nn.Linear(4, 3).double()
        >>> locked = specdef(net, alpha=100.0, k=1)
        >>> x = torch.randn(5, 4, generator=g, dtype=torch.float64)
        >>> bool(torch.allclose(locked(x), net(x), rtol=1e-10, atol=1e-12))
        True
        >>> round(spectrum_ratio(net, locked, "")[0].item(), 6)
        100.0
    """
    alpha, k, names, weights = _plan(model, alpha, k, targets, method)
    compute_dtype = resolve_dtype(compute_dtype, "compute_dtype")
    store = {n: compute_dtype or W.dtype for n, W in weights.items()}  # W̃ is ~α large: its rounding costs α·ε
    check_precision(alpha, store.values(), max_error)
    check_bytes([(n, W.shape[0], W.shape[1], store[n], W.device) for n, W in weights.items()], max_bytes)
    locked = copy.deepcopy(model, _reuse_replaced_weights(model, names))
    for name in names:
        layer = locked.get_submodule(name) if name else locked
        W, b = linear_weight(layer)
        W_tilde, C = deform_weight(W, alpha, k, method, name, dtype=store[name])  # rounded once, overflow refused
        new = SpecDefLinear(W_tilde, C, None if b is None else b.detach().clone(), alpha, k, compute_dtype)
        locked = set_module(locked, name, new)
    return locked


def scale_only(model: nn.Module, alpha: float, k: int = 1, targets: Targets = None, *,
               method: str = "full", max_bytes: int | None = MAX_BYTES) -> nn.Module:
    """Ablation: W → W̃ = W + (α − 1) U_k Σ_k V_kᵀ with no compensation, so the function changes with α.

    Same arguments as ``specdef``; targets stay plain ``nn.Linear`` layers holding W̃ (refused if W̃ would
    overflow the layer's dtype).
    """
    alpha, k, names, weights = _plan(model, alpha, k, targets, method)
    check_bytes([(n, W.shape[0], W.shape[1], W.dtype, W.device) for n, W in weights.items()], max_bytes,
                stored=False)
    scaled = copy.deepcopy(model)
    for name in names:
        layer = scaled.get_submodule(name) if name else scaled
        W, b = linear_weight(layer)
        W_tilde, _ = deform_weight(W, alpha, k, method, name)  # float64, so an overflow is reported by size
        check_overflow(name, W_tilde, W_tilde[:0], W.dtype, alpha)
        new = nn.Linear(W.shape[1], W.shape[0], bias=b is not None, device=W.device, dtype=W.dtype)
        with torch.no_grad():
            new.weight.copy_(W_tilde.to(W.dtype))
            if b is not None:
                new.bias.copy_(b)
        scaled = set_module(scaled, name, new)
    return scaled


def deformed_layers(model: nn.Module) -> list[str]:
    """Names of the ``SpecDefLinear`` modules in ``model`` ("" if the model itself is one)."""
    check_model(model)
    return [n for n, m in model.named_modules() if isinstance(m, SpecDefLinear)]


def spectrum_ratio(original: nn.Module, locked: nn.Module, name: str) -> torch.Tensor:
    """σᵢ(W̃)/σᵢ(W) for one layer, i = 1…min(m, n), in float64: α for i ≤ k, 1 after (if α σ_k ≥ σ_{k+1}).

    Reports how close a lock came to its promise, e.g. after ``method="lowrank"``.
    """
    for which, model in (("original", original), ("locked", locked)):
        check_model(model)
        if name not in dict(model.named_modules()):
            raise ValueError(f"layer {name!r} not found in the {which} model")
    W, _ = linear_weight(original.get_submodule(name) if name else original)
    layer = locked.get_submodule(name) if name else locked
    if not isinstance(layer, SpecDefLinear):
        raise ValueError(f"layer {name!r} of the locked model is not deformed")
    s = torch.linalg.svdvals(W.detach().double())
    s_tilde = torch.linalg.svdvals(layer.W_tilde.detach().double())
    # sort both descending: the ratio compares the i-th largest of each
    return s_tilde / s
