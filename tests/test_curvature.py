"""Curvature tools against closed forms, a dense torch.func reference and numpy.linalg.eigvalsh."""
import copy
import math

import numpy as np
import pytest
import torch

from _nets import mlp
from torch import nn

from specdef_lite.curvature.eigen import EigenResult, lanczos, power_iteration, top_eigenvalues
from specdef_lite.curvature.products import flatten_params, hessian, hvp, loss_fn_of, select_params, unflatten_like
from specdef_lite.curvature.operators import HessianOperator, LinearOperator, as_operator, check_deterministic

F64 = torch.float64
METHODS = ["forward-over-reverse", "double-backward", "finite-difference"]


class Regression:
    """ℒ = mean over N of (f(X) − y)²."""

    def __init__(self, X, y):
        self.X, self.y = X, y

    def loss(self, f):
        return ((f(self.X) - self.y) ** 2).mean()


class Quadratic:
    """ℒ = ½ xᵀ A x with x = f()."""

    def __init__(self, A):
        self.A = A

    def loss(self, f):
        x = f()
        return 0.5 * x @ self.A @ x


class Point(nn.Module):
    def __init__(self, x0):
        super().__init__()
        self.x = nn.Parameter(x0)

    def forward(self):
        return self.x




@pytest.fixture
def tiny(gen):
    """(loss_fn, params) of a 3→5→2 tanh MLP on a fixed batch of 12; n = 32 parameters."""
    net = mlp(gen, [3, 5, 2])
    task = Regression(torch.randn(12, 3, generator=gen, dtype=F64), torch.randn(12, 2, generator=gen, dtype=F64))
    return loss_fn_of(net, task)


def wishart(gen, n, m):
    X = torch.randn(m, n, generator=gen, dtype=F64)
    return X.T @ X / m  # (n, n), PSD


def test_linear_regression_closed_form(gen):
    N, d = 20, 6
    X, y = torch.randn(N, d, generator=gen, dtype=F64), torch.randn(N, 1, generator=gen, dtype=F64)
    net = nn.Linear(d, 1, bias=False, dtype=F64)
    loss_fn, theta = loss_fn_of(net, Regression(X, y))
    H_true = 2.0 / N * X.T @ X
    torch.testing.assert_close(hessian(loss_fn, theta), H_true, rtol=1e-12, atol=1e-12)
    v = torch.randn(d, generator=gen, dtype=F64)
    for method in METHODS:  # ℒ is quadratic: finite differences are exact up to rounding
        torch.testing.assert_close(hvp(loss_fn, theta, v, method=method), H_true @ v, rtol=1e-8, atol=1e-9)


