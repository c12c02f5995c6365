"""``Explorer.set`` checks before it stores: a value the explorer cannot show raises one ValueError and leaves the
controls and the figure exactly as they were, live and headless; the next valid value works (no jammed explorer)."""
import json

import pytest

import specdef_lite as sl
from specdef_lite.optim import precision
from specdef_lite.course.widgets import ConditioningExplorer, DeformationExplorer, PrecisionExplorer, RaceExplorer
from specdef_lite.experiments.race import race_table
from specdef_lite.experiments.tuning import lr_grid


@pytest.fixture(scope="module")
def toy():
    return sl.problems.teacher_student(width=4, n=16, seed=0)


@pytest.fixture(scope="module")
def makers(toy):
    rt = race_table(toy, [10.0, 100.0], {"sgd": lr_grid(1e-5, 1.0, 2)}, steps=60)
    vt = precision.vanishing_table(toy.released, toy.task, [1.0, 1e8], {"sgd": 0.3}, dtypes=["float32"])
    return {
        "conditioning": (lambda live: ConditioningExplorer(live=live), {"lr": 0.05}),
        "deformation": (lambda live: DeformationExplorer(toy, alpha_max=1e2, per_decade=1, live=live), {"alpha": 10.0}),
        "race": (lambda live: RaceExplorer(rt, live=live), {"alpha": 100.0}),
        "precision": (lambda live: PrecisionExplorer(vt, live=live), {"alpha": 1e8}),
    }


BAD = [
    ("conditioning", {"lr": 0}, "lr must be a positive finite number"),
    ("conditioning", {"lr": float("nan")}, "lr must be finite"),
    ("conditioning", {"kappa": 0.5}, "kappa = λ_max/λ_min must be >= 1"),
    ("conditioning", {"optimizer": "rmsprop"}, "optimizer must be one of GD, Adam, Newton"),
    ("conditioning", {"lr": "fast"}, "lr must be a number"),
    ("conditioning", {"lr": 0.05, "nope": 1}, "unknown control 'nope'"),  # nothing of it is stored, not even lr
    ("deformation", {"alpha": 0}, "outside this explorer's range"),
    ("deformation", {"alpha": 1e12}, "outside this explorer's range"),
    ("deformation", {"k": 0}, "k must be >= 1"),
    ("deformation", {"k": 1.5}, "k must be a whole number"),
    ("deformation", {"alpha": True}, "alpha must be a number"),
    ("race", {"optimizer": "rmsprop"}, "optimizer='rmsprop' is not offered here; choose one of sgd"),
    ("race", {"lr": 0}, "lr must be a positive finite number"),
    ("race", {"alpha": -1}, "outside this explorer's range"),
    ("precision", {"dtype": "float16"}, "dtype='float16' is not offered here; choose one of float32"),
    ("precision", {"optimizer": "adam"}, "optimizer='adam' is not offered here"),
    ("precision", {"alpha": float("inf")}, "alpha must be finite"),
]


def _snapshot(ex):
    return dict(ex.state()), json.dumps(ex.figure.to_plotly_json(), sort_keys=True, default=str)


@pytest.mark.parametrize("live", [False, True], ids=["headless", "live"])
@pytest.mark.parametrize("which,bad,match", BAD, ids=[f"{w}-{'-'.join(map(str, b))}" for w, b, _ in BAD])
def test_a_bad_value_leaves_the_explorer_as_it_was(makers, live, which, bad, match):
    make, good = makers[which]
    ex = make(live)
    before = _snapshot(ex)
    if live:
        match = f"{match}|outside this explorer's range|is not offered here"  # a live widget's own bounds/options
    with pytest.raises(ValueError, match=match):
        ex.set(**bad)
    assert _snapshot(ex) == before
    ex.set(**good)  # not jammed: the next valid value is shown
    assert all(ex.state()[k] == v for k, v in good.items())
    if not live:
        ex.static_figure()


def test_live_set_of_several_controls_updates_once(makers):
    ex = makers["conditioning"][0](True)
    n = len(ex.latencies)
    ex.set(kappa=100.0, lr=0.01, optimizer="Adam")
    assert len(ex.latencies) == n + 1 and ex.state() == {"kappa": 100.0, "lr": 0.01, "optimizer": "Adam"}
