"""Guards a lock passes before it allocates anything: ‖f̃ − f‖/‖f‖ ≈ c·α·ε, bytes(C) = m²·s, faithful targets.

Why: a lock in a low-precision format can destroy the function it promises to keep (bfloat16 at α = 1e4 changed
SmolLM2's logits by more than their own size), and a compensation C of a vocabulary-sized layer is tens of GB.
Each guard refuses with one sentence that says what it found and the way out, before any work is done (which
layers can be replaced faithfully at all is decided in ``targets``).

The forward-error law (PAPER.md, "Numerics"; ``precision.forward_error`` measures it on the toy): a locked layer
computes W̃x, α times larger than Wx along U_k, and rounds it in its storage format before C cancels it, so the
relative change of the model's outputs grows like c·α·ε (and like c·ε/α for α < 1, where C is the large factor).
The constants ``FORWARD_ERROR_C`` were measured here on SmolLM2-135M-Instruct (k = 25; the last block's, or the
last three blocks', value/output/MLP-output projections; 8×64 tokens of Shakespeare; the locked model against the
unlocked one in the same format): ratio/(α·ε) was 1.58–1.79 in float32 (α = 1e3…1e6), 0.16–0.24 in bfloat16 and
0.22–0.24 in float16 (α = 10…100; at α = 3 the bfloat16 ratio was 0.39–0.58, where the format's own rounding
floor dominates). On random 6→8→3 tanh MLPs (5 seeds, α = 3…1000) it was 0.26–0.68 in float32 and 0.15–0.54 in
both half formats. float64 is assumed to follow float32's constant (too small to measure). The estimate uses the
largest ratio seen: 1.8 for float32/float64, 0.6 for bfloat16/float16. float16 has a second limit the law does not see: its range.
At α ≥ 100 SmolLM2's locked activations W̃x overflowed 65504 and the logits became NaN, so every float16 lock warns.
"""
from __future__ import annotations

import math
import numbers
import os
import warnings

import torch
from torch import nn

__all__ = ["PrecisionWarning", "FORWARD_ERROR_C", "MAX_ERROR", "MAX_BYTES", "forward_error_estimate",
           "resolve_dtype", "check_alpha_k", "check_model", "check_precision", "check_bytes", "check_overflow",
           "real_number"]

#: c in ‖f̃ − f‖/‖f‖ ≈ c·α·ε(dtype): the largest ratio measured here (see the module docstring).
FORWARD_ERROR_C = {torch.float64: 1.8, torch.float32: 1.8, torch.bfloat16: 0.6, torch.float16: 0.6}
MAX_ERROR = 0.5  #: refuse a lock whose estimated relative forward error exceeds this (warn above a tenth of it)
MAX_BYTES = 4 * 2 ** 30  #: refuse a lock whose largest C (in float64, while locking) or whose Cs together exceed this

_DTYPE_NAMES = {"float64": torch.float64, "double": torch.float64, "fp64": torch.float64,
                "float32": torch.float32, "float": torch.float32, "fp32": torch.float32,
                "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
                "float16": torch.float16, "half": torch.float16, "fp16": torch.float16}


class PrecisionWarning(UserWarning):
    """A lock (or a cast of a locked model) whose estimated forward error is large but below the refusal limit."""


def real_number(name: str, value, *, positive: bool = True, integer: bool = False, allow_zero: bool = False):
    """``value`` as a finite float (or int), or a ValueError that names the argument and what it must be."""
    kind = "integer" if integer else "number"
    sign = "positive " if positive and not allow_zero else ("non-negative " if positive else "")
    what = f"{name} must be a {sign}finite {kind}"
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    elif hasattr(value, "item") and getattr(value, "size", None) == 1:  # numpy scalars and 1-element arrays
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{what}, got {value!r}")
    if integer and not isinstance(value, numbers.Integral):
        raise ValueError(f"{what}, got {value!r}")
    v = int(value) if integer else float(value)
    if not integer and not math.isfinite(v):
        raise ValueError(f"{what}, got {v}")
    if positive and (v < 0 or (v == 0 and not allow_zero)):
        raise ValueError(f"{what}, got {v}")
    return v


