"""g = ∇ℒ(θ) kept with its autograd graph, so that every H v = ∇(g · v) is one backward pass through it.

Double backward computes H v in two stages: a first backward pass with ``create_graph=True`` gives the
gradient g *and* a graph of how g depends on θ; a second backward pass through that graph with the
vector v as its seed gives ∇(g·v) = H v. The first stage does not depend on v, so a solver that takes
many products at one θ (Lanczos, Hutchinson, SLQ, the dense Hessian) builds it once and reuses it
(``retain_graph=True``), as PyHessian does. Measured here (``benchmarks/bench_hvp.py``, under load):
building the graph costs about 0.9–1.4 gradients, every product after that 1.2–2.0, against 2.4–3.8 for
a fresh double backward per product.

The dense Hessian (``dense``) seeds the second stage with many basis vectors at once
(``is_grads_batched``, i.e. vmap over the backward graph). Batching rules are where torch has been
wrong before (``torch.func.hessian`` returns an asymmetric H for LayerNorm in torch 2.13), so the
result is checked: symmetric to √ε_mach and equal to one unbatched product on a random vector, else
recomputed one column per backward pass and checked again.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

__all__ = ["GradientGraph", "as_scalar_loss"]


def as_scalar_loss(loss) -> torch.Tensor:
    """ℒ as a 0-d tensor; ValueError for anything that is not one number (e.g. a per-sample loss).

    Example:
        >>> as_scalar_loss(torch.ones(4, 1)).shape
        Traceback (most recent call last):
        ...
        ValueError: the loss must be a single number (a scalar tensor), got shape (4, 1): ...
    """
    if not isinstance(loss, torch.Tensor):
        raise ValueError(f"the loss must be a scalar torch tensor with its graph, got {type(loss).__name__}")
    if loss.numel() != 1:
        raise ValueError(
            f"the loss must be a single number (a scalar tensor), got shape {tuple(loss.shape)}: a per-sample "
            f"loss has one Hessian per sample; reduce it first, e.g. .mean() or .sum() over the batch")
    return loss.reshape(())


class GradientGraph:
    """∇ℒ(θ) with its graph at a fixed θ; ``hvp(v)`` = H v, ``dense()`` = H, each by backward passes.

    Args:
        loss_fn: ``loss_fn(params) -> scalar``; params: {name: tensor}, the point θ (never modified).
    """

    def __init__(self, loss_fn: Callable[[dict[str, torch.Tensor]], torch.Tensor],
                 params: Mapping[str, torch.Tensor]):
        names = list(params)
        leaves = [t.detach().requires_grad_(True) for t in params.values()]
        with torch.enable_grad():
            self._build(loss_fn(dict(zip(names, leaves))), leaves)
        if not self.live:
            self._check_flat(loss_fn, names)
        self._check_no_error_node()

    @classmethod
    def of_loss(cls, loss: torch.Tensor, params: list[torch.Tensor]) -> GradientGraph:
        """The same object for a loss already computed from live ``params`` (an optimizer's closure).

        The gradient is taken with respect to ``params`` themselves (not copies), so an optimizer can build
        g once per step and take H v or H from it. No finite-difference check of a flat ℒ (there is no
        ``loss_fn`` to re-evaluate): a loss with no second-order graph is taken to have H = 0.
        """
        self = cls.__new__(cls)
        with torch.enable_grad():
            self._build(loss, list(params))
        self._check_no_error_node()
        return self

    def _build(self, loss, leaves: list[torch.Tensor]) -> None:
        """g = ∇ℒ with create_graph=True (zeros for parameters ℒ does not use)."""
        self.leaves = leaves
        self.sizes = [t.numel() for t in self.leaves]
        self.n = sum(self.sizes)
        self.loss = as_scalar_loss(loss)
        if self.loss.requires_grad:
            g = torch.autograd.grad(self.loss, self.leaves, create_graph=True, allow_unused=True,
                                    materialize_grads=True)
        else:  # ℒ does not depend on θ
            g = [torch.zeros_like(t) for t in self.leaves]
        self.g = list(g)
        self.live = [i for i, gi in enumerate(self.g) if gi.requires_grad]  # parts of g that depend on θ
        self.dtype, self.device = self.leaves[0].dtype, self.leaves[0].device

    def _check_no_error_node(self) -> None:
        """Raise if g's graph passes through a node that cannot be differentiated again.

        A custom ``autograd.Function`` marked ``@once_differentiable`` puts a ``DelayedError`` node into
        the gradient graph; a second backward pass then skips the paths behind it and, with
        ``allow_unused``, returns zeros for them instead of raising. Walking the graph once finds it.
        """
        seen, stack = set(), [self.g[i].grad_fn for i in self.live]
        while stack:
            fn = stack.pop()
            if fn is None or fn in seen:
                continue
            seen.add(fn)
            if type(fn).__name__ in {"Error", "DelayedError"}:
                raise RuntimeError("the gradient graph contains a function marked @once_differentiable (a custom "
                                   "autograd.Function): double backward through it is not defined")
            stack.extend(f for f, _ in fn.next_functions)

    def _check_flat(self, loss_fn, names: list[str]) -> None:
        """Autograd sees H = 0: confirm it by differences along a random v, else the graph is broken.

        A genuinely linear (or constant) ℒ has ∇ℒ(θ + hv) = ∇ℒ(θ − hv) (and a constant ℒ(θ ± hv)) to
        rounding. A custom ``autograd.Function`` whose backward is not differentiable, or a loss computed
        under ``torch.no_grad``, also shows no graph — and would otherwise be reported as H = 0.
        """
        g = torch.Generator().manual_seed(0)
        v = [torch.randn(t.shape, generator=g, dtype=self.dtype).to(self.device) for t in self.leaves]
        rms = (sum(float(t.detach().pow(2).sum()) for t in self.leaves) / max(self.n, 1)) ** 0.5
        h = torch.finfo(self.dtype).eps ** (1 / 3) * max(1.0, rms)
        tol = torch.finfo(self.dtype).eps ** 0.5

        def at(sign: float) -> torch.Tensor:
            point = [(t + sign * h * vi).detach().requires_grad_(True) for t, vi in zip(self.leaves, v)]
            with torch.enable_grad():
                loss = as_scalar_loss(loss_fn(dict(zip(names, point))))
                if not self.loss.requires_grad:
                    return loss.detach().reshape(1)
                return torch.cat([gi.reshape(-1) for gi in torch.autograd.grad(
                    loss, point, allow_unused=True, materialize_grads=True)])

        plus, minus = at(1.0), at(-1.0)
        centre = self.loss.detach().reshape(1) if not self.loss.requires_grad else self.gradient()
        change = float((plus - minus).norm())
        if not change <= tol * max(float(plus.norm()), float(minus.norm()), float(centre.norm())):
            what = "ℒ" if not self.loss.requires_grad else "∇ℒ"
            raise RuntimeError(
                f"autograd sees no second-order dependence on θ, but {what} changes along a random direction "
                f"(relative change {change / max(float(centre.norm()), 1e-300):.1e}): the graph is broken (a loss "
                f"computed under torch.no_grad, a detach, or a custom autograd.Function whose backward is not "
                f"differentiable); the 'finite-difference' route needs gradients only")

    def gradient(self) -> torch.Tensor:
        """g = ∇ℒ(θ), flat (n,), detached."""
        return torch.cat([gi.detach().reshape(-1) for gi in self.g])  # θᵢ.shape -> (numel,), then (n,)

    def split(self, V: torch.Tensor) -> list[torch.Tensor]:
        """(…, n) -> one (…, *θᵢ.shape) block per parameter."""
        return [c.reshape(*V.shape[:-1], *t.shape) for c, t in zip(torch.split(V, self.sizes, dim=-1), self.leaves)]

    def hvp(self, v: torch.Tensor) -> torch.Tensor:
        """H v for a flat (n,) v: one backward pass through the kept graph."""
        if not self.live:  # ℒ is at most linear in θ: H = 0
            return torch.zeros(self.n, dtype=self.dtype, device=self.device)
        vs = self.split(v.to(self.dtype))
        Hv = torch.autograd.grad([self.g[i] for i in self.live], self.leaves, [vs[i] for i in self.live],
                                 retain_graph=True, allow_unused=True, materialize_grads=True)
        return torch.cat([h.reshape(-1) for h in Hv])  # θᵢ.shape -> (numel,), then (n,)

    def _rows_batched(self, E: torch.Tensor) -> torch.Tensor:
        """(b, n) seeds -> (b, n) products, row r = H E[r], in one vmapped backward pass."""
        Es = self.split(E)  # (b, *θᵢ.shape) each
        rows = torch.autograd.grad([self.g[i] for i in self.live], self.leaves, [Es[i] for i in self.live],
                                   retain_graph=True, is_grads_batched=True, allow_unused=True,
                                   materialize_grads=True)
        return torch.cat([r.reshape(E.shape[0], -1) for r in rows], dim=1)  # (b, numel_i) each -> (b, n)

    def dense(self, chunk: int = 256, seed: int = 0, *, verify: bool = True) -> torch.Tensor:
        """H (n, n), batched and verified as the module docstring says; RuntimeError if it stays asymmetric.

        ``verify=False`` skips the checks (an optimizer mid-run, where a diverged step may make H non-finite
        and the caller decides what to do); an op without a batching rule still falls back to columns.
        """
        if not self.live:
            return torch.zeros(self.n, self.n, dtype=self.dtype, device=self.device)
        eye = torch.eye(self.n, dtype=self.dtype, device=self.device)  # (n, n): seeds e_j, one per row
        v = torch.randn(self.n, generator=torch.Generator().manual_seed(seed), dtype=self.dtype).to(self.device)
        try:
            M = torch.cat([self._rows_batched(eye[s:s + chunk]) for s in range(0, self.n, chunk)])  # row j = H e_j
            if not verify or self._error(M, v) is None:
                return M.T.contiguous()  # column j = H e_j
        except (RuntimeError, NotImplementedError):  # an op without a batching rule
            pass
        M = torch.stack([self.hvp(e) for e in eye])  # one backward pass per column
        if not verify:
            return M.T.contiguous()
        asym = self._error(M, v)
        if asym is not None:
            raise RuntimeError(
                f"the Hessian from double backward is not symmetric (‖H − Hᵀ‖/‖H‖ = {asym:.1e}): torch gets the "
                f"second derivative of an op in this loss wrong; check H v against finite differences "
                f"(hvp(..., method='finite-difference'))")
        return M.T.contiguous()

    def _error(self, M: torch.Tensor, v: torch.Tensor) -> float | None:
        """None if M (rows H e_j) is symmetric and M.T v = H v to √ε_mach; else the relative asymmetry/error."""
        tol = torch.finfo(self.dtype).eps ** 0.5
        scale = float(M.norm())
        if scale == 0.0:
            return None
        asym = float((M - M.T).norm()) / scale
        Hv = self.hvp(v)
        probe = float((M.T @ v - Hv).norm()) / max(float(Hv.norm()), torch.finfo(self.dtype).tiny)
        if not (asym <= tol and probe <= tol):  # also catches NaN
            return max(asym, probe) if asym == asym else float("nan")
        return None
