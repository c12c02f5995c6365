"""The explorers of notebooks 03–05, headless and live: a control moves, a trace shows the library's numbers.

Every trace an explorer draws is a ``Trace`` from ``train`` (03, 04) or a row of a ``VanishingTable`` (05), so
each test moves a control and compares the trace's y with the same quantity recomputed or looked up directly.
"""
import copy
import importlib

import numpy as np
import plotly.graph_objects as go
import pytest
from _explorers import assert_every_change_redraw_free, assert_page_draws_every_next_state

import specdef_lite as sl
from specdef_lite.optim.precision import vanishing_table
from specdef_lite.experiments import attack_table, loglog_slope, lr_grid, parameter_bill, race_table
from specdef_lite.experiments.plots import bill_figure
from specdef_lite.course.widgets.attacker import AttackerExplorer
from specdef_lite.course.widgets.precision import PrecisionExplorer
from specdef_lite.course.widgets.page import neighbours
from specdef_lite.course.widgets.race import RaceExplorer

race_module = importlib.import_module("specdef_lite.experiments.race")  # (the package also exports a function race)

ALPHAS = [1.0, 10.0, 100.0]


def _y(trace) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in trace.y], dtype=float)


def _same(y, losses) -> bool:
    losses = np.where(np.isfinite(losses), losses, np.nan)
    return len(y) == len(losses) and np.allclose(y, losses, rtol=0, atol=0, equal_nan=True)


@pytest.fixture(scope="module")
def toy():
    return sl.problems.teacher_student(width=4, n=16, seed=0)


@pytest.fixture(scope="module")
def table(toy):
    return race_table(toy, ALPHAS, {"sgd": lr_grid(0.1, 1.0), "adam": lr_grid(0.01, 0.1), "newton": [0.5, 0.25]},
                      steps={"sgd": 100, "adam": 100, "newton": 10}, optimizer_kw={"newton": {"damping": 1e-3}})


# ---------------------------------------------------------------- 03: the race


def test_lr_grid_and_slope():
    np.testing.assert_allclose(lr_grid(1e-3, 3.0, 2), [1.0, 10 ** -0.5, 0.1, 10 ** -1.5, 0.01, 10 ** -2.5, 1e-3])
    assert loglog_slope([1, 10, 100], [1.0, 1e-2, 1e-4]) == pytest.approx(-2.0)
    assert loglog_slope([1, 10, 100], [1.0, None, 1e-4]) == pytest.approx(-2.0)  # gaps are skipped
    with pytest.raises(ValueError):
        lr_grid(1.0, 0.1)


def test_tracked_best_response_finds_what_a_full_lr_sweep_finds(table, toy):
    """The race's short, tracking grids find the same best η as a sweep over the whole grid, with fewer runs."""
    locked = sl.specdef(toy.released, 10.0)
    grid = lr_grid(1e-6, 1.0)
    for name in ("sgd", "adam"):
        tracked = table.responses[name][1]
        full = sl.lr_sweep(locked, toy.task, name, grid, 100, toy.target)
        assert tracked.bracketed and np.isclose(tracked.best_lr, full.best_lr, rtol=1e-9)
        assert tracked.best_steps == full.best_steps
        assert len(tracked.lrs) < len(full.lrs)


def test_race_table_shows_the_papers_laws(table, toy):
    eta = table.max_stable_lr("sgd")
    assert loglog_slope(ALPHAS, eta) <= -1.5  # η_max ∝ 1/α² for GD
    gd = table.best_steps("sgd")
    assert gd[0] < gd[1] or np.isnan(gd[1])
    adam = table.best_lr("adam")
    assert adam[0] > adam[-1]
    # every trace in the table is an ordinary train() run: rerun one and compare
    lr = table.best_lr("sgd")[1]
    again = sl.train(sl.specdef(toy.released, 10.0), toy.task, "sgd", 100, toy.target, lr=lr, stop_at_target=True)
    np.testing.assert_array_equal(table.trace("sgd", 10.0).losses, again.losses)
    # the released model was never trained in place
    assert toy.task.value(toy.released) == table.loss0


