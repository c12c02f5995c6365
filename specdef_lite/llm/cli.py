"""``specdef-lite``: lock, fuse, attack and inspect causal-LM checkpoints from the shell.

Every command takes a model as a Hugging Face name, a local folder, or ``default`` (the offline
SmolLM2-135M-Instruct, converted once into the user cache). Locked checkpoints are folders written by
``specdef_lite.llm.save``: config.json + model.safetensors (W̃ and C of each pair) + specdef.json.

A user's mistake gets one line on stderr and exit status 2, never a traceback; outputs are written beside
their target and renamed into place, so an interrupted command leaves the previous output as it was.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

EPILOG = """\
examples:
  specdef-lite inspect default
  specdef-lite lock default locked/ --alpha 1e4 -k 25 --blocks -3 -2 -1 --kinds o_proj v_proj down_proj
  specdef-lite lock default locked/ --alpha 1e4 --targets 'layers.{27,28,29}.(mlp.down_proj|self_attn.o_proj)'
  specdef-lite inspect locked/
  specdef-lite attack default --lr 1e-5 --steps 30        # the undefended baseline
  specdef-lite attack locked/ --lr 1e-6 1e-5 3e-5 --steps 60 --blocks -3 -2 -1
  specdef-lite attack locked/ --inject --steps 60        # the attacker's layer injection
  specdef-lite attack locked/ --lora-rank 8 --lora-on c  # LoRA adapters on each pair's C (or w_tilde, both)
  accelerate launch --multi_gpu --num_processes 8 -m specdef_lite.llm.cli attack locked/   # data parallel
  specdef-lite fuse locked/ fused/                        # W = C·W̃, an ordinary transformers model again

