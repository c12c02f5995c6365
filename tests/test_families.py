"""The lock's two eigenvalue families (notebook 02): H_α = Mᵀ H₁ M exactly, k·m eigenvalues thrown out ∝ α², k·n
pulled in ∝ 1/α², and the released curvature along the pulled-in directions."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import specdef_lite as sl
from specdef_lite.experiments import pulled_curvature, spectrum_families


@pytest.fixture(scope="module")
def toy():
    return sl.problems.teacher_student(width=4, n=16, seed=0)


def _dense(model, task) -> np.ndarray:
    return sl.hessian(*sl.loss_fn_of(model, task)).to(torch.float64).numpy()


def test_the_hessian_at_alpha_is_the_alpha_one_hessian_in_new_coordinates(toy):
    """C = C₁S⁻¹ and W̃ = SW₁: ℒ_α(C, W̃) = ℒ₁(CS, S⁻¹W̃), so H_α = Mᵀ H₁ M with M = (I ⊗ S) on C, (S⁻¹ ⊗ I) on W̃
    (row-major vec(AXB) = (A ⊗ Bᵀ) vec X) and the identity elsewhere — the congruence behind both families."""
    alpha = 1e3
    one, locked = (sl.specdef(toy.released, a, targets="2") for a in (1.0, alpha))
    C = locked.get_submodule("2").C.detach().double()
    P = (torch.eye(4, dtype=torch.float64) - C) / (1 - 1 / alpha)               # U_kU_kᵀ, read back from C
    S = torch.eye(4, dtype=torch.float64) + (alpha - 1) * P
    blocks, I4 = [], np.eye(4)
    for name, p in locked.named_parameters():
        if name == "2.C":
            blocks.append(np.kron(I4, S.numpy()))                               # vec(C S)
        elif name == "2.W_tilde":
            blocks.append(np.kron(torch.linalg.inv(S).numpy(), I4))             # vec(S⁻¹ W̃)
        else:
            blocks.append(np.eye(p.numel()))
    n = sum(b.shape[0] for b in blocks)
    M = np.zeros((n, n))
    at = 0
    for b in blocks:
        M[at:at + b.shape[0], at:at + b.shape[0]] = b
        at += b.shape[0]
    H1, Ha = _dense(one, toy.task), _dense(locked, toy.task)
    np.testing.assert_allclose(Ha, M.T @ H1 @ M, rtol=0, atol=1e-9 * np.abs(Ha).max())
    # Sylvester's law of inertia: the congruence keeps how many eigenvalues are negative
    assert (np.linalg.eigvalsh(Ha) < 0).sum() == (np.linalg.eigvalsh(H1) < 0).sum()


@pytest.mark.parametrize("layer, k, m, n", [("2", 1, 4, 4), ("2", 2, 4, 4), ("4", 1, 1, 4)])
def test_the_lock_throws_out_k_m_and_pulls_in_k_n_eigenvalues(toy, layer, k, m, n):
    spectrum = sl.spectrum_sweep(toy, [1.0, 1e4, 1e6], k=k, layers=layer, probes=1, steps=4)
    fam = spectrum_families(spectrum, toy)
    assert (fam.expected_thrown, fam.expected_pulled) == (k * m, k * n)
    assert (fam.n_thrown, fam.n_pulled) == (k * m, k * n)
    assert fam.thrown_slope == pytest.approx(2.0, abs=0.01) and fam.pulled_slope == pytest.approx(-2.0, abs=0.1)
    assert fam.thrown_positive + fam.thrown_negative == fam.n_thrown
    assert fam.beyond[0] == 0 and fam.below[0] == 0                           # α = 1: nothing thrown out or in
    assert fam.rest_drift() < 1e-3                                              # the rest no longer depends on α
    top = np.sort(np.abs(spectrum.locked[-1]))[::-1]
    assert top[fam.n_thrown - 1] > 1e3 * top[fam.n_thrown]                      # the family stands apart


def test_pulled_curvature_is_the_released_hessian_on_the_rows_of_w_along_u_k(toy):
    """For the read-out layer (one row) the pulled-in directions are its whole weight: eig of its Hessian block."""
    mu = pulled_curvature(toy.released, toy.task, ["4"])
    block = sl.hessian(*sl.loss_fn_of(toy.released, toy.task, params=["4.weight"])).numpy()
    np.testing.assert_allclose(np.sort(mu), np.linalg.eigvalsh(block), rtol=1e-12, atol=1e-14)
    # a hidden layer, computed another way: the Hessian of v ↦ ℒ(W + u₁vᵀ) at v = 0 is Pᵀ∇²ℒP
    mu2 = pulled_curvature(toy.released, toy.task, ["2"], k=1)
    W = toy.released.get_submodule("2").weight.detach().double()
    u = torch.linalg.svd(W).U[:, 0]
    loss_fn, _ = sl.loss_fn_of(toy.released, toy.task, params=["2.weight"])
    H_v = torch.autograd.functional.hessian(lambda v: loss_fn({"2.weight": W + torch.outer(u, v)}),
                                            torch.zeros(4, dtype=torch.float64))
    np.testing.assert_allclose(np.sort(mu2), np.linalg.eigvalsh(H_v.numpy()), rtol=1e-10, atol=1e-14)


def test_spectrum_families_needs_two_alphas(toy):
    with pytest.raises(ValueError, match="two α"):
        spectrum_families(sl.spectrum_sweep(toy, [1e3], probes=1, steps=4), toy)
