"""Which layers of a language model a lock targets: the decoder blocks (the longest ``nn.ModuleList``) and the
projections of each kind (attention value/output and MLP output by default), or a name pattern.
"""
from __future__ import annotations

import re
from collections.abc import Sequence

from torch import nn

from ..lock.deform import SpecDefLinear, deformed_layers
from ..lock.guards import real_number
from ..lock.targets import is_linear

__all__ = ["block_indices", "blocks_of", "default_kinds", "target_names", "match_targets", "lora_layers"]


def block_indices(blocks: Sequence[int], n: int) -> list[int]:
    """Each of ``blocks`` as an index 0 … n−1 (negative counts from the end), or a ValueError naming the range."""
    if isinstance(blocks, (str, bytes)) or not isinstance(blocks, Sequence) or not blocks:
        raise ValueError(f"blocks must be a non-empty list of block indices, got {blocks!r}")
    out = []
    for b in blocks:
        b = real_number("block index", b, positive=False, integer=True)
        if not -n <= b < n:
            raise ValueError(f"block {b} out of range: the model has {n} blocks (0 … {n - 1}, or -1 … -{n} from the end)")
        out.append(b % n)
    return out


def blocks_of(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """(name, blocks): the longest ``nn.ModuleList`` — the decoder blocks of any transformer."""
    lists = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.ModuleList)]
    if not lists:
        raise ValueError("the model has no nn.ModuleList of blocks")
    return max(lists, key=lambda nm: len(nm[1]))


def default_kinds(model: nn.Module) -> tuple[str, ...]:
    """Attention-output, value and MLP-output projections in the model's own names."""
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    if {"o_proj", "v_proj", "down_proj"} <= names:  # Llama, Qwen, Mistral, Gemma
        return ("o_proj", "v_proj", "down_proj")
    if {"c_attn", "c_proj"} <= names:  # GPT-2: c_attn = [q|k|v], attn.c_proj, mlp.c_proj
        return ("attn.c_proj", "c_attn", "mlp.c_proj")
    raise ValueError("unknown architecture: pass kinds= (name suffixes such as 'o_proj') or targets=")


def target_names(model: nn.Module, blocks: Sequence[int] = (-3, -2, -1),
                 kinds: Sequence[str] | None = None) -> list[str]:
    """Linear layers of the chosen blocks whose names end in one of ``kinds``.

    Args:
        blocks: block indices, negative counts from the end (``-1`` = last block).
        kinds: name suffixes, e.g. ``("o_proj", "v_proj", "down_proj")`` (Llama/Qwen) or
            ``("attn.c_proj", "mlp.c_proj", "c_fc")`` (GPT-2); default ``default_kinds(model)``.
    """
    prefix, layers = blocks_of(model)
    kinds = tuple(kinds) if kinds is not None else default_kinds(model)
    if isinstance(kinds, str) or not all(isinstance(k, str) and k for k in kinds):
        raise ValueError(f"kinds must be a list of layer-name suffixes, got {kinds!r}")
    out = []
    for b in block_indices(blocks, len(layers)):
        base = f"{prefix}.{b}"
        for n, m in model.get_submodule(base).named_modules():
            if n and (is_linear(m) or isinstance(m, SpecDefLinear)) and any(n == k or n.endswith("." + k) for k in kinds):
                out.append(f"{base}.{n}")
    if not out:
        raise ValueError(f"no layer of blocks {list(blocks)} matches kinds {kinds}")
    return out


def match_targets(model: nn.Module, pattern: str) -> list[str]:
    """Linear layers whose full name matches ``pattern`` at its end: a regex in which ``{a,b}`` expands to
    ``(?:a|b)``, e.g. ``"layers.{27,28,29}.(mlp.down_proj|self_attn.o_proj)"``."""
    if not isinstance(pattern, str) or not pattern.strip():
        raise ValueError(f"targets pattern must be a non-empty regular expression, got {pattern!r}")
    expanded = re.sub(r"\{([^{}]*)\}", lambda m: "(?:" + m.group(1).replace(",", "|") + ")", pattern)
    try:
        rx = re.compile(r"(?:^|\.)(?:" + expanded + r")$")
    except re.error as e:
        raise ValueError(f"targets pattern {pattern!r} is not a valid regular expression: {e}") from None
    names = [n for n, m in model.named_modules() if n and is_linear(m) and rx.search(n)]
    if not names:
        raise ValueError(f"pattern {pattern!r} matches no linear layer")
    return names


def lora_layers(model: nn.Module, blocks: Sequence[int], on: str | None = None,
                targets: str | Sequence[str] | None = None) -> tuple[list[str], str]:
    """(layers, placement) of a LoRA attack on the decoder ``blocks`` of a language model, checked.

    Default layers: the locked pairs inside ``blocks``; in a model with none there (the undefended or the fused
    model), the layers a default lock would target there (``llm.target_names``) — the same layers either way.
    ``on``: ``"w_tilde"``, ``"c"`` or ``"both"`` for locked pairs; None or ``"weight"`` for plain layers (their W).
    Explicit ``targets`` must lie inside ``blocks``, so that the adapters train in the cached tail.
    """
    prefix, layers = blocks_of(model)
    chosen = sorted(set(block_indices(blocks, len(layers))))

    def inside(n: str) -> bool:
        head, _, rest = n.partition(prefix + ".")
        index = rest.split(".", 1)[0]
        return not head and index.isdigit() and int(index) in chosen

    modules = dict(model.named_modules())
    if targets is None:
        names = [n for n in deformed_layers(model) if inside(n)] or target_names(model, chosen)
    else:
        names = [targets] if isinstance(targets, str) else list(targets)
        for n in names:
            if not n or n not in modules:
                raise ValueError(f"LoRA target {n!r} not found in the model")
            if not inside(n):
                raise ValueError(f"LoRA target {n!r} lies outside the trained blocks {list(blocks)}: adapters train "
                                 f"inside those blocks only")
    pairs = [n for n in names if isinstance(modules[n], SpecDefLinear)]
    if pairs and len(pairs) != len(names):
        plain = next(n for n in names if n not in pairs)
        raise ValueError(f"the LoRA targets mix locked pairs ({pairs[0]!r}) and plain layers ({plain!r}): choose one "
                         f"kind, or fuse the model first")
    if pairs:
        if on not in ("w_tilde", "c", "both"):
            raise ValueError(f"{len(pairs)} LoRA targets are locked pairs (e.g. {pairs[0]!r}): choose where the adapter "
                             f"goes, lora_on = 'w_tilde', 'c' or 'both' (got {on!r}); or fuse the model first")
    elif on not in (None, "weight"):
        raise ValueError(f"lora_on={on!r} places adapters on locked pairs, but blocks {list(blocks)} hold none (the "
                         f"targets, e.g. {names[0]!r}, are plain layers): leave lora_on unset to adapt their W")
    return names, on or "weight"
