"""Exercises with feedback: a student types an answer, ``check(...)`` says right or wrong *and why*.

Each checker recomputes the true value with the library (never a stored answer), compares within a stated
tolerance, and returns ``Feedback`` — printed in a notebook as a ✓/✗ line with the reason, and usable in
an ``assert`` (``bool(feedback)``). Checkers are registered by name, e.g. ``check("01.stable_step", 0.5,
lam_max=4.0)``; ``exercises()`` lists them with their questions. The shared core (``Feedback``, ``compare``,
the ``exercise`` decorator) is ``feedback``; the checkers are ``exercises_course``.
"""
from __future__ import annotations

import inspect

from . import exercises_course  # noqa: F401 - registers the course's checkers (they live beside their maths)
from .feedback import Feedback, as_number, compare, exercise, registered, unanswered

__all__ = ["Feedback", "check", "exercises", "exercise", "compare", "as_number", "unanswered"]


def exercises() -> dict[str, str]:
    """Every registered exercise name and its question."""
    return {n: q for n, (q, _) in sorted(registered().items())}


def check(name: str, answer: object, **context: object) -> Feedback:
    """Check ``answer`` to exercise ``name``; raises ValueError for an unknown name (listing the known ones) or
    a context keyword the exercise does not take (listing those it takes)."""
    known = registered()
    if not isinstance(name, str) or name not in known:
        raise ValueError(f"unknown exercise {name!r}; known: {', '.join(sorted(known))}")
    fn = known[name][1]
    params = list(inspect.signature(fn).parameters.values())[1:]
    if not any(p.kind is p.VAR_KEYWORD for p in params):
        taken = [p.name for p in params]
        bad = [k for k in context if k not in taken]
        if bad:
            raise ValueError(f"exercise {name!r} takes the context {', '.join(taken) or '(none)'}; got {bad[0]!r}")
    return fn(answer, **context)
