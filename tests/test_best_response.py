"""The attacker's best response (specdef_lite.experiments.best_response): κ law, grid extension, lower bounds.

The oracle for the κ law is GD on ℒ(θ) = ½ Σᵢ λᵢ eᵢ² with two eigenvalues λ_min, λ_max = κ·λ_min. One GD
step multiplies eᵢ by rᵢ = 1 − ηλᵢ, so ℒ_t = Σᵢ wᵢ rᵢ^{2t} with wᵢ = ½λᵢeᵢ(0)². The fixed step that
minimises max |rᵢ| is η* = 2/(λ_min + λ_max), where both |rᵢ| = ρ* = (κ−1)/(κ+1); then ℒ_t = ρ*^{2t} ℒ₀
exactly, and reaching τ = ε²ℒ₀ takes T* = log ε / log ρ* steps (rounded up). Two bounds make the test's
tolerance exact rather than guessed:
  * upper: at any η of the grid ℒ_t ≤ max|rᵢ|^{2t} ℒ₀ (and ℒ_t falls monotonically), so the best response
    is at most min over the grid of ⌈log ε / log max|rᵢ(η)|⌉ — this is where the grid's resolution enters;
  * lower: at any η one |rᵢ| ≥ ρ*, so ℒ_t ≥ w_min ρ*^{2t} and T ≥ ⌈log(τ/w_min) / (2 log ρ*)⌉.
"""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from specdef_lite.experiments.best_response import BestResponse, Outcome, search, slowdown
from specdef_lite.optim.problems import Quadratic, ToyTask
from specdef_lite.optim.training import train


def _two_eigen_quadratic(kappa: float) -> tuple[Quadratic, ToyTask]:
    """½ Σ λᵢ eᵢ² with λ = (1, κ) and eᵢ(0) = 1/√λᵢ, so both directions start with the same loss wᵢ = ½."""
    lam = torch.tensor([1.0, kappa], dtype=torch.float64)
    theta_star = torch.zeros(2, dtype=torch.float64)
    return Quadratic(1 / lam.sqrt()), ToyTask(None, theta_star, H=torch.diag(lam), minimiser=theta_star)


def _gd_run(model, task, budget, target):
    def run(lr: float) -> Outcome:
        tr = train(copy.deepcopy(model), task, "sgd", budget, target, lr=lr, stop_at_target=True)
        return Outcome(lr, tr.steps_to(target), tr.diverged, tr)
    return run


def _closed_form_steps(eps: float, rate: float) -> int:
    """⌈log ε / log r⌉: GD steps for the distance to shrink by ε at contraction r per step."""
    return math.ceil(math.log(eps) / math.log(rate))


@pytest.mark.parametrize("kappa", [3.0, 10.0, 30.0])
def test_gd_best_response_follows_the_kappa_law(kappa):
    eps = 1e-4  # the distance shrinks by ε, the loss by ε²
    model, task = _two_eigen_quadratic(kappa)
    L0 = task.value(model)
    target = eps ** 2 * L0
    lam_min, lam_max = 1.0, kappa
    eta_star = 2 / (lam_min + lam_max)
    rho_star = (kappa - 1) / (kappa + 1)
    T_star = _closed_form_steps(eps, rho_star)
    # a grid around η*, ±30 %/κ wide (T's flat minimum narrows like 1/κ²), 41 points: fine against that width
    lrs = eta_star * np.geomspace(1 - 0.3 / kappa, 1 + 0.25 / kappa, 41)
    budget = 2 * T_star + 20
    br = search(_gd_run(model, task, budget, target), lrs, budget=budget, target=target, label="GD")

    rate = lambda eta: max(abs(1 - eta * lam_min), abs(1 - eta * lam_max))  # noqa: E731
    T_upper = min(_closed_form_steps(eps, rate(eta)) for eta in lrs if rate(eta) < 1)
    T_lower = math.ceil(math.log(target / (0.5 * L0)) / (2 * math.log(rho_star)))
    assert br.bracketed and br.reached
    assert T_lower <= br.best_steps <= T_upper, (T_lower, br.best_steps, T_upper, T_star)
    # the κ law itself, at the tolerance those two bounds leave
    tol = max(T_upper - T_star, T_star - T_lower) / T_star
    assert abs(br.best_steps / T_star - 1) <= tol
    assert tol < 0.1
    # and the best η sits where the lower bound allows that many steps: ℒ_t ≥ w_min·max|rᵢ(η)|^{2t}
    r = rate(br.best_lr)
    assert r < 1 and math.ceil(math.log(target / (0.5 * L0)) / (2 * math.log(r))) <= br.best_steps
    assert abs(br.best_lr / eta_star - 1) < 0.3 / kappa


