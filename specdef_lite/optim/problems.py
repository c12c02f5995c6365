"""Toy tasks for the course: ℒ(θ) = ½(θ−θ*)ᵀA(θ−θ*), ℒ(w) = ‖Xw − y‖²/N, and a teacher–student MLP.

Why these three: the quadratic has a Hessian we choose (A, so κ = λ_max/λ_min is a slider), linear
regression has the closed form H = (2/N)XᵀX, and the teacher–student MLP is the smallest network on
which the paper's story plays out — a *released* model (teacher 1), a *harmful* fine-tune towards a
second teacher, and a *utility* set that the released model solves exactly.

Every task is a fixed full batch (no mini-batch noise, so a loss curve is a function of the optimizer
alone), float64 by default, seeded through one ``seed`` with a local ``torch.Generator`` (the global RNG
is never touched), and small enough to build in milliseconds, so a slider can rebuild it.

The contract the rest of the library relies on: ``task.loss(f)`` returns a scalar tensor with its graph,
where ``f`` is an ``nn.Module`` or any callable (e.g. a ``functional_call`` wrapper). Tasks with inputs
call ``f(inputs)`` and take the mean squared error; the quadratic task calls ``f()`` with no argument.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import nn

__all__ = ["Task", "ToyTask", "Quadratic", "ToyProblem", "quadratic", "linear_regression", "teacher_student", "mlp"]

F64 = torch.float64


@runtime_checkable
class Task(Protocol):
    """ℒ(f): what every task shares — ``loss(f)`` with its graph (for training and HVPs), ``value(f)`` as a float.

    A type for hints: the toy tasks below (``ToyTask``) satisfy it, and so does any object with these two
    methods; ``isinstance(obj, Task)`` checks that they exist.
    """

    def loss(self, f: Callable[..., torch.Tensor]) -> torch.Tensor: ...

    def value(self, f: Callable[..., torch.Tensor]) -> float: ...


@dataclass(frozen=True)
class ToyTask:
    """ℒ(f) = mean((f(X) − Y)²), or ½(f() − θ*)ᵀH(f() − θ*) when ``inputs`` is None — one fixed full batch.

    Attributes:
        inputs: (N, d_in) inputs X, or None for a task whose model takes no input (the quadratic).
        targets: (N, d_out) targets Y, or θ* (P,) when ``inputs`` is None.
        H: the closed-form Hessian of the loss with respect to the model's parameters, when one exists
            (A for the quadratic, (2/N)XᵀX for bias-free linear regression), else None.
        minimiser: a minimiser of the loss in parameter space when known in closed form (θ*, w*).
        name: a label for plots.
    """
    inputs: torch.Tensor | None
    targets: torch.Tensor
    H: torch.Tensor | None = None
    minimiser: torch.Tensor | None = None
    name: str = "task"

    def loss(self, f: Callable[..., torch.Tensor]) -> torch.Tensor:
        """ℒ(f) as a scalar tensor that keeps its autograd graph (call ``.backward()`` or ``autograd.grad``)."""
        if self.inputs is None:
            r = f() - self.targets  # (P,)
            return 0.5 * r @ (self.H @ r)
        return (f(self.inputs) - self.targets).pow(2).mean()

    def value(self, f: Callable[..., torch.Tensor]) -> float:
        """ℒ(f) as a Python float, evaluated without a graph."""
        with torch.no_grad():
            return float(self.loss(f))

    @property
    def A(self) -> torch.Tensor | None:
        """The quadratic's matrix A (= ``H``)."""
        return self.H

    @property
    def theta_star(self) -> torch.Tensor | None:
        """θ*, the known minimiser (= ``minimiser``)."""
        return self.minimiser


class Quadratic(nn.Module):
    """f() = θ — a model that *is* its parameter vector, so ℒ(θ) is any function we like of θ."""

    def __init__(self, theta: torch.Tensor):
        super().__init__()
        self.theta = nn.Parameter(theta.clone())  # (P,)

    def forward(self) -> torch.Tensor:
        return self.theta


def _orthogonal(n: int, g: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
    """A Haar-random n×n orthogonal matrix (QR of a Gaussian with the sign of diag(R) fixed)."""
    Q, R = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=dtype))
    return Q * torch.sign(torch.diagonal(R))  # (n, n) * (n,) flips columns


