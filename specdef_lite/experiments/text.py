"""Numbers as the notebooks' prose writes them: 10⁴ as "10<sup>4</sup>", 0.123 as "12.3 %", a step count or "—".

The notebooks compute every number they print (an f-string over their own results); these three
formatters keep the same number looking the same in every notebook.
"""
from __future__ import annotations

import math

__all__ = ["e10", "pct", "steps"]


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
