"""Streaming lock: W → (W̃, C) one tensor at a time, so a checkpoint bigger than memory can be locked.

``stream_lock`` reads a (sharded) safetensors checkpoint tensor by tensor and writes the locked one shard
by shard. The maths per layer is ``deform.deform_weight``, the call ``specdef`` makes, so a streamed lock
equals an in-memory ``llm.lock`` bit for bit. Peak memory is one layer's float64 work, never the model:
a target's W is read through ``safetensors.safe_open`` opened for that tensor alone (its mapping, and so
its resident pages, close with it); every other tensor is copied as raw bytes in 16 MiB pieces (any
dtype); and since shapes are known from the headers (W̃ has W's shape, C is out×out), each output shard's
header is written first and the tensors are appended as they are made (safetensors' own writer needs
the whole dict in memory).

Output: the source's non-weight files (config, tokenizer), ``model.safetensors`` or transformers-style
shards with ``model.safetensors.index.json``, and ``specdef.json`` (each pair's α, k) so that ``llm.load``
rebuilds every ``SpecDefLinear``; built in a hidden folder beside ``out`` and swapped into place whole
(``checkpoint.atomic_folder``, as ``llm.save``): a kill at any moment leaves the previous output as it was.
Targets are chosen without importing transformers (~120 MB): ``llm.target_names`` / ``match_targets``
run on a meta-device module tree rebuilt from the checkpoint's tensor names (``llm_shards.resolve_targets``).
``llm.lock``'s guards run on the headers before a byte is written: the forward-error estimate c·α·ε of each
pair's format against ``max_error``, one C's float64 work and all Cs against ``max_bytes``, and the free disk.
"""
from __future__ import annotations

import json
import os
import shutil
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..common.checkpoint import atomic_folder, fault_point, read_json
from ..lock.deform import deform_weight
from ..lock.guards import (MAX_BYTES, MAX_ERROR, check_alpha_k, check_bytes, check_overflow, check_precision,
                           forward_error_estimate, resolve_dtype)
from .shards import INDEX_FILE, SINGLE_FILE, checkpoint_files, is_sharded, read_header, resolve_targets

__all__ = ["StreamLock", "stream_lock", "lock_command", "resolve_targets", "is_sharded"]

METADATA_FILE, FORMAT = "specdef.json", "specdef-lite/1"  # as llm.save writes them
_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
           "BOOL": torch.bool}
_CODES = {v: k for k, v in _DTYPES.items()}
_PIECE = 16 << 20  # bytes copied per read of a pass-through tensor
_CONV1D_TYPES = {"gpt2", "openai-gpt"}  # architectures whose linear layers store W as (in, out)


@dataclass(frozen=True)
class StreamLock:
    """What ``stream_lock`` wrote: the folder, the deformed layers, bytes in and out, shards, seconds, and the
    forward-error estimate c·α·ε it checked against ``max_error`` (the largest over the pairs' storage formats)."""
    out: Path
    deformed: tuple[str, ...]
    source_bytes: int
    output_bytes: int
    shards: int
    seconds: float
    error_estimate: float


# ----------------------------------------------------------------------------- writing

