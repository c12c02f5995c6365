"""H v = ∇(∇ℒ(θ) · v) — Hessian-vector products and the dense Hessian of a loss over a parameter dict.

Everything here is functional: a loss is ``loss_fn(params: dict[str, Tensor]) -> scalar`` and nothing
touches a model's state. ``loss_fn_of`` builds one from a model and a task with
``torch.func.functional_call`` on a *snapshot* of the parameters, so the loss is a fixed function of θ
(a fixed batch) that the eigen-solvers can query many times (STYLE.md §4).

Vectors are **flat**: v has n = Σᵢ numel(θᵢ) entries in the order of the params dict
(``flatten_params`` / ``unflatten_like`` convert). That is what the operators and solvers use.

Three ways to get H v, all for the same loss:
  * ``"forward-over-reverse"`` (default): ``jvp(grad(ℒ), θ, v)``, one forward-mode pass through a
    backward pass; exact to rounding, about the cost of two gradients, no n×n object.
  * ``"double-backward"``: ``autograd.grad(∇ℒ · v, θ)``; exact too, for code without forward-mode rules.
  * ``"finite-difference"``: (∇ℒ(θ + εv) − ∇ℒ(θ − εv)) / 2ε, gradients only. Its truncation error is
    O(ε² ‖∇³ℒ‖) and its rounding error O(ε_mach ‖∇ℒ‖ / ε); they balance at ε ≈ ε_mach^{1/3}, so the step
    is ε = ε_mach^{1/3} · max(1, rms(θ)) / rms(v): ~6e-6 in float64 (≈1e-10 relative error), ~5e-3 in
    float32 (≈1e-4 relative error only — use float64 when the digits matter).

``hessian`` forms the dense n×n matrix with ``torch.func.hessian``; it is the reference the tests compare
against, and it refuses past ``max_params`` because n² grows fast (10⁵ parameters → 80 GB in float64).
"""
from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Mapping
from typing import Union

import torch
from torch import nn
from torch.func import functional_call, grad, jvp

LossFn = Callable[[dict[str, torch.Tensor]], torch.Tensor]
Params = dict[str, torch.Tensor]
Pattern = Union[None, str, Iterable[str]]
HVP_METHODS = ("forward-over-reverse", "double-backward", "finite-difference")

__all__ = ["hvp", "hessian", "loss_fn_of", "select_params", "flatten_params", "unflatten_like", "HVP_METHODS"]