def quadratic(eigenvalues: Sequence[float] | torch.Tensor, *, seed: int = 0, rotate: bool = True,
              dtype: torch.dtype = F64) -> tuple[Quadratic, ToyTask]:
    """ℒ(θ) = ½(θ − θ*)ᵀ A (θ − θ*) with A = Q diag(λ) Qᵀ: Hessian A, spectrum ``eigenvalues``, κ = λ_max/λ_min.

    Args:
        eigenvalues: λ₁…λ_P of A (any sign; positive for a well-posed minimum).
        seed: seeds Q (if ``rotate``), θ* and the starting point θ₀ (both N(0, I)).
        rotate: if False, A = diag(λ) and coordinates are the eigen-directions.
        dtype: float64 by default.

    Returns:
        (model, task): ``model()`` returns θ (starting at θ₀); ``task.A`` is A (P, P), ``task.theta_star``
        is θ* (P,), and ``task.H`` is A, the exact Hessian.

    Example:
        >>> model, task = quadratic([1.0, 10.0], seed=0)
        >>> round(float(torch.linalg.eigvalsh(task.A)[-1]), 6), round(task.value(model), 4)
        (10.0, 31.8742)
    """
    lam = torch.as_tensor(eigenvalues, dtype=dtype).flatten()
    if lam.numel() == 0 or not torch.isfinite(lam).all():
        raise ValueError("eigenvalues must be a non-empty sequence of finite numbers")
    P = lam.numel()
    g = torch.Generator().manual_seed(seed)
    Q = _orthogonal(P, g, dtype) if rotate else torch.eye(P, dtype=dtype)
    A = (Q * lam) @ Q.T  # Q diag(λ) Qᵀ, (P, P)
    A = 0.5 * (A + A.T)  # exactly symmetric
    theta_star = torch.randn(P, generator=g, dtype=dtype)
    theta0 = torch.randn(P, generator=g, dtype=dtype)
    return Quadratic(theta0), ToyTask(None, theta_star, H=A, minimiser=theta_star, name="quadratic")


def linear_regression(n: int = 64, d: int = 8, *, seed: int = 0, noise: float = 0.0,
                      dtype: torch.dtype = F64) -> tuple[nn.Linear, ToyTask]:
    """ℒ(w) = (1/N)‖Xw − y‖² with y = Xw* + noise·ε; closed-form Hessian H = (2/N)XᵀX.

    Args:
        n: number of samples N; d: input dimension.
        seed: seeds X ~ N(0, I), w* ~ N(0, I/d), ε and the model's starting weights (N(0, I/d)).
        noise: standard deviation of the label noise.

    Returns:
        (model, task): ``nn.Linear(d, 1, bias=False)`` in ``dtype``; ``task.H`` = (2/N)XᵀX (d, d),
        ``task.minimiser`` = the least-squares w (d,).

    Example:
        >>> model, task = linear_regression(n=32, d=4, seed=0)
        >>> X = task.inputs
        >>> bool(torch.allclose(task.H, 2 / 32 * X.T @ X)), round(task.value(model), 4)
        (True, 0.7181)
    """
    if n < 1 or d < 1:
        raise ValueError(f"n and d must be >= 1, got n={n}, d={d}")
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=dtype)  # (N, d)
    w_star = torch.randn(d, generator=g, dtype=dtype) / math.sqrt(d)
    y = X @ w_star + noise * torch.randn(n, generator=g, dtype=dtype)  # (N,)
    model = nn.Linear(d, 1, bias=False, dtype=dtype)
    with torch.no_grad():
        model.weight.copy_(torch.randn(1, d, generator=g, dtype=dtype) / math.sqrt(d))  # (1, d)
    H = 2.0 / n * X.T @ X  # (d, d)
    w_ls = torch.linalg.lstsq(X, y.unsqueeze(1)).solution.squeeze(1)  # (d,)
    return model, ToyTask(X, y.unsqueeze(1), H=H, minimiser=w_ls, name="linear regression")


def mlp(sizes: Sequence[int], *, seed: int = 0, gain: float = 1.0, dtype: torch.dtype = F64) -> nn.Sequential:
    """f(x) = W_L tanh(… tanh(W₁x + b₁) …) + b_L, weights N(0, gain²/fan_in), biases N(0, 0.1²).

    ``sizes = [d_in, h₁, …, d_out]``; the ``nn.Linear`` layers sit at the even indices "0", "2", …, the
    ``nn.Tanh`` at the odd ones, so ``specdef(net, α, targets=["2"])`` deforms the second linear layer.
    """
    if len(sizes) < 2 or any(s < 1 for s in sizes):
        raise ValueError(f"sizes must list at least two positive widths, got {list(sizes)}")
    g = torch.Generator().manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        lin = nn.Linear(a, b, dtype=dtype)
        with torch.no_grad():
            lin.weight.copy_(gain * torch.randn(b, a, generator=g, dtype=dtype) / math.sqrt(a))  # (out, in)
            lin.bias.copy_(0.1 * torch.randn(b, generator=g, dtype=dtype))
        layers.append(lin)
        if i < len(sizes) - 2:
            layers.append(nn.Tanh())
    return nn.Sequential(*layers)


