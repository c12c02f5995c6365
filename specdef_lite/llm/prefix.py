"""z = head(B_{L−1} ∘ … ∘ B_f(h_f)) with h_f = B_{f−1} ∘ … ∘ B_0(embed(x)) computed once per batch — the frozen prefix.

Why: the attacker trains only the last blocks (``llm.finetune.attack_params``), so every block below the first
trained one, f, computes the same h_f at every step, every learning rate and in every model that shares those
weights (original, locked, fused and injected models differ only in the blocks they lock). On SmolLM2-135M the
27 frozen blocks of a 3-block attack were half of each step (benchmarks/bench_llm_attack.py).

How, for any Hugging Face causal LM: a forward pre-hook on block f records what the model passes to it (the hidden
state, rotary cos/sin, causal mask, position ids) and stops the forward there. The *head* is the chain of modules
the model calls after its last block (final norm, lm_head), found once from the call order. The tail's logits are
checked against the model's own on the first batch (bit-identical on Llama and GPT-2); where they differ (e.g.
logit soft-capping written as plain code) ``FrozenPrefix.build`` returns None and callers run the full forward.
``tail_loss`` makes the same tail a pure function of the trained parameters, for Hessian-vector products.
"""
from __future__ import annotations

import contextlib
import copy
import warnings
import weakref
from collections.abc import Collection, Iterator, Mapping, Sequence

import torch
from torch import nn
from torch.func import functional_call

from .data import lm_loss
from .targets import blocks_of

__all__ = ["FrozenPrefix", "first_block", "working_copy", "tail_loss"]


class _Stop(Exception):
    """Raised by the capture hook: everything after block f is not needed."""


def first_block(model: nn.Module, names: Collection[str]) -> int | None:
    """Index of the lowest decoder block holding one of the parameter ``names``; None if one lies outside the blocks."""
    prefix, blocks = blocks_of(model)
    found = []
    for n in names:
        head, _, rest = n.partition(prefix + ".")
        index = rest.split(".", 1)[0]
        if head or not index.isdigit():
            return None
        found.append(int(index))
    return min(found) if found else None


def working_copy(model: nn.Module, trained: Collection[str], *, runs: Collection[str] | None = None) -> nn.Module:
    """A copy of ``model`` in eval mode whose ``trained`` parameters are new tensors (requires_grad) and whose
    other parameters share storage with ``model`` (requires_grad False) — a deep copy at the cost of the trained part.

    ``runs``: names of the only modules the copy will run (``FrozenPrefix.runs``: the tail blocks and the
    head). Every other module is then shared with ``model`` as it is, not copied, which makes the copy
    cheap; such a copy must only be run through ``FrozenPrefix.run``.

    ``model`` is not modified: the copied modules hold new ``Parameter`` objects over the same storage, so
    their flags are the copy's own, and nothing writes to them (only trained parameters reach the optimizer).
    """
    trained = set(trained)
    memo = {id(p): nn.Parameter(p.detach(), requires_grad=False)
            for n, p in model.named_parameters() if n not in trained}  # tied weights share one id, one entry
    if runs is not None:
        keep = tuple(runs)
        for name, module in model.named_modules():
            related = any(name == r or r.startswith(name + ".") or name.startswith(r + ".") for r in keep)
            if name and not related and not any(n.startswith(name + ".") for n in trained):
                memo.setdefault(id(module), module)  # never run by the copy: share it
    work = copy.deepcopy(model, memo).eval()
    for n, p in work.named_parameters():
        if n in trained:
            p.requires_grad_(True)
        elif runs is None or any(n.startswith(r + ".") for r in runs):
            p.requires_grad_(False)  # (shared modules keep the caller's own flags: they are never run)
    return work


def _detach(v):
    if isinstance(v, torch.Tensor):
        return v.detach()
    if isinstance(v, tuple):
        return tuple(_detach(u) for u in v)
    return v


