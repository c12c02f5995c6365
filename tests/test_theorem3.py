"""Theorem 3 (PAPER.md): a rigorous lower bound on σ₁ from a product A·B·C and from a Hessian cross-block."""

import numpy as np
import pytest
import torch

from _nets import mlp
from torch import nn

from specdef_lite.lock.deform import specdef
from specdef_lite.curvature.eigen import top_eigenvalues
from specdef_lite.curvature.products import hessian, loss_fn_of
from specdef_lite.curvature.theorem3 import Theorem3Result, cross_block, theorem3_bound, theorem3_factors

F64 = torch.float64


class Regression:
    def __init__(self, X, y):
        self.X, self.y = X, y

    def loss(self, f):
        return ((f(self.X) - self.y) ** 2).mean()




@pytest.fixture
def net_task(gen):
    """x → θ₁ → tanh → θ₂ → tanh → θ₃ with sizes 3→4→4→1, on a fixed batch of 16."""
    X, y = torch.randn(16, 3, generator=gen, dtype=F64), torch.randn(16, 1, generator=gen, dtype=F64)
    return mlp(gen, [3, 4, 4, 1]), Regression(X, y)


def scale_top(B, alpha):
    U, S, Vh = torch.linalg.svd(B)
    return B + (alpha - 1.0) * S[0] * torch.outer(U[:, 0], Vh[0])  # σ₁(B) → α σ₁(B)


@pytest.mark.parametrize("shapes", [(5, 6, 7, 4), (3, 8, 8, 3), (6, 2, 5, 6)])
def test_factor_bound_is_sandwiched(gen, shapes):
    a, m, n, c = shapes
    A, B, C = (torch.randn(r, s, generator=gen, dtype=F64) for r, s in [(a, m), (m, n), (n, c)])
    r = theorem3_factors(A, B, C)
    assert isinstance(r, Theorem3Result)
    sigma1 = float(torch.linalg.svdvals(A @ B @ C)[0])
    upper = float(torch.linalg.svdvals(A)[0] * torch.linalg.svdvals(B)[0] * torch.linalg.svdvals(C)[0])
    assert r.sigma1 == pytest.approx(sigma1, rel=1e-12) and r.upper == pytest.approx(upper, rel=1e-12)
    assert 0 < r.bound <= sigma1 * (1 + 1e-12) and sigma1 <= upper * (1 + 1e-12)
    # second route: the bound is |pᵀ(ABC)q| for p = a_{r₁}, q = c_{r₂}, computed from numpy's SVD
    Ua, _, _ = np.linalg.svd(A.numpy())
    _, _, Vch = np.linalg.svd(C.numpy())
    p, q = Ua[:, r.r1 - 1], Vch[r.r2 - 1]
    assert abs(p @ (A @ B @ C).numpy() @ q) == pytest.approx(r.bound, rel=1e-10)
    assert 0 <= r.cos_theta1 <= 1 + 1e-12 and 0 <= r.cos_theta2 <= 1 + 1e-12


def test_scaling_top_singular_value_of_B_scales_the_bound_by_alpha(gen):
    A, B, C = (torch.randn(6, 6, generator=gen, dtype=F64) for _ in range(3))
    r = {alpha: theorem3_factors(A, scale_top(B, alpha), C) for alpha in (1.0, 1e2, 1e4)}
    assert r[1e4].sigma1_B == pytest.approx(1e4 * r[1.0].sigma1_B, rel=1e-10)
    assert r[1e4].bound / r[1e2].bound == pytest.approx(100.0, rel=2e-2)
    assert r[1e4].paper_form / r[1e2].paper_form == pytest.approx(100.0, rel=2e-2)
    # at large α B's top pair dominates and the paper's product form is the bound
    assert r[1e4].paper_form == pytest.approx(r[1e4].bound, rel=2e-2)
    for x in r.values():
        assert x.bound <= x.sigma1 * (1 + 1e-12)


def test_cross_block_matches_dense_hessian_and_bounds_sigma1(net_task):
    net, task = net_task
    loss_fn, theta = loss_fn_of(net, task)
    H = hessian(loss_fn, theta)  # (41, 41)
    offsets = np.cumsum([0] + [t.numel() for t in theta.values()])
    where = {name: slice(offsets[i], offsets[i + 1]) for i, name in enumerate(theta)}
    block = cross_block(loss_fn, theta, "0.weight", "4.weight")
    torch.testing.assert_close(block, H[where["0.weight"], where["4.weight"]], rtol=1e-12, atol=1e-14)
    r = theorem3_bound(loss_fn, theta, "0.weight", "4.weight", through="2.weight")
    sigma1_H = float(np.abs(np.linalg.eigvalsh(H.numpy())).max())
    assert 0 < r.bound <= sigma1_H
    assert r.bound == pytest.approx(float(np.linalg.norm(block.numpy(), 2)), rel=1e-12)
    assert r.sigma1_B == pytest.approx(float(torch.linalg.matrix_norm(theta["2.weight"], ord=2)), rel=1e-12)
    with pytest.raises(ValueError, match="not among the params"):
        theorem3_bound(loss_fn, theta, "0.weight", "9.weight")


def test_locked_mlp_bound_grows_linearly_while_sigma1_grows_quadratically(net_task):
    net, task = net_task
    alphas = [10.0, 100.0, 1000.0]
    bounds, sigma1 = [], []
    for alpha in alphas:
        loss_fn, theta = loss_fn_of(specdef(net, alpha, k=1, targets="2"), task)
        r = theorem3_bound(loss_fn, theta, "0.weight", "2.C", through="2.W_tilde")
        sigma1_W = float(torch.linalg.matrix_norm(net[2].weight.detach(), ord=2))
        assert r.sigma1_B == pytest.approx(alpha * sigma1_W, rel=1e-9)  # σ₁(W̃) = α σ₁(W)
        lam = top_eigenvalues(loss_fn, theta, k=1, tol=1e-10, seed=0)
        assert lam.converged and r.bound <= abs(lam.values.item())
        bounds.append(r.bound)
        sigma1.append(abs(lam.values.item()))
    slope = lambda y: np.polyfit(np.log(alphas), np.log(y), 1)[0]  # noqa: E731
    assert slope(bounds) == pytest.approx(1.0, abs=0.05)  # Theorem 3: the bound grows like α
    assert slope(sigma1) == pytest.approx(2.0, abs=0.1)  # measured: σ₁(H) grows like α² (C–C block)
    assert bounds[-1] > 50 * bounds[0]