def check_alpha_k(alpha, k) -> tuple[float, int]:
    """(α, k) as (float, int): α > 0 finite (it multiplies singular values), k ≥ 1 an integer."""
    try:
        a = real_number("alpha", alpha, positive=False)
    except ValueError:
        raise ValueError(f"alpha must be a positive finite number, got {alpha!r}") from None
    if a <= 0:
        raise ValueError(f"alpha must be > 0 (it multiplies singular values), got {a}")
    kv = k.item() if isinstance(k, torch.Tensor) and k.numel() == 1 else k
    if isinstance(kv, bool) or not isinstance(kv, numbers.Integral):
        raise ValueError(f"k must be a positive integer, got {k!r}")
    k = int(kv)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return a, k


def check_model(model) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")


def resolve_dtype(dtype, what: str = "dtype") -> torch.dtype | None:
    """None, a floating torch dtype, or its name ("float32", "bf16", "torch.float16" …) → the torch dtype."""
    if dtype is None or isinstance(dtype, torch.dtype) and dtype in FORWARD_ERROR_C:
        return dtype
    if isinstance(dtype, str) and dtype.lower().removeprefix("torch.") in _DTYPE_NAMES:
        return _DTYPE_NAMES[dtype.lower().removeprefix("torch.")]
    raise ValueError(f"{what} must be one of float64, float32, bfloat16, float16 (or None), got {dtype!r}")


def forward_error_estimate(alpha: float, dtype: torch.dtype | str) -> float:
    """c·max(α, 1/α)·ε(dtype): the relative change of a model's outputs expected from locking it at α with its
    deformed pairs stored and computed in ``dtype`` (``FORWARD_ERROR_C``; float32: 1.8·α·ε, measured on SmolLM2).

    Example:
        >>> f"{forward_error_estimate(1e4, torch.float32):.1e}", f"{forward_error_estimate(1e4, 'bfloat16'):.0f}"
        ('2.1e-03', '47')
    """
    dt = resolve_dtype(dtype)
    return FORWARD_ERROR_C[dt] * max(alpha, 1.0 / alpha) * torch.finfo(dt).eps


def check_precision(alpha: float, dtypes, max_error: float | None) -> None:
    """Refuse (ValueError) if ``forward_error_estimate`` exceeds ``max_error`` in any of ``dtypes``; warn
    (``PrecisionWarning``) above a tenth of it, and for float16, whose range (65504) W̃x = α·(…) can overflow."""
    if max_error is None:
        return
    max_error = real_number("max_error", max_error)
    for dt in sorted(set(dtypes), key=lambda d: -torch.finfo(d).eps):
        est = forward_error_estimate(alpha, dt)
        c, eps = FORWARD_ERROR_C[dt], torch.finfo(dt).eps
        name = str(dt).removeprefix("torch.")
        better = "float64" if dt in (torch.float32, torch.float64) else "float32"

        def fix(limit: float) -> str:
            safe = limit / (c * eps)
            return (f"pass compute_dtype=torch.{better} to store and run the deformed layers in higher precision, "
                    "or " + (f"lock with alpha <= {safe:.2g}" if alpha >= 1 else f"lock with alpha >= {1 / safe:.2g}"))
        if est > max_error:
            raise ValueError(f"a lock at alpha={alpha:g} in {name} would change the model's outputs by about "
                             f"{est:.2g} (relative; ≈{c}·α·ε, ε={eps:.2g}), above max_error={max_error:g}: {fix(max_error)}. "
                             f"max_error=None skips this check.")
        if est > max_error / 10:
            warnings.warn(f"a lock at alpha={alpha:g} in {name} changes the model's outputs by about {est:.2g} "
                          f"(relative; ≈{c}·α·ε); to keep them closer, {fix(max_error / 10)}", PrecisionWarning,
                          stacklevel=3)
        if dt == torch.float16 and alpha > 1:
            warnings.warn(f"float16 overflows beyond 65504, and a locked layer computes W̃x, up to alpha={alpha:g} "
                          "times larger than Wx, before C cancels it: check the locked model's outputs are finite "
                          "(llm.logit_change), or pass compute_dtype=torch.float32", PrecisionWarning, stacklevel=3)


