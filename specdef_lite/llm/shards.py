"""A safetensors checkpoint on disk, one file or transformers-style shards: find its files, read headers, load it.

A sharded folder has ``model.safetensors.index.json`` mapping each tensor name to its shard file
(``{"metadata": {"total_size": …}, "weight_map": {name: file}}``); a single-file one has
``model.safetensors``. A safetensors file is an 8-byte little-endian header length, a JSON header
``{name: {dtype, shape, data_offsets}}`` and the tensors' bytes, so the header alone tells every shape — and the
tensor names alone tell which layers a lock targets (``resolve_targets``, for ``llm_stream``, without transformers).
"""
from __future__ import annotations

import json
import os
import struct
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

__all__ = ["INDEX_FILE", "SINGLE_FILE", "checkpoint_files", "is_sharded", "read_header", "read_weights", "load_weights",
           "resolve_targets"]

INDEX_FILE, SINGLE_FILE = "model.safetensors.index.json", "model.safetensors"
_EMBEDDING_WORDS = ("embed", "wte", "wpe")


def checkpoint_files(folder: str | os.PathLike) -> list[Path]:
    """The safetensors files of a checkpoint folder: every shard of its index, else ``model.safetensors``."""
    folder = Path(folder)
    if (folder / INDEX_FILE).is_file():
        weight_map = json.loads((folder / INDEX_FILE).read_text())["weight_map"]
        return [folder / f for f in sorted(set(weight_map.values()))]
    if (folder / SINGLE_FILE).is_file():
        return [folder / SINGLE_FILE]
    raise FileNotFoundError(f"{folder} holds no {SINGLE_FILE} or {INDEX_FILE} (streaming needs safetensors)")


def is_sharded(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` is a local checkpoint with a ``model.safetensors.index.json``."""
    return (Path(folder) / INDEX_FILE).is_file()


def read_header(path: Path) -> tuple[dict, int]:
    """(header without ``__metadata__``, offset of the byte buffer) of one safetensors file, after checking that the
    file holds every byte its header promises (``checkpoint.safetensors_header``: a truncated shard is named)."""
    from ..common.checkpoint import safetensors_header
    header = dict(safetensors_header(path))
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
    header.pop("__metadata__", None)
    return header, 8 + n


def read_weights(folder: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Every tensor of a single-file or sharded safetensors checkpoint (loads them all: for ``llm.load``)."""
    from safetensors.torch import load_file
    state: dict[str, torch.Tensor] = {}
    for f in checkpoint_files(folder):
        state.update(load_file(str(f)))
    return state


def load_weights(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """``model.load_state_dict(state)``, strict except for names tied to a loaded one (lm_head ↔ embedding)."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    groups: dict[int, set[str]] = {}
    for n, t in list(model.named_parameters(remove_duplicate=False)) + list(model.named_buffers(remove_duplicate=False)):
        groups.setdefault(id(t), set()).add(n)
    names_of = {n: g for g in groups.values() for n in g}
    missing = [n for n in missing if not (names_of.get(n, {n}) - {n}) & state.keys()]
    if missing or unexpected:
        raise ValueError(f"checkpoint does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}")


# ----------------------------------------------------------------------------- targets

def _skeleton(shapes: dict[str, list[int]]) -> nn.Module:
    """A meta-device module tree with an ``nn.Linear`` at every 2-D ``*.weight`` that is no embedding and
    an ``nn.ModuleList`` wherever the children are numbered — enough for ``llm.target_names`` and
    ``llm.match_targets``, which look only at names, types and the longest ``nn.ModuleList``."""
    tree: dict = {}
    for key, shape in shapes.items():
        name, _, leaf = key.rpartition(".")
        if leaf != "weight" or len(shape) != 2 or not name or any(w in name.rsplit(".", 1)[-1] for w in _EMBEDDING_WORDS):
            continue
        node = tree
        for p in name.split("."):
            node = node.setdefault(p, {})
        node[None] = True  # a linear layer sits here

    def build(node: dict) -> nn.Module:
        if None in node:
            return nn.Linear(1, 1, bias=False, device="meta")
        if node and all(p.isdigit() for p in node):
            children = [build(node[p]) if p in node else nn.Module() for p in map(str, range(1 + max(map(int, node))))]
            return nn.ModuleList(children)
        m = nn.Module()
        for p, child in node.items():
            m.add_module(p, build(child))
        return m

    return build(tree)


def resolve_targets(shapes: dict[str, list[int]], targets: str | Sequence[str] | None,
                    blocks: Sequence[int], kinds: Sequence[str] | None) -> list[str]:
    """Module names to lock, chosen exactly as ``llm.lock`` chooses them, from tensor names alone."""
    from .targets import match_targets, target_names
    skeleton = _skeleton(shapes)
    if targets is None:
        return target_names(skeleton, blocks, kinds)
    if isinstance(targets, str):
        return match_targets(skeleton, targets)
    names = list(targets)
    for n in names:
        if len(shapes.get(f"{n}.weight", [])) != 2:
            raise ValueError(f"target {n!r} has no 2-D weight {n}.weight in the checkpoint")
    return names
