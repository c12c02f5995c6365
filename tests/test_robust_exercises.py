"""Exercise feedback that says the right thing for zero, negative and non-numeric answers, and shows the expected
value to its significant digits (2⁻²⁴ is not "0.0")."""
import numpy as np
import pytest
import torch

from specdef_lite.course.exercises import as_number, check, compare


def test_a_tiny_expected_value_is_shown_to_six_significant_digits():
    fb = check("05.smallest_update", 0.0, dtype="float32")
    assert not fb and fb.expected == pytest.approx(2 ** -24 + 2 ** -47, rel=1e-5)  # was shown as 0.0
    assert "you said 0.0; expected 5.96047e-08" in str(fb)
    assert "asks for an update Δ > 0" in fb.why
    assert check("05.smallest_update", 2 ** -24 + 2 ** -47, dtype="float32")   # the first float32 number above u
    tie = check("05.smallest_update", 2 ** -24, dtype="float32")             # exactly u: a tie, back to 1
    assert not tie and "tie" in tie.why
    assert compare("x", 1.0, 123456789.0, rtol=0.1, right="", wrong="").expected == 123457000.0


def test_a_negative_or_zero_step_is_explained_as_what_it_is():
    neg = check("01.stable_step", -0.04)  # λ_max = 50: |1 − ηλ| = 3
    assert not neg and "negative η steps uphill" in neg.why and "|1 − ηλ_max| = 3 ≥ 1" in neg.why
    assert "stable" not in neg.why.replace("unstable", "")
    zero = check("01.stable_step", 0)
    assert not zero and "η = 0 never moves" in zero.why
    down = check("05.smallest_update", -0.004)
    assert not down and "moves down, not up" in down.why


@pytest.mark.parametrize("answer", [True, torch.tensor([0.04, 0.04]), "fast", [0.04, 0.04]])
def test_what_is_not_one_number_is_not_graded(answer):
    fb = check("01.stable_step", answer)
    assert not fb and fb.expected == "?"  # the answer is not given away


def test_one_number_in_any_wrapper_is_a_number():
    assert as_number(np.float32(0.5)) == 0.5 and as_number(torch.tensor([0.25])) == 0.25
    assert as_number(np.array(0.125)) == 0.125 and as_number("0.5") == 0.5
    assert as_number(True) is None and as_number(np.array([1.0, 2.0])) is None and as_number(None) is None


def test_context_keywords_are_checked():
    with pytest.raises(ValueError, match="exercise '01.stable_step' takes the context lam_max, eigenvalues; "
                                         "got 'lammax'"):
        check("01.stable_step", 0.04, lammax=50)
    with pytest.raises(ValueError, match="unknown exercise None"):
        check(None, 1)


def test_stable_step_checks_the_question_it_was_given():
    assert check("01.stable_step", 4.0, lam_max=0.5)  # η_max = 2/λ_max = 4, not 2/1
    assert not check("01.stable_step", 2.0, lam_max=0.5)
    with pytest.raises(ValueError, match="lam_max must be a positive finite number"):
        check("01.stable_step", 0.04, lam_max=0)

