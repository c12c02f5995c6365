"""Locking a GPT-2-small-shaped model (124M parameters): SpecDef's cost over the SVD it cannot avoid, and
the locked model's forward time over the original's, side by side in one run.

The model: GPT-2 small's shapes with random weights — token and position embeddings (50257×768, 1024×768),
12 blocks of (c_attn 768→2304, attention c_proj 768→768, c_fc 768→3072, MLP c_proj 3072→768) with
LayerNorms, causal attention and GELU, a tied LM head: 124.4M parameters, 85M of them in the 48 block
projections that get locked (``targets`` = those 48, k = 1, α = 1e4, ``method="lowrank"``).

The floor: SpecDef needs each matrix's top singular vector, so the least any lock can cost is a partial
SVD of each of the 48 matrices: ``torch.svd_lowrank(W64, q=k+10, niter=4)`` on each matrix alone, timed on
matrices already in float64 (the call ``specdef`` used to make). ``specdef`` now runs block Krylov
(``specdef_lite.lock.lowrank``) until the top singular value stops rising, which random Gaussian weights (no
spectral gap) need more passes for than niter = 4 gives; its own partial-SVD time is measured alone too, so
the table splits the lock into "partial SVD" and "beyond the SVD" (copy, W̃ and C, casts). The promise
σ₁(W̃) = α σ₁(W) is checked for **every** locked matrix against σ₁(W) from ``torch.linalg.svdvals`` (float64)
and σ₁(W̃) by power iteration (W̃'s top gap is ~α). The full float64 SVD (``torch.linalg.svd``) is timed on one
block's four matrices and multiplied by 12 for reference. Best of REPEATS for the lock and the floor, alternated.

Forward: one batch of B×T tokens through the embeddings, 12 blocks and the LM head in float32 under
``torch.inference_mode``, original vs locked, alternated, median of REPEATS_FWD each. The locked model
holds each C as a dense out×out matrix (the released model of the paper), so a locked projection costs
in·out + out² multiply-adds per token instead of in·out; the FLOP ratio is printed beside the measurement.

Threads: 1 by default (see ``main``); ``BENCH_THREADS=2`` to use both cores of an idle machine.

Run:  .venv/bin/python benchmarks/bench_lock.py
"""
from __future__ import annotations

import math
import os
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

import specdef_lite as sl
from specdef_lite.lock.lowrank import top_k_krylov

from _common import load, log, machine, summary

COMMAND = ".venv/bin/python benchmarks/bench_lock.py"
ALPHA, K, REPEATS, REPEATS_FWD = 1e4, 1, 3, 7
NITERS = (4, 6, 8, 12, 16, 24, 32)  # svd_lowrank's niter, tried in order for the floor at equal promise
B, T = 1, 256
VOCAB, CTX, D, N_LAYER, N_HEAD = 50257, 1024, 768, 12, 12


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(D), nn.LayerNorm(D)
        self.c_attn = nn.Linear(D, 3 * D)   # 768 → 2304: q, k, v
        self.c_proj = nn.Linear(D, D)       # 768 → 768
        self.c_fc = nn.Linear(D, 4 * D)     # 768 → 3072
        self.mlp_proj = nn.Linear(4 * D, D)  # 3072 → 768 (GPT-2's mlp.c_proj)

    def forward(self, x):
        b, t, _ = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(D, dim=-1)  # (b, t, 3D) -> 3 × (b, t, D)
        q, k, v = (z.view(b, t, N_HEAD, D // N_HEAD).transpose(1, 2) for z in (q, k, v))  # (b, h, t, D/h)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.c_proj(y.transpose(1, 2).reshape(b, t, D))  # (b, h, t, D/h) -> (b, t, D)
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class GPT2Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(VOCAB, D), nn.Embedding(CTX, D)
        self.h = nn.ModuleList(Block() for _ in range(N_LAYER))
        self.ln_f = nn.LayerNorm(D)

    def forward(self, idx):
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1], device=idx.device))
        for block in self.h:
            x = block(x)
        return F.linear(self.ln_f(x), self.wte.weight)  # tied LM head: (b, t, D) -> (b, t, vocab)


PROJECTIONS = ("c_attn", "c_proj", "c_fc", "mlp_proj")