def test_quadratic_closed_form_with_negative_eigenvalues(gen):
    Q, _ = torch.linalg.qr(torch.randn(7, 7, generator=gen, dtype=F64))
    lam = torch.tensor([-4.0, 3.0, 2.0, 1.0, 0.5, -0.25, 0.1], dtype=F64)
    A = Q @ torch.diag(lam) @ Q.T
    loss_fn, theta = loss_fn_of(Point(torch.randn(7, generator=gen, dtype=F64)), Quadratic(A))
    torch.testing.assert_close(hessian(loss_fn, theta), A, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(HessianOperator(loss_fn, theta).to_dense(), A, rtol=1e-12, atol=1e-12)
    lm = top_eigenvalues(loss_fn, theta, k=1, which="LM")
    la = top_eigenvalues(loss_fn, theta, k=1, which="LA")
    assert lm.values.item() == pytest.approx(-4.0, rel=1e-12)
    assert la.values.item() == pytest.approx(3.0, rel=1e-12)


@pytest.mark.parametrize("method", METHODS)
def test_hvp_matches_dense_torch_func_hessian(tiny, gen, method):
    loss_fn, theta = tiny
    flat = flatten_params(theta)
    H = torch.func.hessian(lambda w: loss_fn(unflatten_like(w, theta)))(flat)  # (32, 32)
    v = torch.randn(flat.numel(), generator=gen, dtype=F64)
    tol = 1e-12 if method != "finite-difference" else 1e-8
    torch.testing.assert_close(hvp(loss_fn, theta, v, method=method), H @ v, rtol=tol, atol=tol)
    torch.testing.assert_close(hessian(loss_fn, theta), H, rtol=1e-12, atol=1e-12)


def test_finite_difference_is_second_order(tiny, gen):
    loss_fn, theta = tiny
    v = torch.randn(flatten_params(theta).numel(), generator=gen, dtype=F64)
    v = v / v.norm()
    exact = hvp(loss_fn, theta, v)
    err = [float((hvp(loss_fn, theta, v, method="finite-difference", eps=h) - exact).norm()) for h in (4e-2, 2e-2)]
    assert 3.6 < err[0] / err[1] < 4.4  # central differences: halving ε divides the error by 4
    assert float((hvp(loss_fn, theta, v, method="finite-difference") - exact).norm()) < 1e-8 * float(exact.norm())


def test_loss_fn_of_has_no_side_effects_and_fixes_unselected(gen):
    net = mlp(gen, [3, 4, 1]).train()
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    task = Regression(torch.randn(5, 3, generator=gen, dtype=F64), torch.randn(5, 1, generator=gen, dtype=F64))
    loss_fn, theta = loss_fn_of(net, task, params="2.*")
    assert list(theta) == ["2.weight", "2.bias"] and not any(t.requires_grad for t in theta.values())
    theta["2.weight"].add_(1.0)  # a snapshot: editing it never reaches the model
    hessian(loss_fn, theta)
    assert net.training
    for n, p in net.named_parameters():
        torch.testing.assert_close(p.detach(), before[n], rtol=0, atol=0)
    ref = copy.deepcopy(net)
    with torch.no_grad():
        ref[2].weight.add_(1.0)
    torch.testing.assert_close(loss_fn(theta), task.loss(ref), rtol=1e-12, atol=1e-12)


def test_select_params_patterns_and_errors(gen):
    net = mlp(gen, [2, 3, 1])
    assert list(select_params(net)) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert list(select_params(net, ["2.bias", "0.weight"])) == ["0.weight", "2.bias"]
    with pytest.raises(ValueError, match=r"no parameter matches '\*\.C'.*available: 0\.weight"):
        select_params(net, "*.C")
    with pytest.raises(ValueError, match="unknown parameter name"):
        select_params(net, ["3.weight"])


def test_dense_hessian_size_cap():
    loss_fn = lambda p: (p["w"] ** 4).sum()  # noqa: E731
    with pytest.raises(ValueError, match=r"n = 5,000 parameters.*0\.20 GB.*top_eigenvalues"):
        hessian(loss_fn, {"w": torch.zeros(5000, dtype=F64)})


def test_determinism_check_catches_dropout_in_train_mode(gen):
    net = mlp(gen, [3, 6, 1], dropout=0.5)
    task = Regression(torch.randn(8, 3, generator=gen, dtype=F64), torch.randn(8, 1, generator=gen, dtype=F64))
    torch.manual_seed(0)  # dropout draws from the global RNG; the check must fail for any draw
    with pytest.raises(ValueError, match="not deterministic.*eval mode"):
        HessianOperator(*loss_fn_of(net.train(), task))
    HessianOperator(*loss_fn_of(net.eval(), task))  # eval mode: a fixed matrix, no error
    check_deterministic(as_operator(torch.eye(4, dtype=F64)))


def dense_cases(gen):
    d = torch.linspace(1.0, 10.0, 60, dtype=F64)
    return {"diagonal": torch.diag(d), "wishart": wishart(gen, 80, 200)}


@pytest.mark.parametrize("case", ["diagonal", "wishart"])
@pytest.mark.parametrize("solver", ["lanczos", "power"])
def test_solvers_match_eigvalsh(gen, case, solver):
    A = dense_cases(gen)[case]
    k = 3
    if solver == "lanczos":
        r = lanczos(A, k=k, tol=1e-10, seed=1)
    else:
        r = power_iteration(A, k=k, tol=1e-10, max_iter=5000, seed=1)
    expected = np.sort(np.linalg.eigvalsh(A.numpy()))[::-1][:k].copy()
    assert isinstance(r, EigenResult) and r.converged and r.vectors.shape == (A.shape[0], k)
    np.testing.assert_allclose(r.values.numpy(), expected, rtol=1e-9, atol=0)
    Y = r.vectors
    torch.testing.assert_close(Y.T @ Y, torch.eye(k, dtype=F64), rtol=0, atol=1e-8)
    measured = (A @ Y - Y * r.values).norm(dim=0)
    torch.testing.assert_close(r.residuals, measured, rtol=1e-6, atol=1e-13)
    assert float(r.residuals.max()) <= 1e-10 * float(expected[0]) * 1.01


@pytest.mark.parametrize("solver", [lanczos, power_iteration])
def test_negative_eigenvalues_LM_vs_LA_vs_SA(gen, solver):
    lam = torch.tensor([-9.0, 6.0, 4.0, 2.0, -1.0, 0.5, 0.25, 0.1], dtype=F64)
    Q, _ = torch.linalg.qr(torch.randn(8, 8, generator=gen, dtype=F64))
    op = as_operator(lambda v: Q @ (lam * (Q.T @ v)), size=8, dtype=F64)  # never formed densely
    assert isinstance(op, LinearOperator)
    kw = dict(k=2, tol=1e-11, seed=3)
    np.testing.assert_allclose(solver(op, which="LM", **kw).values.numpy(), [-9.0, 6.0], rtol=1e-9)
    np.testing.assert_allclose(solver(op, which="LA", **kw).values.numpy(), [6.0, 4.0], rtol=1e-9)
    np.testing.assert_allclose(solver(op, which="SA", **kw).values.numpy(), [-9.0, -1.0], rtol=1e-9)


@pytest.mark.parametrize("method", ["lanczos", "power"])
def test_top_eigenvalues_of_mlp_hessian_via_hvps(tiny, method):
    loss_fn, theta = tiny
    lam = np.linalg.eigvalsh(hessian(loss_fn, theta).numpy())
    top = lam[np.argsort(-np.abs(lam))][:2]
    r = top_eigenvalues(loss_fn, theta, k=2, method=method, tol=1e-10, max_iter=5000, seed=0)
    assert r.converged
    np.testing.assert_allclose(r.values.numpy(), top, rtol=1e-8)


def test_lanczos_is_seeded_and_bad_arguments_raise(gen):
    A = wishart(gen, 30, 40)
    r1, r2 = lanczos(A, k=2, seed=5), lanczos(A, k=2, seed=5)
    torch.testing.assert_close(r1.vectors, r2.vectors, rtol=0, atol=0)
    with pytest.raises(ValueError, match="which must be one of"):
        lanczos(A, which="BE")
    with pytest.raises(ValueError, match="k must be between 1 and"):
        power_iteration(A, k=31)
    with pytest.raises(ValueError, match="needs size="):
        top_eigenvalues(lambda p: p["x"].sum())
    with pytest.raises(ValueError, match="square matrix"):
        as_operator(torch.zeros(2, 3))
