"""The explorers of notebooks 01 and 02, headless and live: a control moves, a trace shows the right numbers.

Each check recomputes the number another way (the library's ``race``/``top_eigenvalues``/``specdef`` directly,
or a closed form) and compares it with what the figure holds. Update latencies are not measured here: timing
belongs to benchmarks/bench_widgets.py (every control of every explorer, new state and cached, with the load).
"""
import numpy as np
import plotly.graph_objects as go
import pytest
from _explorers import assert_every_change_redraw_free, assert_page_draws_every_next_state
import torch

import specdef_lite as sl
from specdef_lite.common.display import fmt
from specdef_lite.experiments.deformation import deformation_sweep
from specdef_lite.experiments.descent import FLOOR, descent_path
from specdef_lite.experiments.kappa import gd_rate, steps_vs_kappa
from specdef_lite.experiments.plots import loss_curves_figure
from specdef_lite.course.widgets import conditioning as conditioning_module
from specdef_lite.course.widgets import deformation as deformation_module
from specdef_lite.course.widgets.conditioning import ConditioningExplorer
from specdef_lite.course.widgets.deformation import DeformationExplorer

ALPHAS = [1.0, 1e2, 1e4]



def _slider_steps(fig: go.Figure):
    return fig.layout.sliders[0].steps


# --- 01 conditioning ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cond():
    return ConditioningExplorer(kappa=10.0, lr=0.1, steps=60, live=False)


def test_gd_rate_edge_is_two_over_lambda_max():
    assert gd_rate(0.2 - 1e-12, 10.0) < 1 < gd_rate(0.2 + 1e-9, 10.0)
    assert gd_rate(1.0, 1.0) == 0.0


def test_descent_path_matches_the_library_training_loop():
    # the explorer's numpy loops follow the library's optimizers (torch.optim's SGD and Adam, Newton) step for step
    model, task = sl.problems.quadratic([1.0, 30.0], seed=0)
    settings = {"GD": ("sgd", 0.05), "Adam": ("adam", 0.3), "Newton": {"name": "newton", "lr": 0.5, "damping": 0.0},
                "GD, diverging": ("sgd", 0.07)}
    runs = sl.race(model, task, settings, 40)
    for label, spec in settings.items():
        lr = spec["lr"] if isinstance(spec, dict) else spec[1]
        p = descent_path(30.0, lr, label.split(",")[0], steps=40)
        n = len(p.losses)  # a path stops where it diverges or reaches float64 rounding; train runs on
        # equal to rounding: relative 1e-12, or FLOOR·ℒ₀ absolute where θ − θ* is down to the rounding of θ
        # (Newton halves it each step here; measured: GD and Adam within 2.3e-15 relative, Newton 1.7e-20·ℒ₀)
        np.testing.assert_allclose(p.losses, runs[label].losses[:n], rtol=1e-12, atol=FLOOR * p.losses[0],
                                   err_msg=label)
        # the path's loss is ½(θ − θ*)ᵀA(θ − θ*) of its own iterates
        d = p.theta - p.theta_star
        np.testing.assert_allclose(0.5 * np.einsum("ti,ij,tj->t", d, task.A.numpy(), d), p.losses, rtol=1e-10)
    assert descent_path(30.0, 0.07, "GD", steps=40).diverged_at is not None
    with pytest.raises(ValueError, match="lr"):
        descent_path(30.0, -0.1, "GD")


def test_conditioning_headless_lr_slider(cond):
    cond.set(kappa=10.0, lr=0.19, optimizer="GD")
    loss = np.asarray(cond.figure.data[4].y)
    p = descent_path(10.0, 0.19, "GD", steps=60)
    np.testing.assert_allclose(loss, np.maximum(p.losses / p.losses[0], 10 ** -16.4), rtol=1e-12)
    np.testing.assert_allclose(cond.figure.data[1].x, p.theta[:, 0])
    assert cond.figure.data[7].x == (0.2,) * 3  # 2/λ_max
    assert cond.figure.data[8].y[0] == pytest.approx(0.9)  # ρ(0.19) = |1 − 1.9|
    assert "converged" in cond.figure.data[5].text[0] or "after" in cond.figure.data[5].text[0]

    cond.set(lr=0.21)
    assert "diverged at step 37" in cond.figure.data[5].text[0]
    assert len(cond.figure.data[4].y) == 38 and cond.figure.data[8].y[0] == pytest.approx(1.1)