def test_race_explorer_headless(table):
    lr0 = float(table.best_lr("sgd")[0])
    ex = RaceExplorer(table, alpha=1.0, optimizer="sgd", lr=lr0, live=False)
    assert isinstance(ex.figure, go.Figure) and not isinstance(ex.figure, go.FigureWidget)
    mine = ex._idx["mine"]
    y1 = _y(ex.figure.data[mine])
    assert _same(y1, table.trace("sgd", 1.0, lr0).losses)
    ex.set(alpha=10.0)
    y10 = _y(ex.figure.data[mine])
    assert _same(y10, table.trace("sgd", 10.0, lr0).losses) and not _same(y10, y1)
    status = ex.figure.data[ex._idx["status"]].text[0]
    assert table.trace("sgd", 10.0, lr0).diverged and status.endswith(": diverged")  # α² stiffer: blows up
    for i, o in zip(ex._idx["best"], table.optimizers):  # the dotted best-η curves follow α too
        assert _same(_y(ex.figure.data[i]), table.trace(o, 10.0).losses)
    assert list(ex.figure.data[ex._idx["steps_marker"]].x) == [10.0, 10.0]
    ex.set(optimizer="newton", lr=0.5)
    assert _same(_y(ex.figure.data[mine]), table.trace("newton", 10.0, 0.5).losses)
    fig = ex.static_figure()
    steps = fig.layout.sliders[0].steps
    assert len(steps) == len(table.alphas)
    for step, a in zip(steps, table.alphas):  # each slider step restyles "your run" to that α's trace
        traces = step.args[1]
        y = step.args[0]["y"][traces.index(mine)]
        assert _same(np.array([np.nan if v is None else v for v in y], dtype=float),
                     table.trace("newton", a, 0.5).losses)
    with pytest.raises(ValueError, match="unknown control"):
        ex.set(beta=1.0)


def test_race_explorer_live(table, monkeypatch):
    ex = RaceExplorer(table, alpha=1.0, optimizer="adam", lr=float(table.best_lr("adam")[0]), live=True)
    assert isinstance(ex.figure, go.FigureWidget)

    def no_training(*args, **kwargs):
        raise AssertionError("the explorer trained a run the table already holds")
    monkeypatch.setattr(race_module, "train", no_training)  # every state below is a lookup
    ex.controls["alpha"].value = 100.0
    mine = ex._idx["mine"]
    # η moved to the nearest value the scan tried at α = 100: a run already in the table, nothing trained
    tried = sorted(table.sweeps["adam"][2].lrs)
    lr_now = ex.controls["lr"].value
    assert lr_now in tried and [o[1] for o in ex.controls["lr"].options] == tried
    assert abs(np.log10(lr_now) - np.log10(table.best_lr("adam")[0])) == min(
        abs(np.log10(v) - np.log10(table.best_lr("adam")[0])) for v in tried)
    assert _same(_y(ex.figure.data[mine]), table.trace("adam", 100.0, lr_now).losses)
    ex.controls["lr"].value = float(table.best_lr("adam")[2])
    assert _same(_y(ex.figure.data[mine]), table.trace("adam", 100.0).losses)
    assert len(ex.latencies) == 2  # two updates, each timed (benchmarks/bench_widgets.py reports the times)
    lr_100 = ex.controls["lr"].value
    ex.set(alpha=1.0)  # from code: checked on the state it settles in (η tried at α = 1), nothing trained
    assert lr_100 not in ex.tried("adam", 1.0) and ex.controls["lr"].value in ex.tried("adam", 1.0)
    ex.set(alpha=100.0, lr=lr_100)
    changes = [{"alpha": 10.0}, {"optimizer": "sgd", "lr": ex.tried("sgd", 10.0)[0]},
               {"lr": ex.tried("sgd", 10.0)[-1]},
               {"optimizer": "newton", "alpha": 1.0, "lr": ex.tried("newton", 1.0)[0]}]
    assert assert_every_change_redraw_free(ex, changes) == len(changes)
    # the page's path, where α and the optimizer also move η (to the tried value nearest the student's)
    ex.set(alpha=10.0, optimizer="adam", lr=ex.tried("adam", 10.0)[1])
    lr_steps = len(list(neighbours(ex.controls["lr"])))  # η a step either way, where the scan tried one
    assert lr_steps >= 1 and assert_page_draws_every_next_state(ex) == 2 + 2 + lr_steps  # α ± a step, 2 optimizers


