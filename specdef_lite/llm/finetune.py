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

Speed (benchmarks/bench_llm_attack.py): the blocks below the first trained one are frozen, so their output
is cached per batch (``llm_prefix.FrozenPrefix``) and shared by every run and every model with the same
prefix — training and held-out evaluation run only the trained blocks and the head. Only the trained
parameters are copied (``llm_prefix.working_copy``). ``cache=False`` runs the full forward instead; the
two give the same losses to float32 rounding (tests/test_llm_attack.py).

LoRA (``lora_rank=r``): instead of the blocks' parameters, rank-r adapters B·A train on the target layers of those
blocks — on W̃, on C or on both of each locked pair (``lora_on``), on W of a plain layer (the undefended or fused
model); see ``specdef_lite.lock.lora`` for what each placement sees. The adapters sit in the trained tail, so the
cached prefix still applies. Under ``accelerate launch`` with several processes the same call runs data-parallel
(``llm.parallel``); a single process never touches that path.
"""
from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from ..common.display import progress_disabled
from ..experiments.best_response import BestResponse, Outcome, search
from ..lock.attacks import InjectedLinear
from ..lock.guards import real_number
from ..lock.lora import describe, is_adapter, lora
from .data import Eval, TextTask, batches, evaluate, lm_loss
from .parallel import Parallel, TailModule, fsdp_requested, world_size
from .prefix import FrozenPrefix, first_block, working_copy
from .targets import lora_layers
from .result import AttackResult

__all__ = ["AttackResult", "attack_params", "attack", "attack_grid", "best_response", "prefix_for"]


def attack_params(model: nn.Module, blocks: Sequence[int] = (-1,), *, injected_only: bool = False) -> list[str]:
    """Names of the parameters the attacker trains: every parameter of the chosen decoder blocks.

    In an injected model (``attacks.inject``) the released pairs it wrapped (``*.inner.*``) stay frozen
    and their injected ``D`` is trained instead; ``injected_only=True`` trains the ``D``s alone. In a model that
    carries LoRA adapters (a peft model, ``lora.lora``) only the adapters of those blocks train: its base weights
    stay frozen, as peft left them.
    """
    from .targets import block_indices, blocks_of
    prefix, layers = blocks_of(model)
    chosen = {f"{prefix}.{b}." for b in block_indices(blocks, len(layers))}
    adapters = any(is_adapter(n) for n, _ in model.named_parameters())
    names = []
    for n, _ in model.named_parameters():
        if injected_only:
            keep = n.endswith(".D")
        else:
            keep = any(n.startswith(c) for c in chosen) and ".inner." not in n and (is_adapter(n) or not adapters)
        if keep:
            names.append(n)
    if not names:
        raise ValueError(f"no {'LoRA adapter' if adapters else 'parameter'} to train in blocks {list(blocks)}"
                         + (" (no injected D: call attacks.inject first)" if injected_only else ""))
    return names


def prefix_for(model: nn.Module, task: TextTask, *, blocks: Sequence[int] = (-1,), injected_only: bool = False,
               batch_size: int = 4, seed: int = 0, share: Sequence[FrozenPrefix] = ()) -> FrozenPrefix | None:
    """The frozen-prefix cache an attack on ``model`` can use: one from ``share`` that serves it, else a new
    checked one (``FrozenPrefix.build`` on the attack's first batch); None if the model cannot be cached."""
    f = first_block(model, attack_params(model, blocks, injected_only=injected_only))
    if f is None or (world_size() > 1 and fsdp_requested()):  # FSDP shards the lower blocks too (llm.parallel)
        return None
    for p in share:
        if p.first == f and p.serves(model):
            return p
    return FrozenPrefix.build(model, f, next(batches(task.train, batch_size, seed=seed)))


def attack(model: nn.Module, task: TextTask, *, lr: float, steps: int, batch_size: int = 4,
           blocks: Sequence[int] = (-1,), injected_only: bool = False, warmup: int | None = None,
           clip: float = 1.0, weight_decay: float = 0.0, eval_every: int = 5, diverge_ratio: float = 2.0,
           stop_on_divergence: bool = True, seed: int = 0, label: str = "",
           cache: bool | FrozenPrefix | None = True, progress: bool | None = None, lora_rank: int | None = None,
           lora_on: str | None = None, lora_targets: Sequence[str] | None = None) -> AttackResult:
    """Fine-tune a copy of ``model`` on ``task.train`` and track the held-out loss of ``task.heldout``.

    Args:
        model: not modified (its trained parameters are copied; the copy runs in eval mode: no dropout).
        lr: peak learning rate η (the paper's grid: 1e-6, 1e-5, 3e-5).
        steps: number of updates.
        batch_size: sequences per step (the global batch: several processes split it, ``llm.parallel``).
        blocks, injected_only: which parameters train (see ``attack_params``).
        warmup: linear warm-up steps (default ``max(1, steps // 10)``).
        clip: global gradient-norm clip c (None: no clipping).
        eval_every: held-out evaluation period (also at step 0 and at the end).
        diverge_ratio: a training or held-out loss that is non-finite or above ``diverge_ratio`` × its
            start counts as divergence; the run stops there if ``stop_on_divergence``.
        cache: True: cache the frozen prefix (``prefix_for``); a ``FrozenPrefix`` to reuse (it must serve
            ``model``); False/None: run the full model at every step.
        lora_rank: train rank-r LoRA adapters (seeded by ``seed``) instead of the blocks' parameters.
        lora_on: where: ``"w_tilde"``, ``"c"`` or ``"both"`` of each locked pair; unset for plain layers (W).
        lora_targets: the adapted layers, inside ``blocks`` (default: ``targets.lora_layers``).
    Returns:
        An ``AttackResult`` (losses per step, held-out curve, ``diverged_at``, ``steps_to(target)``).
    """
    lr = real_number("lr", lr)  # a finite η > 0: inf or NaN would train nothing and report it as a run
    steps, batch_size, eval_every = (real_number(n, v, integer=True) for n, v in
                                     (("steps", steps), ("batch_size", batch_size), ("eval_every", eval_every)))
    t0 = time.perf_counter()
    names = attack_params(model, blocks, injected_only=injected_only)
    adapter = None
    if lora_rank is not None:
        if injected_only or any(isinstance(m, InjectedLinear) for m in model.modules()):
            raise ValueError("LoRA and layer injection are two attacks: attack the released (or fused) model with "
                             "lora_rank, or the injected model without it")
        if any(is_adapter(n) for n in names):
            raise ValueError("the model already carries LoRA adapters: attack it without lora_rank to train them")
        adapter = lora_layers(model, blocks, lora_on, lora_targets)
    elif lora_on is not None or lora_targets is not None:
        raise ValueError("lora_on and lora_targets place LoRA adapters: they need lora_rank")
    par = Parallel(next(model.parameters()).device) if world_size() > 1 else None
    if par is not None:
        par.check_batch(batch_size)
    if cache is True:
        cache = prefix_for(model, task, blocks=blocks, injected_only=injected_only, batch_size=batch_size, seed=seed)
    elif isinstance(cache, FrozenPrefix):
        f = first_block(model, names)
        if f is None or cache.first > f or not cache.serves(model):
            raise ValueError("the given FrozenPrefix does not serve this model and these blocks")
    prefix: FrozenPrefix | None = None if par is not None and par.fsdp else (cache or None)
    if adapter is None:
        work = working_copy(model, names, runs=None if prefix is None else prefix.runs(model))
        chosen = set(names)
        params = [p for n, p in work.named_parameters() if n in chosen]
    else:  # peft freezes every parameter of what it adapts: a full working copy (storage shared), never the caller's
        adapted = lora(working_copy(model, ()), lora_rank, adapter[1], adapter[0], seed=seed, inplace=True)
        work = adapted.get_base_model()
        params = [p for p in adapted.parameters() if p.requires_grad]
    warmup = max(1, steps // 10) if warmup is None else max(1, warmup)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if par is None:
        dev = params[0].device
        forward = (lambda x: work(x).logits) if prefix is None else (lambda x: prefix.logits(work, x))
    else:
        dev = par.device
        wrapped, opt = par.prepare(work if prefix is None else TailModule(work, prefix), opt)
        forward = (lambda x: wrapped(x).logits) if prefix is None else (lambda x: wrapped(*prefix.inputs(x)))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: min(1.0, (t + 1) / warmup))
    res = _Record()  # the run as it goes; returned as a frozen AttackResult

    def record_eval(step: int) -> bool:
        te = time.perf_counter()
        ev = evaluate(work, task.heldout, forward=forward)
        if par is not None:  # process 0's numbers everywhere: every process takes the same decisions
            loss, accuracy, top5 = par.broadcast([ev.loss, ev.accuracy, ev.top5])
            ev = Eval(loss, math.exp(min(loss, 700.0)), accuracy, ev.tokens, top5)
        res.eval_seconds.append(time.perf_counter() - te)
        res.eval_steps.append(step)
        res.eval_losses.append(ev.loss)
        res.eval_accuracies.append(ev.accuracy)
        res.eval_top5.append(ev.top5)
        return _blew_up(ev.loss, res.eval_losses[0], diverge_ratio)

    try:
        record_eval(0)
        data = batches(task.train, batch_size, seed=seed)
        from tqdm.auto import tqdm
        bar = tqdm(range(steps), desc=f"{label or 'attack'} lr={lr:g}", leave=False,
                   disable=progress_disabled(progress) or (par is not None and not par.is_main))
        for t in bar:
            ts = time.perf_counter()
            x = next(data).to(dev) if par is None else par.slice(next(data))
            loss = lm_loss(forward(x), x)
            res.losses.append(float(loss.detach()) if par is None else par.mean(loss))
            if _blew_up(res.losses[-1], res.losses[0], diverge_ratio) and res.diverged_at is None:
                res.diverged_at = t
                if stop_on_divergence:
                    if res.eval_steps[-1] != t:
                        record_eval(t)  # the held-out loss where it blew up, for the table
                    break
            opt.zero_grad(set_to_none=True)
            if par is None:
                loss.backward()
                if clip is not None:
                    torch.nn.utils.clip_grad_norm_(params, clip)
            else:
                par.backward(loss)
                if clip is not None:
                    par.clip(wrapped, clip)
            opt.step()
            sched.step()
            res.step_seconds.append(time.perf_counter() - ts)
            bar.set_postfix(loss=f"{res.losses[-1]:.3f}")
            if (t + 1) % eval_every == 0 or t + 1 == steps:
                if record_eval(t + 1) and res.diverged_at is None:
                    res.diverged_at = t + 1
                    if stop_on_divergence:
                        break
        bar.close()
    finally:
        if par is not None:
            par.release()
    return AttackResult(label, lr, steps, **{k: tuple(v) for k, v in vars(res).items() if isinstance(v, list)},
                        diverged_at=res.diverged_at, seconds=time.perf_counter() - t0,
                        trainable=sum(p.numel() for p in params), cached=prefix is not None,
                        adapter="" if adapter is None else describe(lora_rank, adapter[1], adapter[0]),
                        processes=1 if par is None else par.n)


class _Record:
    """The curves of a run while it runs (``AttackResult`` is frozen)."""

    def __init__(self) -> None:
        self.losses, self.eval_steps, self.eval_losses, self.eval_accuracies, self.eval_top5 = [], [], [], [], []
        self.step_seconds, self.eval_seconds = [], []
        self.diverged_at: int | None = None


def _blew_up(loss: float, start: float, ratio: float) -> bool:
    return not math.isfinite(loss) or loss > ratio * start


def attack_grid(models: Mapping[str, nn.Module], task: TextTask, lrs: Sequence[float], *,
                blocks: Sequence[int] = (-1,), injected_only: Mapping[str, bool] | None = None,
                cache: bool = True, progress: bool | None = None, **kw) -> dict[str, dict[float, AttackResult]]:
    """``attack`` every model at every learning rate: {label: {lr: result}} (Table 1's grid).

    Models whose frozen prefix is the same share one cache (``prefix_for(share=...)``), so the prefix of
    each batch runs once for the whole grid.
    """
    injected_only = injected_only or {}
    from tqdm.auto import tqdm
    out: dict[str, dict[float, AttackResult]] = {}
    shared: list[FrozenPrefix] = []
    prefixes: dict[str, FrozenPrefix | None] = {}
    for label, model in models.items():
        prefixes[label] = None
        if cache:
            prefixes[label] = prefix_for(model, task, blocks=blocks, injected_only=injected_only.get(label, False),
                                         batch_size=kw.get("batch_size", 4), seed=kw.get("seed", 0), share=shared)
            if prefixes[label] is not None and prefixes[label] not in shared:
                shared.append(prefixes[label])
    runs = [(label, lr) for label in models for lr in lrs]
    for label, lr in tqdm(runs, desc="attacks", disable=progress_disabled(progress)):
        out.setdefault(label, {})[lr] = attack(models[label], task, lr=lr, blocks=blocks, label=label,
                                               injected_only=injected_only.get(label, False),
                                               cache=prefixes[label] or False, progress=False, **kw)
    return out


def best_response(model: nn.Module, task: TextTask, *, lrs: Sequence[float], steps: int, target: float,
                  label: str = "", max_extend: int = 8, progress: bool | None = None,
                  cache: bool | FrozenPrefix | None = True, results: dict[float, AttackResult] | None = None,
                  **attack_kw) -> BestResponse:
    """η* = argmin_η T(τ; η) for the fine-tuning attack: ``experiments.best_response.search`` over ``attack``.

    T(τ; η) is the held-out steps-to-target of ``AttackResult.steps_to`` (reach τ and stay ≤ τ to the end of
    the budget; a diverged run never counts). The grid extends past an edge while the best sits on it.

    Args:
        lrs: a log-spaced grid of learning rates; steps: the budget B of every run; target: τ (held-out loss).
        cache: as in ``attack``; one prefix cache serves every learning rate.
        results: a dict {lr: AttackResult} of runs already made with the same settings (reused, and
            filled with the new runs) — e.g. Table 1's runs at the paper's grid.
        attack_kw: passed to ``attack`` (batch_size, blocks, injected_only, eval_every, seed, …).
    Each ``Outcome.result`` is the run's ``AttackResult``.
    """
    if cache is True:
        cache = prefix_for(model, task, blocks=attack_kw.get("blocks", (-1,)),
                           injected_only=attack_kw.get("injected_only", False),
                           batch_size=attack_kw.get("batch_size", 4), seed=attack_kw.get("seed", 0))
    results = {} if results is None else results

    def run(lr: float) -> Outcome:
        r = results.get(lr)
        if r is None or r.steps != steps:
            r = results[lr] = attack(model, task, lr=lr, steps=steps, label=label, cache=cache or False,
                                     progress=False, **attack_kw)
        return Outcome(lr, r.steps_to(target), r.diverged, r)

    return search(run, lrs, budget=steps, target=target, label=label, max_extend=max_extend, progress=progress)