class FrozenPrefix:
    """The hidden states entering block f, per batch, for one model's frozen prefix (see the module docstring).

    Attributes:
        model: the model whose prefix is run (never modified).
        first: f, the first block the tail runs.
        head: names of the modules after the last block (e.g. ``("model.norm", "lm_head")``).
        captures / hits: batches whose prefix was run / served from the cache.
        max_bytes: the cache stops storing new batches beyond this size (it still computes them); a long attack
            on a big model sees many distinct batches, each (B, T, d) floats.
    """

    def __init__(self, model: nn.Module, first: int, head: Sequence[str], *, max_bytes: int = 2 << 30):
        self.model, self.first, self.head, self.max_bytes = model, int(first), tuple(head), int(max_bytes)
        self.bytes = 0
        self.block_prefix, blocks = blocks_of(model)
        if not 0 <= self.first < len(blocks):
            raise ValueError(f"first block {first} out of range: the model has {len(blocks)} blocks")
        self._store: dict[tuple, tuple[torch.Tensor, tuple, dict]] = {}
        self._served: weakref.WeakSet = weakref.WeakSet()  # models already checked by ``serves``
        self.captures = self.hits = 0

    @classmethod
    @torch.no_grad()
    def build(cls, model: nn.Module, first: int, example: torch.Tensor, *, rtol: float = 1e-5,
              max_bytes: int = 2 << 30) -> FrozenPrefix | None:
        """A checked prefix cache, or None (with a warning) where the tail cannot reproduce the model's logits.

        Args:
            first: f, the first block the tail runs (``first_block`` of the trained names).
            example: a batch (B, T) of token ids; the tail's logits on it must match ``model(example).logits``
                to ``rtol`` of their largest magnitude. It becomes the first cached batch.
        """
        head = _head_modules(model, example)
        prefix = cls(model, first, head, max_bytes=max_bytes)
        with _eval_mode(model):
            full = model(input_ids=example, use_cache=False).logits
        tail = prefix.logits(model, example)
        err = float((tail - full).abs().max())
        if not err <= rtol * float(full.abs().max()):
            warnings.warn(f"the cached prefix does not reproduce this model's logits (max |Δz| = {err:.2e}, "
                          f"head {head}); running the full forward instead", stacklevel=2)
            return None
        return prefix

    def serves(self, model: nn.Module) -> bool:
        """True if ``model``'s prefix computes what this cache holds: the same names and equal tensors outside
        blocks f … L−1 (embeddings, lower blocks, rotary buffers, head), and the same head modules."""
        if model is self.model or model in self._served:
            return True
        if not _has(model, self.block_prefix):
            return False
        mine, theirs = self._outside(self.model), self._outside(model)
        if mine.keys() != theirs.keys() or any(not _has(model, n) for n in self.head):
            return False
        same = all(a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b)
                   for a, b in ((mine[n], theirs[n]) for n in mine))
        if same:
            self._served.add(model)  # checked once; a model changed afterwards is the caller's business
        return same

    def _outside(self, model: nn.Module) -> dict[str, torch.Tensor]:
        tails = tuple(f"{self.block_prefix}.{i}." for i in range(self.first, len(model.get_submodule(self.block_prefix))))
        named = list(model.named_parameters()) + list(model.named_buffers())
        return {n: t.detach() for n, t in named if not n.startswith(tails)}

    def inputs(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple, dict]:
        """(h_f, other positional arguments, keyword arguments) that block f receives for the batch ``x``."""
        key = (tuple(x.shape), str(x.device), x.detach().cpu().numpy().tobytes())
        entry = self._store.get(key)
        if entry is None:
            entry = self._capture(x)
            self.captures += 1
            size = entry[0].numel() * entry[0].element_size()
            if self.bytes + size <= self.max_bytes:
                self._store[key] = entry
                self.bytes += size
        else:
            self.hits += 1
        return entry

    @torch.no_grad()
    def _capture(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple, dict]:
        box: dict = {}

        def grab(module, args, kwargs):
            box["args"], box["kwargs"] = args, kwargs
            raise _Stop

        block = self.model.get_submodule(self.block_prefix)[self.first]
        handle = block.register_forward_pre_hook(grab, with_kwargs=True)
        try:
            with _eval_mode(self.model):
                self.model(input_ids=x, use_cache=False)
        except _Stop:
            pass
        finally:
            handle.remove()
        if "args" not in box:
            raise RuntimeError(f"block {self.first} was never called by the model's forward")
        args, kwargs = _detach(tuple(box["args"])), {k: _detach(v) for k, v in box["kwargs"].items()}
        if args:
            return args[0], args[1:], kwargs
        kwargs = dict(kwargs)
        return kwargs.pop("hidden_states"), (), kwargs

    def runs(self, model: nn.Module) -> list[str]:
        """Names of the modules ``run`` calls on ``model``: blocks f … L−1, then the head."""
        n = len(model.get_submodule(self.block_prefix))
        return [f"{self.block_prefix}.{i}" for i in range(self.first, n)] + list(self.head)

    def logits(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """``model``'s logits (B, T, V) on ``x``: the cached h_f through ``model``'s blocks f … L−1 and head."""
        return self.run(model, *self.inputs(x))

    def run(self, model: nn.Module, h: torch.Tensor, args: tuple, kwargs: dict) -> torch.Tensor:
        """``model``'s blocks f … L−1 and head applied to the hidden state h (B, T, d) with block f's other arguments."""
        for block in model.get_submodule(self.block_prefix)[self.first:]:
            out = block(h, *args, **kwargs)
            h = out[0] if isinstance(out, tuple) else out
        for name in self.head:
            h = model.get_submodule(name)(h)
        return h

    def __repr__(self) -> str:
        return (f"FrozenPrefix(first={self.first}, head={self.head}, batches={len(self._store)}, "
                f"captures={self.captures}, hits={self.hits})")


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Run ``model`` in eval mode (as the attack's copy runs: no dropout), then restore every module's flag."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


def _has(model: nn.Module, name: str) -> bool:
    try:
        model.get_submodule(name)
        return True
    except AttributeError:
        return False


@torch.no_grad()
def _head_modules(model: nn.Module, example: torch.Tensor) -> tuple[str, ...]:
    """The outermost modules the model calls after its last block returns, in call order."""
    _, blocks = blocks_of(model)
    order: list[str] = []
    after = [False]
    hooks = [blocks[-1].register_forward_hook(lambda m, a, o: after.__setitem__(0, True))]
    for name, module in model.named_modules():
        if name:
            hooks.append(module.register_forward_pre_hook(
                lambda m, a, name=name: order.append(name) if after[0] and name not in order else None))
    try:
        with _eval_mode(model):
            model(input_ids=example, use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    return tuple(n for n in order if not any(n.startswith(o + ".") for o in order))


def tail_loss(model: nn.Module, x: torch.Tensor, names: Sequence[str], *,
              prefix: FrozenPrefix | None = None) -> tuple:
    """(ℒ, θ): ℒ(θ) = ``lm_loss`` of ``model`` on the fixed batch ``x`` as a pure function of the parameters
    ``names`` (all in blocks ≥ f), running only the tail; θ = detached copies of their current values.

    For ``sl.top_eigenvalues(loss_fn, theta)`` / ``sl.hvp``: each Hessian-vector product then touches the
    trained blocks and the head only. ``prefix`` (default: built here) must serve ``model``.
    """
    f = first_block(model, names)
    if f is None:
        raise ValueError("tail_loss needs parameters inside the decoder blocks")
    if prefix is None:
        prefix = FrozenPrefix.build(model, f, x)
        if prefix is None:
            raise ValueError("this architecture's head is not a chain of modules: no cached tail")
    elif prefix.first > f or not prefix.serves(model):
        raise ValueError("the given prefix does not serve this model and these parameters")
    h, args, kwargs = prefix.inputs(x)  # looked up now, outside any function transform
    named = dict(model.named_parameters())
    theta = {n: named[n].detach().clone() for n in names}
    tail = _Tail(model, prefix, args, kwargs)

    def loss_fn(p: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return lm_loss(functional_call(tail, {f"model.{n}": t for n, t in p.items()}, (h,)), x)

    return loss_fn, theta


class _Tail(nn.Module):
    """forward(h) = prefix.run(model, h, …), a module so that ``functional_call`` can swap ``model.*`` parameters."""

    def __init__(self, model: nn.Module, prefix: FrozenPrefix, args: tuple, kwargs: dict):
        super().__init__()
        self.model, self.prefix, self.args, self.kw = model, prefix, args, kwargs

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.prefix.run(self.model, h, self.args, self.kw)
