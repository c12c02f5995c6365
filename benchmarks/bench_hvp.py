"""Hessian-vector products: what each route costs, in gradients, and the time to a top eigenvalue beside a peer.

Three models, as in issue 11: a tanh CNN (float32, 71 786 parameters, 64 MNIST-sized random images, 10
classes, cross-entropy), a 2-layer GPT-2 (transformers, n_embd 64, 4 heads, vocab 256, 32 positions, eager
attention, float32, 118 528 parameters, 8 random sequences of 32 tokens, next-token cross-entropy) and the
locked teacher–student MLP of the course (float64, 946 parameters: every layer locked at α = 10, k = 1).
The loss is a fixed batch; every parameter is differentiated.

1. **Cost of one HVP in gradients.** One gradient = forward + backward by ``torch.autograd.grad`` on a
   fresh graph. Each route is timed alternately with the gradient (rounds of every method in turn,
   best of ROUNDS each), so all see the same load; the ratio is the route's time over the gradient's.
   "kept graph" is ``HessianOperator``'s default: its build (gradient with ``create_graph``) and then one
   backward pass per product. The peer's product is ``hessian_eigenthings.HessianOperator.matvec``
   (a fresh double backward per product, its default ``method="autograd"``).
2. **Time to |λ|_max at 1e-3.** Reference λ: our Lanczos run to residual ≤ 1e-6·|λ| (float32) or 1e-10
   (float64). For each library we find the *fewest* Lanczos steps m whose estimate is within 1e-3 relative
   (its solver with a fixed m; exponential search, then bisection), then time that run from scratch, best
   of REPEATS, alternated: ours = ``HessianOperator(loss_fn, params)`` (build + determinism check) +
   ``lanczos(op, max_iter=m, tol=0)``; peer = its ``HessianOperator(model, [batch], loss_fn)`` +
   ``hessian_eigenthings.lanczos(op, k=1, max_iter=m, reorthogonalize=True)``. Each library at its own
   best m, so the ratio compares the cost of getting there. The peer's own default (m = 2k = 2) reports
   an unconverged answer, so it is shown at m = 50 as well (TOOLCHAIN.md: pass m ≥ 50).

The peer, hessian-eigenthings 1.0.0a5, is **never** a dependency of specdef-lite. Install it in a
throw-away venv and either run this script with that venv's python (with specdef-lite installed there
too), or point ``BENCH_PEER_SITE`` at its site-packages so that only the missing package is taken from it:

    python3 -m venv /tmp/peer && echo torch==2.13.0 > /tmp/c.txt
    /tmp/peer/bin/pip install torch==2.13.0 && /tmp/peer/bin/pip install -c /tmp/c.txt hessian-eigenthings==1.0.0a5
    BENCH_PEER_SITE=/tmp/peer/lib/python3.11/site-packages .venv/bin/python benchmarks/bench_hvp.py

Without it the peer columns are skipped with a note. Threads: 1 (``BENCH_THREADS`` to change).
"""
from __future__ import annotations

import math
import os
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

import specdef_lite as sl
from specdef_lite.curvature.products import flatten_params, hvp, loss_fn_of
from specdef_lite.curvature.eigen import lanczos
from specdef_lite.curvature.gradgraph import GradientGraph
from specdef_lite.curvature.operators import HessianOperator

from _common import load, log, machine, summary

COMMAND = ".venv/bin/python benchmarks/bench_hvp.py"
ROUNDS, REPEATS, TARGET = 7, 3, 1e-3
ROUTES = ("double-backward", "forward-over-reverse", "finite-difference")

if os.environ.get("BENCH_PEER_SITE"):
    sys.path.append(os.environ["BENCH_PEER_SITE"])  # appended: torch and the rest stay the project's own
try:
    import hessian_eigenthings as he
except ImportError:  # the peer is optional, benchmark-only
    he = None


class Batch:
    """task.loss(f) for our loss_fn_of, and loss(model, batch) for the peer: the same fixed batch."""

    def __init__(self, loss_of_output, inputs, kw: bool = False):
        self.loss_of_output, self.inputs, self.kw = loss_of_output, inputs, kw

    def loss(self, f):
        out = f(input_ids=self.inputs) if self.kw else f(self.inputs)
        return self.loss_of_output(out)

    def peer_loss(self, model, batch):
        return self.loss(model)


def cnn():
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)  # nn layers initialise from the global RNG: this script owns its process
    net = nn.Sequential(nn.Conv2d(1, 8, 5), nn.Tanh(), nn.MaxPool2d(2),  # (64, 1, 28, 28) -> (64, 8, 12, 12)
                        nn.Conv2d(8, 16, 5), nn.Tanh(), nn.MaxPool2d(2),  # -> (64, 16, 4, 4)
                        nn.Flatten(), nn.Linear(256, 256), nn.Tanh(), nn.Linear(256, 10)).eval()
    X, y = torch.randn(64, 1, 28, 28, generator=g), torch.randint(0, 10, (64,), generator=g)
    return "tanh CNN (float32)", net, Batch(lambda out: F.cross_entropy(out, y), X)


def gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=256, n_positions=32, bos_token_id=0, eos_token_id=0,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, attn_implementation="eager")
    model = GPT2LMHeadModel(cfg).eval()
    ids = torch.randint(0, 256, (8, 32), generator=torch.Generator().manual_seed(0))

    def next_token(out):
        return F.cross_entropy(out.logits[:, :-1].reshape(-1, 256), ids[:, 1:].reshape(-1))  # (8·31, vocab)

    return "GPT-2, 2 layers, n_embd 64 (float32)", model, Batch(next_token, ids, kw=True)


def mlp():
    toy = sl.problems.teacher_student(seed=0)
    locked = sl.specdef(toy.released, 10.0, k=1)
    return "locked teacher–student MLP (float64)", locked, Batch(lambda out: (out - toy.task.targets).pow(2).mean(),
                                                                 toy.task.inputs)


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def route_costs(model, batch) -> dict[str, float]:
    """Best-of-ROUNDS seconds of a gradient and of one HVP per route, interleaved."""
    loss_fn, theta = loss_fn_of(model, batch)
    n = flatten_params(theta).numel()
    v = torch.randn(n, generator=torch.Generator().manual_seed(1), dtype=flatten_params(theta).dtype)
    leaves = [t.detach().requires_grad_(True) for t in theta.values()]
    graph = GradientGraph(loss_fn, theta)
    fns = {"gradient": lambda: torch.autograd.grad(loss_fn(dict(zip(theta, leaves))), leaves),
           "kept graph: build": lambda: GradientGraph(loss_fn, theta),
           "kept graph: product": lambda: graph.hvp(v)}
    fns.update({r: (lambda r=r: hvp(loss_fn, theta, v, method=r)) for r in ROUTES})
    if he is not None:
        peer = he.HessianOperator(model, [None], batch.peer_loss)
        assert peer.size == n, (peer.size, n)
        fns["peer: hessian-eigenthings autograd"] = lambda: peer.matvec(v)
    best = {name: math.inf for name in fns}
    for name, fn in fns.items():
        fn()  # warm-up (first-call overheads, allocator)
    for _ in range(ROUNDS):
        for name, fn in fns.items():
            best[name] = min(best[name], timed(fn))
    return best


def fewest_steps(solve, lam: float, m_max: int) -> int:
    ok = lambda m: abs(solve(m) - lam) <= TARGET * abs(lam)  # noqa: E731
    hi = 1
    while not ok(hi):
        if hi >= m_max:
            raise RuntimeError(f"target not reached in {m_max} steps")
        hi = min(2 * hi, m_max)
    lo = hi // 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if ok(mid) else (mid, hi)
    return hi


def time_to_eigenvalue(model, batch) -> dict:
    loss_fn, theta = loss_fn_of(model, batch)
    dtype = flatten_params(theta).dtype
    ref = lanczos(HessianOperator(loss_fn, theta), k=1, tol=1e-10 if dtype == torch.float64 else 1e-6,
                  max_iter=300, seed=12345)
    lam = float(ref.values[0])
    ours = lambda m: lanczos(HessianOperator(loss_fn, theta), k=1, max_iter=m, tol=0.0, seed=0)  # noqa: E731
    out = {"lambda": lam, "ref_converged": ref.converged}
    m_ours = fewest_steps(lambda m: float(ours(m).values[0]), lam, 300)
    runs = {"ours": lambda: ours(m_ours)}
    out["m"] = {"ours": m_ours}
    if he is not None:
        def peer(m):
            op = he.HessianOperator(model, [None], batch.peer_loss)
            return he.lanczos(op, k=1, max_iter=m, tol=0.0, reorthogonalize=True, seed=0)

        m_peer = fewest_steps(lambda m: float(peer(m).eigenvalues[0]), lam, 300)
        out["m"]["peer"], out["m"]["peer m=50"] = m_peer, 50
        runs["peer"] = lambda: peer(m_peer)
        runs["peer m=50"] = lambda: peer(50)
        out["err_peer50"] = abs(float(peer(50).eigenvalues[0]) - lam) / abs(lam)
    best = {name: math.inf for name in runs}
    for _ in range(REPEATS):
        for name, fn in runs.items():
            best[name] = min(best[name], timed(fn))
    out["seconds"] = best
    return out


def main() -> None:
    threads = int(os.environ.get("BENCH_THREADS", "1"))
    torch.set_num_threads(threads)
    load0, t_start = load(), time.perf_counter()
    results = []
    for make in (cnn, gpt2, mlp):
        name, model, batch = make()
        n = sum(p.numel() for p in model.parameters())
        log(f"{name}: {n} parameters, load {load()}")
        costs = route_costs(model, batch)
        log("  route costs (s):", {k: f"{v:.4f}" for k, v in costs.items()})
        eig = time_to_eigenvalue(model, batch)
        log("  eigenvalue:", eig)
        results.append((name, n, costs, eig))
    print(report(results, load0, t_start, threads))