def test_conditioning_kappa_moves_contours_and_edge(cond):
    cond.set(kappa=10.0, lr=0.1)
    x10 = np.array(cond.figure.data[0].x, dtype=float)
    cond.set(kappa=100.0)
    x100, y100 = (np.array(v, dtype=float) for v in (cond.figure.data[0].x, cond.figure.data[0].y))
    assert cond.figure.data[7].x == (0.02,) * 3
    # the contours are the level sets ½ dᵀAd = cⱼ of the κ = 100 quadratic, four decades of levels
    _, task = sl.problems.quadratic([1.0, 100.0], seed=0)
    c, _, _ = cond.contours(100.0)
    assert len(c) == cond.levels == 24 and c[-1] / c[0] == pytest.approx(1e4, rel=1e-12)
    ellipses = np.split(np.stack([x100, y100], axis=1), np.flatnonzero(np.isnan(x100)) + 1)
    ellipses = [e[~np.isnan(e[:, 0])] for e in ellipses if np.isfinite(e).any()]
    assert len(ellipses) == 24
    _, x, y = cond.contours(100.0)  # the figure shows them to 1e-4
    np.testing.assert_allclose(x100, x, rtol=0, atol=5e-5)
    np.testing.assert_allclose(y100, y, rtol=0, atol=5e-5)
    xy = np.stack([x, y], axis=1)
    ellipses = [e[~np.isnan(e[:, 0])] for e in np.split(xy, np.flatnonzero(np.isnan(x)) + 1) if np.isfinite(e).any()]
    for cj, e in zip(c, ellipses):
        d = torch.tensor(e) - task.theta_star
        np.testing.assert_allclose(0.5 * torch.einsum("ni,ij,nj->n", d, task.A, d).numpy(), cj, rtol=1e-12)
    # the largest level touches the window's farthest corner: the window shows the four decades below it
    corners = torch.tensor([[x, y] for x in cond._x for y in cond._y]) - task.theta_star
    assert float((0.5 * torch.einsum("ni,ij,nj->n", corners, task.A, corners)).max()) == pytest.approx(c[-1], rel=1e-12)
    assert not np.allclose(x10[:50], x100[:50])
    assert "diverged" in cond.figure.data[5].text[0]  # η = 0.1 > 2/λ_max = 0.02


def test_conditioning_newton_lands_in_one_step(cond):
    cond.set(kappa=1000.0, lr=1.0, optimizer="Newton")
    assert len(cond.figure.data[4].y) == 2 and "converged in 1 steps" in cond.figure.data[5].text[0]
    np.testing.assert_allclose(cond.figure.data[1].x[-1], cond.theta_star[0], atol=1e-12)
    cond.set(kappa=10.0, lr=0.1, optimizer="GD")


def test_conditioning_static_figure_has_one_step_per_lr(cond):
    cond.set(kappa=10.0, lr=0.1, optimizer="GD")
    fig = cond.static_figure()
    steps = _slider_steps(fig)
    assert len(steps) == len(cond.grid) == 29
    assert fig.layout.sliders[0].active == int(np.argmin(np.abs(np.log10(cond.grid) + 1)))
    # each step restyles the path and the loss with that η's run
    i = 20
    restyle, traces = steps[i].args
    k = list(traces).index(4)
    p = descent_path(10.0, float(cond.grid[i]), "GD", steps=60)
    np.testing.assert_allclose(restyle["y"][k], np.maximum(p.losses / p.losses[0], 10 ** -16.4), rtol=1e-12)
    assert isinstance(fig, go.Figure) and not isinstance(fig, go.FigureWidget)


def test_conditioning_live(monkeypatch):
    ex = ConditioningExplorer(kappa=10.0, lr=0.1, steps=60, live=True)
    assert isinstance(ex.figure, go.FigureWidget)
    assert set(ex.controls) == {"kappa", "lr", "optimizer"}
    ex.controls["lr"].value = 0.21  # as a student would
    assert "diverged at step 37" in ex.figure.data[5].text[0]
    ex.set(optimizer="Newton", lr=1.0)
    assert len(ex.figure.data[4].y) == 2
    ex.set(optimizer="GD")
    ex.latencies.clear()
    lrs = [float(x) for x in ex.grid[8:18]]
    for lr in lrs:  # first pass computes the paths ...
        ex.set(lr=lr)

    def no_recompute(*args, **kwargs):
        raise AssertionError("a path already shown was computed again")
    monkeypatch.setattr(conditioning_module, "descent_path", no_recompute)
    for lr in lrs:  # ... the second looks them up, and draws the same path
        ex.set(lr=lr)
        p = descent_path(10.0, lr, "GD", steps=60)
        np.testing.assert_allclose(ex.figure.data[4].y, np.maximum(p.losses / p.losses[0], 10 ** -16.4), rtol=1e-12)
    assert len(ex.latencies) == 20  # every update timed (for bench_widgets.py), none asserted here


