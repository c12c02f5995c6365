"""The fine-tuning attack on a language model: AdamW, linear warm-up, gradient clipping (PAPER.md, Table 1).

θ_{t+1} = AdamW(θ_t, clip(∇ℒ_batch(θ_t), c), η_t) with η_t = η·min(1, (t+1)/warmup), on the chosen
parameters only (the attacker picks which blocks to train; everything else stays frozen).

Why the lock bites here: Adam moves every entry by about η per step whatever its gradient. An entry of
C multiplies W̃x, which is α times larger along the top-k directions, so the same η moves the layer's
output α times further — the first step of a locked model at the paper's learning rates throws the loss
far above its start. That is recorded as data (``diverged_at``), never raised. Locked layers the attack
does not train cannot slow it: the trained blocks must contain the pairs.

Steps-to-target is robust (DESIGN.md): a run reaches the held-out target at the first evaluation from
which the held-out loss stays ≤ target for the rest of the run, and never if the run diverged.
"""
from __future__ import annotations

import copy
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .llm_data import TextTask, batches, evaluate, progress_disabled
from .training import Trace

__all__ = ["AttackResult", "attack_params", "attack", "attack_grid", "table1", "to_markdown"]


@dataclass
class AttackResult:
    """One fine-tuning run. ``losses[t]``: training loss of step t (before its update); ``eval_losses[i]``
    and ``eval_accuracies[i]``: held-out loss / next-token accuracy after ``eval_steps[i]`` updates."""
    label: str
    lr: float
    steps: int
    losses: list[float] = field(default_factory=list)
    eval_steps: list[int] = field(default_factory=list)
    eval_losses: list[float] = field(default_factory=list)
    eval_accuracies: list[float] = field(default_factory=list)
    diverged_at: int | None = None
    seconds: float = 0.0
    trainable: int = 0

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


def attack_params(model: nn.Module, blocks: Sequence[int] = (-1,), *, injected_only: bool = False) -> list[str]:
    """Names of the parameters the attacker trains: every parameter of the chosen decoder blocks.

    In an injected model (``attacks.inject``) the released pairs it wrapped (``*.inner.*``) stay frozen
    and their injected ``D`` is trained instead; ``injected_only=True`` trains the ``D``s alone.
    """
    from .llm import blocks_of
    prefix, layers = blocks_of(model)
    chosen = {f"{prefix}.{b % len(layers)}." for b in blocks}
    names = []
    for n, _ in model.named_parameters():
        if injected_only:
            keep = n.endswith(".D")
        else:
            keep = any(n.startswith(c) for c in chosen) and ".inner." not in n
        if keep:
            names.append(n)
    if not names:
        raise ValueError(f"no parameter to train in blocks {list(blocks)}"
                         + (" (no injected D: call attacks.inject first)" if injected_only else ""))
    return names


