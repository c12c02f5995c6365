"""Vanishing updates, fl(w + Δ) = w, with real numbers: format thresholds, the locked model's step, α·u.

PAPER.md ("SpecDef", "Numerics"): a lock leaves GD an η ∝ 1/α² and Adam one ∝ 1/α; in float32 or bfloat16 such
updates stop changing the weights, while the locked model's own forward error grows like α·u.
"""
import numpy as np
import pytest
import torch

import specdef_lite as sl
from specdef_lite.experiments.slope import loglog_slope
from specdef_lite.optim.precision import (as_dtype, descent_lr, feasible_lr, forward_error, gradient_step,
                                          param_groups, smallest_update, unit_roundoff, update_vanishing,
                                          vanishes, vanishing_fraction, vanishing_table)

F64 = torch.float64


@pytest.fixture(scope="module")
def toy():
    return sl.problems.teacher_student(width=6, n=24, seed=0)


def _weights(gen, n=1000):
    """Weights spread over many binades, both signs (float32-representable, so storing them is exact)."""
    w = torch.randn(n, generator=gen, dtype=F64) * 10.0 ** torch.randint(-3, 4, (n,), generator=gen).double()
    return w.float().double()


def test_float32_thresholds_relative_to_the_weight(gen):
    w = _weights(gen)
    assert vanishes(w, w * 2.0 ** -25, "float32").all()  # ≤ u/2: always lost
    assert not vanishes(w, w * 2.0 ** -22, "float32").any()  # > u: always kept
    assert not vanishes(w, -w * 2.0 ** -22, "float32").any()
    # in between, it depends on where w sits in its binade: at w = 1 upward the edge is u = 2⁻²⁴
    one = torch.ones(1, dtype=F64)
    assert vanishes(one, one * 2.0 ** -24, "float32").item()  # a tie rounds to even: back to 1
    assert not vanishes(one, one * 2.0 ** -24 * 1.01, "float32").item()
    assert vanishes(one, -one * 2.0 ** -25, "float32").item() and not vanishes(one, -one * 2.0 ** -24, "float32").item()


def test_bfloat16_and_float16_thresholds(gen):
    w = _weights(gen)
    assert vanishes(w, w * 2.0 ** -10, "bfloat16").all() and not vanishes(w, w * 2.0 ** -7, "bfloat16").any()
    small = w[w.abs() < 1e3]  # float16 overflows past 65504
    assert vanishes(small, small * 2.0 ** -13, torch.float16).all()
    assert not vanishes(small[small.abs() > 1e-3], small[small.abs() > 1e-3] * 2.0 ** -10, "float16").any()
    # float16 also underflows: an update below its smallest subnormal (6e-8) is 0 before it is added
    tiny = torch.tensor([1e-4], dtype=F64)
    assert vanishes(tiny, torch.tensor([1e-9], dtype=F64), "float16").item()
    assert not vanishes(tiny, torch.tensor([1e-9], dtype=F64), "float32").item()


def test_unit_roundoff_and_smallest_update_against_the_format():
    for name, p in (("float32", 24), ("bfloat16", 8), ("float16", 11), ("float64", 53)):
        assert unit_roundoff(name) == 2.0 ** -p
    # Δ is rounded to the format first, so the edge is just above u: half-way to Δ's next representable value
    # (torch casts float64 → float32 → bfloat16/float16, which adds a float32-sized sliver: hence rel=1e-6)
    assert smallest_update("float32") == pytest.approx(2.0 ** -24 * (1 + 2.0 ** -24), rel=1e-12)
    assert smallest_update("bfloat16") == pytest.approx(2.0 ** -8 * (1 + 2.0 ** -8), rel=1e-6)
    assert smallest_update("float16") == pytest.approx(2.0 ** -11 * (1 + 2.0 ** -11), rel=1e-6)
    # the ulp halves below 1: at w = 0.75 the float32 edge is 2⁻²⁵; at 1.5 (same binade as 1) it is still 2⁻²⁴
    assert smallest_update("float32", 0.75) == pytest.approx(2.0 ** -25, rel=1e-6)
    assert smallest_update("float32", 1.5) == pytest.approx(2.0 ** -24, rel=1e-6)
    fl = torch.tensor(1.0, dtype=torch.float32)
    assert fl + torch.tensor(smallest_update("float32"), dtype=F64).float() != fl  # it really survives


