"""H v = ∇(∇ℒ(θ) · v) — Hessian-vector products and the dense Hessian of a loss over a parameter dict.

Everything here is functional: a loss is ``loss_fn(params: dict[str, Tensor]) -> scalar`` and nothing
touches a model's state. ``loss_fn_of`` builds one from a model and a task with
``torch.func.functional_call`` on a *snapshot* of the parameters, so the loss is a fixed function of θ
(a fixed batch) that the eigen-solvers can query many times (STYLE.md §4). The loss must be one number:
a per-sample loss (shape (N,) or (N, 1)) is refused with a ValueError, since it has N Hessians, not one.

Vectors are **flat**: v has n = Σᵢ numel(θᵢ) entries in the order of the params dict
(``flatten_params`` / ``unflatten_like`` convert). That is what the operators and solvers use.

Routes to H v, all exact to rounding except finite differences. Their cost, in units of one gradient
(forward + backward) of the same loss, was measured side by side by ``benchmarks/bench_hvp.py`` on a
71k-parameter tanh CNN / a 2-layer GPT-2 (118k, eager attention) / the locked 946-parameter MLP (float64),
in two runs on a shared 2-core Xeon under load 3–6 (indicative; benchmarks/RESULTS.md has the run):

  * ``"double-backward"``: ``autograd.grad(∇ℒ · v, θ)`` with ``create_graph``: 2.9–3.8 / 1.0–3.6 / 2.4–3.5.
  * ``"forward-over-reverse"``: ``jvp(grad(ℒ), θ, v)``: 2.8–3.8 / 2.9–5.5 / 7–17 (torch.func's per-op
    overhead dominates small models). It fails on some losses: ``F.mse_loss`` with mean reduction raises
    "ZeroTensors are immutable" in torch 2.13.
  * ``"finite-difference"``: (∇ℒ(θ + εv) − ∇ℒ(θ − εv)) / 2ε, two gradients: 2.2–2.3 / 1.7–2.1 / 2.8–3.2.
    Truncation error O(ε² ‖∇³ℒ‖) and rounding error O(ε_mach ‖∇ℒ‖ / ε) balance at ε ≈ ε_mach^{1/3}, so
    the step is ε = ε_mach^{1/3} · max(1, rms(θ)) / rms(v): ≈1e-10 relative error in float64 but only
    ≈1e-4 in float32 — use float64 when the digits matter.
  * ``"auto"`` (the default): double-backward — exact, and the cheapest exact route for one product —
    and if the loss has an op without a double-backward rule, forward-over-reverse, then finite
    differences (with a warning that names the failure).

Many products at one θ (Lanczos, trace, density) should go through ``HessianOperator``: it builds the
gradient graph g = ∇ℒ once (0.9–1.4 gradients) and then each product is one backward pass through it
(1.8–2.0 / 1.3–1.9 / 1.2–1.5 gradients; hessian-eigenthings' fresh double backward: 3.3 / 2.4 / 2.3).

``hessian`` forms the dense n×n matrix from that same graph (``torch.func.hessian`` is *not* used: in
torch 2.13 it returns an asymmetric, wrong H for models with LayerNorm), checks the result for symmetry
and against one plain product, and refuses past ``max_params`` (10⁵ parameters → 80 GB in float64).
"""
from __future__ import annotations

import fnmatch
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Union

import torch
from torch import nn
from torch.func import functional_call, grad, jvp

from .gradgraph import GradientGraph, as_scalar_loss

LossFn = Callable[[dict[str, torch.Tensor]], torch.Tensor]
Params = dict[str, torch.Tensor]
Pattern = Union[None, str, Iterable[str]]
HVP_METHODS = ("auto", "double-backward", "forward-over-reverse", "finite-difference")
FALLBACK = ("double-backward", "forward-over-reverse", "finite-difference")  # the order "auto" tries
ROUTE_ERRORS = (RuntimeError, NotImplementedError)  # what "auto" falls back on (never a ValueError)

__all__ = ["hvp", "hvp_by_route", "hessian", "loss_fn_of", "select_params", "flatten_params", "unflatten_like", "HVP_METHODS"]


def flatten_params(params: Mapping[str, torch.Tensor] | Iterable[torch.Tensor]) -> torch.Tensor:
    """θ ↦ vec(θ): concatenation of the flattened tensors (a dict's values, in order); shape (n,)."""
    tensors = params.values() if isinstance(params, Mapping) else params
    return torch.cat([t.reshape(-1) for t in tensors])  # each t.shape -> (numel,), then (n,)


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


