"""One fine-tuning attack's record: the training loss per step, the held-out curve, and steps-to-target read from it.

Steps-to-target is robust (DESIGN.md): a run reaches the held-out target τ at the first evaluation from which the
held-out loss stays ≤ τ for the rest of the run, and never if the run diverged (``train.Trace.steps_to``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..optim.training import Trace

__all__ = ["AttackResult"]


@dataclass(frozen=True)
class AttackResult:
    """One fine-tuning run. ``losses[t]``: training loss of step t (before its update); ``eval_losses[i]``,
    ``eval_accuracies[i]``, ``eval_top5[i]``: held-out loss / top-1 / top-5 next-token accuracy after
    ``eval_steps[i]`` updates. ``step_seconds`` / ``eval_seconds``: wall time of each step / evaluation;
    ``cached``: whether the frozen prefix was cached; ``adapter``: the LoRA attack (e.g. "r=8 on C of 3 layers"),
    "" for a full fine-tune; ``processes``: how many processes shared each batch. Frozen: ``llm.attack`` records
    the run in lists and returns them here as tuples."""
    label: str
    lr: float
    steps: int
    losses: tuple[float, ...] = ()
    eval_steps: tuple[int, ...] = ()
    eval_losses: tuple[float, ...] = ()
    eval_accuracies: tuple[float, ...] = ()
    eval_top5: tuple[float, ...] = ()
    diverged_at: int | None = None
    seconds: float = 0.0
    trainable: int = 0
    step_seconds: tuple[float, ...] = ()
    eval_seconds: tuple[float, ...] = ()
    cached: bool = False
    adapter: str = ""
    processes: int = 1

    @property
    def start_loss(self) -> float:
        return self.eval_losses[0]

    @property
    def final_loss(self) -> float:
        return self.eval_losses[-1]

    @property
    def final_accuracy(self) -> float:
        return self.eval_accuracies[-1]

    @property
    def diverged(self) -> bool:
        return self.diverged_at is not None

    def steps_to(self, target: float) -> int | None:
        """First evaluated step from which the held-out loss stays ≤ ``target``; None if never or diverged.

        The robust definition of ``train.Trace.steps_to``, applied to the held-out curve.
        """
        if self.diverged:
            return None
        i = self.heldout_trace.steps_to(target)
        return None if i is None else self.eval_steps[i]

    @property
    def heldout_trace(self) -> Trace:
        """The held-out losses as a ``train.Trace`` (entry i taken after ``eval_steps[i]`` updates)."""
        return Trace(np.asarray(self.eval_losses), None if self.diverged_at is None else len(self.eval_losses) - 1,
                     self.label)

    @property
    def trace(self) -> Trace:
        """The training losses, one per step, as a ``train.Trace``."""
        return Trace(np.asarray(self.losses), self.diverged_at, self.label)