# ---------------------------------------------------------------- 04: the attacker


@pytest.fixture(scope="module")
def attacks(toy):
    return attack_table(toy, [1.0, 100.0, 1e4], steps=80, lrs=lr_grid(0.01, 3.0))


def test_attacks_converge_like_the_undefended_model(attacks, toy):
    # Fusing (and injecting) changes the function only by the rounding of C·W̃ (c·α·ε ≤ 4e-12 here), so every η
    # trains step for step as the reference, the search walks the same grid, and the ratio is 1 exactly.
    assert attacks.ratio("fused").tolist() == [1.0] * len(attacks.alphas)
    assert attacks.ratio("injected").tolist() == [1.0] * len(attacks.alphas)
    locked = attacks.steps_to("locked")
    assert np.isnan(locked[-1]) or locked[-1] >= 5 * attacks.ref_steps("original")
    # W_fused = fl(C·fl(C⁻¹W)): two products of inner size n = width = 4, each off by ≤ γ_n ≈ n·ε times |C||C⁻¹| ≈ α,
    # so max|W_fused − W| ≤ 2·n·α·ε·max|W| (measured 4.4–4.6·α·ε at α = 1e2, 1e4; 0 at α = 1)
    assert (attacks.fuse_error <= 2 * 4 * attacks.alphas * np.finfo(np.float64).eps).all(), attacks.fuse_error
    assert attacks.detected[-1] == ("0", "2") and attacks.deformed == ("0", "2", "4")
    assert np.isnan(attacks.lrs["locked"][-1]) or attacks.lrs["locked"][-1] < 1e-6 < attacks.lrs["original"]
    # each attack gets its own best response; the injected run at it trains only the Ds
    injected = sl.inject(sl.specdef(toy.released, 1e4))
    rerun = sl.train(copy.deepcopy(injected), toy.task, "sgd", 80, toy.target, lr=attacks.lrs["injected"][-1],
                     stop_at_target=True)
    np.testing.assert_allclose(rerun.losses, attacks.runs["injected"][-1].losses, rtol=1e-12)


def test_attacker_explorer_headless_and_live(attacks):
    ex = AttackerExplorer(attacks, alpha=1.0, live=False)
    assert _same(_y(ex.figure.data[2]), attacks.runs["locked"][0].losses)
    ex.set(alpha=1e4)
    assert _same(_y(ex.figure.data[2]), attacks.runs["locked"][2].losses)
    assert _same(_y(ex.figure.data[4]), attacks.runs["injected"][2].losses)
    assert list(ex.figure.data[11].x) == [1e4, 1e4]
    fig = ex.static_figure()
    assert len(fig.layout.sliders[0].steps) == 3 and fig.layout.sliders[0].active == 2
    live = AttackerExplorer(attacks, alpha=1.0, live=True)
    live.controls["alpha"].value = 100.0
    assert isinstance(live.figure, go.FigureWidget)
    assert _same(_y(live.figure.data[3]), attacks.runs["fused"][1].losses)
    assert assert_every_change_redraw_free(live, [{"alpha": 1e4}, {"alpha": 1.0}]) == 2
    assert assert_page_draws_every_next_state(live) == 1  # α = 1 is the grid's end: one step, to 100
    assert "attacker: fuse(locked): τ in" in live.figure.data[12].text[0]


