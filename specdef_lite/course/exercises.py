"""Exercises with feedback: a student types an answer, ``check(...)`` says right or wrong *and why*.

Each checker recomputes the true value with the library (never a stored answer), compares within a stated
tolerance, and returns ``Feedback`` — printed in a notebook as a ✓/✗ line with the reason, and usable in
an ``assert`` (``bool(feedback)``). Checkers are registered by name, e.g. ``check("01.stable_step", 0.5,
lam_max=4.0)``; ``exercises()`` lists them with their questions.
"""
from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Feedback", "check", "exercises", "exercise", "compare", "as_number"]


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


def exercise(name: str, question: str):
    """Register a checker ``fn(answer, **context) -> Feedback`` under ``name`` ("NN.short_name")."""
    def wrap(fn):
        _REGISTRY[name] = (question, fn)
        return fn
    return wrap


def exercises() -> dict[str, str]:
    """Every registered exercise name and its question."""
    _load_all()
    return {n: q for n, (q, _) in sorted(_REGISTRY.items())}


def check(name: str, answer, **context) -> Feedback:
    """Check ``answer`` to exercise ``name``; raises ValueError for an unknown name (listing the known ones) or
    a context keyword the exercise does not take (listing those it takes)."""
    _load_all()
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ValueError(f"unknown exercise {name!r}; known: {', '.join(sorted(_REGISTRY))}")
    fn = _REGISTRY[name][1]
    params = list(inspect.signature(fn).parameters.values())[1:]
    if not any(p.kind is p.VAR_KEYWORD for p in params):
        taken = [p.name for p in params]
        bad = [k for k in context if k not in taken]
        if bad:
            raise ValueError(f"exercise {name!r} takes the context {', '.join(taken) or '(none)'}; got {bad[0]!r}")
    return fn(answer, **context)


def as_number(answer) -> float | None:
    """The answer as one float, or None when it is not one number (None, text, a bool, several values)."""
    if answer is None or answer is ... or isinstance(answer, bool):
        return None
    try:
        n = answer.numel() if callable(getattr(answer, "numel", None)) else getattr(answer, "size", 1)  # torch / numpy
        if n != 1:
            return None
        return float(answer.item() if hasattr(answer, "item") else answer)
    except (TypeError, ValueError, RuntimeError, AttributeError):
        return None


def compare(name: str, answer, expected: float, *, rtol: float, right: str, wrong: str) -> Feedback:
    """Numeric verdict |answer − expected| ≤ rtol·|expected|; ``right``/``wrong`` explain either way.

    The expected value is shown to 6 significant digits (a value like 2⁻²⁴ is not rounded to 0.0).
    """
    if answer is None or answer is ...:  # not answered yet: never give the answer away
        return Feedback(name, False, answer, "?", "No answer yet: replace None with your number and re-run.")
    a = as_number(answer)
    if a is None:
        return Feedback(name, False, answer, "?", "Please answer with one number.")
    ok = math.isfinite(a) and abs(a - expected) <= rtol * abs(expected)
    return Feedback(name, ok, answer, float(f"{expected:.6g}"), right if ok else wrong)


def _load_all() -> None:
    """Import the modules that register checkers (they live beside the math they check)."""
    import importlib
    for mod in ("exercises_course",):
        try:
            importlib.import_module(f"{__package__}.{mod}")
        except ModuleNotFoundError as e:  # pragma: no cover - only while a course module is missing
            if e.name != f"{__package__}.{mod}":
                raise
