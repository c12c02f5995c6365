"""The attacks tests/test_llm_parallel.py compares: run by one process, or by every process of a launcher.

``python tests/_parallel_attack.py OUT.json`` under ``accelerate launch --multi_gpu --num_processes 2`` (two CPU
processes over gloo) writes, from process 0 only, every run's curves; ``runs()`` returns the same in one process.
"""
import json
import os
import sys
import warnings

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _tiny_llm import tiny  # noqa: E402

BATCH = 4  # the global batch: two processes take two rows each


def task():
    """Counting sequences x_{t+1} = x_t + s mod 97 (s ∈ {1, 2, 3}): something the last block can learn."""
    from specdef_lite import llm
    g = torch.Generator().manual_seed(5)
    start, step = torch.randint(97, (46, 1), generator=g), torch.randint(1, 4, (46, 1), generator=g)
    tokens = (start + step * torch.arange(12)) % 97  # (46, 12)
    return llm.TextTask("counting", ("counting",), 12, tokens[:40], tokens[40:44], tokens[44:])


def runs() -> dict:
    """{name: {"losses", "eval_losses", "eval_top5", "diverged_at", "processes", "cached"}} of each attack."""
    from specdef_lite import llm
    warnings.simplefilter("ignore")
    model, t = tiny(), task()
    locked = llm.lock(model, 1e3, 2, blocks=[-1])
    kw = dict(steps=6, batch_size=BATCH, eval_every=2, progress=False, blocks=[-1])
    out = {
        "full, cached": llm.attack(model, t, lr=3e-3, cache=True, **kw),
        "full, no cache": llm.attack(model, t, lr=3e-3, cache=False, **kw),
        # a held-out rise of 0.3 % counts as divergence here: every process must stop at the same step
        "locked, stops at divergence": llm.attack(locked, t, lr=1e-2, diverge_ratio=1.002, **kw),
        "LoRA on C, cached": llm.attack(locked, t, lr=1e-1, lora_rank=2, lora_on="c", **kw),
    }
    start = out["full, cached"].start_loss
    br = llm.best_response(model, t, lrs=[3e-3, 1e-2], steps=6, target=start - 0.01, max_extend=1, batch_size=BATCH,
                           blocks=[-1], eval_every=2)
    out.update({f"best response, lr={o.lr:g}": o.result for o in br.outcomes})
    return {name: {"losses": r.losses, "eval_losses": r.eval_losses, "eval_top5": r.eval_top5,
                   "diverged_at": r.diverged_at, "processes": r.processes, "cached": r.cached, "adapter": r.adapter}
            for name, r in out.items()} | {"best lr": br.best_lr, "best steps": br.best_steps}


if __name__ == "__main__":
    result = runs()
    from specdef_lite.llm.parallel import is_main_process
    if is_main_process():
        with open(sys.argv[1], "w") as f:
            json.dump(result, f)
    print(f"process {os.environ.get('RANK')} of {os.environ.get('WORLD_SIZE')}: done", flush=True)