def is_projection(name: str, module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in PROJECTIONS


def best(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def main() -> None:
    torch.manual_seed(0)
    # One thread: on this shared 2-core machine two threads oversubscribe the cores whenever other jobs
    # run, and LAPACK then slows by up to 15× (one 3072×768 float64 SVD: 0.9 s on 1 thread, 14 s on 2,
    # load ≈ 4). Lock and floor use the same thread count, so their ratio does not depend on the choice.
    threads = int(os.environ.get("BENCH_THREADS", "1"))
    torch.set_num_threads(threads)
    load0, t_start = load(), time.perf_counter()
    model = GPT2Small().eval()
    n_params = sum(p.numel() for p in model.parameters())
    mats = [m.weight.detach() for n, m in model.named_modules() if is_projection(n, m)]
    n_proj = sum(W.numel() for W in mats)
    log(f"model: {n_params / 1e6:.1f}M parameters, {len(mats)} projections ({n_proj / 1e6:.1f}M)")

    mats64 = [W.to(torch.float64) for W in mats]
    floors, locks = [], []
    for _ in range(REPEATS):  # alternate, so both see the same machine load; best of each
        t, _ = best(lambda: [torch.svd_lowrank(W, q=K + 10, niter=4) for W in mats64], 1)
        floors.append(t)
        locked = None
        t, locked = best(lambda: sl.specdef(model, ALPHA, k=K, targets=is_projection, method="lowrank"), 1)
        locks.append(t)
        log(f"floor (svd_lowrank, float64, 48 matrices) {floors[-1]:.2f} s, lock (specdef lowrank) {locks[-1]:.2f} s")
    t_floor, t_lock = min(floors), min(locks)
    # The floor at equal promise: the least niter for which svd_lowrank's top vector keeps every matrix's
    # σ₁(W̃)/(ασ₁(W)) ≥ 0.999 (≈ ‖u₁ᵀW‖/σ₁(W) up to O(1/α)), timed the same way.
    sigma1 = [float(torch.linalg.svdvals(W)[0]) for W in mats64]
    niter_ok, t_floor_ok, floor_worst = None, math.nan, {}
    for niter in NITERS:
        torch.manual_seed(3)
        t, usv = best(lambda: [torch.svd_lowrank(W, q=K + 10, niter=niter) for W in mats64], 1)
        floor_worst[niter] = min(float((U[:, 0] @ W).norm()) / s for (U, _, _), W, s in zip(usv, mats64, sigma1))
        log(f"svd_lowrank niter={niter}: {t:.2f} s, worst ‖u₁ᵀW‖/σ₁ {floor_worst[niter]:.5f}")
        if floor_worst[niter] >= 0.999:
            niter_ok, t_floor_ok = niter, min(t, best(lambda: [torch.svd_lowrank(W, q=K + 10, niter=niter)
                                                                for W in mats64], REPEATS - 1)[0])
            break
    if niter_ok is None:  # none reached the promise: the floor at equal promise costs more than the last one tried
        t_floor_ok = t
    r_ok = t_lock / t_floor_ok
    ok_text = (f"{r_ok:.2f}× (niter = {niter_ok})" if niter_ok is not None else
               f"< {r_ok:.2f}× (no niter ≤ {NITERS[-1]} keeps it: worst {floor_worst[NITERS[-1]]:.4f})")
    t_krylov, _ = best(lambda: [top_k_krylov(W, K) for W in mats], REPEATS)
    t_cast, _ = best(lambda: [W.to(torch.float64) for W in mats], REPEATS)
    t0 = time.perf_counter()
    for W in mats64[:4]:
        torch.linalg.svd(W, full_matrices=False)
    t_full = (time.perf_counter() - t0) * N_LAYER
    log(f"full SVD (one block × 12): {t_full:.1f} s")

    assert len(sl.deformed_layers(locked)) == 48
    promise = {}  # σ₁(W̃)/(α σ₁(W)) for every locked matrix
    for name, module in model.named_modules():
        if is_projection(name, module):
            W64 = module.weight.detach().double()
            Wt = locked.get_submodule(name).W_tilde.detach().double()
            v = torch.randn(Wt.shape[1], generator=torch.Generator().manual_seed(2), dtype=torch.float64)
            for _ in range(8):  # power iteration: W̃'s top gap is ~α, so a few steps are exact
                v = Wt.T @ (Wt @ v)
                v = v / v.norm()
            promise[name] = float((Wt @ v).norm() / (ALPHA * torch.linalg.svdvals(W64)[0]))
    worst_name = min(promise, key=promise.get)
    worst, missed = promise[worst_name], [n for n, r in promise.items() if r < 0.999]
    blocks = [top_k_krylov(W, K)[2].blocks for W in mats[:4]]
    log(f"promise: worst {worst:.6f} ({worst_name}), missed {len(missed)}")

    idx = torch.randint(0, VOCAB, (B, T), generator=torch.Generator().manual_seed(1))
    fwd = {"original": [], "locked": []}
    with torch.inference_mode():
        ref, out = model(idx), locked(idx)
        rel = ((out - ref).norm() / ref.norm()).item()
        for _ in range(REPEATS_FWD):  # alternate, so both see the same machine load
            for name, m in (("original", model), ("locked", locked)):
                t0 = time.perf_counter()
                m(idx)
                fwd[name].append(time.perf_counter() - t0)
    f_orig, f_lock = statistics.median(fwd["original"]), statistics.median(fwd["locked"])
    macs_orig = sum(W.numel() for W in mats) + VOCAB * D  # per token: projections + LM head
    macs_lock = macs_orig + sum(W.shape[0] ** 2 for W in mats)
    attn = N_LAYER * 2 * T * D / 2  # per token, causal attention scores + values, on average
    flop_ratio = (macs_lock + attn) / (macs_orig + attn)
    log(f"forward: original {f_orig * 1e3:.0f} ms, locked {f_lock * 1e3:.0f} ms")

    r_lock, r_fwd = t_lock / t_floor, f_lock / f_orig
    beyond = t_lock - t_krylov
    return_text = f"""## Locking a GPT-2-small-shaped model

GPT-2 small's shapes with random float32 weights: {n_params / 1e6:.1f}M parameters (embeddings, 12 blocks,
tied LM head), of which {n_proj / 1e6:.1f}M sit in the {len(mats)} block projections (c_attn 768→2304, c_proj
768→768, c_fc 768→3072, MLP c_proj 3072→768) that `specdef(model, α={ALPHA:g}, k={K}, targets=<those 48>,
method="lowrank")` locks. Lock and floor: best of {REPEATS}; forward: median of {REPEATS_FWD}, original and
locked alternated, batch {B}×{T} tokens, float32, `torch.inference_mode()`.

Command: `{COMMAND}` ({time.perf_counter() - t_start:.0f} s this run).
Machine: {machine(threads)}; load average {load0} at the start, {load()} at the end.
{summary("lock time / float64 partial-SVD floor (GPT-2 small, 124M)", f"{r_lock:.2f}× ({beyond:.2f} s beyond its own partial SVD)", "≤ 1.5×", r_lock <= 1.5, COMMAND)}
{summary("context, not the issue's target: lock time / the least svd_lowrank that keeps σ₁(W̃) ≥ 0.999·α σ₁(W) on all 48 (floor timed once)", ok_text, "—", None, COMMAND)}
{summary("σ₁(W̃)/(α σ₁(W)), worst of the 48 locked matrices (lowrank)", f"{worst:.5f}", "≥ 0.999", worst >= 0.999, COMMAND)}
{summary("locked / original forward time (GPT-2 small, float32)", f"{r_fwd:.2f}×", "≤ 1.3×", r_fwd <= 1.3, COMMAND)}

| what | time | ratio |
|---|---|---|
| floor: `torch.svd_lowrank(W64, q={K + 10}, niter=4)` on each of the {len(mats)} matrices alone | {t_floor:.2f} s | 1 |
| floor at equal promise: `svd_lowrank(W64, q={K + 10}, niter=…)`, the least niter in {NITERS} with every matrix ≥ 0.999 ({f"niter = {niter_ok}" if niter_ok else f"none: the time at niter = {NITERS[-1]} is a lower bound"}; worst ‖u₁ᵀW‖/σ₁ per niter: {", ".join(f"{n}: {w:.4f}" for n, w in floor_worst.items())}) | {"" if niter_ok else "> "}{t_floor_ok:.2f} s | {t_floor_ok / t_floor:.2f}× |
| `specdef(..., method="lowrank")`: copy, partial SVD, W̃ and C of all {len(mats)} | {t_lock:.2f} s | **{r_lock:.2f}×** |
| ↳ its partial SVD alone: `lowrank.top_k_krylov` on the {len(mats)} float32 weights | {t_krylov:.2f} s | {t_krylov / t_floor:.2f}× |
| ↳ beyond the partial SVD: model copy, W̃ = W + (α−1)U_k(U_kᵀW) and C = I − (1−1/α)U_kU_kᵀ, stored | {beyond:.2f} s | {beyond / t_floor:.2f}× |
| for scale: casting the {len(mats)} weights to float64 | {t_cast:.2f} s | {t_cast / t_floor:.2f}× |
| reference: full float64 SVD `torch.linalg.svd` (one block × 12) | {t_full:.1f} s | {t_full / t_floor:.1f}× |
| forward, original | {f_orig * 1e3:.0f} ms | 1 |
| forward, locked (dense C after each of the {len(mats)} projections) | {f_lock * 1e3:.0f} ms | **{r_fwd:.2f}×** |
| ↳ multiply-adds per token, locked / original | | {flop_ratio:.2f}× |

Checks in the same run: relative change of the logits after locking {rel:.1e} (float32, α = {ALPHA:g}:
about α·ε₃₂, as TOOLCHAIN.md measured on SmolLM2). **The promise σ₁(W̃) = α σ₁(W)**, checked on every one of the
{len(promise)} locked matrices (σ₁(W) by `torch.linalg.svdvals` in float64): worst {worst:.6f} ({worst_name}), median
{statistics.median(promise.values()):.6f}; {"every matrix ≥ 0.999" if not missed else f"**missed (< 0.999) on {len(missed)}: {', '.join(missed)}**"}.
Random Gaussian weights have no gap at the top of their spectrum; `svd_lowrank` with niter = 4 left this ratio at
0.95–0.97 (TOOLCHAIN.md). Block Krylov took {", ".join(map(str, blocks))} blocks (two passes over W each) on
block 0's four matrices before the top singular value stopped rising; a weight with a gap stops after two or
three. C·W̃ = W stays exact either way.

Reading:
- **Lock: {ok_text} the partial SVD that keeps the promise.** Random Gaussian weights have no spectral gap, and
  subspace iteration keeps only its last block: {f"svd_lowrank needed niter = {niter_ok}, not 4," if niter_ok else f"svd_lowrank did not reach 0.999 on every matrix with niter up to {NITERS[-1]} ({t_floor_ok:.2f} s)"}
  where block Krylov, keeping every block, gets there in {t_krylov:.2f} s. Against niter = 4, which misses the promise:
- **Lock: {r_lock:.2f}× the floor** ({'within' if r_lock <= 1.5 else 'over'} the 1.5× target), of which {beyond:.2f} s beyond
  its own partial SVD (it was ~3 s on both CPUs of TOOLCHAIN.md): the target weights are no longer deep-copied
  before being replaced, W̃ and C are computed in float64 a block of 64 rows at a time and written once in
  float32 (no float64 copy of W, no float64 C, no identity matrix). What remains is writing the outputs —
  W̃ and C hold {sum(W.numel() + W.shape[0] ** 2 for W in mats) / 1e6:.0f}M float32 entries, every C up to 3072² —
  and copying the rest of the model. The partial SVD itself does more passes than the floor where the
  promise needs them.
- **Forward: {r_fwd:.2f}× the original** ({'within' if r_fwd <= 1.3 else 'over'} the 1.3× target). The cost is structural:
  the released model carries C as an ordinary dense out×out layer (it must, so that an attacker sees and
  trains it as in the paper), and C after c_attn (2304²) and c_fc (3072²) costs more than the projection
  it follows. Counting multiply-adds per token gives {flop_ratio:.2f}×; the measured ratio follows it. A
  factored C (h − (1 − 1/α)U_k(U_kᵀh), 2·out·k per token) would bring the forward back near 1×, but it
  would announce the deformation's structure and is no longer the dense layer the defence releases; so
  the 1.3× target cannot be met by the released model as designed, only by whoever fuses it."""
    print(return_text)

if __name__ == "__main__":
    main()
