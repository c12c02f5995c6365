"""v ↦ A v on flat vectors: the one interface the eigen-solvers see.

Operator and algorithm are separate (as in hessian-eigenthings and curvlinops): Lanczos and power
iteration only ever ask for products, so the *same* solver runs on a dense test matrix with a known
spectrum (``as_operator(torch.diag(d))``) and on a Hessian it never forms (``HessianOperator``: one
Hessian-vector product per call, O(n) memory).

A Hessian operator is a matrix only if the loss is the same function at every product. A fresh
mini-batch per product (the old hessian-eigenthings, its issues #17 and #22), dropout or batch norm in
train mode, or random augmentation make every product a different matrix and the eigenvalues noise.
``check_deterministic`` multiplies one random vector twice and raises if the answers differ (like
curvlinops' ``_check_deterministic_matvec``). ``HessianOperator`` checks the loss itself on construction:
ℒ(θ) evaluated twice must agree, which costs one forward pass instead of two products.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from .products import FALLBACK, HVP_METHODS, ROUTE_ERRORS, LossFn, Params, flatten_params, hvp_by_route, warn_fallback
from .gradgraph import GradientGraph, as_scalar_loss

__all__ = ["LinearOperator", "as_operator", "HessianOperator", "check_deterministic"]


class LinearOperator:
    """A ↦ (v ↦ A v) for square A of shape (size, size); subclasses implement ``matvec``."""

    def __init__(self, size: int, dtype: torch.dtype, device: torch.device | str):
        self.size, self.dtype, self.device = int(size), dtype, torch.device(device)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.size, self.size)

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """A v for a flat (size,) vector v."""
        raise NotImplementedError

    def __matmul__(self, v: torch.Tensor) -> torch.Tensor:
        return self.matvec(v)

    def to_dense(self) -> torch.Tensor:
        """A as a dense (size, size) matrix, one product per column: for small operators and tests."""
        eye = torch.eye(self.size, dtype=self.dtype, device=self.device)
        return torch.stack([self.matvec(e) for e in eye], dim=1)  # column j = A e_j

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size}, dtype={self.dtype}, device={self.device})"


class _DenseOperator(LinearOperator):
    def __init__(self, A: torch.Tensor):
        super().__init__(A.shape[0], A.dtype, A.device)
        self.A = A  # (size, size)

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        return self.A @ v


class _CallableOperator(LinearOperator):
    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], size: int, dtype, device):
        super().__init__(size, dtype, device)
        self.fn = fn

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        return self.fn(v)


def as_operator(matrix_or_callable, size: int | None = None, dtype: torch.dtype | None = None,
                device: torch.device | str | None = None) -> LinearOperator:
    """A ↦ LinearOperator: a square matrix (tensor or array), a callable v ↦ A v (needs ``size``), or an operator.

    For a callable, dtype defaults to ``torch.get_default_dtype()`` and device to CPU.

    Example:
        >>> op = as_operator(torch.diag(torch.tensor([3.0, -1.0], dtype=torch.float64)))
        >>> op.size, op.matvec(torch.ones(2, dtype=torch.float64)).tolist()
        (2, [3.0, -1.0])
    """
    if isinstance(matrix_or_callable, LinearOperator):
        return matrix_or_callable
    if callable(matrix_or_callable) and not isinstance(matrix_or_callable, torch.Tensor):
        if size is None:
            raise ValueError("a callable v ↦ A v needs size=; for the Hessian of a loss_fn use "
                             "HessianOperator(loss_fn, params) or top_eigenvalues(loss_fn, params)")
        return _CallableOperator(matrix_or_callable, size, dtype or torch.get_default_dtype(), device or "cpu")
    A = torch.as_tensor(matrix_or_callable, dtype=dtype, device=device)
    if A.ndim != 2 or A.shape[0] != A.shape[1]:
        raise ValueError(f"expected a square matrix, got shape {tuple(A.shape)}")
    if size is not None and size != A.shape[0]:
        raise ValueError(f"size={size} does not match the matrix shape {tuple(A.shape)}")
    return _DenseOperator(A)


def check_deterministic(op: LinearOperator, *, seed: int = 0, rtol: float | None = None) -> None:
    """‖A v − A v‖ ≤ rtol·‖A v‖ for two products with one random v; raises ValueError otherwise.

    rtol defaults to √ε_mach of the operator's dtype (1.5e-8 in float64, 3.5e-4 in float32).

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> noisy = as_operator(lambda v: v + torch.randn(3, generator=g), size=3)
        >>> check_deterministic(noisy)
        Traceback (most recent call last):
        ...
        ValueError: operator is not deterministic: ...
    """
    rtol = torch.finfo(op.dtype).eps ** 0.5 if rtol is None else rtol
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(op.size, generator=g, dtype=op.dtype).to(op.device)
    Av1, Av2 = op.matvec(v), op.matvec(v)
    diff = float((Av1 - Av2).norm())
    scale = max(float(Av1.norm()), float(Av2.norm()), torch.finfo(op.dtype).tiny)
    if not diff <= rtol * scale:  # also catches NaN
        raise ValueError(
            f"operator is not deterministic: two products with the same vector differ by {diff / scale:.2e} "
            f"relative (> rtol {rtol:.1e}). Eigenvalues of a changing matrix are noise: fix the batch, put "
            f"the model in eval mode (dropout, batch norm) and remove random augmentation from the loss.")


class HessianOperator(LinearOperator):
    """v ↦ ∇²ℒ(θ) v for a fixed loss ℒ at fixed θ; v flat (n,), n = Σ numel(θᵢ), dtype/device of θ.

    With the double-backward route (``"auto"``'s first choice) the gradient g = ∇ℒ(θ) is built once
    with its graph and every product is one backward pass through it (``GradientGraph``): measured
    1.2–2.0 gradients a product after a build of 0.9–1.4, against 2.4–3.8 for a fresh double backward
    (``benchmarks/bench_hvp.py``, CNN / GPT-2 / MLP, shared machine under load). The graph stays in memory as long as the operator lives
    (``reuse_graph=False`` rebuilds it for every product instead).

    Args:
        loss_fn: ``loss_fn(params) -> scalar`` (see ``loss_fn_of``); must be deterministic.
        params: {name: tensor}, the point θ; held by reference, never modified.
        method: ``"auto"`` (default: double backward on the kept graph; if a product raises, forward-over-
            reverse, then finite differences, with a warning), or one route of ``hvp`` by name.
        eps: finite-difference step (``hvp``); check: evaluate ℒ twice now and raise if it changed
            (dropout or batch norm in train mode, a fresh batch per call: the "matrix" would be noise).

    Attributes: ``route``, the route in use (it may change once, on the first failing product of "auto").

    Example:
        >>> A = torch.tensor([[2.0, 1.0], [1.0, -3.0]], dtype=torch.float64)
        >>> op = HessianOperator(lambda p: 0.5 * p["x"] @ A @ p["x"], {"x": torch.ones(2, dtype=torch.float64)})
        >>> op.to_dense().tolist(), op.route
        ([[2.0, 1.0], [1.0, -3.0]], 'double-backward')
    """

    def __init__(self, loss_fn: LossFn, params: Params, method: str = "auto", *,
                 eps: float | None = None, check: bool = True, reuse_graph: bool = True):
        if method not in HVP_METHODS:
            raise ValueError(f"method must be one of {HVP_METHODS}, got {method!r}")
        self.params = dict(params)
        if not self.params:
            raise ValueError("params is empty: select at least one parameter")
        flat = flatten_params(self.params)
        super().__init__(flat.numel(), flat.dtype, flat.device)
        self.loss_fn, self.method, self.eps, self.reuse_graph = loss_fn, method, eps, reuse_graph
        self.route = "double-backward" if method == "auto" else method
        self._graph, self._confirmed = None, method != "auto"
        if self.route == "double-backward" and reuse_graph:
            try:
                self._graph = GradientGraph(loss_fn, self.params)
            except ROUTE_ERRORS as e:
                if method != "auto":
                    raise
                self._fall_back(e)
        if check:
            self._check_loss_deterministic()

    def _fall_back(self, error: Exception) -> None:
        i = FALLBACK.index(self.route)
        if i + 1 == len(FALLBACK):
            raise error
        warn_fallback(self.route, error, FALLBACK[i + 1])
        self.route, self._graph = FALLBACK[i + 1], None

    def _check_loss_deterministic(self) -> None:
        with torch.no_grad():
            first = float(self._graph.loss) if self._graph is not None else float(as_scalar_loss(self.loss_fn(self.params)))
            second = float(as_scalar_loss(self.loss_fn(self.params)))
        rtol = torch.finfo(self.dtype).eps ** 0.5
        if not abs(first - second) <= rtol * max(abs(first), abs(second), torch.finfo(self.dtype).tiny):
            raise ValueError(
                f"operator is not deterministic: two evaluations of the loss at the same θ gave {first!r} and "
                f"{second!r}. Eigenvalues of a changing matrix are noise: fix the batch, put the model in eval "
                f"mode (dropout, batch norm) and remove random augmentation from the loss.")

    def _product(self, v: torch.Tensor) -> torch.Tensor:
        if self._graph is not None:
            return self._graph.hvp(v)
        return hvp_by_route(self.loss_fn, self.params, v, self.route, self.eps)

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        v = v.to(self.dtype)
        while not self._confirmed:  # "auto": the first product that succeeds fixes the route
            try:
                Hv = self._product(v)
                self._confirmed = True
                return Hv
            except ROUTE_ERRORS as e:
                self._fall_back(e)
        return self._product(v)