def _gb(n: float) -> str:
    return f"{n / 1e9:.3g} GB"


def _available_bytes(device: torch.device) -> int | None:
    try:
        if device.type == "cuda":
            return int(torch.cuda.mem_get_info(device)[0])
        if device.type == "cpu" and hasattr(os, "sysconf"):
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
    except (OSError, RuntimeError, ValueError, IndexError):
        pass
    return None


def check_bytes(layers, max_bytes: int | None, *, stored: bool = True) -> None:
    """Refuse before allocating when a compensation C = m×m is too big.

    Args:
        layers: (name, m, n, store dtype, device) per target; C is built as an m×m float64 matrix while locking
            and stored as m×m in its store dtype (``stored=False`` for ``scale_only``, which discards it).
        max_bytes: the cap (None: only the available memory, where known, limits).
    """
    if not layers:
        return
    cap = None if max_bytes is None else real_number("max_bytes", max_bytes)
    name, m, n, dt, dev = max(layers, key=lambda t: t[1])
    work = 8 * m * m  # C in float64 while locking
    total = sum(mm * mm * torch.finfo(d).bits // 8 for _, mm, _, d, _ in layers) if stored else 0
    way_out = (f"leave {name!r} out of targets (C is out×out: a layer with {m:,} outputs, such as a vocabulary "
               f"head, needs a {m:,}×{m:,} C)")
    if cap is not None and work > cap:
        raise ValueError(f"locking {name!r} builds its compensation C of {m:,}×{m:,} = {_gb(work)} in float64, above "
                         f"the {_gb(cap)} cap: {way_out}, or raise max_bytes if the memory is there.")
    if cap is not None and total > cap:
        raise ValueError(f"the {len(layers)} compensations C together take {_gb(total)}, above the {_gb(cap)} cap: "
                         f"lock fewer layers, or raise max_bytes if the memory is there.")
    free = _available_bytes(torch.device(dev))
    if free is not None and work + total > free:
        raise ValueError(f"locking needs about {_gb(work + total)} for the compensations C (the largest, {name!r}, "
                         f"is {m:,}×{m:,}) but only {_gb(free)} is available on {dev}: {way_out}, or lock fewer layers.")


def check_overflow(name: str, W_tilde: torch.Tensor, C: torch.Tensor, dtype: torch.dtype, alpha: float, *,
                   peaks: tuple[float | None, float | None] | None = None) -> None:
    """Refuse when W̃ or C would round to ±inf in the dtype it is stored in.

    ``peaks`` (optional, from ``lowrank.deformed_pair(..., peaks=True)``): for W̃ and C, a number that bounds max
    |entry| as stored whenever it is below the largest number of ``dtype``; such a tensor is not read again, any
    other (None, NaN, too large) is measured here, so whether and how this refuses does not depend on them.
    """
    big = torch.finfo(dtype).max
    for what, T, peak in (("W̃", W_tilde, None if peaks is None else peaks[0]),
                          ("C", C, None if peaks is None else peaks[1])):
        if peak is not None and peak < big:
            continue
        # one pass, no |T| temporary (|T| of every C cost as much as building it); NaN propagates to ``top``
        top = max(-float((mm := torch.aminmax(T)).min), float(mm.max)) if T.numel() else 0.0
        if not top < big:
            raise ValueError(f"layer {name!r}: {what} reaches {top:.3g} at alpha={alpha:g}, beyond the largest "
                             f"{str(dtype).removeprefix('torch.')} number ({big:.3g}): pass compute_dtype=torch.float32 "
                             f"(or float64), or use a smaller alpha.")
