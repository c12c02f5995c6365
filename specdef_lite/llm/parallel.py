"""The attack across n processes: g = (1/n) Σ_r ∇ℒ(x_r), x_r the r-th of n equal slices of one global batch.

Under ``accelerate launch`` (or ``torchrun``) with n > 1 processes, ``llm.attack`` (and so ``attack_grid`` and
``best_response``) runs the same loop in every process, through ``accelerate`` — no hand-written DDP:

* **Data.** Every process draws the same global batches from the same seed and keeps rows [r·B/n, (r+1)·B/n).
  ``lm_loss`` is a mean over equally many tokens per row, so the mean of the n slice gradients, which DDP
  all-reduces, is the gradient of the global batch: the step a single process takes on the whole batch.
* **Numbers.** The recorded training loss is the mean of the n slice losses gathered in rank order; every process
  evaluates the whole held-out set and process 0's numbers are broadcast. Every decision (divergence, steps to
  target, the best-response search) is then the same in every process, and none waits on another.
* **The frozen-prefix cache** (``llm_prefix.FrozenPrefix``) composes with data parallelism: each process caches
  the hidden states of its own slice, and only the tail (the trained blocks and the head) is wrapped in DDP, so
  the frozen lower blocks are neither broadcast nor reduced. Under FSDP the cache is off, for a stated reason:
  FSDP shards every block across the processes, and running the lower blocks outside it would need all of them
  whole on every device — what FSDP exists to avoid.
* **Output.** Only process 0 shows progress bars; the CLI prints and writes on process 0 only.

A single process (no launcher, ``WORLD_SIZE`` unset or 1) never reaches this module: ``attack`` keeps its own
path, bit for bit. Commands (README, "For researchers")::

    accelerate launch --multi_gpu --num_processes 8 -m specdef_lite.llm.cli attack locked/ --lr 1e-6 1e-5 3e-5
    accelerate launch --use_fsdp --num_processes 8 --fsdp_use_orig_params true \\
        --fsdp_auto_wrap_policy TRANSFORMER_BASED_WRAP --fsdp_transformer_layer_cls_to_wrap LlamaDecoderLayer \\
        -m specdef_lite.llm.cli attack locked/ --lr 1e-6 1e-5 3e-5

On a machine without GPUs, ``accelerate launch --multi_gpu --num_processes 2`` starts two CPU processes that talk
over gloo (tests/test_llm_parallel.py); ``--cpu`` alone makes accelerate start a single process.
"""
from __future__ import annotations

import functools
import os

import torch
from torch import nn

__all__ = ["world_size", "is_main_process", "local_device", "Parallel", "TailModule"]


def world_size() -> int:
    """n, the number of processes the launcher started (``WORLD_SIZE``; 1 without a launcher)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def is_main_process() -> bool:
    """True in process 0, and in a single process (read from the launcher's ``RANK``: nothing is initialised)."""
    return os.environ.get("RANK", "0") in ("", "0")


def fsdp_requested() -> bool:
    """Whether ``accelerate launch --use_fsdp`` started this process."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in ("1", "true", "yes")


def local_device(device: torch.device) -> torch.device:
    """The device this process should load a model onto: ``cuda:LOCAL_RANK`` for a CUDA request under a launcher
    (each process its own GPU), CPU under FSDP (accelerate moves each shard to its GPU), else ``device``."""
    if world_size() > 1 and fsdp_requested():
        return torch.device("cpu")
    if world_size() > 1 and device.type == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


@functools.lru_cache(maxsize=None)
def _accelerator(cpu: bool):
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs
    # buffers (α, k of each pair, rotary tables) are the same everywhere: no broadcast at every forward
    return Accelerator(cpu=cpu, kwargs_handlers=[DistributedDataParallelKwargs(broadcast_buffers=False)])


class TailModule(nn.Module):
    """forward(h, args, kwargs) = ``prefix.run(model, h, args, kwargs)``: blocks f … L−1 and the head of ``model``
    as one module, so that DDP wraps (and reduces) the tail alone. The modules stay where they are in ``model``."""

    def __init__(self, model: nn.Module, prefix):
        super().__init__()
        self.blocks = nn.ModuleList(list(model.get_submodule(prefix.block_prefix))[prefix.first:])
        self.head = nn.ModuleList([model.get_submodule(n) for n in prefix.head])

    def forward(self, h: torch.Tensor, args: tuple, kwargs: dict) -> torch.Tensor:
        for block in self.blocks:
            out = block(h, *args, **kwargs)
            h = out[0] if isinstance(out, tuple) else out
        for module in self.head:
            h = module(h)
        return h


class Parallel:
    """One attack's view of the n processes: its slice of each batch, the wrapped model, gathered numbers.

    Args:
        device: where the model's trained parameters live; on CPU the processes talk over gloo.
    """

    def __init__(self, device: torch.device):
        self.fsdp = fsdp_requested()
        acc = _accelerator(device.type == "cpu" and not self.fsdp)
        n = world_size()
        if acc.num_processes != n:
            raise ValueError(f"the launcher started {n} processes but accelerate sees {acc.num_processes} "
                               f"({acc.distributed_type}): start the attack with accelerate launch or torchrun")
        self.acc, self.n, self.rank = acc, n, acc.process_index
        self.device = acc.device
        self.is_main = acc.is_main_process

    def check_batch(self, batch_size: int) -> None:
        """Refuse a global batch B that does not split into n equal slices B/n (ValueError, one line)."""
        if batch_size % self.n:
            raise ValueError(f"batch_size={batch_size} does not split into {self.n} processes: use a multiple of {self.n} "
                             f"(each process takes batch_size / {self.n} rows of every global batch)")

    def slice(self, x: torch.Tensor) -> torch.Tensor:
        """Rows [r·B/n, (r+1)·B/n) of the global batch x (B, T), on this process's device."""
        b = len(x) // self.n
        return x[self.rank * b:(self.rank + 1) * b].to(self.device)

    def prepare(self, module: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[nn.Module, torch.optim.Optimizer]:
        """(wrapped module, wrapped optimizer): DDP, or FSDP under ``--use_fsdp`` (accelerate decides).

        DDP broadcasts rank 0's parameters and buffers into every process when it wraps: the frozen ones (no
        gradient) are left out, since the working copy shares their storage with the caller's model, which the
        attack must not write into (every rank loaded the same weights, so nothing is lost)."""
        frozen = [n for n, p in module.named_parameters() if not p.requires_grad]
        module._ddp_params_and_buffers_to_ignore = frozen + [n for n, _ in module.named_buffers()]
        return self.acc.prepare(module, optimizer)

    def backward(self, loss: torch.Tensor) -> None:
        self.acc.backward(loss)

    def clip(self, wrapped: nn.Module, clip: float) -> None:
        """Clip the global gradient norm: after DDP's all-reduce every process holds the same gradients; under FSDP
        accelerate asks the sharded module for the norm over every shard."""
        self.acc.clip_grad_norm_(wrapped.parameters(), clip)

    def mean(self, value: torch.Tensor) -> float:
        """(1/n) Σ_r value_r, gathered in rank order: the same float in every process."""
        v = value.detach().reshape(1).to(self.device, torch.float64)
        return float(self.acc.gather(v).mean())

    def broadcast(self, values: list[float]) -> list[float]:
        """Process 0's ``values`` in every process."""
        from accelerate.utils import broadcast
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        return [float(v) for v in broadcast(t, from_process=0)]

    def release(self) -> None:
        """Forget this attack's wrapped model and optimizer (accelerate keeps a reference to each it prepared)."""
        self.acc.free_memory()
