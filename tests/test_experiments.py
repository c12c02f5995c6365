"""The experiments layer on the toy path: best responses over ``train``, the race and attack tables, training in
float32/bfloat16, and the figures that draw them. (The model-agnostic search and its κ-law oracle are in
tests/test_best_response.py.)"""
from __future__ import annotations

import copy
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import specdef_lite as sl
from specdef_lite.experiments import attack_table, lr_sweep, plots, precision_attack, race_table, steps_vs_kappa
from specdef_lite.experiments.best_response import BestResponse, Outcome
from specdef_lite.experiments.tuning import anchor, closest, spanning, tracking_grid
from specdef_lite.lock.guards import forward_error_estimate
from specdef_lite.optim.training import Trace

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def toy():
    return sl.problems.teacher_student(width=4, n=16, seed=0)


def test_best_response_trains_copies_and_keeps_every_trace():
    model, task = sl.problems.quadratic([1.0, 10.0], seed=0)
    before = model.theta.detach().clone()
    br = sl.best_response(model, task, "sgd", lrs=[0.02, 0.04], steps=200, target=1e-6)
    assert torch.equal(model.theta.detach(), before), "the model passed in is never trained"
    assert br.bracketed and br.lrs.max() > 2 / 11 > br.best_lr / 2  # climbed past η* = 2/(1 + κ)
    for o in br.outcomes:
        assert isinstance(o.result, Trace) and o.steps == o.result.steps_to(1e-6)
        assert o.diverged == o.result.diverged and o.result.steps <= 200
    # the best run is an ordinary train() run: rerun it
    again = sl.train(copy.deepcopy(model), task, "sgd", 200, 1e-6, lr=br.best_lr, stop_at_target=True)
    np.testing.assert_array_equal(again.losses, br.best.result.losses)


def test_lr_sweep_keeps_the_grid_and_says_whether_it_brackets():
    model, task = sl.problems.quadratic([1.0, 10.0], seed=0)
    grid = [0.05, 0.1, 0.15]
    sw = lr_sweep(model, task, "sgd", grid, steps=200, target=1e-6)
    assert sw.lrs.tolist() == grid and len(sw.traces) == 3  # a fixed grid: nothing added
    assert sw.best_lr == 0.15 and not sw.response.bracketed  # the best sits on the grid's edge
    with pytest.raises(ValueError, match="empty"):
        lr_sweep(model, task, "sgd", [], steps=10, target=1e-6)


def test_closest_and_anchor_follow_the_run_that_got_lowest():
    tr = lambda final: Trace(np.array([1.0, final]))  # noqa: E731
    outs = (Outcome(1e-3, None, False, tr(0.5)), Outcome(1e-2, None, False, tr(0.2)), Outcome(1e-1, None, True, tr(np.inf)))
    br = BestResponse("x", 0.01, 1, outs, None, False)
    assert closest(br).lr == 1e-2 and anchor(br) == 1e-2  # not the largest stable η (also 1e-2 here) by accident:
    outs2 = (Outcome(1e-3, None, False, tr(0.1)),) + outs[1:]
    assert anchor(BestResponse("x", 0.01, 1, outs2, None, False)) == 1e-3  # lowest wins over largest stable
    assert [float(f"{v:.3g}") for v in tracking_grid(BestResponse("x", 0.01, 1, outs2, None, False), 10, slope=-2.0)] \
        == [3.16e-06, 1e-05, 3.16e-05]


def test_spanning_covers_the_range_at_the_grid_step():
    # the half-decade lattice 10^(j/2) from the largest point ≤ 0.03 (10^-2) to the smallest ≥ 0.3 (10^-0.5),
    # each value rounded to 12 significant digits: equal to 10^(j/2) within 5e-12 (half a unit of the 12th)
    np.testing.assert_allclose(spanning([0.03, 0.3], per_decade=2), 10.0 ** (np.arange(-4, 0) / 2), rtol=5e-12)
    # an end on the lattice is its own bound, not one step further out
    np.testing.assert_allclose(spanning([0.01, 0.1], per_decade=2), [0.01, 10 ** -1.5, 0.1], rtol=5e-12)


@pytest.fixture(scope="module")
def race(toy):
    return race_table(toy, [1.0, 10.0, 100.0], {"sgd": [0.1, 1.0], "adam": [0.01, 0.1]}, steps=20)


def test_race_table_compares_best_responses_and_reports_lower_bounds(race, toy):
    for o in ("sgd", "adam"):
        ref = race.reference[o]
        assert ref.reached and ref.bracketed
        np.testing.assert_allclose(np.diff(np.log10(ref.lrs)), 0.5, rtol=1e-9)  # the same resolution as every α
        for br, s in zip(race.responses[o], race.slowdowns(o)):
            assert s.locked is br and s.original is ref
            assert s.ratio == br.lower_bound / ref.best_steps and s.lower_bound == (not br.reached)
            assert br.bracketed or not br.reached
    gd = race.slowdowns("sgd")
    assert gd[-1].lower_bound and gd[-1].ratio == 21 / race.reference["sgd"].best_steps  # budget 20: T ≥ 21
    assert race.slowdown_is_bound("sgd").tolist() == [s.lower_bound for s in gd]
    assert race.sweeps is race.responses
    assert toy.task.value(toy.released) == race.loss0  # the released model was never trained in place