def _gradient(loss_fn: LossFn, params: Params) -> torch.Tensor:
    """∇ℒ(θ), flat (n,), by one plain backward pass (no graph kept)."""
    leaves = {n: t.detach().requires_grad_(True) for n, t in params.items()}
    with torch.enable_grad():
        loss = as_scalar_loss(loss_fn(leaves))
        if not loss.requires_grad:
            return torch.zeros(sum(t.numel() for t in params.values()), dtype=loss.dtype, device=loss.device)
        g = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True, materialize_grads=True)
    return torch.cat([gi.reshape(-1) for gi in g])  # θᵢ.shape -> (numel,), then (n,)


def hvp_by_route(loss_fn: LossFn, params: Params, v: torch.Tensor, method: str, eps: float | None) -> torch.Tensor:
    """H v by one named route (no fallback); ``hvp`` and ``HessianOperator`` choose the route and fall back."""
    vs = unflatten_like(v, params)
    if method == "double-backward":
        return GradientGraph(loss_fn, params).hvp(v)
    if method == "forward-over-reverse":
        _, Hv = jvp(grad(lambda p: as_scalar_loss(loss_fn(p))), (params,), (vs,))
        return flatten_params(Hv).detach()
    if method == "finite-difference":
        h = _fd_step(params, v) if eps is None else float(eps)
        g_plus = _gradient(loss_fn, {n: t + h * vs[n] for n, t in params.items()})
        g_minus = _gradient(loss_fn, {n: t - h * vs[n] for n, t in params.items()})
        return (g_plus - g_minus) / (2 * h)
    raise ValueError(f"method must be one of {HVP_METHODS}, got {method!r}")


def warn_fallback(method: str, error: Exception, next_method: str) -> None:
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    warnings.warn(f"Hessian-vector product: route {method!r} failed on this loss ({first[:160]}); "
                  f"falling back to {next_method!r}", RuntimeWarning, stacklevel=3)


def hvp(loss_fn: LossFn, params: Params, v: torch.Tensor, *, method: str = "auto",
        eps: float | None = None) -> torch.Tensor:
    """H v = ∇(∇ℒ(θ) · v) at θ = ``params``; v and the result are flat (n,) vectors in dict order.

    Args:
        method: ``"auto"`` (double-backward, falling back to forward-over-reverse, then finite
            differences when a route raises), or one route by name (module docs: cost and accuracy).
            An explicit route that fails raises, naming ``"auto"``.
        eps: finite-difference step ε (default ε_mach^{1/3}·max(1, rms θ)/rms v); ignored otherwise.

    For several products at the same θ use ``HessianOperator``: it keeps the gradient graph.

    Example:
        >>> d = torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64)
        >>> loss_fn = lambda p: 0.5 * (d * p["x"] ** 2).sum()  # H = diag(d)
        >>> x = {"x": torch.ones(3, dtype=torch.float64)}
        >>> v = torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64)
        >>> [hvp(loss_fn, x, v, method=m).tolist() for m in ("auto", "forward-over-reverse", "double-backward")]
        [[1.0, -2.0, 3.0], [1.0, -2.0, 3.0], [1.0, -2.0, 3.0]]
        >>> [round(t, 6) for t in hvp(loss_fn, x, v, method="finite-difference").tolist()]
        [1.0, -2.0, 3.0]
    """
    if method not in HVP_METHODS:
        raise ValueError(f"method must be one of {HVP_METHODS}, got {method!r}")
    params = dict(params)
    v = v.to(dtype=next(iter(params.values())).dtype)
    if method != "auto":
        try:
            return hvp_by_route(loss_fn, params, v, method, eps)
        except ROUTE_ERRORS as e:
            raise type(e)(f"{e}\n(HVP route {method!r} failed on this loss; method='auto' falls back to "
                          f"another route automatically)") from e
    for i, route in enumerate(FALLBACK):
        try:
            return hvp_by_route(loss_fn, params, v, route, eps)
        except ROUTE_ERRORS as e:
            if i + 1 == len(FALLBACK):
                raise
            warn_fallback(route, e, FALLBACK[i + 1])
    raise AssertionError("unreachable")  # pragma: no cover


def hessian(loss_fn: LossFn, params: Params, max_params: int = 4000) -> torch.Tensor:
    """H = ∇²ℒ(θ), dense (n, n) in the dtype of ``params``, rows/columns in flat dict order.

    Built column by column from the gradient graph (H eⱼ by double backward, batched with
    ``is_grads_batched``), then verified: ‖H − Hᵀ‖ ≤ √ε_mach ‖H‖ and H v equal to one unbatched product for
    a random v. If the batched route fails either check (or raises), the columns are recomputed one
    backward pass each and checked again; a Hessian that still fails raises RuntimeError.

    Raises ValueError when n > ``max_params`` (the dense route costs n² memory; use
    ``top_eigenvalues(loss_fn, params)`` — HVPs, O(n) memory — or select fewer parameters), and when the
    loss is not a single number.

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
    return GradientGraph(loss_fn, params).dense()
