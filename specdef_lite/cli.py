"""``specdef-lite``: lock, fuse, attack and inspect causal-LM checkpoints from the shell.

Every command takes a model as a Hugging Face name, a local folder, or ``default`` (the offline
SmolLM2-135M-Instruct, converted once into the user cache). Locked checkpoints are folders written by
``specdef_lite.llm.save``: config.json + model.safetensors (W̃ and C of each pair) + specdef.json.
"""
from __future__ import annotations

import argparse
import json
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
  specdef-lite fuse locked/ fused/                        # W = C·W̃, an ordinary transformers model again

A locked model computes the same function as the original (up to float32 rounding, which grows like
α·ε); fine-tuning the locked layers with AdamW at the paper's learning rates blows up, while fusing
or injecting restores normal training (see notebooks/06_real_llm.ipynb).
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="specdef-lite", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Spectral deformation (SpecDef) of causal language models, and the attacks that undo it. "
                    "MODEL is a Hugging Face name, a local folder, or 'default' (offline SmolLM2-135M-Instruct).")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (default: cpu)")
    sub = p.add_subparsers(dest="command", required=True, metavar="{lock,fuse,attack,inspect}")

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
    s.add_argument("--alpha", type=float, default=1e4, help="deformation strength α (default 1e4, as the paper)")
    s.add_argument("-k", type=int, default=25, help="number of singular values scaled (default 25)")
    s.add_argument("--targets", help="regex of layer names; {a,b} expands to (a|b), "
                                     "e.g. 'layers.{27,28,29}.(mlp.down_proj|self_attn.o_proj)'")
    s.add_argument("--blocks", type=int, nargs="+", default=[-3, -2, -1],
                   help="block indices when --targets is not given, negative from the end (default: -3 -2 -1)")
    s.add_argument("--kinds", nargs="+", default=None,
                   help="layer-name suffixes, e.g. o_proj v_proj down_proj, or attn.c_proj mlp.c_proj for GPT-2 "
                        "(default: attention output, value and MLP output projections)")
    s.add_argument("--method", choices=["full", "lowrank"], default="full",
                   help="full float64 SVD, or a partial SVD for big layers (the lock stays exact)")
    s.add_argument("--check", type=int, default=0, metavar="N",
                   help="compare logits of original and locked model on N random token sequences")
    s.add_argument("--stream", action="store_true", help="lock tensor by tensor, writing shards as it goes (the "
                   "default for a sharded safetensors folder): memory bounded by one layer, not the model")

    s = sub.add_parser("fuse", help="the attacker's fuse: replace each pair by W = C·W̃",
                       description="Fuse every (W̃, C) pair into one linear layer W = C·W̃ and write an "
                                   "ordinary transformers checkpoint (GPT-2 layers back to Conv1D).")
    s.add_argument("model", help="a locked folder written by 'specdef-lite lock'")
    s.add_argument("out", help="output folder for the fused, ordinary transformers checkpoint")

    s = sub.add_parser("attack", help="fine-tuning attack (AdamW, warm-up, clipping) on a Shakespeare play",
                       description="Fine-tune the chosen blocks toward one play and report, per learning "
                                   "rate, the steps until the held-out loss stays below the target.")
    s.add_argument("model", help="a Hugging Face name, a local folder (plain or locked), or 'default'")
    s.add_argument("--lr", type=float, nargs="+", default=[1e-6, 1e-5, 3e-5],
                   help="learning rates (default: the paper's 1e-6 1e-5 3e-5)")
    s.add_argument("--steps", type=int, default=60, help="optimizer steps per learning rate (default 60)")
    s.add_argument("--blocks", type=int, nargs="+", default=[-3, -2, -1],
                   help="blocks to train, negative from the end (default: -3 -2 -1, the last three)")
    s.add_argument("--inject", action="store_true",
                   help="layer injection: freeze the pairs, train an identity-initialised D after each")
    s.add_argument("--play", default="macbeth", help="fine-tuning play (default macbeth)")
    s.add_argument("--seq-len", type=int, default=64, help="tokens per sequence (default 64)")
    s.add_argument("--batch-size", type=int, default=4, help="sequences per step (default 4)")
    s.add_argument("--heldout", type=int, default=4, help="held-out blocks of the play (default 4)")
    s.add_argument("--target-drop", type=float, default=0.01,
                   help="target = start held-out loss − this many nats (default 0.01)")
    s.add_argument("--eval-every", type=int, default=3, help="held-out evaluation period in steps (default 3)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--json", metavar="FILE", help="also write all curves to this JSON file")
    return p