def test_conditioning_live_changes_redraw_only_their_traces():
    ex = ConditioningExplorer(kappa=10.0, lr=0.1, steps=60, live=True)
    changes = [{"kappa": 100.0}, {"lr": 0.01}, {"optimizer": "Adam"}, {"optimizer": "Newton", "lr": 1.0},
               {"kappa": 1000.0}, {"optimizer": "GD", "kappa": 1.0, "lr": 0.5}]
    assert assert_every_change_redraw_free(ex, changes) == len(changes)
    assert ex.widget().children[-1] is ex.figure
    # the page's path: κ ± a step, η ± a step, the two other optimizers, each in the page before the move
    ex.set(kappa=10.0, lr=0.1)
    assert assert_page_draws_every_next_state(ex) == 6


def test_steps_vs_kappa_matches_theory_and_grows_linearly():
    sw = steps_vs_kappa([10, 30, 100], tau=1e-8, max_steps=3000, adam_lrs=[0.3, 1.0])
    np.testing.assert_array_equal(sw.steps["GD"], sw.theory)
    assert sw.steps["GD"].tolist() == [84.0, 261.0, 879.0]
    assert 0.9 < sw.slope() < 1.1 and (sw.steps["Newton"] == 1).all()
    assert np.isfinite(sw.steps["Adam"]).all() and sw.slope("Adam") < 0.5
    # GD's best response beats η = 1/λ_max and still grows linearly: η* ≈ 2/(1 + κ), steps ≈ log ε / log((κ−1)/(κ+1))
    assert (sw.steps["GD best"] < sw.steps["GD"]).all() and 0.9 < sw.slope("GD best") < 1.1
    assert all(br.bracketed for br in sw.responses["GD best"] + sw.responses["Adam"])
    fig = sw.figure()
    assert fig.layout.xaxis.type == "log" and fig.layout.yaxis.type == "log"


def test_loss_curves_figure_marks_divergence():
    model, task = sl.problems.quadratic([1.0, 10.0], seed=0)
    runs = sl.race(model, task, {"a": ("sgd", 0.19), "b": ("sgd", 0.21)}, 60)
    fig = loss_curves_figure(runs, tau=1e-8)
    assert [t.name for t in fig.data][:3] == ["a", "b", None] and fig.data[2].x == (37,)


# --- 02 spectral deformation -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def toy():
    return sl.problems.teacher_student(seed=0)


@pytest.fixture(scope="module")
def deform(toy):
    return DeformationExplorer(toy, alpha=1e2, k=1, k_max=2, per_decade=1, alpha_max=1e4, live=False)


def _truth(toy, alpha, k=1):
    """max|f − f'| (SpecDef, scale-only), σ(W̃) and σ₁(∇²ℒ), computed directly with the library."""
    X = toy.utility.inputs
    locked = sl.specdef(toy.released, alpha, k=k, targets="2")
    scaled = sl.scale_only(toy.released, alpha, k=k, targets="2")
    with torch.no_grad():
        f = toy.released(X)
        errs = [float((locked(X) - f).abs().max()), float((scaled(X) - f).abs().max())]
        sig = torch.linalg.svdvals(locked[2].W_tilde).numpy()
    lam = sl.top_eigenvalues(*sl.loss_fn_of(locked, toy.task), k=1, tol=1e-12)
    return errs, sig, abs(float(lam.values[0]))


