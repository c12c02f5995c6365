"""Hutchinson / Hutch++ traces and stochastic Lanczos quadrature against exact traces and dense spectra."""
import numpy as np
import pytest
import torch

from specdef_lite.curvature.products import hessian, loss_fn_of
from specdef_lite.lock.deform import specdef
from specdef_lite.curvature.density import SpectralDensity, _tridiagonal, slq, spectral_density
from specdef_lite.curvature.operators import HessianOperator, as_operator
from specdef_lite.optim.problems import teacher_student
from specdef_lite.curvature.spectrum import spectrum_sweep
from specdef_lite.curvature.trace import TraceResult, hessian_trace, hutch_plus_plus, hutchinson

F64 = torch.float64


def rotated(gen, lam):
    n = lam.numel()
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=F64))
    return (Q * lam) @ Q.T


@pytest.fixture(scope="module")
def locked_mlp():
    """The locked teacher–student MLP of the benchmarks: every layer locked at α = 10, n = 946 parameters."""
    toy = teacher_student(seed=0)
    loss_fn, theta = loss_fn_of(specdef(toy.released, 10.0, k=1), toy.task)
    return HessianOperator(loss_fn, theta), float(torch.trace(hessian(loss_fn, theta)))


def test_hutch_plus_plus_within_2_percent_at_99_hvps(locked_mlp):
    op, exact = locked_mlp
    assert op.size == 946
    errors = [abs(hutch_plus_plus(op, matvecs=99, seed=s).estimate / exact - 1) for s in range(10)]
    assert max(errors) <= 0.02, f"Hutch++ at 99 HVPs: relative errors {np.round(errors, 4)}"
    plain = [abs(hutchinson(op, matvecs=99, seed=s).estimate / exact - 1) for s in range(10)]
    assert np.median(plain) > 3 * np.median(errors), "the sketch is what buys the accuracy on a spiked spectrum"


def test_hutchinson_is_unbiased_with_an_honest_standard_error(gen):
    A = rotated(gen, torch.linspace(-1.0, 3.0, 30, dtype=F64))
    runs = [hutchinson(A, matvecs=20, seed=s) for s in range(300)]
    est = np.array([r.estimate for r in runs])
    exact = float(torch.trace(A))
    assert abs(est.mean() - exact) <= 4 * est.std() / np.sqrt(len(est))
    reported = np.median([r.std_error for r in runs])
    assert 0.7 < reported / est.std() < 1.3, "std_error must match the spread of the estimates"
    assert isinstance(runs[0], TraceResult) and runs[0].matvecs == 20 and runs[0].method == "hutchinson"


def test_exact_cases(gen):
    lam = torch.linspace(-2.0, 5.0, 20, dtype=F64)
    A = rotated(gen, lam)
    r = hutch_plus_plus(A, matvecs=60, seed=3)  # m/3 = 20 = n: the sketch spans everything
    assert r.estimate == pytest.approx(float(lam.sum()), rel=1e-10) and r.matvecs == 60
    assert hutchinson(torch.diag(lam), matvecs=1).estimate == pytest.approx(float(lam.sum()), rel=1e-14)
    assert hutch_plus_plus(A, matvecs=62).matvecs == 60  # rounded down to a multiple of 3


def test_hessian_trace_of_a_loss_and_bad_arguments(locked_mlp):
    toy = teacher_student(seed=0)
    loss_fn, theta = loss_fn_of(toy.released, toy.task)
    exact = float(torch.trace(hessian(loss_fn, theta)))
    r = hessian_trace(loss_fn, theta, matvecs=3 * 433)  # m/3 ≥ n: exact
    assert r.estimate == pytest.approx(exact, rel=1e-10)
    with pytest.raises(ValueError, match="hutch\\+\\+' or 'hutchinson"):
        hessian_trace(loss_fn, theta, method="girard")
    with pytest.raises(ValueError, match="matvecs >= 3"):
        hutch_plus_plus(torch.eye(3, dtype=F64), matvecs=2)
    with pytest.raises(TypeError):
        hutchinson(torch.eye(3, dtype=F64), 10)  # matvecs and seed are keyword-only


def test_slq_quadrature_is_exact_for_polynomials_up_to_degree_2m_minus_1(gen):
    lam = torch.cat([torch.tensor([40.0, -12.0], dtype=F64), torch.rand(48, generator=gen, dtype=F64)])
    A = rotated(gen, lam)
    q = torch.randn(50, generator=gen, dtype=F64)
    q = q / q.norm()
    m = 6
    theta, tau = _tridiagonal(as_operator(A), q, m)
    assert float(tau.sum()) == pytest.approx(1.0, rel=1e-14)
    Hp_q = q.clone()
    for p in range(2 * m):  # p = 0 … 2m − 1
        exact = float(q @ Hp_q)
        assert float((tau * theta ** p).sum()) == pytest.approx(exact, rel=1e-9, abs=1e-12), f"moment {p}"
        Hp_q = A @ Hp_q


