"""Lanczos vs power iteration for the top eigenvalue |λ|_max, at equal accuracy, side by side in one run.

For each problem we take the reference λ from ``numpy.linalg.eigvalsh`` of the dense matrix, then find
for each solver the smallest number of steps m whose estimate has relative error ≤ TARGET (run with
tol=0 so the solver does exactly m steps; exponential search then bisection over m). We then time that
run (best of REPEATS) and report products with H (matvecs, Lanczos includes its one residual product),
wall time, and the power/Lanczos ratios.

Problems: a dense Wishart matrix XᵀX/m with a small top gap, and the Hessian of a SpecDef-locked MLP
reached only through Hessian-vector products (the default route: double backward on the kept gradient
graph), at α = 1 (the undeformed function
with an identity C) and α = 10. SpecDef makes |λ|_max ∝ α² stand far above the rest of the spectrum, so
at α = 10 the gap is wide and plain power iteration is already as good as Lanczos: Lanczos pays off
where the gap is small.

It prints its own section of benchmarks/RESULTS.md (``make bench`` collects it; progress goes to stderr).

Run:  cd /work/main && .venv/bin/python benchmarks/bench_lanczos.py
"""
from __future__ import annotations

import time

import numpy as np
import torch

from specdef_lite.lock.deform import specdef
from specdef_lite.curvature.eigen import lanczos, power_iteration
from specdef_lite.curvature.products import hessian, loss_fn_of
from specdef_lite.curvature.operators import HessianOperator, as_operator
from specdef_lite.optim.problems import ToyTask, mlp

from _common import load, log, machine, summary

TARGET, REPEATS, F64 = 1e-8, 7, torch.float64


def wishart_problem(g: torch.Generator, n: int = 500, m: int = 2000):
    X = torch.randn(m, n, generator=g, dtype=F64)
    return f"Wishart XᵀX/m, n={n}, m={m} (dense)", as_operator(X.T @ X / m), X.T @ X / m


def locked_mlp_problem(g: torch.Generator, alpha: float = 10.0):
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=g))
    net = specdef(mlp([8, 32, 32, 1], seed=seed), alpha, k=1, targets="2")  # linear layers at "0", "2", "4"
    task = ToyTask(torch.randn(64, 8, generator=g, dtype=F64), torch.randn(64, 1, generator=g, dtype=F64))
    loss_fn, theta = loss_fn_of(net, task)
    op = HessianOperator(loss_fn, theta)
    return f"locked MLP 8→32→(W̃,C)→32→1, α={alpha:g}, n={op.size} (HVPs)", op, hessian(loss_fn, theta)


def steps_to_target(solve, lam_ref: float, m_max: int) -> int:
    """Smallest m with |λ̂_m − λ| ≤ TARGET·|λ| (assumes the error falls with m, as it does here)."""
    ok = lambda m: abs(solve(m).values[0].item() - lam_ref) <= TARGET * abs(lam_ref)  # noqa: E731
    hi = 1
    while not ok(hi):
        if hi >= m_max:
            raise RuntimeError(f"target not reached in {m_max} steps")
        hi = min(2 * hi, m_max)
    lo = hi // 2  # ok(lo) is False (or lo = 0)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if ok(mid) else (mid, hi)
    return hi