def test_race_table_refuses_an_undefended_model_that_never_arrives(toy):
    with pytest.raises(ValueError, match="never reaches"):
        race_table(toy, [10.0], {"sgd": [1e-6, 1e-5]}, steps=5)


@pytest.fixture(scope="module")
def attacks(toy):
    return attack_table(toy, [1.0, 1e4], steps=80)


def test_fuse_and_injection_restore_the_step_count_exactly(attacks):
    """Fusing is exact in float64 and injection sees the undefended activations: the same best step count at every α."""
    assert (attacks.steps_to("fused") == attacks.ref_steps("original")).all()
    assert (attacks.steps_to("injected") == attacks.ref_steps("injected_ref")).all()
    assert attacks.ratio("fused").tolist() == [1.0, 1.0] and attacks.ratio("injected").tolist() == [1.0, 1.0]
    locked = attacks.slowdowns("locked")[-1]
    assert locked.ratio >= 5 and (locked.lower_bound or locked.locked.bracketed)


def test_precision_attack_trains_in_the_format_it_is_given(toy):
    r64 = precision_attack(toy, 1e4, "sgd", "float64", lrs=[1e-9, 1e-8], steps=30)
    r32 = precision_attack(toy, 1e4, "sgd", "float32", lrs=[1e-9, 1e-8], steps=30)
    rbf = precision_attack(toy, 1e4, "sgd", "bfloat16", lrs=[1e-9, 1e-8], steps=30)
    # float64: the lock is exact up to rounding, relative forward error c·α·ε (guards), the loss twice that
    law64 = 2 * forward_error_estimate(1e4, torch.float64)  # 8e-12; measured 3e-13
    assert r64.loss0 == pytest.approx(toy.task.value(toy.released), rel=law64, abs=0)
    assert r32.loss0 != r64.loss0 and abs(r32.loss0 / r64.loss0 - 1) < 1e-3  # float32: rounding, still a lock
    assert rbf.loss0 > 1.5 * r64.loss0  # bfloat16 at α = 1e4 breaks the function (forward error of order 1)
    assert r32.moved < r64.moved  # some float32 updates vanish that float64 keeps
    assert all(o.result.losses.dtype == np.float64 for o in r32.response.outcomes)
    assert r32.shown is closest(r32.response).result or np.array_equal(r32.shown.losses, closest(r32.response).result.losses)


def test_slowdown_figure_draws_lower_bounds_as_open_triangles(race):
    fig = plots.slowdown_figure(race.alphas, {o: race.slowdowns(o) for o in ("sgd", "adam")})
    gd = next(t for t in fig.data if t.name == "GD")
    assert list(gd.y) == race.slowdown_ratio("sgd").tolist()
    symbols = list(gd.marker.symbol)
    assert symbols == ["triangle-up-open" if b else "circle" for b in race.slowdown_is_bound("sgd")]
    assert any(t.startswith("≥ ") for t in gd.text)
    assert fig.layout.xaxis.type == "log" and fig.layout.yaxis.type == "log"


def test_start_figure_labels_tau_on_its_line_and_shows_coinciding_curves(toy):
    lrs = [0.1, 0.3]
    runs = {name: sl.best_response(m, toy.task, "sgd", lrs=lrs, steps=60, target=toy.target)
            for name, m in [("released", toy.released), ("fused", sl.fuse(sl.specdef(toy.released, 100.0)))]}
    X = toy.utility.inputs
    with torch.no_grad():
        f = toy.released(X).squeeze(-1).numpy()
    fig = plots.start_figure(f, f, {n: (br.shown.result, br) for n, br in runs.items()}, toy.target)
    tau = next(t for t in fig.data if t.name == "target τ")
    assert list(tau.y) == [toy.target, toy.target] and "target τ" in "".join(tau.text)  # the label sits on the line
    fused = next(t for t in fig.data if t.name and t.name.startswith("fused"))
    assert "coincides with released" in fused.name and fused.line.dash == "dash"
    released = next(t for t in fig.data if t.name and t.name.startswith("released"))
    assert released.line.dash == "solid" and released.line.width > fused.line.width


