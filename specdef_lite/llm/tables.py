"""Table 1's shape: per model, the start metric, then "steps to target / final metric" per learning rate, as Markdown.

The paper's Table 1 reports, per method and learning rate, the steps its relearning attack took and the accuracy
it reached; ``table1`` lays ``llm.finetune.attack_grid`` results out the same way, ``to_markdown`` renders any rows.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from ..experiments.best_response import BestResponse, slowdown
from ..experiments.text import at_least, to_markdown  # noqa: F401 - llm.to_markdown, Table 1's format

if TYPE_CHECKING:  # only for the annotation: tables needs nothing of finetune at run time
    from .finetune import AttackResult

__all__ = ["table1", "to_markdown", "response_rows"]


_METRICS = {"loss": "eval_losses", "accuracy": "eval_accuracies", "top5": "eval_top5"}


def table1(results: Mapping[str, Mapping[float, AttackResult]], target: float, *, metric: str = "loss",
           fmt: str = "{:.3f}") -> list[dict[str, str]]:
    """Rows in the shape of the paper's Table 1: start metric, then "steps / final metric" per learning rate.

    "steps" is ``steps_to(target)`` ("—" if never reached; "k … (diverged)" at the step where the run blew
    up); ``metric`` is the held-out ``"loss"`` (lower = the attacker got further), ``"accuracy"`` (top-1)
    or ``"top5"``.
    """
    if metric not in _METRICS:
        raise ValueError(f"metric must be one of {sorted(_METRICS)}, got {metric!r}")
    rows = []
    for label, by_lr in results.items():
        first = next(iter(by_lr.values()))
        values = lambda r: getattr(r, _METRICS[metric])  # noqa: E731
        row = {"model": label, f"start {metric}": fmt.format(values(first)[0])}
        for lr, r in by_lr.items():
            s, v = r.steps_to(target), values(r)[-1]
            value = fmt.format(v) if math.isfinite(v) else "nan"
            if r.diverged:
                row[f"lr {lr:g}"] = f"{r.diverged_at} / {value} (diverged)"
            else:
                row[f"lr {lr:g}"] = f"{'—' if s is None else s} / {value}"
        rows.append(row)
    return rows


def response_rows(responses: Mapping[str, BestResponse], reference: str) -> list[dict[str, str]]:
    """One row per attack {label: ``BestResponse``}: steps to τ at its best η, η*, the range tried, whether the best
    is bracketed, the trained parameters and the slowdown against ``reference``'s best ("≥": never reached τ)."""
    ref = responses[reference]
    rows = []
    for label, br in responses.items():
        shown = br.shown.result if br.shown is not None else None
        rows.append({"attack": label,
                     "steps to τ at η*": at_least(br) + ("" if br.reached else " (not reached)"),
                     "η*": f"{br.best_lr:.3g}" if br.reached else "—",
                     "η tried": f"{br.lrs.min():.2g} … {br.lrs.max():.2g} ({len(br.outcomes)})",
                     "bracketed": "yes" if br.bracketed else "no",
                     "trained parameters": f"{shown.trainable:,}" if shown is not None else "—",
                     "slowdown": "1× (reference)" if label == reference else slowdown(br, ref).summary()})
    return rows
