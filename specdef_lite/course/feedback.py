"""Feedback on one answer: verdict = |answer − expected| ≤ rtol·|expected|, with a sentence saying why.

The core every exercise checker shares: ``Feedback`` (printed as a ✓/✗ line, usable in an ``assert``), the
``exercise`` registry decorator, ``as_number`` and ``unanswered`` (a blank is never graded, so the expected
value is never given away) and ``compare``. Checkers live in ``exercises_course``; ``exercises.check`` runs them.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Feedback", "exercise", "registered", "as_number", "unanswered", "compare"]


@dataclass(frozen=True)
class Feedback:
    """The verdict on one answer: ``correct``, the true value, and a sentence saying why."""
    name: str
    correct: bool
    answer: object
    expected: object
    why: str

    def __bool__(self) -> bool:
        return self.correct

    def __str__(self) -> str:
        mark = "✓ right" if self.correct else "✗ not quite"
        return f"{mark} ({self.name}): you said {self.answer!r}; expected {self.expected!r}. {self.why}"

    def _repr_markdown_(self) -> str:
        colour = "green" if self.correct else "crimson"
        return f"<span style='color:{colour}'>**{'✓' if self.correct else '✗'}**</span> {self.why} " \
               f"(you: `{self.answer!r}`, expected: `{self.expected!r}`)"


_REGISTRY: dict[str, tuple[str, Callable[..., Feedback]]] = {}


def exercise(name: str, question: str) -> Callable[[Callable[..., Feedback]], Callable[..., Feedback]]:
    """Register a checker ``fn(answer, **context) -> Feedback`` under ``name`` ("NN.short_name")."""
    def wrap(fn: Callable[..., Feedback]) -> Callable[..., Feedback]:
        _REGISTRY[name] = (question, fn)
        return fn
    return wrap


def registered() -> dict[str, tuple[str, Callable[..., Feedback]]]:
    """Every registered exercise: name → (question, checker). A copy: registering goes through ``exercise``."""
    return dict(_REGISTRY)


def as_number(answer: object) -> float | None:
    """The answer as one float, or None when it is not one number (None, text, a bool, several values).

    Example:
        >>> as_number("0.5"), as_number([1.0, 2.0]), as_number(True)
        (0.5, None, None)
    """
    if answer is None or answer is ... or isinstance(answer, bool):
        return None
    try:
        n = answer.numel() if callable(getattr(answer, "numel", None)) else getattr(answer, "size", 1)  # torch / numpy
        if n != 1:
            return None
        return float(answer.item() if hasattr(answer, "item") else answer)
    except (TypeError, ValueError, RuntimeError, AttributeError):
        return None


def unanswered(name: str, answer: object) -> Feedback | None:
    """Feedback (expected "?") for an answer that is not one finite number; None for one that is.

    Example:
        >>> unanswered("x", None).why, unanswered("x", 0.5)
        ('No answer yet: type a number in place of `None` and run the cell again.', None)
        >>> [unanswered("x", a).expected for a in ("fast", [0.1, 0.2], float("nan"), float("inf"))]  # never given away
        ['?', '?', '?', '?']
    """
    if answer is None or answer is ...:
        why = "No answer yet: type a number in place of `None` and run the cell again."
    elif (a := as_number(answer)) is None:
        why = "Please answer with one number."
    elif not math.isfinite(a):
        why = f"{a} is not a number you can step with: please answer with one finite number."
    else:
        return None
    return Feedback(name, False, answer, "?", why)


def compare(name: str, answer: object, expected: float, *, rtol: float, right: str, wrong: str) -> Feedback:
    """Numeric verdict |answer − expected| ≤ rtol·|expected|; ``right``/``wrong`` explain either way.

    An answer that is not one finite number is not graded (``unanswered``). The expected value is shown to
    6 significant digits (a value like 2⁻²⁴ is not rounded to 0.0).

    Example:
        >>> bool(compare("x", 0.99, 1.0, rtol=0.02, right="", wrong="")), compare("x", None, 1.0, rtol=0, right="", wrong="").expected
        (True, '?')
    """
    if (missing := unanswered(name, answer)) is not None:
        return missing
    a = as_number(answer)
    ok = abs(a - expected) <= rtol * abs(expected)
    return Feedback(name, ok, answer, float(f"{expected:.6g}"), right if ok else wrong)