def _write_header(f, entries: list[tuple[str, torch.dtype | str, list[int], int]], save_id: str) -> None:
    """safetensors header: u64 length, then JSON {name: {dtype, shape, data_offsets}} padded to 8 bytes."""
    header: dict = {"__metadata__": {"format": "pt", "specdef_lite_save_id": save_id}}
    offset = 0
    for name, dtype, shape, nbytes in entries:
        code = dtype if isinstance(dtype, str) else _CODES[dtype]
        header[name] = {"dtype": code, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    f.write(struct.pack("<Q", len(raw)) + raw)


def _write_tensor(f, t: torch.Tensor) -> int:
    b = t.detach().contiguous().reshape(-1).view(torch.uint8).numpy()  # raw little-endian bytes, no copy
    f.write(memoryview(b))
    return b.nbytes


def _copy_bytes(dst, src_path: Path, start: int, nbytes: int) -> None:
    buf = bytearray(min(_PIECE, max(nbytes, 1)))
    with open(src_path, "rb") as src:
        src.seek(start)
        left = nbytes
        while left:
            view = memoryview(buf)[:min(left, len(buf))]
            got = src.readinto(view)
            if not got:
                raise OSError(f"{src_path} ends before its header says")
            dst.write(view[:got])
            left -= got


def _parse_size(size: int | str) -> int:
    """Bytes from an int or a string such as ``"500MB"`` / ``"2GiB"``."""
    s = str(size).strip().upper()
    for unit, mult in (("GIB", 1 << 30), ("MIB", 1 << 20), ("KIB", 1 << 10), ("GB", 10**9), ("MB", 10**6), ("KB", 10**3)):
        if s.endswith(unit):
            return int(float(s[:-len(unit)]) * mult)
    return int(s)


def _plan(where: dict, names: list[str], alpha: float, k: int, compute_dtype, conv1d: bool):
    """Output entries (name, dtype, shape, nbytes, how) in checkpoint order, and specdef.json's layers.

    A target's ``weight`` becomes W̃ (W's shape), C (out×out), α and k; every other tensor is copied."""
    wanted = {f"{n}.weight": n for n in names}
    plan, deformed = [], {}
    for key, (f, e, base) in where.items():
        if key not in wanted:
            start, end = e["data_offsets"]
            plan.append((key, e["dtype"], e["shape"], end - start, ("copy", f, base + start)))
            continue
        n = wanted[key]
        store = compute_dtype or _DTYPES[e["dtype"]]  # as specdef: W̃ is stored in W's dtype
        rows, cols = e["shape"][::-1] if conv1d else e["shape"]  # W is (out, in); Conv1D stores (in, out)
        plan += [(f"{n}.W_tilde", store, [rows, cols], rows * cols * store.itemsize, ("deform", n, key, f)),
                 (f"{n}.C", store, [rows, rows], rows * rows * store.itemsize, ("C", n)),
                 (f"{n}.alpha", torch.float64, [], 8, ("alpha", n)), (f"{n}.k", torch.int64, [], 8, ("k", n))]
        deformed[n] = {"alpha": alpha, "k": int(k), "out": rows, "in": cols, "bias": f"{n}.bias" in where,
                       "compute_dtype": str(compute_dtype).removeprefix("torch.") if compute_dtype else None}
    return plan, deformed


def stream_lock(src: str | os.PathLike, out: str | os.PathLike, alpha: float, k: int = 1,
                targets: str | Sequence[str] | None = None, *, blocks: Sequence[int] = (-3, -2, -1),
                kinds: Sequence[str] | None = None, method: str = "full", compute_dtype: torch.dtype | None = None,
                max_error: float | None = MAX_ERROR, max_bytes: int | None = MAX_BYTES,
                max_shard_size: int | str = "2GB", progress: bool | None = None) -> StreamLock:
    """SpecDef on a checkpoint folder, tensor by tensor: W → (W̃, C) with C W̃ = W, as ``llm.lock`` does.

    Args:
        src: a local folder with ``config.json`` and safetensors weights (sharded or not); not modified.
        out: the locked folder; written beside and swapped into place whole (``checkpoint.atomic_folder``, as
            ``llm.save``): an existing output is replaced, and an interrupted lock leaves it as it was.
        alpha, k, targets, blocks, kinds, method, compute_dtype: as ``llm.lock``.
        max_error: refuse, before anything is written, when the forward-error estimate c·α·ε of a pair's storage
            format exceeds it (``guards.check_precision``); None: no check.
        max_bytes: refuse when one C in float64 (the work of one layer) or all Cs together exceed it.
        max_shard_size: bytes per output shard (int, or e.g. ``"500MB"``); one tensor never splits.
        progress: a ``tqdm.auto`` bar over bytes written, with its time estimate (None: off when headless).

    Returns:
        A ``StreamLock``; ``llm.load(out)`` gives the locked model.
    """
    import time
    import uuid

    from safetensors import safe_open
    from tqdm.auto import tqdm
    from ..common.display import progress_disabled
    t0 = time.perf_counter()
    check_alpha_k(alpha, k)
    compute_dtype = resolve_dtype(compute_dtype, "compute_dtype")
    alpha, src, out = float(alpha), Path(src).expanduser(), Path(out).expanduser()
    if not (src / "config.json").is_file():
        raise FileNotFoundError(f"{src} is not a checkpoint folder (no config.json)")
    meta = read_json(src / METADATA_FILE) or {}
    if meta.get("deformed"):
        raise ValueError(f"{src} is already locked; fuse it first")
    if out.resolve() == src.resolve() or out.resolve() in src.resolve().parents:
        raise ValueError(f"out {out} would replace the source folder {src} (or a folder holding it): choose another")
    config = read_json(src / "config.json")
    conv1d = config.get("model_type") in _CONV1D_TYPES
    files = checkpoint_files(src)
    where: dict[str, tuple[Path, dict, int]] = {}  # tensor name -> (file, header entry, buffer offset)
    for f in files:
        header, base = read_header(f)
        for name, e in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
            where[name] = (f, e, base)
    names = resolve_targets({n: e["shape"] for n, (_, e, _) in where.items()}, targets, blocks, kinds)
    plan, deformed = _plan(where, names, alpha, k, compute_dtype, conv1d)
    estimate = _guard(where, deformed, alpha, compute_dtype, max_error, max_bytes)
    shards: list[list] = [[]]
    limit = _parse_size(max_shard_size)
    for item in plan:  # greedy; a pair's C, α and k stay in the shard of its W̃
        if shards[-1] and sum(i[3] for i in shards[-1]) + item[3] > limit and item[4][0] in {"copy", "deform"}:
            shards.append([])
        shards[-1].append(item)
    fnames = ([SINGLE_FILE] if len(shards) == 1 else
              [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
    total = sum(i[3] for i in plan)
    _check_disk(out, total)
    save_id = uuid.uuid4().hex  # in every shard and in specdef.json: llm.load refuses a mix of two locks
    bar = tqdm(total=total, unit="B", unit_scale=True, desc=f"lock {src.name}", disable=progress_disabled(progress))
    try:
        with atomic_folder(out) as tmp:  # an interrupted lock leaves the previous output as it was
            C = None
            for fname, items in zip(fnames, shards):
                with open(tmp / fname, "wb") as fh:
                    _write_header(fh, [i[:4] for i in items], save_id)
                    for oname, dtype, _, nbytes, how in items:
                        bar.set_postfix_str(oname, refresh=False)
                        if how[0] == "copy":
                            _copy_bytes(fh, how[1], how[2], nbytes)
                        elif how[0] == "deform":
                            with safe_open(str(how[3]), framework="pt") as sf:  # this tensor's pages only
                                W = sf.get_tensor(how[2])
                            W_tilde, C = deform_weight(W.T if conv1d else W, alpha, k, method, how[1])
                            del W
                            check_overflow(how[1], W_tilde, C, dtype, alpha)
                            _write_tensor(fh, W_tilde.to(dtype))
                            del W_tilde
                        elif how[0] == "C":
                            _write_tensor(fh, C.to(dtype))
                            C = None
                        else:
                            _write_tensor(fh, torch.tensor(alpha if how[0] == "alpha" else int(k), dtype=dtype))
                        bar.update(nbytes)
                        fault_point("stream:tensor-written")
            if len(shards) > 1:
                index = {"metadata": {"total_size": total},
                         "weight_map": {i[0]: fn for fn, items in zip(fnames, shards) for i in items}}
                (tmp / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
            skip = {INDEX_FILE, METADATA_FILE} | {f.name for f in files}
            for f in src.iterdir():  # config, generation config, tokenizer, …
                if f.is_file() and f.name not in skip and not f.name.endswith((".safetensors", ".bin", ".pt", ".pth")):
                    shutil.copy2(f, tmp / f.name)
            spec = {"format": FORMAT, "base_model": meta.get("base_model") or str(src),
                    "model_type": config.get("model_type"), "save_id": save_id, "deformed": deformed}
            (tmp / METADATA_FILE).write_text(json.dumps(spec, indent=2, allow_nan=False) + "\n")
    finally:
        bar.close()
    return StreamLock(out, tuple(deformed), sum(f.stat().st_size for f in files),
                      sum((out / fn).stat().st_size for fn in fnames), len(shards), time.perf_counter() - t0, estimate)


def _guard(where: dict, deformed: dict, alpha: float, compute_dtype, max_error, max_bytes) -> float:
    """``llm.lock``'s guards from the headers alone, before a byte is written: a float format to lock in, the
    forward-error estimate c·α·ε of every pair's storage format, one C's float64 work, all Cs together.
    Returns the largest estimate."""
    store = {}
    for n in deformed:
        code = where[f"{n}.weight"][1]["dtype"]
        dt = _DTYPES.get(code)
        if compute_dtype is None and (dt is None or not dt.is_floating_point):
            raise ValueError(f"layer {n!r} is stored as {code}, not as floating point (a quantised checkpoint?): "
                             f"dequantise it first, or pass compute_dtype=torch.float32")
        store[n] = compute_dtype or dt
    check_precision(alpha, store.values(), max_error)
    layers = [(n, d["out"], d["in"], store[n], "cpu") for n, d in deformed.items()]
    check_bytes(layers, max_bytes, stored=False)  # one C at a time is in memory: its float64 work
    total = sum(m * m * dt.itemsize for _, m, _, dt, _ in layers)
    if max_bytes is not None and layers and total > max_bytes:
        raise ValueError(f"the {len(layers)} compensations C together take {total / 1e9:.3g} GB, above the "
                         f"{max_bytes / 1e9:.3g} GB cap: lock fewer layers, or raise max_bytes if the disk is there.")
    return max((forward_error_estimate(alpha, dt) for dt in store.values()), default=0.0)


def _check_disk(out: Path, nbytes: int) -> None:
    """Refuse before writing when the file system that will hold ``out`` cannot take ``nbytes`` more."""
    parent = next((p for p in (out.parent, *out.parent.parents) if p.exists()), None)
    if parent is None:
        return
    free = shutil.disk_usage(parent).free
    if nbytes > free:
        raise ValueError(f"the locked checkpoint needs {nbytes / 1e9:.3g} GB but {parent} has {free / 1e9:.3g} GB free: "
                         f"write it elsewhere or free space")


def lock_command(args) -> None:
    """``specdef-lite lock --stream`` (and ``lock`` on a sharded folder): the CLI's streaming branch."""
    if args.check:
        raise ValueError("--check loads the original and the locked model into memory, which a streamed lock avoids: "
                         "drop --check (or --stream, for a model that fits in memory)")
    if not Path(args.model, "config.json").is_file():
        raise ValueError(f"--stream needs a local checkpoint folder with config.json, got {args.model!r}")
    r = stream_lock(args.model, args.out, args.alpha, args.k, args.targets, blocks=args.blocks, kinds=args.kinds,
                    method=args.method, compute_dtype=args.compute_dtype, max_error=args.max_error,
                    max_bytes=None if args.max_gb is None else int(args.max_gb * 1e9))
    print(f"locked {len(r.deformed)} layers at alpha={args.alpha:g}, k={args.k} (streamed: {r.shards} shards, "
          f"{r.source_bytes / 1e9:.2f} GB in, {r.output_bytes / 1e9:.2f} GB out): {', '.join(r.deformed)}")
    checked = (f"was checked against --max-error {args.max_error:g} instead" if args.max_error is not None
               else "was not checked (--max-error none)")
    print(f"no --check when streaming (it needs both models in memory): the estimated logit change c·α·ε = "
          f"{r.error_estimate:.1e} {checked}")
    print(f"wrote {args.out}")
