"""The lock's partial SVD (block Krylov) keeps the σ promise on gap-free matrices, and (W̃, C) stay exact."""
import numpy as np
import pytest
import torch

from specdef_lite.lock.lowrank import deformed_pair, top_k_krylov

F64 = torch.float64


@pytest.mark.parametrize("shape", [(600, 200), (200, 600)])
def test_promise_on_gap_free_gaussian_matrices(gen, shape):
    """Random Gaussian weights have no gap at the top: niter = 4 subspace iteration got 0.95–0.97 here."""
    for _ in range(3):
        W = torch.randn(*shape, generator=gen) / shape[1] ** 0.5  # float32, like a model's weight
        sigma = torch.linalg.svdvals(W.double())
        U, S, info = top_k_krylov(W, 2)
        achieved = torch.linalg.svdvals(U.T @ W.double())  # σᵢ(U_kᵀW) = σᵢ(W̃)/α for large α
        assert info.converged and info.blocks > 0 and info.passes == 2 * info.blocks and info.remaining <= 3e-4
        assert float((achieved / sigma[:2]).min()) >= 0.999
        torch.testing.assert_close(U.T @ U, torch.eye(2, dtype=F64), rtol=0, atol=1e-12)


def test_ritz_values_never_exceed_the_singular_values(gen):
    """Near an exhausted Krylov space rounding once gave Ritz values 6 % above σᵢ (a lock 15 % short of α)."""
    for _ in range(20):
        W = (torch.rand(80, 120, generator=gen, dtype=F64) * 2 - 1) / 120 ** 0.5  # nn.Linear's uniform init
        sigma = torch.linalg.svdvals(W)
        U, S, _ = top_k_krylov(W, 4)
        assert (S <= sigma[:4] * (1 + 1e-12)).all()
        np.testing.assert_allclose((torch.linalg.svdvals(U.T @ W) / sigma[:4]).numpy(), 1.0, rtol=2e-3)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_deformed_pair_is_exact_in_the_requested_dtype(gen, dtype):
    W = torch.randn(300, 130, generator=gen, dtype=dtype)  # 300 rows: several row blocks of 64
    U, _, _ = top_k_krylov(W, 3)
    alpha = 1e4
    W_tilde, C = deformed_pair(W, U, alpha, F64)
    assert W_tilde.dtype == C.dtype == F64
    P = U @ U.T
    torch.testing.assert_close(W_tilde, W.double() + (alpha - 1) * P @ W.double(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(C, torch.eye(300, dtype=F64) - (1 - 1 / alpha) * P, rtol=0, atol=1e-15)
    assert float((C @ W_tilde - W.double()).norm() / W.double().norm()) <= 1e-11
    W32, C32 = deformed_pair(W, U, alpha, torch.float32)  # rounded once from the float64 values
    assert W32.dtype == C32.dtype == torch.float32
    assert torch.equal(W32, W_tilde.float()) and torch.equal(C32, C.float())


@pytest.mark.parametrize("overlap", [0.0, 1e-8, 1e-15])
def test_orthonormalise_reorthogonalises_a_block_that_qr_would_blow_up(gen, overlap, monkeypatch):
    """A block whose columns depend on each other outside the basis (up to ``overlap``): after two projections
    QR divides by σ_min(R) ≈ overlap·‖Y₁‖ and the third projection is what keeps Q orthogonal to the basis."""
    from specdef_lite.lock import lowrank
    m, p, q = 300, 60, 11
    basis = torch.linalg.qr(torch.randn(m, p, generator=gen, dtype=F64)).Q
    inside = basis @ torch.randn(p, q, generator=gen, dtype=F64)
    out = torch.randn(m, q, generator=gen, dtype=F64)
    out[:, 1] = out[:, 0] + overlap * out[:, 1]  # two columns that coincide outside the basis
    Y = inside + 1e-3 * out
    for reorth, ok in ((lowrank.REORTH, True), (0.0, False)):  # REORTH = 0 never takes the third pass
        monkeypatch.setattr(lowrank, "REORTH", reorth)
        Q = lowrank._orthonormalise(Y, basis)
        leak = float((basis.T @ Q).abs().max())
        assert (leak <= 1e-12) == ok, (reorth, leak)
        if ok:
            torch.testing.assert_close(Q.T @ Q, torch.eye(q, dtype=F64), rtol=0, atol=1e-12)


def test_orthonormalise_of_a_well_separated_block_skips_the_third_pass(gen, monkeypatch):
    """Two projections suffice when QR divides by little: the result is orthonormal to 1e-12 without the third."""
    from specdef_lite.lock import lowrank
    m, p, q = 300, 60, 11
    basis = torch.linalg.qr(torch.randn(m, p, generator=gen, dtype=F64)).Q
    Y = basis @ torch.randn(p, q, generator=gen, dtype=F64) + 1e-9 * torch.randn(m, q, generator=gen, dtype=F64)
    calls, real = [], torch.linalg.qr
    monkeypatch.setattr(torch.linalg, "qr", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    Q = lowrank._orthonormalise(Y, basis)
    monkeypatch.undo()
    assert len(calls) == 1
    assert float((basis.T @ Q).abs().max()) <= 1e-12
    torch.testing.assert_close(Q.T @ Q, torch.eye(q, dtype=F64), rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, F64])
@pytest.mark.parametrize("alpha", [1e-7, 1e-3, 0.5, 3.0, 1e4, 1e7])
def test_peaks_let_check_overflow_skip_its_pass_without_changing_its_verdict(gen, dtype, alpha):
    """W̃'s peak is exactly max |entry| as stored, C's bounds it; check_overflow with them refuses (or not) with
    the very message it gives after reading both tensors itself."""
    from specdef_lite.lock.guards import check_overflow
    W = torch.randn(150, 70, generator=gen) * 3
    U, _, _ = top_k_krylov(W, 2)
    W_tilde, C, (peak_w, bound_c) = deformed_pair(W, U, alpha, dtype, peaks=True)
    W2, C2 = deformed_pair(W, U, alpha, dtype)
    assert torch.equal(W_tilde, W2) and torch.equal(C, C2)
    assert peak_w == float(W_tilde.double().abs().max())
    assert bound_c >= float(C.double().abs().max()) or bound_c >= torch.finfo(dtype).max  # a bound where it matters

    def verdict(**kw):
        try:
            check_overflow("l", W_tilde, C, dtype, alpha, **kw)
        except ValueError as e:
            return str(e)
    assert verdict(peaks=(peak_w, bound_c)) == verdict()
    if dtype == torch.float16 and alpha in (1e-7, 1e7):
        assert verdict() is not None  # both paths of the refusal are exercised: W̃ (α = 1e7) and C (α = 1e-7)
