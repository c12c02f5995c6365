"""Numbers as the notebooks' prose writes them: 10⁴ as "10<sup>4</sup>", 0.123 as "12.3 %", a step count or "—".

Also a best response's step count with its "≥" when it is only a lower bound, a count with its noun, and a
list of names as a sentence holds it.

The notebooks compute every number they print (an f-string over their own results); these
formatters keep the same number looking the same in every notebook.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

__all__ = ["e10", "pct", "steps", "at_least", "count", "listing", "to_markdown"]


def e10(a: float) -> str:
    """10^log₁₀(a) in HTML: ``e10(1e4)`` → "10<sup>4</sup>" (3 significant digits in the exponent).

    Example:
        >>> e10(1e4), e10(10 ** 3.5)
        ('10<sup>4</sup>', '10<sup>3.5</sup>')
    """
    return f"10<sup>{math.log10(float(a)):.3g}</sup>"


def pct(f: float, digits: int = 1) -> str:
    """A fraction as a percentage: ``pct(0.7312)`` → "73.1 %".

    Example:
        >>> pct(0.7312), pct(1.0, 0)
        ('73.1 %', '100 %')
    """
    return f"{100 * float(f):.{digits}f} %"


def steps(s: float | int | None) -> str:
    """A step count, or "—" when there is none (None or NaN: the target was not reached).

    Example:
        >>> steps(12.0), steps(None), steps(float("nan"))
        ('12', '—', '—')
    """
    return "—" if s is None or not math.isfinite(float(s)) else f"{float(s):.0f}"


def at_least(response) -> str:
    """A best response's steps to τ, or "≥ B + 1" when τ was not reached within the budget B (a lower bound).

    Example:
        >>> from specdef_lite.experiments.best_response import BestResponse, Outcome
        >>> hit, miss = Outcome(0.1, 12, False), Outcome(0.1, None, False)
        >>> at_least(BestResponse("", 0.0, 50, (hit,), hit, True)), at_least(BestResponse("", 0.0, 50, (miss,), None, False))
        ('12', '≥ 51')
    """
    return f"{'' if response.reached else '≥ '}{response.lower_bound}"


def count(n: int, noun: str, plural: str | None = None) -> str:
    """"1 eigenvalue", "16 eigenvalues" (``plural`` for irregular nouns).

    Example:
        >>> count(1, "entry", "entries"), count(256, "entry", "entries"), count(0, "step")
        ('1 entry', '256 entries', '0 steps')
    """
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


def listing(items: Iterable[object], *, code: bool = False, sep: str = ", ", empty: str = "nothing") -> str:
    """Names joined as prose: "`0`, `2`" (``code``: each as code), "SGD and Adam" (``sep=" and "``), ``empty`` if none.

    Example:
        >>> listing(["0", "2"], code=True), listing(["SGD", "Adam"], sep=" and "), listing([])
        ('`0`, `2`', 'SGD and Adam', 'nothing')
    """
    text = sep.join(f"`{x}`" if code else str(x) for x in items)
    return text or empty


def to_markdown(rows: Sequence[Mapping[str, object]]) -> str:
    """A list of dict rows (same keys) as a Markdown table, for ``IPython.display.Markdown``.

    Example:
        >>> print(to_markdown([{"model": "original", "lr 1e-05": "20 / 4.31"}]))
        | model | lr 1e-05 |
        |---|---|
        | original | 20 / 4.31 |
    """
    if not rows:
        return ""
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(r[k]) for k in keys) + " |" for r in rows]
    return "\n".join(lines)