def _inspect(args) -> dict:
    from . import llm
    from .deform import _is_linear
    model, _ = llm.load(args.model, device=args.device, tokenizer=False)
    prefix, blocks = llm.blocks_of(model)
    info = {
        "model": args.model, "class": type(model).__name__,
        "model_type": getattr(model.config, "model_type", None),
        "parameters": sum(p.numel() for p in model.parameters()),
        "linear_layers": sum(_is_linear(m) for m in model.modules()),
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
        from .attacks import detect
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
    args = build_parser().parse_args(argv)
    from . import llm, llm_stream
    t0 = time.perf_counter()
    try:
        if args.command == "inspect":
            info = _inspect(args)
            print(json.dumps(info, indent=2)) if args.json else _print_inspect(info)
        elif args.command == "lock" and (args.stream or llm_stream.is_sharded(args.model) and not args.check):
            llm_stream.lock_command(args)
        elif args.command == "lock":
            model, tok = llm.load(args.model, device=args.device)
            if llm.deformed_layers(model):
                raise ValueError(f"{args.model} is already locked; fuse it first")
            locked = llm.lock(model, args.alpha, args.k, args.targets, blocks=args.blocks, kinds=args.kinds,
                              method=args.method)
            names = llm.deformed_layers(locked)
            print(f"locked {len(names)} layers at alpha={args.alpha:g}, k={args.k}: {', '.join(names)}")
            if args.check:
                import torch
                vocab = model.get_input_embeddings().num_embeddings
                ids = torch.randint(vocab, (args.check, 32), generator=torch.Generator().manual_seed(0))
                ch = llm.logit_change(model, locked, ids)
                print(f"logit change: relative {ch.relative:.2e}, max |Δ| {ch.max_abs:.2e}")
            llm.save(locked, args.out, tok, base_model=str(args.model))
            print(f"wrote {args.out}")
        elif args.command == "fuse":
            model, tok = llm.load(args.model, device=args.device)
            if not llm.deformed_layers(model):
                raise ValueError(f"{args.model} has no deformed layers to fuse")
            llm.save(llm.fuse_to_base(model), args.out, tok,
                     base_model=(llm.read_metadata(args.model) or {}).get("base_model"))
            print(f"fused {len(llm.deformed_layers(model))} pairs; wrote {args.out}")
        elif args.command == "attack":
            _attack(args)
    except (ValueError, FileNotFoundError, ModuleNotFoundError, OSError) as e:
        print(f"specdef-lite {args.command}: error: {e}", file=sys.stderr)
        return 2
    print(f"({time.perf_counter() - t0:.1f} s)", file=sys.stderr)
    return 0


def _attack(args) -> None:
    from . import llm
    from .attacks import inject
    model, tok = llm.load(args.model, device=args.device)
    if tok is None:
        raise ValueError(f"{args.model} has no tokenizer; the attack needs one to read the play")
    if args.inject:
        model = inject(model)
    task = llm.shakespeare_task(tok, args.play, seq_len=args.seq_len, heldout=args.heldout, utility=1,
                                seed=args.seed)
    print(task)
    results, target = {}, None
    for lr in args.lr:
        r = llm.attack(model, task, lr=lr, steps=args.steps, batch_size=args.batch_size, blocks=args.blocks,
                       eval_every=args.eval_every, seed=args.seed, label="injected" if args.inject else "model")
        target = r.start_loss - args.target_drop if target is None else target
        results[lr] = r
        s = r.steps_to(target)
        print(f"lr {lr:g}: start {r.start_loss:.4f}  final {r.final_loss:.4f}  "
              f"steps to {target:.4f}: {'—' if s is None else s}"
              + (f"  DIVERGED at step {r.diverged_at}" if r.diverged else "") + f"  ({r.seconds:.1f} s)")
    if args.json:
        from dataclasses import asdict
        with open(args.json, "w") as f:
            json.dump({"target": target, "runs": [asdict(r) for r in results.values()]}, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