def measure(name, op, H_dense) -> tuple[list[str], dict]:
    lam = np.linalg.eigvalsh(H_dense.numpy())
    lam_abs = np.sort(np.abs(lam))[::-1]
    lam_ref = float(lam[np.argmax(np.abs(lam))])
    gap = (lam_abs[0] - lam_abs[1]) / lam_abs[0]
    solvers = {
        "lanczos": lambda m: lanczos(op, k=1, max_iter=m, tol=0.0, seed=0),
        "power": lambda m: power_iteration(op, k=1, max_iter=m, tol=0.0, seed=0),
    }
    rows, stats = [], {}
    for sname, solve in solvers.items():
        m = steps_to_target(solve, lam_ref, m_max=op.size if sname == "lanczos" else 200_000)
        times = []
        for _ in range(REPEATS):
            t0 = time.perf_counter()
            r = solve(m)
            times.append(time.perf_counter() - t0)
        err = abs(r.values[0].item() - lam_ref) / abs(lam_ref)
        stats[sname] = (r.matvecs, min(times))
        rows.append(f"| {name} | {sname} | {r.matvecs} | {min(times) * 1e3:.1f} | {err:.1e} |")
    ratio_mv = stats["power"][0] / stats["lanczos"][0]
    ratio_t = stats["power"][1] / stats["lanczos"][1]
    rows.append(f"| ↳ λ = {lam_ref:.6g}, gap (\\|λ₁\\|−\\|λ₂\\|)/\\|λ₁\\| = {gap:.3g} | **power / lanczos** | "
                f"**{ratio_mv:.1f}×** | **{ratio_t:.1f}×** | |")
    log(*rows, sep="\n")
    return rows, dict(gap=gap, ratio_mv=ratio_mv, ratio_t=ratio_t, mv={k: v[0] for k, v in stats.items()})


COMMAND = ".venv/bin/python benchmarks/bench_lanczos.py"


def main() -> None:
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    load0, t0 = load(), time.perf_counter()
    problems = (wishart_problem(g), locked_mlp_problem(g, alpha=1.0), locked_mlp_problem(g, alpha=10.0))
    results = [measure(*problem) for problem in problems]
    (_, w), (_, a1), (_, a10) = results
    print(f"""## Lanczos vs power iteration

Top eigenvalue |λ|_max (`which="LM"`, k = 1) at **equal accuracy**: each solver gets the smallest number of
steps whose estimate is within relative error {TARGET:g} of `numpy.linalg.eigvalsh` on the dense matrix (solver
run with `tol=0`, step count found by exponential search + bisection), then that run is timed, best of {REPEATS}.
Both solvers are measured side by side in the same process. "matvecs" counts products with H; Lanczos's
includes the one product that measures its residual ‖Hy − λy‖ (power iteration gets its residual for free).

Command: `{COMMAND}` ({time.perf_counter() - t0:.0f} s this run, most of it the dense reference Hessians).
Machine: {machine(1)}, float64; load average {load0} at the start, {load()} at the end.
{summary(f"Lanczos vs power iteration: products with H at equal accuracy (Wishart, gap {w['gap']:.1%})",
         f"{w['ratio_mv']:.1f}× fewer for Lanczos (wall {w['ratio_t']:.1f}×)",
         "Lanczos needs fewer products where the gap is small", w["ratio_mv"] > 1, COMMAND)}

| problem | solver | matvecs | wall ms | rel. error |
|---|---|---|---|---|""")
    for rows, _ in results:
        print(*rows, sep="\n")
    print(f"""
Reading:
- With a small relative gap g (Wishart, g = {w['gap']:.1%}) Lanczos needs {w['ratio_mv']:.1f}× fewer products. Power
  iteration's error falls like (1 − g)^{{2t}}, Lanczos's roughly like e^{{−4t√g}} (Kaniel–Paige–Saad), so its
  step count scales with 1/√g instead of 1/g. The wall-time ratio is {w['ratio_t']:.1f}×: a dense
  500×500 product is cheap next to Lanczos's full reorthogonalisation and its small tridiagonal
  eigenproblem each step. On a real model each product is an HVP that costs far more than that
  bookkeeping, so the matvec ratio is the figure that carries over.
- SpecDef makes |λ|_max ∝ α² stand far above the rest of the spectrum: at α = 10 the gap is {a10['gap']:.2f} and
  plain power iteration needs {a10['mv']['power']} products to Lanczos's {a10['mv']['lanczos']}. Lanczos pays off on undeformed or nearly
  flat spectra ({a1['ratio_mv']:.1f}× fewer products already at α = 1, gap {a1['gap']:.2f}).
- Wall times are noisy on this shared machine; the HVP rows' wall-time ratios have ranged over 0.6–1.8×
  across runs. The matvec counts and errors are deterministic (seed 0) and repeat exactly.""")


if __name__ == "__main__":
    main()