def test_deformation_sweep_numbers(toy):
    sw = deformation_sweep(toy, ALPHAS)
    np.testing.assert_allclose(sw.sigma_W_tilde[:, 0] / sw.sigma_W[0], ALPHAS, rtol=1e-12)
    np.testing.assert_allclose(sw.sigma_W_tilde[:, 1:], np.tile(sw.sigma_W[1:], (3, 1)), rtol=1e-10)
    assert (sw.err_specdef <= 1e-9).all() and (sw.err_scale_only[1:] > 1.0).all()
    assert (sw.bound <= sw.sigma1_H).all() and sw.converged.all() and sw.top_in_C[-1] > 0.99
    assert sw.slope() == pytest.approx(2.0, abs=0.02) and sw.slope("bound") == pytest.approx(1.0, abs=0.02)
    with pytest.raises(ValueError, match="first linear layer"):
        deformation_sweep(toy, ALPHAS, layer="0")


def test_deformation_headless_alpha_slider(deform, toy):
    assert deform.grid.tolist() == [1.0, 10.0, 100.0, 1000.0, 10000.0]
    for alpha in (1e2, 1e4):
        deform.set(alpha=alpha)
        errs, sig, sigma1 = _truth(toy, alpha)
        fig = deform.figure
        np.testing.assert_allclose(fig.data[5].y, errs, rtol=1e-9, atol=1e-15)
        np.testing.assert_allclose(fig.data[1].y, sig, rtol=1e-12)
        assert fig.data[9].y[0] == pytest.approx(sigma1, rel=1e-8)  # σ₁ marker = top_eigenvalues
        assert fig.data[9].x[0] == alpha and fig.data[9].y[1] <= fig.data[9].y[0]  # bound below
        assert f"α = {fmt(alpha)}" in fig.data[10].text[0]
    # a value between grid points snaps to the nearest one (log scale)
    deform.set(alpha=2500.0)
    assert deform.figure.data[9].x[0] == 1e3 and deform.at().alpha == 1e3


def test_deformation_k_changes_the_spectrum(deform, toy):
    deform.set(alpha=1e2, k=2)
    sig = np.asarray(deform.figure.data[1].y)
    s = deform.sweep(2).sigma_W
    np.testing.assert_allclose(np.sort(sig)[::-1][:2], 100 * s[:2], rtol=1e-10)
    np.testing.assert_allclose(sig[2:], s[2:], rtol=1e-10)
    deform.set(k=1)


def test_deformation_static_figure_one_step_per_alpha(deform):
    deform.set(alpha=1e2, k=1)
    fig = deform.static_figure()
    steps = _slider_steps(fig)
    assert len(steps) == len(deform.grid) and [s.label for s in steps] == ["1", "10", "100", "1e+3", "1e+4"]
    assert fig.layout.sliders[0].active == 2
    restyle, traces = steps[4].args
    sw = deform.sweep(1)
    j = list(traces).index(9)
    assert restyle["y"][j] == [sw.sigma1_H[4], sw.bound[4]]


def test_deformation_live(toy, monkeypatch):
    ex = DeformationExplorer(toy, alpha=1e2, per_decade=2, alpha_max=1e6, live=True)
    assert isinstance(ex.figure, go.FigureWidget) and set(ex.controls) == {"alpha", "k"}
    ex.controls["alpha"].value = 1e4  # as a student would
    errs, _, sigma1 = _truth(toy, 1e4)
    assert ex.figure.data[9].y[0] == pytest.approx(sigma1, rel=1e-8)
    np.testing.assert_allclose(ex.figure.data[5].y, errs, rtol=1e-9, atol=1e-15)
    ex.latencies.clear()

    def no_resweep(*args, **kwargs):
        raise AssertionError("α moved within the grid, yet the sweep was computed again")
    monkeypatch.setattr(deformation_module, "deformation_sweep", no_resweep)  # k is unchanged: every α a lookup
    for a in [float(a) for a in ex.grid[::-1]][:10] * 2:
        ex.set(alpha=a)
    assert len(ex.latencies) == 20
    sw, i = ex.sweep(1), len(ex.grid) - 10
    assert list(ex.figure.data[9].y) == [sw.sigma1_H[i], sw.bound[i]]
    assert ex.figure.data[9].x[0] == ex.grid[::-1][9]
    changes = [{"k": 2}, {"alpha": float(ex.grid[0])}, {"k": 4, "alpha": float(ex.grid[-1])}, {"k": 1}]
    assert assert_every_change_redraw_free(ex, changes) == len(changes)
    # the axes were fixed over every (α, k): σᵢ(W̃) at the largest α and k lies inside its axis
    lo, hi = ex.figure.layout.yaxis.range
    ex.set(alpha=float(ex.grid[-1]), k=4)
    y = np.log10(np.asarray(ex.figure.data[1].y, dtype=float))
    assert lo < y.min() and y.max() < hi
    ex.set(alpha=float(ex.grid[3]), k=2)
    assert assert_page_draws_every_next_state(ex) == 4  # α and k, a step either way