def flatten_params(params: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """θ ↦ vec(θ): concatenation of the flattened tensors, in dict order; shape (n,)."""
    return torch.cat([t.reshape(-1) for t in params.values()])  # each t.shape -> (numel,), then (n,)


def unflatten_like(v: torch.Tensor, like: Mapping[str, torch.Tensor]) -> Params:
    """vec⁻¹: split a flat (n,) vector into tensors shaped like the values of ``like``."""
    n = sum(t.numel() for t in like.values())
    if v.ndim != 1 or v.numel() != n:
        raise ValueError(f"expected a flat vector of {n} entries, got shape {tuple(v.shape)}")
    chunks = torch.split(v, [t.numel() for t in like.values()])
    return {name: c.view_as(t) for (name, t), c in zip(like.items(), chunks)}  # (numel,) -> t.shape


def select_params(model: nn.Module, pattern: Pattern = None) -> dict[str, nn.Parameter]:
    """{name: parameter} of ``model`` chosen by ``pattern``, in ``named_parameters`` order.

    Args:
        pattern: None (every parameter with ``requires_grad``), a shell-style glob matched against the
            full name with ``fnmatch.fnmatchcase`` (``"*.C"``, ``"0.*"``; not a regex), or a list of
            exact names. Globs and names may pick frozen parameters too.

    Raises ValueError, listing the available names, when nothing (or an unknown name) matches.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1))
        >>> list(select_params(net, "*.weight"))
        ['0.weight', '2.weight']
    """
    named = dict(model.named_parameters())
    shown = ", ".join(named) if len(named) <= 20 else ", ".join(list(named)[:20]) + ", …"
    if pattern is None:
        chosen = [n for n, p in named.items() if p.requires_grad]
    elif isinstance(pattern, str):
        chosen = [n for n in named if fnmatch.fnmatchcase(n, pattern)]
    else:
        chosen = list(pattern)
        unknown = [n for n in chosen if n not in named]
        if unknown:
            raise ValueError(f"unknown parameter name(s) {unknown}; available: {shown}")
    if not chosen:
        raise ValueError(f"no parameter matches {pattern!r} (glob, fnmatch); available: {shown}")
    return {n: named[n] for n in named if n in set(chosen)}


def loss_fn_of(model: nn.Module, task, params: Pattern | Mapping[str, torch.Tensor] = None) -> tuple[LossFn, Params]:
    """ℒ(θ) = task.loss(f_θ) as a pure function of the selected parameters θ; the rest stay fixed.

    Args:
        model: any module; it is neither modified nor switched between train and eval mode (dropout in
            train mode makes the loss random, which ``HessianOperator`` will detect).
        task: an object with ``task.loss(f)``; ``f(*args)`` runs the model (``f()`` for a quadratic task).
        params: None / glob / list of names as in ``select_params``, or a dict {name: tensor} giving the
            values at which to evaluate (names must exist in the model).

    Returns:
        ``(loss_fn, params)``: ``loss_fn(dict) -> scalar`` and the selected values as detached copies
        (a snapshot, so later training of ``model`` does not change this loss).

    Example:
        >>> from types import SimpleNamespace
        >>> g = torch.Generator().manual_seed(0)
        >>> X = torch.randn(8, 3, generator=g, dtype=torch.float64)
        >>> net = nn.Linear(3, 1, bias=False).double()
        >>> task = SimpleNamespace(loss=lambda f: (f(X) ** 2).mean())  # H = (2/N) XᵀX
        >>> loss_fn, theta = loss_fn_of(net, task)
        >>> H = hessian(loss_fn, theta)
        >>> bool(torch.allclose(H, 2 / 8 * X.T @ X, rtol=1e-12, atol=1e-12))
        True
    """
    if isinstance(params, Mapping):
        named = dict(model.named_parameters())
        unknown = [n for n in params if n not in named]
        if unknown:
            raise ValueError(f"unknown parameter name(s) {unknown}; available: {', '.join(named)}")
        theta = {n: torch.as_tensor(t).detach().clone() for n, t in params.items()}
    else:
        theta = {n: p.detach().clone() for n, p in select_params(model, params).items()}
    fixed = {n: p.detach().clone() for n, p in model.named_parameters() if n not in theta}
    fixed.update({n: b.detach().clone() for n, b in model.named_buffers()})

    def loss_fn(p: Mapping[str, torch.Tensor]) -> torch.Tensor:
        state = {**fixed, **p}
        return task.loss(lambda *args, **kwargs: functional_call(model, state, args, kwargs))

    return loss_fn, theta


def _fd_step(params: Params, v: torch.Tensor) -> float:
    theta = flatten_params(params)
    eps = torch.finfo(theta.dtype).eps ** (1 / 3)
    rms = lambda t: float(t.norm()) / max(t.numel(), 1) ** 0.5  # noqa: E731
    return eps * max(1.0, rms(theta)) / max(rms(v), torch.finfo(theta.dtype).tiny)


def hvp(loss_fn: LossFn, params: Params, v: torch.Tensor, *, method: str = "forward-over-reverse",
        eps: float | None = None) -> torch.Tensor:
    """H v = ∇(∇ℒ(θ) · v) at θ = ``params``; v and the result are flat (n,) vectors in dict order.

    Args:
        method: ``"forward-over-reverse"``, ``"double-backward"`` or ``"finite-difference"`` (module docs).
        eps: finite-difference step ε (default ε_mach^{1/3}·max(1, rms θ)/rms v); ignored otherwise.

    Example:
        >>> d = torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64)
        >>> loss_fn = lambda p: 0.5 * (d * p["x"] ** 2).sum()  # H = diag(d)
        >>> x = {"x": torch.ones(3, dtype=torch.float64)}
        >>> v = torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64)
        >>> [hvp(loss_fn, x, v, method=m).tolist() for m in ("forward-over-reverse", "double-backward")]
        [[1.0, -2.0, 3.0], [1.0, -2.0, 3.0]]
        >>> [round(t, 6) for t in hvp(loss_fn, x, v, method="finite-difference").tolist()]
        [1.0, -2.0, 3.0]
    """
    params = dict(params)
    vs = unflatten_like(v.to(dtype=next(iter(params.values())).dtype), params)
    if method == "forward-over-reverse":
        _, Hv = jvp(grad(loss_fn), (params,), (vs,))
        return flatten_params(Hv).detach()
    if method == "double-backward":
        leaves = {n: t.detach().requires_grad_(True) for n, t in params.items()}
        with torch.enable_grad():
            g = torch.autograd.grad(loss_fn(leaves), list(leaves.values()), create_graph=True,
                                    allow_unused=True, materialize_grads=True)
            gv = sum((gi * vi).sum() for gi, vi in zip(g, vs.values()))
            if not gv.requires_grad:  # ℒ is at most linear in θ: H = 0
                return torch.zeros_like(v, dtype=gv.dtype)
            Hv = torch.autograd.grad(gv, list(leaves.values()), allow_unused=True, materialize_grads=True)
        return torch.cat([h.reshape(-1) for h in Hv]).detach()  # θᵢ.shape -> (numel,), then (n,)
    if method == "finite-difference":
        h = _fd_step(params, v) if eps is None else float(eps)
        g_plus = grad(loss_fn)({n: t + h * vs[n] for n, t in params.items()})
        g_minus = grad(loss_fn)({n: t - h * vs[n] for n, t in params.items()})
        return ((flatten_params(g_plus) - flatten_params(g_minus)) / (2 * h)).detach()
    raise ValueError(f"method must be one of {HVP_METHODS}, got {method!r}")


def hessian(loss_fn: LossFn, params: Params, max_params: int = 4000) -> torch.Tensor:
    """H = ∇²ℒ(θ), dense (n, n) in the dtype of ``params``, rows/columns in flat dict order.

    Raises ValueError when n > ``max_params``: the dense route costs n² memory; use
    ``top_eigenvalues(loss_fn, params)`` (HVPs, O(n) memory) or select fewer parameters.

    Example:
        >>> A = torch.tensor([[2.0, 1.0], [1.0, -3.0]], dtype=torch.float64)
        >>> loss_fn = lambda p: 0.5 * p["x"] @ A @ p["x"]  # H = A
        >>> hessian(loss_fn, {"x": torch.zeros(2, dtype=torch.float64)}).tolist()
        [[2.0, 1.0], [1.0, -3.0]]
    """
    params = dict(params)
    flat = flatten_params(params)
    n = flat.numel()
    if n > max_params:
        gb = n * n * flat.element_size() / 1e9
        raise ValueError(
            f"dense Hessian of n = {n:,} parameters needs n² = {n * n:,} entries = {gb:.2f} GB in {flat.dtype} "
            f"(max_params={max_params:,}); use top_eigenvalues(loss_fn, params) for its spectrum via "
            f"Hessian-vector products, or select fewer parameters (select_params / loss_fn_of(..., params=...))")
    H = torch.func.hessian(lambda w: loss_fn(unflatten_like(w, params)))(flat)
    return H.detach()
