"""Lanczos against the failure modes reorthogonalisation exists for, and against scipy's ARPACK (eigsh).

In floating point the three-term recurrence loses orthogonality as soon as a Ritz value converges (Paige),
and the basis then finds the converged eigenvalue again: "ghost" copies, wrong multiplicities, Ritz vectors
that are not orthonormal. Each test below fails if eigen.py's full reorthogonalisation is removed.
``scipy.sparse.linalg.eigsh`` (implicitly restarted Lanczos, ARPACK) is an independent implementation:
the second oracle beside ``numpy.linalg.eigvalsh``.
"""
import numpy as np
import pytest
import torch
from scipy.sparse.linalg import LinearOperator as ScipyOperator
from scipy.sparse.linalg import eigsh

from specdef_lite.curvature.products import hessian, loss_fn_of
from specdef_lite.lock.deform import specdef
from specdef_lite.curvature.eigen import lanczos, lanczos_vector
from specdef_lite.curvature.operators import HessianOperator, as_operator
from specdef_lite.optim.problems import teacher_student

F64 = torch.float64


def rotated(gen, lam):
    """Q diag(λ) Qᵀ with a Haar-random Q: the spectrum we choose, in no special basis."""
    n = lam.numel()
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=F64))
    return (Q * lam) @ Q.T


def top(lam, k, which="LM"):
    key = {"LM": np.abs(lam), "LA": lam, "SA": -lam}[which]
    return lam[np.argsort(-key, kind="stable")][:k]


def assert_ritz_pairs(A, r, expected, rtol=1e-10, orth=1e-13, res=1e-8):
    """Values as expected; Ritz vectors orthonormal; residuals ‖Ay − λy‖ tiny and honestly reported."""
    np.testing.assert_allclose(r.values.numpy(), expected, rtol=rtol, atol=0)
    Y = r.vectors
    k = Y.shape[1]
    assert float((Y.T @ Y - torch.eye(k, dtype=F64)).abs().max()) <= orth, "Ritz vectors must be orthonormal"
    measured = (A @ Y - Y * r.values).norm(dim=0)
    torch.testing.assert_close(r.residuals, measured, rtol=1e-6, atol=1e-13)
    assert float(measured.max()) <= res * abs(float(expected[0]))


def test_no_ghost_copies_of_a_converged_eigenvalue(gen):
    """λ₁ = 100 far above a bulk in [0, 1): once λ₁ converges, plain Lanczos keeps re-finding it."""
    lam = torch.cat([torch.tensor([100.0], dtype=F64), torch.rand(199, generator=gen, dtype=F64)])
    A = rotated(gen, lam)
    expected = top(lam.numpy(), 3)
    r = lanczos(A, k=3, max_iter=80, tol=0.0, seed=0)  # 80 steps, long after λ₁ converged
    assert_ritz_pairs(A, r, expected, rtol=1e-6, res=1e-4)  # λ₂, λ₃ sit in a dense bulk: not yet exact
    r = lanczos(A, k=3, seed=0)  # the default stopping rule must not stop on ghosts either
    assert r.converged
    assert_ritz_pairs(A, r, expected, rtol=1e-8, res=1.5e-8)  # the default tol: √ε_mach·|λ|_max


def test_the_shared_lanczos_step_keeps_the_basis_orthonormal(gen):
    """80 steps of the one recurrence ``lanczos`` and ``slq`` share, past λ₁'s convergence: QQᵀ = I to 1e-13
    (without reorthogonalisation it drifts to O(1) here, Paige's loss of orthogonality)."""
    lam = torch.cat([torch.tensor([100.0], dtype=F64), torch.rand(199, generator=gen, dtype=F64)])
    op = as_operator(rotated(gen, lam))
    Q = torch.zeros(80, 200, dtype=F64)
    Q[0] = torch.randn(200, generator=gen, dtype=F64)
    Q[0] /= Q[0].norm()
    beta = 0.0
    for j in range(79):
        _, w = lanczos_vector(op, Q, j, beta)
        beta = float(w.norm())
        Q[j + 1] = w / beta
    assert float((Q @ Q.T - torch.eye(80, dtype=F64)).abs().max()) <= 1e-13


def test_clustered_eigenvalues_are_resolved(gen):
    lam = torch.cat([torch.tensor([10.0, 9.999, 9.998], dtype=F64), torch.linspace(0.0, 5.0, 197, dtype=F64)])
    A = rotated(gen, lam)
    r = lanczos(A, k=3, tol=1e-10, seed=0)
    assert r.converged
    assert_ritz_pairs(A, r, top(lam.numpy(), 3), rtol=1e-11)


@pytest.mark.parametrize("which,k,expected", [("LM", 3, [10.0, 10.0, 10.0]), ("LM", 5, [10.0, 10.0, 10.0, 5.0, 5.0]),
                                              ("SA", 2, [1.0, 1.0]), ("LA", 4, [10.0, 10.0, 10.0, 5.0])])
def test_repeated_eigenvalues_come_with_their_multiplicity(gen, which, k, expected):
    """Three distinct values: each Krylov run becomes invariant after 3 steps and restarts orthogonally."""
    lam = torch.cat([torch.full((3,), 10.0), torch.full((20,), 5.0), torch.full((177,), 1.0)]).to(F64)
    A = rotated(gen, lam)
    r = lanczos(A, k=k, which=which, seed=0)
    assert r.converged
    assert_ritz_pairs(A, r, np.array(expected), rtol=1e-12)


def scipy_top(op, k, which):
    A = ScipyOperator((op.size, op.size), matvec=lambda x: op.matvec(torch.from_numpy(np.ascontiguousarray(x)).reshape(-1))
                      .numpy(), dtype=np.float64)
    vals = eigsh(A, k=k, which=which, tol=0, v0=np.ones(op.size))[0]
    return top(vals, k, which)


@pytest.mark.parametrize("which", ["LM", "LA", "SA"])
def test_matches_eigsh_on_a_wishart_matrix(gen, which):
    X = torch.randn(600, 200, generator=gen, dtype=F64)
    A = X.T @ X / 600 - 0.5 * torch.eye(200, dtype=F64)  # indefinite: LM, LA and SA all differ
    r = lanczos(A, k=6, which=which, tol=1e-10, seed=2, max_iter=200)  # SA: the crowded lower edge, ~150 steps
    assert r.converged
    np.testing.assert_allclose(r.values.numpy(), scipy_top(as_operator(A), 6, which), rtol=1e-10)


@pytest.mark.parametrize("alpha", [1.0, 100.0])
def test_matches_eigsh_on_a_locked_mlp_hessian(alpha):
    toy = teacher_student(seed=3)
    loss_fn, theta = loss_fn_of(specdef(toy.released, alpha, k=1, targets="2"), toy.task)
    op = HessianOperator(loss_fn, theta)  # n = 689, reached only through products
    for which in ("LM", "SA"):
        r = lanczos(op, k=4, which=which, tol=1e-10, seed=0, max_iter=300)
        assert r.converged
        np.testing.assert_allclose(r.values.numpy(), scipy_top(op, 4, which), rtol=1e-9)
    lam = np.linalg.eigvalsh(hessian(loss_fn, theta).numpy())  # and the dense reference, a third way
    np.testing.assert_allclose(lanczos(op, k=4, tol=1e-10, max_iter=300).values.numpy(), top(lam, 4), rtol=1e-9)