def test_fix_ranges_holds_the_data_and_the_frames():
    from plotly.subplots import make_subplots

    from specdef_lite.course.widgets.live import fix_ranges
    fig = make_subplots(rows=1, cols=2)
    fig.add_trace(go.Scatter(x=[1.0, 100.0], y=[None, 3.0]), 1, 1)
    fig.add_trace(go.Bar(x=[1, 2], y=[2.0, 5.0]), 1, 2)
    fig.update_xaxes(type="log", row=1, col=1)
    fix_ranges(fig, [{0: {"y": [1.0, 5.0]}}])
    assert fig.layout.xaxis.range == pytest.approx((-0.1, 2.1)) and fig.layout.xaxis.autorange is False
    assert fig.layout.yaxis.range == pytest.approx((0.8, 5.2))  # 1 … 5 from the frame, 5 % of 4 each side
    assert fig.layout.yaxis2.range == pytest.approx((0.0, 5.25))  # bars stand on 0
    assert fig.layout.xaxis2.range == pytest.approx((0.6 - 0.09, 2.4 + 0.09))  # each bar 0.8 wide, all of it shown


def test_fix_ranges_implicit_positions_horizontal_bars_and_axes_it_leaves_alone():
    from plotly.subplots import make_subplots

    from specdef_lite.course.widgets.live import fix_ranges
    fig = make_subplots(rows=1, cols=4)
    fig.add_trace(go.Scatter(y=[1.0, 5.0]), 1, 1)  # drawn at x = 0, 1
    fig.add_trace(go.Scatter(x=[10.0, 11.0], y=[1.0, 2.0]), 1, 1)
    fig.add_trace(go.Bar(x=[3.0, 1.0], y=[0, 1], orientation="h"), 1, 2)
    fig.add_trace(go.Scatter(x=["a", "b"], y=[1, 2]), 1, 3)  # categories: autorange stays
    fig.add_trace(go.Scatter(x=[1, 2], y=[1, 2]), 1, 4)
    fig.update_yaxes(autorange="reversed", row=1, col=4)
    fix_ranges(fig)
    assert fig.layout.xaxis.range == pytest.approx((-0.55, 11.55))
    assert fig.layout.xaxis2.range == pytest.approx((0.0, 3.15))  # the value axis of horizontal bars: from 0
    assert fig.layout.yaxis2.range == pytest.approx((-0.4 - 0.09, 1.4 + 0.09))
    assert fig.layout.xaxis3.range is None and fig.layout.xaxis3.autorange is None
    assert fig.layout.yaxis4.autorange == "reversed" and fig.layout.yaxis4.range is None


def test_redraw_free_only_for_data_on_fixed_axes():
    from specdef_lite.course.widgets.live import redraw_free
    fig = go.Figure([go.Scatter(x=[1], y=[1]), go.Contour(z=[[1, 2], [3, 4]])])
    assert not redraw_free(fig, {0: {"y": [2]}}, {})  # y autoranged: a transition would not rescale it
    fig.update_layout(xaxis_range=[0, 2], yaxis_range=[0, 3])
    assert redraw_free(fig, {0: {"y": [2], "text": ["a"]}}, {})
    assert not redraw_free(fig, {0: {"y": [2], "name": "new"}}, {})  # the legend would keep the old name
    assert not redraw_free(fig, {0: {"marker.color": "red"}}, {})  # … and the old colour, where it shows
    fig.update_traces(showlegend=False, selector=0)
    assert redraw_free(fig, {0: {"y": [2], "marker.color": "red"}}, {})
    fig.update_traces(showlegend=True, selector=0)
    fig.update_layout(showlegend=False)
    assert redraw_free(fig, {0: {"line.color": "red"}}, {})
    assert not redraw_free(fig, {1: {"z": [[0, 0], [0, 0]]}}, {})  # a contour has no transition
    assert not redraw_free(fig, {0: {"y": [2]}}, {"title.text": "t"})
    assert not redraw_free(fig, {}, {})