@dataclass(frozen=True)
class ToyProblem:
    """The paper's threat model in miniature: a released model, a harmful fine-tune, a utility check.

    Attributes:
        released: teacher 1, the open-weight model (``nn.Sequential``, linear layers at "0", "2", "4", …).
        task: the harmful fine-tune — inputs X_H with targets from the harmful teacher.
        utility: held-out inputs scored against teacher 1 (the released model scores exactly 0).
        target: τ, the harmful loss the attacker wants to reach (``target_fraction`` × released loss).
        harmful: teacher 2, each hidden weight W → (I + E)·W, so layer injection can represent it exactly.
        seed: the one seed everything was drawn from.
    """
    released: nn.Sequential
    task: ToyTask
    utility: ToyTask
    target: float
    harmful: nn.Sequential
    seed: int

    @property
    def linear_layers(self) -> list[str]:
        """Names of the ``nn.Linear`` layers of ``released`` (the usual SpecDef targets)."""
        return [n for n, m in self.released.named_modules() if isinstance(m, nn.Linear)]


def teacher_student(*, d_in: int = 8, width: int = 16, depth: int = 2, n: int = 64, n_utility: int = 128,
                    strength: float = 0.5, target_fraction: float = 0.1, gain: float = 1.0, seed: int = 0,
                    dtype: torch.dtype = F64) -> ToyProblem:
    """Harmful task: fit y = f_H(x), f_H = teacher 1 with each hidden W_l replaced by (I + E_l) W_l, E_l ~ s·N(0, 1/m).

    Teacher 1 (``released``) is the MLP d_in → width (× ``depth`` hidden layers, tanh) → 1. The harmful
    teacher multiplies each hidden layer's weight on the left by I + E_l (width × width, s = ``strength``)
    and keeps the biases and output layer, so an attacker who trains identity-initialised layers injected
    after the hidden layers (``inject``) can reach harmful loss 0 — the construction of PAPER.md, "The limit".

    Args:
        d_in, width, depth: architecture; ``released`` has linear layers at "0", "2", …, str(2·depth).
        n: harmful training inputs; n_utility: held-out utility inputs (both x ~ N(0, I)).
        strength: s, the size of the harmful perturbation (larger → larger initial harmful loss).
        target_fraction: τ = fraction × ℒ_H(released).
        gain: teacher weight scale (1 keeps tanh out of saturation).
        seed: seeds teacher 1, the perturbations and both input sets.

    Example:
        >>> p = teacher_student(seed=0)
        >>> p.linear_layers, p.utility.value(p.released) == 0.0
        (['0', '2', '4'], True)
        >>> round(p.task.value(p.released) / p.target, 6)
        10.0
    """
    if depth < 1:
        raise ValueError(f"depth must be >= 1 (hidden layers), got {depth}")
    if not 0 < target_fraction < 1:
        raise ValueError(f"target_fraction must be in (0, 1), got {target_fraction}")
    released = mlp([d_in] + [width] * depth + [1], seed=seed, gain=gain, dtype=dtype)
    g = torch.Generator().manual_seed(seed + 1_000_003)
    harmful = mlp([d_in] + [width] * depth + [1], seed=seed, gain=gain, dtype=dtype)
    with torch.no_grad():
        for i in range(depth):
            W = harmful[2 * i].weight  # (width, fan_in)
            E = strength * torch.randn(width, width, generator=g, dtype=dtype) / math.sqrt(width)  # (width, width)
            W.copy_((torch.eye(width, dtype=dtype) + E) @ W)
        X = torch.randn(n, d_in, generator=g, dtype=dtype)  # (N, d_in)
        X_u = torch.randn(n_utility, d_in, generator=g, dtype=dtype)  # (N_u, d_in)
        task = ToyTask(X, harmful(X), name="harmful fine-tune")
        utility = ToyTask(X_u, released(X_u), name="utility")
    for p in harmful.parameters():
        p.requires_grad_(False)
    target = target_fraction * task.value(released)
    return ToyProblem(released, task, utility, target, harmful, seed)
