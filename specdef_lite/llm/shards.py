"""A safetensors checkpoint on disk, one file or transformers-style shards: find its files, read headers, load it.

A sharded folder has ``model.safetensors.index.json`` mapping each tensor name to its shard file
(``{"metadata": {"total_size": …}, "weight_map": {name: file}}``); a single-file one has
``model.safetensors``. A safetensors file is an 8-byte little-endian header length, a JSON header
``{name: {dtype, shape, data_offsets}}`` and the tensors' bytes, so the header alone tells every shape.
"""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import torch
from torch import nn

__all__ = ["INDEX_FILE", "SINGLE_FILE", "checkpoint_files", "is_sharded", "read_header", "read_weights", "load_weights"]

INDEX_FILE, SINGLE_FILE = "model.safetensors.index.json", "model.safetensors"


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
    """(header without ``__metadata__``, offset of the byte buffer) of one safetensors file."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
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
