"""step(closure): what every optimizer here agrees on — a positive finite lr, and closures that keep the graph.

Curvature-using optimizers (``Newton``, ``Sophia``) follow torch's closure protocol with one twist: the
closure returns the loss *with its graph* and does **not** call ``.backward()``; the optimizer takes
gradients and Hessian-vector products itself (``curvature.gradgraph.GradientGraph.of_loss``). They carry
the class attribute ``needs_closure = True``; ``train`` reads it and passes ``closure = lambda: task.loss(model)``.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Callable

import torch

__all__ = ["Closure", "check_lr"]

Closure = Callable[[], torch.Tensor]


def check_lr(lr: float) -> float:
    """η as a float, if 0 < η < ∞; else ValueError.

    Example:
        >>> check_lr(1), check_lr(2.5e-3)
        (1.0, 0.0025)
    """
    if isinstance(lr, bool) or not isinstance(lr, numbers.Real):
        raise ValueError(f"lr must be a positive finite number, got {lr!r}")
    lr = float(lr)
    if not math.isfinite(lr) or lr <= 0:
        raise ValueError(f"lr must be a positive finite number, got {lr}")
    return lr