def attack(model: nn.Module, task: TextTask, *, lr: float, steps: int, batch_size: int = 4,
           blocks: Sequence[int] = (-1,), injected_only: bool = False, warmup: int | None = None,
           clip: float = 1.0, weight_decay: float = 0.0, eval_every: int = 5, diverge_ratio: float = 2.0,
           stop_on_divergence: bool = True, seed: int = 0, label: str = "",
           progress: bool | None = None) -> AttackResult:
    """Fine-tune a copy of ``model`` on ``task.train`` and track the held-out loss of ``task.heldout``.

    Args:
        model: not modified (a deep copy is trained, in eval mode: no dropout, deterministic).
        lr: peak learning rate η (the paper's grid: 1e-6, 1e-5, 3e-5).
        steps: number of updates.
        blocks, injected_only: which parameters train (see ``attack_params``).
        warmup: linear warm-up steps (default ``max(1, steps // 10)``).
        clip: global gradient-norm clip c (None: no clipping).
        eval_every: held-out evaluation period (also at step 0 and at the end).
        diverge_ratio: a training or held-out loss that is non-finite or above ``diverge_ratio`` × its
            start counts as divergence; the run stops there if ``stop_on_divergence``.
    Returns:
        An ``AttackResult`` (losses per step, held-out curve, ``diverged_at``, ``steps_to(target)``).
    """
    if steps < 1 or lr <= 0:
        raise ValueError(f"need steps >= 1 and lr > 0, got steps={steps}, lr={lr}")
    t0 = time.perf_counter()
    model = copy.deepcopy(model).eval()
    names = set(attack_params(model, blocks, injected_only=injected_only))
    params = []
    for n, p in model.named_parameters():
        p.requires_grad_(n in names)
        if n in names:
            params.append(p)
    warmup = max(1, steps // 10) if warmup is None else max(1, warmup)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: min(1.0, (t + 1) / warmup))
    res = AttackResult(label, lr, steps, trainable=sum(p.numel() for p in params))
    dev = params[0].device

    def record_eval(step: int) -> bool:
        ev = evaluate(model, task.heldout)
        res.eval_steps.append(step)
        res.eval_losses.append(ev.loss)
        res.eval_accuracies.append(ev.accuracy)
        return _blew_up(ev.loss, res.eval_losses[0], diverge_ratio)

    record_eval(0)
    data = batches(task.train, batch_size, seed=seed)
    from tqdm.auto import tqdm
    bar = tqdm(range(steps), desc=f"{label or 'attack'} lr={lr:g}", leave=False, disable=progress_disabled(progress))
    for t in bar:
        x = next(data).to(dev)
        loss = model(x, labels=x).loss
        res.losses.append(float(loss.detach()))
        if _blew_up(res.losses[-1], res.losses[0], diverge_ratio) and res.diverged_at is None:
            res.diverged_at = t
            if stop_on_divergence:
                if res.eval_steps[-1] != t:
                    record_eval(t)  # the held-out loss where it blew up, for the table
                break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(params, clip)
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{res.losses[-1]:.3f}")
        if (t + 1) % eval_every == 0 or t + 1 == steps:
            if record_eval(t + 1) and res.diverged_at is None:
                res.diverged_at = t + 1
                if stop_on_divergence:
                    break
    bar.close()
    res.seconds = time.perf_counter() - t0
    return res


def _blew_up(loss: float, start: float, ratio: float) -> bool:
    return not math.isfinite(loss) or loss > ratio * start


def attack_grid(models: Mapping[str, nn.Module], task: TextTask, lrs: Sequence[float], *,
                blocks: Sequence[int] = (-1,), injected_only: Mapping[str, bool] | None = None,
                progress: bool | None = None, **kw) -> dict[str, dict[float, AttackResult]]:
    """``attack`` every model at every learning rate: {label: {lr: result}} (Table 1's grid)."""
    injected_only = injected_only or {}
    from tqdm.auto import tqdm
    out: dict[str, dict[float, AttackResult]] = {}
    runs = [(label, lr) for label in models for lr in lrs]
    for label, lr in tqdm(runs, desc="attacks", disable=progress_disabled(progress)):
        out.setdefault(label, {})[lr] = attack(models[label], task, lr=lr, blocks=blocks, label=label,
                                               injected_only=injected_only.get(label, False),
                                               progress=progress, **kw)
    return out


def table1(results: Mapping[str, Mapping[float, AttackResult]], target: float, *, metric: str = "loss",
           fmt: str = "{:.3f}") -> list[dict[str, str]]:
    """Rows in the shape of the paper's Table 1: start metric, then "steps / final metric" per learning rate.

    "steps" is ``steps_to(target)`` ("—" if never reached; "k … (diverged)" at the step where the run blew
    up); ``metric`` is the held-out ``"loss"`` (lower = the attacker got further) or ``"accuracy"``.
    """
    if metric not in {"loss", "accuracy"}:
        raise ValueError(f"metric must be 'loss' or 'accuracy', got {metric!r}")
    rows = []
    for label, by_lr in results.items():
        first = next(iter(by_lr.values()))
        values = (lambda r: r.eval_losses) if metric == "loss" else (lambda r: r.eval_accuracies)
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