def report(results, load0, t_start, threads) -> str:
    peer = he is not None
    rows_cost = ["gradient", *ROUTES, "kept graph: build", "kept graph: product"]
    if peer:
        rows_cost.append("peer: hessian-eigenthings autograd")
    head = " | ".join(f"{name} ({n:,})" for name, n, _, _ in results)
    lines = [f"| route | {head} |", "|---|" + "---|" * len(results)]
    for row in rows_cost:
        cells = [f"{c[row] / c['gradient']:.2f}" for _, _, c, _ in results]
        label = {"gradient": "one gradient, forward + backward (ms)"}.get(row, row)
        if row == "gradient":
            cells = [f"{c['gradient'] * 1e3:.2f} ms" for _, _, c, _ in results]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    cost_table = "\n".join(lines)

    gpt = results[1]
    default_cost = gpt[2]["kept graph: product"] / gpt[2]["gradient"]
    first_cost = (gpt[2]["kept graph: build"] + gpt[2]["kept graph: product"]) / gpt[2]["gradient"]
    lines = ["| model | λ (reference) | ours: steps, seconds | peer: steps, seconds | ours / peer | peer at m = 50 |",
             "|---|---|---|---|---|---|"]
    ratios = []
    for name, _, _, e in results:
        s, m = e["seconds"], e["m"]
        if peer:
            r = s["ours"] / s["peer"]
            ratios.append(r)
            lines.append(f"| {name} | {e['lambda']:.6g} | {m['ours']}, {s['ours']:.3f} s | {m['peer']}, "
                         f"{s['peer']:.3f} s | **{r:.2f}×** | {s['peer m=50']:.3f} s (error {e['err_peer50']:.0e}) |")
        else:
            lines.append(f"| {name} | {e['lambda']:.6g} | {m['ours']}, {s['ours']:.3f} s | (peer not installed) | | |")
    eig_table = "\n".join(lines)
    gpt_ratio = ratios[1] if peer else None
    note = "" if peer else ("\n**The peer column is empty: hessian-eigenthings is not installed here** (see the module "
                            "docstring of `benchmarks/bench_hvp.py` for the throw-away venv and `BENCH_PEER_SITE`).\n")
    return f"""## Hessian-vector products: cost per route, and time to the top eigenvalue beside hessian-eigenthings

Models (issue 11): a tanh CNN (float32), a 2-layer GPT-2 (n_embd 64, eager attention, float32) and the locked
teacher–student MLP (float64, every layer locked at α = 10); a fixed batch, every parameter. **Cost of one HVP in
gradients**: each route's best-of-{ROUNDS} time over the best-of-{ROUNDS} time of one gradient (forward + backward),
all interleaved in one process. "kept graph" is `HessianOperator`'s default route (the gradient built once with
its graph, then one backward pass per product). **Time to |λ|_max at {TARGET:g}**: each library at the fewest
Lanczos steps that reach {TARGET:g} relative error against a converged reference, timed from scratch (operator
construction included), best of {REPEATS}, alternated. Peer: hessian-eigenthings
{getattr(he, '__version__', '(not installed)')}, benchmark-only, never a dependency.
{note}
Command: `{COMMAND}` ({time.perf_counter() - t_start:.0f} s this run).
Machine: {machine(threads)}; load average {load0} at the start, {load()} at the end.
{summary("one HVP on the tiny GPT-2, default route (kept graph), in gradients", f"{default_cost:.2f} (first product incl. build {first_cost:.2f})", "≤ 3", default_cost <= 3, COMMAND)}
{summary("time to |λ|_max at 1e-3 on the tiny GPT-2, ours / hessian-eigenthings", f"{gpt_ratio:.2f}×" if peer else "peer not installed", "≤ 1.0×", None if not peer else gpt_ratio <= 1.0, COMMAND)}

One HVP, in units of one gradient of the same loss (the first row is the gradient itself, in ms):

{cost_table}

Time to the top eigenvalue at relative error {TARGET:g}:

{eig_table}

Reading:
- The default route (`HessianOperator`, kept graph) costs **{default_cost:.2f} gradients a product** on the GPT-2
  ({first_cost:.2f} for the first, which also builds the graph), against
  {gpt[2]['double-backward'] / gpt[2]['gradient']:.2f} for a fresh double backward and
  {gpt[2]['forward-over-reverse'] / gpt[2]['gradient']:.2f} for forward-over-reverse (the old default).
  Forward-over-reverse pays torch.func's per-op overhead, worst on the small float64 MLP.
- The ratio ours / peer at equal accuracy is {", ".join(f"{r:.2f}×" for r in ratios) if peer else "not measured"}
  (CNN, GPT-2, MLP): both Lanczos solvers need about the same number of steps; the difference is the cost of
  each product{" and our operator's one-off build" if peer else ""}.
- Single-process, one thread, shared 2-core machine: ratios are within one run; absolute times move with the load."""


if __name__ == "__main__":
    main()
