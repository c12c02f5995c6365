"""W ← W − lr·√max(1, m/n)·NS₅(momentum) on the matrices, Adam on the rest — Muon as an attacker can use it.

``torch.optim.Muon`` accepts 2-D parameters only (its Newton–Schulz orthogonalisation is defined for
matrices and runs in bfloat16 whatever the parameter dtype), so ``MuonAdam`` pairs it with
``torch.optim.Adam`` for biases and other non-matrix parameters, and presents the pair as one optimizer.
"""
from __future__ import annotations

import torch

from .contract import Closure, check_lr

__all__ = ["MuonAdam"]


class MuonAdam:
    """Muon on the matrices, Adam on the rest: W ← W − lr·√max(1, m/n)·NS₅(momentum), b ← Adam(b).

    Non-matrix parameters go to Adam with ``adam_lr`` (default: the same lr). Weight decay defaults to 0
    (torch's Muon default is 0.1), so the attack is a pure descent method like the others. Exposes ``step``,
    ``zero_grad``, ``param_groups``, ``state_dict`` (a dict {"muon": …, "adam": …} of the inner optimizers'
    state dicts, for those present) and ``load_state_dict``.
    """
    needs_closure = False

    def __init__(self, params, lr: float, *, adam_lr: float | None = None, weight_decay: float = 0.0,
                 momentum: float = 0.95, nesterov: bool = True, ns_steps: int = 5, betas=(0.9, 0.999)):
        lr = check_lr(lr)
        adam_lr = lr if adam_lr is None else check_lr(adam_lr)
        params = [p for p in params if p.requires_grad]
        if not params:
            raise ValueError("MuonAdam got no trainable parameters")
        matrices = [p for p in params if p.ndim == 2]
        others = [p for p in params if p.ndim != 2]
        self.parts: dict[str, torch.optim.Optimizer] = {}
        if matrices:
            self.parts["muon"] = torch.optim.Muon(matrices, lr=lr, weight_decay=weight_decay, momentum=momentum,
                                                  nesterov=nesterov, ns_steps=ns_steps)
        if others:
            self.parts["adam"] = torch.optim.Adam(others, lr=adam_lr, betas=betas)

    @property
    def optimizers(self) -> list[torch.optim.Optimizer]:
        """The inner optimizers, Muon first."""
        return list(self.parts.values())

    @property
    def param_groups(self) -> list[dict]:
        return [g for opt in self.optimizers for g in opt.param_groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def step(self, closure: Closure | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for opt in self.optimizers:
            opt.step()
        return loss

    def state_dict(self) -> dict[str, dict]:
        """{"muon": Muon's state dict, "adam": Adam's} (only the parts this split of parameters has)."""
        return {name: opt.state_dict() for name, opt in self.parts.items()}

    def load_state_dict(self, state: dict[str, dict]) -> None:
        """Inverse of ``state_dict``; ValueError if the saved parts differ from this optimizer's."""
        if not isinstance(state, dict) or set(state) != set(self.parts):
            got = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"MuonAdam state has parts {got}, this optimizer has {sorted(self.parts)}")
        for name, opt in self.parts.items():
            opt.load_state_dict(state[name])