def test_gd_sweep_extends_past_the_grid_edge_to_bracket_eta_star():
    """A coarse grid entirely below η* = 2/(1+κ): the best sits on the top edge until the search climbs past η*."""
    kappa, eps = 10.0, 1e-3
    model, task = _two_eigen_quadratic(kappa)
    target = eps ** 2 * task.value(model)
    eta_star = 2 / (1 + kappa)
    lrs = [eta_star / 8, eta_star / 4]  # q = 2
    br = search(_gd_run(model, task, 200, target), lrs, budget=200, target=target)
    assert br.lrs.max() > eta_star > br.lrs.min()
    assert len(br.outcomes) > len(lrs)
    assert br.bracketed
    assert abs(math.log2(br.best_lr / eta_star)) <= 1  # within one grid step (q = 2) of η*
    # the lr beyond the best diverged or was slower: that is what brackets it
    above = [o for o in br.outcomes if o.lr > br.best_lr]
    assert above and all(o.diverged or o.steps is None or o.steps > br.best_steps for o in above)


def _v_shaped(lr_best: float, t_best: int, diverge_above: float, per_decade: int = 10):
    """T(η) = t_best + per_decade·|log10(η/η_best)|, diverging above a threshold: an attack with a known optimum."""
    calls = []

    def run(lr: float) -> Outcome:
        calls.append(lr)
        if lr > diverge_above:
            return Outcome(lr, None, True)
        return Outcome(lr, t_best + round(per_decade * abs(math.log10(lr / lr_best))), False)
    return run, calls


@pytest.mark.parametrize("grid, side", [([1e-7, 1e-6, 1e-5], "up"), ([1.0, 10.0], "down")])
def test_search_extends_while_the_best_is_on_an_edge(grid, side):
    run, calls = _v_shaped(1e-3, 5, diverge_above=1e3)
    br = search(run, grid, budget=100, target=0.0)
    assert br.best_lr == pytest.approx(1e-3) and br.best_steps == 5 and br.bracketed
    extra = [lr for lr in calls if lr not in grid]
    assert extra and all((lr > max(grid)) if side == "up" else (lr < min(grid)) for lr in extra)
    assert calls == sorted(calls) or side == "down"  # one grid step at a time, outward
    assert br.lrs.tolist() == sorted(br.lrs.tolist())


def test_search_stops_at_max_extend_and_says_not_bracketed():
    run, calls = _v_shaped(1e-3, 5, diverge_above=1e3)
    br = search(run, [1e-9, 1e-8], budget=100, target=0.0, max_extend=2)
    assert len(calls) == 4 and br.best_lr == pytest.approx(1e-6)
    assert not br.bracketed
    assert "not bracketed" in br.summary()


def test_ties_go_to_the_smaller_lr_and_a_flat_top_is_not_bracketed():
    run = lambda lr: Outcome(lr, 7, False)  # noqa: E731 - every lr equally fast
    br = search(run, [0.1, 1.0], budget=50, target=0.0, max_extend=3)
    assert br.best_lr == pytest.approx(1e-4) and not br.bracketed  # extended down 3 times, still tied
    # a plateau above the best: tying lrs are not slower, so the search climbs it and never calls it bracketed
    run = lambda lr: Outcome(lr, 7 if lr >= 0.1 else 9, False)  # noqa: E731
    br = search(run, [0.01, 0.1, 1.0], budget=50, target=0.0, max_extend=2)
    assert br.best_lr == pytest.approx(0.1) and br.lrs.max() == pytest.approx(100.0) and not br.bracketed


def test_never_reached_is_a_lower_bound_and_extends_down_while_the_smallest_diverges():
    budget = 40
    run = lambda lr: Outcome(lr, None, lr > 1e-4)  # noqa: E731 - diverges above 1e-4, too slow below
    br = search(run, [1e-2, 1e-1], budget=budget, target=0.5)
    assert not br.reached and br.best is None and br.best_lr is None and br.best_steps is None
    assert br.lower_bound == budget + 1
    assert not br.bracketed
    assert br.lrs.min() == pytest.approx(1e-4) and not br.outcomes[0].diverged  # stopped at the first stable lr
    assert br.diverged[1:].all()
    assert "T ≥ 41" in br.summary()


