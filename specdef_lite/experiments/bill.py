"""added = |θ(inject(lock(f)))| − |θ(lock(f))| = L·d² — the attacker's parameter bill, counted on real models.

Injection adds one trainable out×out matrix D per locked layer, so for L square d×d layers the bill is
L·d²: linear in depth and, since the locked layers themselves hold about L·d² parameters, linear in model
size (PAPER.md, "The limit"). ``parameter_bill`` does not use the formula: it builds each network, locks
every hidden layer, injects, and counts with ``param_overhead``.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..lock.attacks import inject, param_overhead
from ..lock.deform import specdef
from ..optim.problems import mlp

__all__ = ["ParameterBill", "parameter_bill"]


@dataclass(frozen=True)
class ParameterBill:
    """Counts for MLPs with depths[j] square tanh layers of width widths[i], all locked (int64 arrays (W, D)).

    Attributes:
        widths: (W,); depths: (D,).
        added: parameters injection adds to the locked model.
        params: parameters of the undefended model.
        locked_extra: parameters the lock itself added (the C matrices).
    """
    widths: np.ndarray
    depths: np.ndarray
    added: np.ndarray
    params: np.ndarray
    locked_extra: np.ndarray


def parameter_bill(widths: Sequence[int], depths: Sequence[int], *, k: int = 1) -> ParameterBill:
    """added[i, j] = |θ(inject(lock(f)))| − |θ(lock(f))| for an MLP f with depths[j] square tanh layers of width
    widths[i] (all locked) and a d → 1 read-out, counted by ``param_overhead`` on the real models.

    Example:
        >>> parameter_bill([4, 8], [1, 3]).added.tolist()
        [[16, 48], [64, 192]]
    """
    W, D = len(widths), len(depths)
    added, params, extra = (np.zeros((W, D), dtype=np.int64) for _ in range(3))
    for i, d in enumerate(widths):
        for j, L in enumerate(depths):
            net = mlp([int(d)] * (int(L) + 1) + [1], seed=0)  # L square d×d layers, then a d → 1 read-out
            hidden = [str(2 * h) for h in range(int(L))]
            locked = specdef(net, 2.0, k=k, targets=hidden)
            added[i, j] = param_overhead(locked, inject(locked)).added
            params[i, j] = sum(p.numel() for p in net.parameters())
            extra[i, j] = param_overhead(net, locked).added
    return ParameterBill(np.asarray(widths), np.asarray(depths), added, params, extra)