def test_kappa_sweep_best_response_follows_the_closed_form_best_step():
    """GD's best response on λ ∈ {1, κ}: η* near 2/(1 + κ), steps between the closed-form bounds of that η grid."""
    sw = steps_vs_kappa([10.0, 100.0], tau=1e-8, max_steps=2000, adam_lrs=None, newton=False)
    for kappa, br in zip(sw.kappas, sw.responses["GD best"]):
        eta_star = 2 / (1 + kappa)
        assert br.bracketed and 0.85 < br.best_lr / eta_star <= 1.0  # the grid's best point below the optimum
        rate = max(abs(1 - br.best_lr), abs(1 - br.best_lr * kappa))
        # ℒ_t ≤ ρ(η)^{2t} ℒ₀ bounds the steps at that η from above
        model, task = sl.problems.quadratic([1.0, kappa], seed=0)
        upper = math.ceil(math.log(1e-8 / task.value(model)) / (2 * math.log(rate)))
        assert br.best_steps <= upper


def test_readme_best_response_example_prints_what_it_says():
    """Each line of the README's example that ends in a quoted comment must evaluate to exactly that string."""
    text = (ROOT / "README.md").read_text()
    block = next(b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "best_response" in b)
    script, checks = [], 0
    for line in block.splitlines():
        code, _, comment = line.partition("  # ")
        said = re.match(r"\s*'(.+)'", comment)
        if said and code.strip() and not line.startswith(" "):
            script.append(f"__r = {code.strip()}\nassert __r == {said.group(1)!r}, __r")
            checks += 1
        else:
            script.append(line)
    assert checks >= 3
    exec("\n".join(script), {"sl": sl, "__name__": "readme"})  # noqa: S102 - our own README


def test_lam_max_is_the_largest_eigenvalue_of_each_locked_hessian(race, toy):
    """2/λ_max is GD's local limit: λ_max by Lanczos against the dense spectrum, at every α of the race."""
    lam = race.lam_max()
    for a, got in zip(race.alphas, lam):
        dense = torch.linalg.eigvalsh(sl.hessian(*sl.loss_fn_of(sl.specdef(toy.released, float(a)), toy.task)))
        assert got == pytest.approx(float(dense[-1]), rel=1e-8)
    assert lam[-1] / lam[-2] == pytest.approx(100.0, rel=0.05)  # α ×10 → λ_max ×α² once the lock dominates


def _answered(lr: float) -> BestResponse:
    o = Outcome(lr, 10, False)
    return BestResponse("", 0.1, 50, (o,), o, True)


def test_attacker_lrs_says_where_eta_was_measured_and_extrapolates_along_the_laws():
    from specdef_lite.experiments import RaceTable, attacker_lrs
    race = RaceTable(np.array([1.0, 100.0]), {"sgd": (_answered(0.3), _answered(3e-5)), "adam": (_answered(0.03), _answered(3e-4))},
                     {"sgd": _answered(0.3), "adam": _answered(0.03)}, {"sgd": 50, "adam": 50}, 0.1, 1.0)
    eta = attacker_lrs(race, [1.0, 10.0, 100.0, 1e4])
    assert eta.source["sgd"].tolist() == ["measured", "interpolated", "measured", "law"]
    np.testing.assert_allclose(eta.lrs["sgd"], [0.3, 3e-3, 3e-5, 3e-9], rtol=1e-12)    # log-midpoint; η ∝ 1/α² beyond
    np.testing.assert_allclose(eta.lrs["adam"], [0.03, 3e-3, 3e-4, 3e-6], rtol=1e-12)  # η ∝ 1/α beyond
    assert eta.measured_up_to("sgd") == 100.0


def test_vanishing_at_the_law_reproduces_the_vanishing_table(toy):
    """Given the η the law gives, ``vanishing_at`` computes exactly what ``precision.vanishing_table`` does."""
    from specdef_lite.experiments import AttackerLrs, vanishing_at
    from specdef_lite.optim.precision import feasible_lr, vanishing_table
    alphas, lr1 = np.array([1.0, 1e4, 1e8]), {"sgd": 0.3, "adam": 0.01}
    ref = vanishing_table(toy.released, toy.task, alphas, lr1, dtypes=["float32", "bfloat16"], gd_lr="law")
    eta = AttackerLrs(alphas, {o: feasible_lr(alphas, v, o) for o, v in lr1.items()},
                      {o: np.array(["law"] * 3) for o in lr1})
    got = vanishing_at(toy.released, toy.task, eta, dtypes=["float32", "bfloat16"])
    for o in lr1:
        np.testing.assert_array_equal(got.lrs[o], ref.lrs[o])
        np.testing.assert_array_equal(got.rel_updates[o], ref.rel_updates[o])
        for d in ("float32", "bfloat16"):
            np.testing.assert_array_equal(got.vanished[o, d], ref.vanished[o, d])
    np.testing.assert_array_equal(got.groups, ref.groups)
    np.testing.assert_array_equal(got.forward_errors["float32"], ref.forward_errors["float32"])


def test_precision_run_counts_the_weights_that_moved(toy):
    r = precision_attack(toy, 1e4, "sgd", "bfloat16", lrs=[1e-9, 1e-8], steps=30)
    n = sum(p.numel() for p in sl.specdef(toy.released, 2.0).parameters())
    assert r.n_weights == n and 0 <= r.n_moved <= n and r.moved == r.n_moved / n