def test_vanishing_fraction_counts_only_moving_entries():
    w = torch.ones(4, dtype=F64)
    delta = torch.tensor([0.0, 2.0 ** -30, 2.0 ** -30, 1e-3], dtype=F64)
    assert vanishing_fraction(w, delta, "float32") == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="zero everywhere"):
        vanishing_fraction(w, torch.zeros(4, dtype=F64), "float32")
    with pytest.raises(ValueError, match="same shape"):
        vanishes(w, torch.zeros(3, dtype=F64), "float32")
    with pytest.raises(ValueError, match="unknown dtype"):
        as_dtype("float8")


def test_feasible_lr_laws():
    assert feasible_lr(1e3, 0.3, "sgd") == pytest.approx(3e-7)
    assert feasible_lr(1e3, 1e-2, "adam") == pytest.approx(1e-5)
    np.testing.assert_allclose(feasible_lr(np.array([1.0, 10.0, 100.0]), 1.0, "sgd"), [1.0, 1e-2, 1e-4])
    with pytest.raises(ValueError, match="optimizer"):
        feasible_lr(10.0, 0.1, "lbfgs")


def test_gradient_step_is_the_optimizers_first_step(toy):
    locked = sl.specdef(toy.released, 100.0)
    before = [p.detach().clone() for p in locked.parameters()]
    w, delta = gradient_step(locked, toy.task, 1e-3, "sgd")
    grads = torch.autograd.grad(toy.task.loss(locked), list(locked.parameters()))
    g = torch.cat([gr.reshape(-1) for gr in grads])
    torch.testing.assert_close(delta, -1e-3 * g, rtol=1e-12, atol=0)
    assert all(torch.equal(a, b.detach()) for a, b in zip(before, locked.parameters()))  # model untouched
    # Adam's first step is the one torch.optim.Adam takes: m̂ = g, v̂ = g²
    net = sl.specdef(toy.released, 100.0)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, eps=1e-8)
    toy.task.loss(net).backward()
    opt.step()
    moved = torch.cat([(a - b.detach()).reshape(-1) for a, b in zip(net.parameters(), before)])
    _, delta_adam = gradient_step(locked, toy.task, 1e-3, "adam")
    torch.testing.assert_close(delta_adam, moved, rtol=1e-6, atol=1e-15)
    assert param_groups(locked).tolist().count("C") == sum(m.C.numel() for m in locked.modules()
                                                           if isinstance(m, sl.SpecDefLinear))


def test_descent_lr_is_one_over_the_dense_lambda_max(toy):
    locked = sl.specdef(toy.released, 30.0)
    H = sl.hessian(*sl.loss_fn_of(locked, toy.task))
    lam_max = float(torch.linalg.eigvalsh(H)[-1])
    assert descent_lr(locked, toy.task) == pytest.approx(1.0 / lam_max, rel=1e-8)


def test_vanishing_share_rises_with_alpha(toy):
    alphas = [1.0, 1e2, 1e4, 1e6, 1e9]
    tab = vanishing_table(toy.released, toy.task, alphas, {"sgd": 0.3, "adam": 0.03},
                          dtypes=["float32", "bfloat16"])
    for o in ("sgd", "adam"):
        f = tab.fraction(o, "float32")
        assert f[0] == 0.0 and np.all(np.diff(f) >= -0.02) and f[-1] >= 0.95, (o, f)
        assert np.all(tab.fraction(o, "bfloat16")[3:] >= 0.95)
    # GD's affordable step falls like 1/α² once the lock dominates the curvature
    slope = loglog_slope(alphas[1:], tab.lrs["sgd"][1:])
    assert -2.05 <= slope <= -1.95
    np.testing.assert_allclose(tab.lrs["adam"], 0.03 / np.array(alphas))
    # W̃ updates vanish first; C keeps its updates (α-large gradient) far longer
    assert tab.fraction("sgd", "float32", "W̃")[2] == 1.0 > tab.fraction("sgd", "float32", "C")[2]
    # the table's single-step fractions agree with update_vanishing on a fresh lock
    assert tab.fraction("sgd", "float32")[3] == pytest.approx(
        update_vanishing(sl.specdef(toy.released, 1e6), toy.task, tab.lrs["sgd"][3], "float32"), abs=1e-12)


def test_forward_error_grows_like_alpha_u(toy):
    X = toy.task.inputs
    e = {a: forward_error(toy.released, a, X, "float32") for a in (1e4, 1e6)}
    assert 30 < e[1e6] / e[1e4] < 300  # ×100 in α → about ×100 in error
    u = unit_roundoff("float32")
    assert all(0.1 < err / (a * u) < 10 for a, err in e.items()), e  # ≈ c·α·u with c of order 1
    assert forward_error(toy.released, 1e6, X, "float64") < 1e-8  # float64: α·u₆₄ ≈ 1e-10