def test_never_reached_and_never_diverged_extends_up():
    run = lambda lr: Outcome(lr, None, lr >= 1.0)  # noqa: E731 - too slow below 1, diverges from 1 on
    br = search(run, [1e-3, 1e-2], budget=10, target=0.0)
    assert br.lrs.max() == pytest.approx(1.0) and br.outcomes[-1].diverged and br.lower_bound == 11


def test_slowdown_is_the_ratio_of_best_responses_and_a_lower_bound_when_locked_never_arrives():
    orig = search(_v_shaped(1e-2, 20, 1.0)[0], np.geomspace(1e-4, 1e-1, 7), budget=300, target=0.1)
    locked = search(_v_shaped(1e-6, 50, 1e-4)[0], np.geomspace(1e-8, 1e-5, 7), budget=300, target=0.1)
    s = slowdown(locked, orig)
    assert (s.ratio, s.lower_bound) == (50 / 20, False)
    assert s.summary() == "2.5×"
    never = search(lambda lr: Outcome(lr, None, False), [1e-3], budget=300, target=0.1, max_extend=0)
    s = slowdown(never, orig)
    assert (s.ratio, s.lower_bound) == (301 / 20, True)
    assert s.summary().startswith("≥ ")
    faster = search(_v_shaped(1e-6, 4, 1e-4)[0], np.geomspace(1e-8, 1e-5, 7), budget=300, target=0.1)
    assert slowdown(faster, orig).ratio == 4 / 20  # a lock that does not slow the attacker says so (< 1)


def test_slowdown_refuses_a_meaningless_reference():
    never = BestResponse("orig", 0.1, 10, (Outcome(1.0, None, False),), None, False)
    with pytest.raises(ValueError, match="never reached"):
        slowdown(never, never)
    zero = BestResponse("orig", 0.1, 10, (Outcome(1.0, 0, False),), Outcome(1.0, 0, False), False)
    with pytest.raises(ValueError, match="starts below"):
        slowdown(zero, zero)
    other = BestResponse("x", 0.2, 10, (Outcome(1.0, 3, False),), Outcome(1.0, 3, False), False)
    with pytest.raises(ValueError, match="different targets"):
        slowdown(other, zero)


def test_search_rejects_bad_input():
    run = lambda lr: Outcome(lr, 3, False)  # noqa: E731
    with pytest.raises(ValueError, match="empty"):
        search(run, [], budget=10, target=0.0)
    with pytest.raises(ValueError, match="> 0"):
        search(run, [0.0, 1.0], budget=10, target=0.0)
    with pytest.raises(ValueError, match="beyond the budget"):
        search(lambda lr: Outcome(lr, 30, False), [1.0], budget=10, target=0.0)
    with pytest.raises(TypeError, match="Outcome"):
        search(lambda lr: 3, [1.0], budget=10, target=0.0)


def test_results_are_frozen():
    o = Outcome(1.0, 3, False)
    with pytest.raises(AttributeError):
        o.steps = 4  # type: ignore[misc]


def test_shown_is_the_best_else_the_largest_stable_else_the_smallest():
    outs = (Outcome(1e-3, None, False), Outcome(1e-2, None, False), Outcome(1e-1, None, True))
    assert BestResponse("x", 0.0, 9, outs, None, False).shown.lr == 1e-2
    assert BestResponse("x", 0.0, 9, outs[2:], None, False).shown.lr == 1e-1
    best = Outcome(1e-3, 5, False)
    assert BestResponse("x", 0.0, 9, (best,) + outs[1:], best, False).shown is best


def test_never_reached_with_closeness_extends_towards_the_closest_run():
    """Nothing reaches τ; the final loss is smallest at η = 1e-6 (below the grid): the search walks down to it."""
    calls = []

    def run(lr):
        calls.append(lr)
        return Outcome(lr, None, lr > 1.0, result=abs(math.log10(lr) + 6) + 1)  # 'final loss', least at 1e-6
    br = search(run, [1e-3, 1e-2], budget=20, target=0.0, closeness=lambda o: o.result)
    assert br.lower_bound == 21 and not br.reached
    assert min(calls) == pytest.approx(1e-7)  # one past the closest: it is now inside the range tried
    assert min(br.outcomes, key=lambda o: o.result).lr == pytest.approx(1e-6)
    # without closeness the old rule applies: only upward while the top is stable and too slow
    calls.clear()
    br = search(run, [1e-3, 1e-2], budget=20, target=0.0)
    assert min(calls) == pytest.approx(1e-3) and max(calls) == pytest.approx(10.0)