def test_slq_one_node_per_converged_eigenvalue(gen):
    """With full reorthogonalisation λ₁ = 1000 gets one node carrying its weight (u₁ᵀq)²; no ghost copies."""
    lam = torch.cat([torch.tensor([1000.0], dtype=F64), torch.rand(199, generator=gen, dtype=F64)])
    Q, _ = torch.linalg.qr(torch.randn(200, 200, generator=gen, dtype=F64))
    A = (Q * lam) @ Q.T
    q = torch.randn(200, generator=gen, dtype=F64)
    q = q / q.norm()
    theta, tau = _tridiagonal(as_operator(A), q, 60)
    near = (theta - 1000.0).abs() < 1e-6 * 1000.0
    assert int(near.sum()) == 1, f"nodes near λ₁: {theta[(theta - 1000.0).abs() < 1.0].tolist()}"
    assert float(tau[near].sum()) == pytest.approx(float(Q[:, 0] @ q) ** 2, rel=1e-8)


def test_slq_moments_match_the_dense_spectrum(gen):
    X = torch.randn(1000, 300, generator=gen, dtype=F64)
    A = X.T @ X / 1000  # Wishart: a continuous spectrum on [0.2, 2.4]
    lam = np.linalg.eigvalsh(A.numpy())
    d = slq(A, probes=40, steps=20, seed=0)
    assert isinstance(d, SpectralDensity) and d.matvecs == 800 and d.n == 300
    for p in (1, 2, 3):
        mean, err = d.moment(p)
        exact = float(np.mean(lam ** p))
        assert err <= 0.03 * exact, "40 probes: a standard error of at most 3 %"
        assert abs(mean - exact) <= 4 * err, f"moment {p}: {mean:.5g} vs dense {exact:.5g} ± {err:.2g}"


def test_slq_counts_eigenvalues_and_their_multiplicities(gen):
    values = torch.tensor([-3.0, 0.5, 1.0, 2.0, 10.0], dtype=F64)
    mult = torch.tensor([10, 20, 40, 25, 5])
    A = rotated(gen, values.repeat_interleave(mult))  # n = 100, five distinct eigenvalues
    d = slq(A, probes=40, steps=20, seed=1)
    carrying = d.weights > 1e-12  # past the 5th step a run may continue on rounding noise: copies, split weight
    nearest = (d.nodes.unsqueeze(-1) - values).abs().argmin(-1)  # (probes, m): which eigenvalue each node is
    assert ((d.nodes - values[nearest]).abs()[carrying] <= 1e-8).all(), "every node is an eigenvalue"
    per_value = torch.zeros(40, 5, dtype=F64).scatter_add_(1, nearest, d.weights)  # quadrature weight per eigenvalue
    share = per_value.mean(0) * 100  # estimated multiplicities
    stderr = per_value.std(0) * 100 / np.sqrt(40)
    assert ((share - mult).abs() <= 5 * stderr).all(), (share, mult)
    grid = torch.linspace(-20, 30, 20001, dtype=F64)
    assert float(torch.trapezoid(d.density(grid, sigma=0.2), grid)) == pytest.approx(1.0, rel=1e-6)
    decades = torch.linspace(-3, 3, 6001, dtype=F64)
    positive = float(torch.trapezoid(d.per_decade(decades, sigma=0.1, sign=1), decades))
    assert positive == pytest.approx(float(share[1:].sum()), rel=1e-6)  # counts per decade integrate to a count


def test_spectral_density_of_a_loss_matches_dense_extremes():
    toy = teacher_student(seed=0)
    loss_fn, theta = loss_fn_of(toy.released, toy.task)
    lam = np.linalg.eigvalsh(hessian(loss_fn, theta).numpy())
    d = spectral_density(loss_fn, theta, probes=3, steps=40, seed=0)
    assert float(d.nodes.max()) == pytest.approx(lam.max(), rel=1e-10)  # Ritz values converge at the ends first
    assert float(d.nodes.min()) == pytest.approx(lam.min(), rel=1e-8)


def test_spectrum_sweep_lock_throws_out_k_times_m_eigenvalues_by_alpha_squared():
    s = spectrum_sweep(teacher_student(seed=0), [1.0, 1e3, 1e4], k=1, layers="2", probes=4, steps=24)
    assert len(s.outliers(0)) == 0 and len(s.outliers(2)) == s.k * s.rows == 16
    np.testing.assert_allclose(s.growth(16), 2.0, atol=5e-3)  # each of the 16 grows ∝ α² (slope 1.997–2.000)
    assert len(s.bulk(2)) == s.locked.shape[1] - 16
    q_released = np.quantile(np.abs(s.released), [0.5, 0.9])
    q_bulk = np.quantile(np.abs(s.bulk(2)), [0.5, 0.9])
    assert np.all(np.abs(np.log(q_bulk / q_released)) < np.log(1.5)), "the bulk stays where it was"
    assert abs(s.slq_outlier_count(2) - 16) < 4
