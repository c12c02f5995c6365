"""``specdef-lite attack``: the fine-tuning attack from the shell — full fine-tune, layer injection or LoRA, in one
process or across several under ``accelerate launch`` (``llm.parallel``; process 0 alone prints and writes).
"""
from __future__ import annotations

import json
from pathlib import Path

__all__ = ["add_parser", "run"]

_FLAGS = {"lora_on": "--lora-on", "lora_rank": "--lora-rank", "batch_size": "--batch-size"}


def add_parser(sub, number) -> None:
    """The ``attack`` sub-command's arguments; ``number(kind, ...)`` builds argparse types (``cli._number``)."""
    pos_float, pos_int = number("positive finite number"), number("positive whole number", integer=True)
    block, count = number("whole number", positive=False, integer=True), number("whole number >= 0", integer=True,
                                                                                  allow_zero=True)
    s = sub.add_parser("attack", help="fine-tuning attack (AdamW, warm-up, clipping) on a Shakespeare play",
                       description="Fine-tune the chosen blocks (or LoRA adapters in them) toward one play and report, "
                                   "per learning rate, the steps until the held-out loss stays below the target. Under "
                                   "accelerate launch the processes split every batch (data parallel, or FSDP).")
    s.add_argument("model", help="a Hugging Face name, a local folder (plain or locked), or 'default'")
    s.add_argument("--lr", type=pos_float, nargs="+", default=[1e-6, 1e-5, 3e-5],
                   help="learning rates (default: the paper's 1e-6 1e-5 3e-5)")
    s.add_argument("--steps", type=pos_int, default=60, help="optimizer steps per learning rate (default 60)")
    s.add_argument("--blocks", type=block, nargs="+", default=[-3, -2, -1],
                   help="blocks to train, negative from the end (default: -3 -2 -1, the last three)")
    s.add_argument("--inject", action="store_true",
                   help="layer injection: freeze the pairs, train an identity-initialised D after each")
    s.add_argument("--lora-rank", type=pos_int, default=None, metavar="R",
                   help="train rank-R LoRA adapters (peft) on the locked pairs of --blocks — or, in a model without "
                        "pairs there, on the W of the layers a default lock would target — instead of the blocks")
    s.add_argument("--lora-on", choices=["w_tilde", "c", "both"], default=None,
                   help="where each locked pair gets its adapter: W̃, C or both (needed for a locked model)")
    s.add_argument("--play", default="macbeth", help="fine-tuning play (default macbeth)")
    s.add_argument("--seq-len", type=pos_int, default=64, help="tokens per sequence (default 64)")
    s.add_argument("--batch-size", type=pos_int, default=4,
                   help="sequences per step, split across processes under accelerate launch (default 4)")
    s.add_argument("--heldout", type=pos_int, default=4, help="held-out blocks of the play (default 4)")
    s.add_argument("--target-drop", type=number("finite number", positive=False), default=0.01,
                   help="target = start held-out loss − this many nats (default 0.01)")
    s.add_argument("--eval-every", type=pos_int, default=3, help="held-out evaluation period in steps (default 3)")
    s.add_argument("--seed", type=count, default=0)
    s.add_argument("--json", metavar="FILE", help="also write all curves to this JSON file")


def run(args) -> None:
    from .. import llm
    from ..lock.attacks import inject
    from .parallel import is_main_process, local_device, world_size
    say = print if is_main_process() else (lambda *a, **k: None)
    if args.json and (Path(args.json).is_dir() or not Path(args.json).name):
        raise ValueError(f"--json {args.json}: a folder, not a file to write the curves to")
    if args.lora_rank is None and args.lora_on:
        raise ValueError(f"--lora-on {args.lora_on} places LoRA adapters: give their rank with --lora-rank")
    if args.lora_rank is not None and args.inject:
        raise ValueError("--lora-rank and --inject are two attacks: choose one")
    if world_size() > 1 and args.batch_size % world_size():
        raise ValueError(f"--batch-size {args.batch_size} does not split into {world_size()} processes: use a multiple "
                         f"of {world_size()}")
    model, tok = llm.load(args.model, device=local_device(llm.resolve_device(args.device)))
    if tok is None:
        raise ValueError(f"{args.model} has no tokenizer (no tokenizer.json / tokenizer_config.json in the folder); "
                         f"the attack needs one to read the play: save the model with its tokenizer "
                         f"(llm.save(model, folder, tokenizer)) or copy the tokenizer files into the folder")
    prefix, blocks = llm.blocks_of(model)
    for b in args.blocks:
        if not -len(blocks) <= b < len(blocks):
            raise ValueError(f"--blocks {b} is out of range: the model has {len(blocks)} blocks "
                             f"({prefix}[0..{len(blocks) - 1}], or -1 … -{len(blocks)} from the end)")
    vocab = model.get_input_embeddings().num_embeddings
    if len(tok) > vocab:
        raise ValueError(f"{args.model}: its tokenizer has {len(tok):,} tokens but the model's embedding only "
                         f"{vocab:,}: they do not belong together")
    lora = {}
    if args.lora_rank is not None:
        from .targets import lora_layers
        try:
            targets, _ = lora_layers(model, args.blocks, args.lora_on)
        except ValueError as e:  # the library names its keywords; the shell user needs the flags
            text = str(e)
            for k, v in _FLAGS.items():
                text = text.replace(k, v)
            raise ValueError(text.replace("leave --lora-on unset", "drop --lora-on")) from None
        lora = {"lora_rank": args.lora_rank, "lora_on": args.lora_on}
    if args.inject:
        model = inject(model)
    task = llm.shakespeare_task(tok, args.play, seq_len=args.seq_len, heldout=args.heldout, utility=1,
                                seed=args.seed)
    say(task)
    results, target = {}, None
    for lr in args.lr:
        r = llm.attack(model, task, lr=lr, steps=args.steps, batch_size=args.batch_size, blocks=args.blocks,
                       eval_every=args.eval_every, seed=args.seed, label="injected" if args.inject else "model",
                       progress=None if is_main_process() else False, **lora)
        target = r.start_loss - args.target_drop if target is None else target
        results[lr] = r
        s = r.steps_to(target)
        say(f"lr {lr:g}: start {r.start_loss:.4f}  final {r.final_loss:.4f}  "
            f"steps to {target:.4f}: {'—' if s is None else s}"
            + (f"  DIVERGED at step {r.diverged_at}" if r.diverged else "") + f"  ({r.seconds:.1f} s"
            + (f", {r.adapter}" if r.adapter else "") + (f", {r.processes} processes" if r.processes > 1 else "") + ")")
    if args.json and is_main_process():
        from dataclasses import asdict

        from ..common.checkpoint import atomic_file, strict_json
        data = strict_json({"target": target, "runs": [asdict(r) for r in results.values()]})  # NaN → null
        atomic_file(args.json, json.dumps(data, indent=1, allow_nan=False) + "\n")