A locked model computes the same function as the original (up to float32 rounding, which grows like
α·ε); fine-tuning the locked layers with AdamW at the paper's learning rates blows up, while fusing
or injecting restores normal training (see notebooks/06_real_llm.ipynb).
"""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``specdef-lite lock: error: argument -k: … (see specdef-lite lock --help)``."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n" if _main_process() else None)


def _number(kind: str, *, positive: bool = True, integer: bool = False, allow_zero: bool = False):
    """An argparse type: a finite number (positive / whole where asked) with a message that says which."""
    def parse(text: str):
        from ..lock.guards import real_number
        try:
            value = int(text) if integer else float(text)
            return real_number("value", value, positive=positive, integer=integer, allow_zero=allow_zero)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind}, got {text!r}") from None
    parse.__name__ = kind
    return parse


_POS_FLOAT = _number("positive finite number")
_POS_INT = _number("positive whole number", integer=True)
_COUNT = _number("whole number >= 0", integer=True, allow_zero=True)
_BLOCK = _number("whole number", positive=False, integer=True)
_DTYPES = ("float64", "float32", "bfloat16", "float16")


def _optional_limit(text: str):  # a positive number, or 'none' (no limit)
    if text.strip().lower() in {"none", "off"}:
        return None
    return _POS_FLOAT(text)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="specdef-lite", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Spectral deformation (SpecDef) of causal language models, and the attacks that undo it. "
                    "MODEL is a Hugging Face name, a local folder, or 'default' (offline SmolLM2-135M-Instruct).")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, mps or auto (default: cpu)")
    sub = p.add_subparsers(dest="command", required=True, metavar="{lock,fuse,attack,inspect}",
                           parser_class=_Parser)

    s = sub.add_parser("inspect", help="architecture, parameter count, candidate targets, deformed layers",
                       description="Print what a checkpoint is: architecture, parameters, blocks, the layers "
                                   "a lock would target by default, and any deformed (W̃, C) pairs with α and k.")
    s.add_argument("model", help="a Hugging Face name, a local folder (plain or locked), or 'default'")
    s.add_argument("--detect", action="store_true",
                   help="also run blind detection from singular values alone (slow on large vocabularies)")
    s.add_argument("--json", action="store_true", help="print machine-readable JSON")

    s = sub.add_parser("lock", help="deform target layers: W → (W̃, C), same function",
                       description="Lock a model with SpecDef: for each target W = UΣVᵀ store W̃ = UΣ̃Vᵀ "
                                   "(top-k singular values × α) and C = I − (1 − 1/α)U_kU_kᵀ, so C·W̃ = W.")
    s.add_argument("model", help="a Hugging Face name, a local folder (plain or locked), or 'default'")
    s.add_argument("out", help="output folder for the locked checkpoint (created)")
    s.add_argument("--alpha", type=_POS_FLOAT, default=1e4, help="deformation strength α (default 1e4, as the paper)")
    s.add_argument("-k", type=_POS_INT, default=25, help="number of singular values scaled (default 25)")
    s.add_argument("--targets", help="regex of layer names; {a,b} expands to (a|b), "
                                     "e.g. 'layers.{27,28,29}.(mlp.down_proj|self_attn.o_proj)'")
    s.add_argument("--blocks", type=_BLOCK, nargs="+", default=[-3, -2, -1],
                   help="block indices when --targets is not given, negative from the end (default: -3 -2 -1)")
    s.add_argument("--kinds", nargs="+", default=None,
                   help="layer-name suffixes, e.g. o_proj v_proj down_proj, or attn.c_proj mlp.c_proj for GPT-2 "
                        "(default: attention output, value and MLP output projections)")
    s.add_argument("--method", choices=["full", "lowrank"], default="full",
                   help="full float64 SVD, or a partial SVD for big layers (the lock stays exact)")
    s.add_argument("--compute-dtype", choices=_DTYPES, default=None,
                   help="store and run the deformed layers in this dtype (e.g. float32 for a bfloat16 model: the "
                        "forward error grows like α·ε of the format the pairs live in)")
    s.add_argument("--check", type=_COUNT, default=None, metavar="N",
                   help="compare logits of original and locked model on N random token sequences and refuse to "
                        "write if they are not finite or moved more than --max-error (default 2 in memory; a streamed lock cannot load both models, so it relies on the estimate; 0: skip)")
    s.add_argument("--max-error", type=_optional_limit, default=0.5, metavar="E",
                   help="refuse a lock whose relative logit change (estimated c·α·ε before locking, measured by "
                        "--check after) exceeds E (default 0.5; 'none': no limit)")
    s.add_argument("--max-gb", type=_optional_limit, default=4.0, metavar="GB",
                   help="refuse a lock whose compensations C (out×out each) exceed this many GB (default 4; 'none')")
    s.add_argument("--stream", action="store_true", help="lock tensor by tensor, writing shards as it goes (the "
                   "default for a sharded safetensors folder): memory bounded by one layer, not the model")

    s = sub.add_parser("fuse", help="the attacker's fuse: replace each pair by W = C·W̃",
                       description="Fuse every (W̃, C) pair into one linear layer W = C·W̃ and write an "
                                   "ordinary transformers checkpoint (GPT-2 layers back to Conv1D).")
    s.add_argument("model", help="a locked folder written by 'specdef-lite lock'")
    s.add_argument("out", help="output folder for the fused, ordinary transformers checkpoint")

    from .cli_attack import add_parser
    add_parser(sub, _number)
    return p


def _inspect(args) -> dict:
    from .. import llm
    from ..lock.targets import is_linear
    model, _ = llm.load(args.model, device=args.device, tokenizer=False)
    prefix, blocks = llm.blocks_of(model)
    info = {
        "model": args.model, "class": type(model).__name__,
        "model_type": getattr(model.config, "model_type", None),
        "parameters": sum(p.numel() for p in model.parameters()),
        "linear_layers": sum(is_linear(m) for m in model.modules()),
        "blocks": f"{prefix}[0..{len(blocks) - 1}]",
        "deformed": {n: {"alpha": float(m.alpha), "k": int(m.k), "shape": [m.out_features, m.in_features]}
                     for n, m in ((n, model.get_submodule(n)) for n in llm.deformed_layers(model))},
        "metadata": llm.read_metadata(args.model) if Path(args.model).is_dir() else None,
    }
    try:
        info["default_targets"] = llm.target_names(model)
    except ValueError:
        info["default_targets"] = []
    if args.detect:
        from ..lock.attacks import detect
        info["detected"] = detect(model)
    return info


def _print_inspect(info: dict) -> None:
    print(f"{info['model']}: {info['class']} ({info['model_type']}), {info['parameters']:,} parameters, "
          f"{info['linear_layers']} linear layers, blocks {info['blocks']}")
    if info["deformed"]:
        print(f"deformed layers ({len(info['deformed'])}):")
        for n, d in info["deformed"].items():
            print(f"  {n}  {d['shape'][0]}×{d['shape'][1]}  alpha={d['alpha']:g}  k={d['k']}")
    else:
        print("no deformed layers; a default lock would target:")
        for n in info["default_targets"]:
            print(f"  {n}")
    if "detected" in info:
        print(f"blind detection flags: {info['detected'] or 'nothing'}")


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # a usage error (one line, already printed) or --help: its status, as a return value
        return e.code if isinstance(e.code, int) else 2
    # one line per error: the hub's retry warnings and transformers' load reports are not for the shell
    os.environ.setdefault("HF_HUB_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    t0 = time.perf_counter()
    try:
        from .. import llm
        from . import stream as llm_stream
        llm.resolve_device(args.device)  # a device this machine lacks is refused before any loading
        if args.command == "inspect":
            info = _inspect(args)
            print(json.dumps(info, indent=2)) if args.json else _print_inspect(info)
        elif args.command == "lock" and (args.stream or (llm_stream.is_sharded(args.model) and args.check is None)):
            try:
                llm_stream.lock_command(args)
            except ValueError as e:
                raise ValueError(_shell_flags(str(e))) from None
        elif args.command == "lock":
            _lock(args)
        elif args.command == "fuse":
            model, tok = llm.load(args.model, device=args.device)
            if not llm.deformed_layers(model):
                raise ValueError(f"{args.model} has no deformed layers to fuse")
            llm.save(llm.fuse_to_base(model), args.out, tok,
                     base_model=(llm.read_metadata(args.model) or {}).get("base_model"))
            print(f"fused {len(llm.deformed_layers(model))} pairs; wrote {args.out}")
        elif args.command == "attack":
            from .cli_attack import run
            run(args)
    except (ValueError, TypeError, FileNotFoundError, ImportError, OSError) as e:
        text = " ".join(str(e).split()) or type(e).__name__  # one line, also for transformers' multi-line messages
        if _main_process():  # under accelerate launch every process gets the same inputs: one line, not n
            print(f"specdef-lite {args.command}: error: {text[:400]}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"specdef-lite {args.command}: interrupted; nothing was written (outputs are replaced whole or "
              f"not at all)", file=sys.stderr)
        return 130
    if _main_process():
        print(f"({time.perf_counter() - t0:.1f} s)", file=sys.stderr)
    return 0


def _main_process() -> bool:
    return os.environ.get("RANK", "0") in ("", "0")  # as llm.parallel.is_main_process, without importing torch


_FLAGS = {"compute_dtype=torch.": "--compute-dtype ", "max_error=None": "--max-error none", "max_error=": "--max-error ",
          "raise max_bytes": "raise --max-gb"}  # the library's keywords → the shell's flags


def _shell_flags(text: str) -> str:
    """The library names its keywords; the shell user needs the flags."""
    return re.sub(r"compute_dtype=torch\.|max_error=None|max_error=|raise max_bytes", lambda m: _FLAGS[m[0]], text)


def _lock(args) -> None:
    import torch

    from .. import llm
    model, tok = llm.load(args.model, device=args.device)
    if llm.deformed_layers(model):
        raise ValueError(f"{args.model} is already locked; fuse it first")
    cd = getattr(torch, args.compute_dtype) if args.compute_dtype else None
    try:
        locked = llm.lock(model, args.alpha, args.k, args.targets, blocks=args.blocks, kinds=args.kinds,
                          method=args.method, compute_dtype=cd, max_error=args.max_error,
                          max_bytes=None if args.max_gb is None else int(args.max_gb * 1e9))
    except ValueError as e:
        raise ValueError(_shell_flags(str(e))) from None
    names = llm.deformed_layers(locked)
    print(f"locked {len(names)} layers at alpha={args.alpha:g}, k={args.k}: {', '.join(names)}")
    check = 2 if args.check is None else args.check
    if check:
        vocab = model.get_input_embeddings().num_embeddings
        ids = torch.randint(vocab, (check, 32), generator=torch.Generator().manual_seed(0))
        ch = llm.logit_change(model, locked, ids)
        print(f"logit change: relative {ch.relative:.2e}, max |Δ| {ch.max_abs:.2e}")
        if not ch.finite or (args.max_error is not None and ch.relative > args.max_error):
            what = "are not finite" if not ch.finite else f"moved by {ch.relative:.2g}, above --max-error {args.max_error:g}"
            raise ValueError(f"the locked model's logits {what} at alpha={args.alpha:g}: nothing written; lower "
                             f"--alpha or pass --compute-dtype float32")
    llm.save(locked, args.out, tok, base_model=str(args.model), max_error=args.max_error)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    sys.exit(main())