def test_parameter_bill_is_L_d_squared():
    bill = parameter_bill([4, 8, 16], [1, 2, 5])
    expected = np.outer(np.array([4, 8, 16]) ** 2, [1, 2, 5])
    np.testing.assert_array_equal(bill.added, expected)
    np.testing.assert_array_equal(bill.locked_extra, expected)  # the defender paid the same
    assert (bill.params == [[(d * d + d) * L + d + 1 for L in (1, 2, 5)] for d in (4, 8, 16)]).all()
    fig = bill_figure(bill)
    assert len(fig.data) == 2 * 3 + 2 * 3
    assert list(fig.data[0].y) == expected[0].tolist()


# ---------------------------------------------------------------- 05: precision


@pytest.fixture(scope="module")
def vanish(toy):
    return vanishing_table(toy.released, toy.task, [1.0, 1e3, 1e6], {"sgd": 0.3, "adam": 0.03},
                           dtypes=["float32", "bfloat16"])


def test_precision_explorer_headless(vanish):
    ex = PrecisionExplorer(vanish, alpha=1e3, dtype="float32", live=False)
    frac = ex._idx["frac"]
    np.testing.assert_allclose(ex.figure.data[frac[0]].y, vanish.fraction("sgd", "float32"))
    ex.set(dtype="bfloat16")
    np.testing.assert_allclose(ex.figure.data[frac[0]].y, vanish.fraction("sgd", "bfloat16"))
    np.testing.assert_allclose(ex.figure.data[frac[1]].y, vanish.fraction("adam", "bfloat16"))
    assert ex.figure.data[ex._idx["line"]].x[0] == pytest.approx(-8 * np.log10(2))  # u = 2⁻⁸
    ex.set(alpha=1e6, optimizer="adam")
    counts = [sum(ex.figure.data[i].y) for i in ex._idx["hist"]]
    rel = vanish.rel_updates["adam"][2]
    assert counts == [int(np.isfinite(rel[vanish.groups == g]).sum()) for g in ("W̃", "C", "other")]
    assert ex.figure.data[ex._idx["frac_marker"]].y[0] == pytest.approx(vanish.fraction("adam", "bfloat16")[2])
    fig = ex.static_figure()
    assert len(fig.layout.sliders[0].steps) == 3


def test_precision_explorer_live(vanish):
    ex = PrecisionExplorer(vanish, alpha=1.0, live=True)
    assert isinstance(ex.figure, go.FigureWidget)
    ex.controls["alpha"].value = 1e6
    marker = ex.figure.data[ex._idx["frac_marker"]]
    assert marker.x[0] == pytest.approx(1e6) and marker.y[0] == pytest.approx(vanish.fraction("sgd", "float32")[2])
    ex.controls["dtype"].value = "bfloat16"
    np.testing.assert_allclose(ex.figure.data[ex._idx["frac"][0]].y, vanish.fraction("sgd", "bfloat16"))
    assert len(ex.latencies) == 2  # timed for benchmarks/bench_widgets.py, never asserted here
    changes = [{"alpha": 1e3}, {"optimizer": "adam"}, {"dtype": "float32"}, {"alpha": 1.0, "optimizer": "sgd"}]
    assert assert_every_change_redraw_free(ex, changes) == len(changes)
    assert ex.figure.data[ex._idx["status"]].text[0].startswith("float32: u = 2^-24<br>")
    ex.set(alpha=1e3)
    assert assert_page_draws_every_next_state(ex) == 2 + 1 + 1  # α ± a step, the other format and optimizer
    assert len(ex.page.sent) == 3 * 2 * 2  # and every state: 3 α × 2 formats × 2 optimizers are few
    with pytest.raises(ValueError, match="dtype"):
        PrecisionExplorer(vanish, dtype="float16", live=False)


def test_race_eta_labels_tell_every_eta_apart(table):
    """The page keys η by its label: an η given beside a tried one that rounds alike gets a label of its own."""
    near = float(table.best_lr("adam")[0]) * 1.0004  # the same to 3 digits
    ex = RaceExplorer(table, alpha=1.0, optimizer="adam", lr=near, live=True)
    labels = list(ex.controls["lr"]._options_labels)
    assert len(set(labels)) == len(labels) and ex.controls["lr"].value == near
    assert ex.option_label("lr", near) == labels[ex.controls["lr"].index]
