"""Shared bits of the benchmark scripts: the machine line, the load, and the summary rows run_all.py collects.

Each ``bench_*.py`` prints one Markdown section (``## title`` … ) on stdout and its progress on stderr.
A line ``<!-- summary | figure | measured | target | verdict | command -->`` inside the section is
invisible in the rendered Markdown; ``run_all.py`` gathers those lines into RESULTS.md's summary table.
"""
from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = ".venv/bin/python"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load() -> str:
    """The 1-minute load average over the core count, e.g. '3.9 on 2 cores'."""
    try:
        return f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    except OSError:
        return "unknown"


def lapack() -> str:
    """torch's BLAS and LAPACK as ``torch.__config__.show()`` reports them, e.g. 'torch BLAS mkl, LAPACK mkl
    (Intel(R) oneAPI Math Kernel Library Version 2024.2), CPU capability AVX512'. SVD and matmul times differ
    by 20× between CPUs and libraries (TOOLCHAIN.md), so every timing prints this beside it."""
    import re

    import torch

    cfg = torch.__config__.show()
    blas = re.search(r"BLAS_INFO=(\w+)", cfg)
    lapack_ = re.search(r"LAPACK_INFO=(\w+)", cfg)
    lib = re.search(r"- (Intel\(R\) oneAPI Math Kernel Library Version [\d.]+|OpenBLAS[^\n]*)", cfg)
    cap = re.search(r"CPU capability usage: (\w+)", cfg)
    parts = [f"torch BLAS {blas.group(1) if blas else '?'}, LAPACK {lapack_.group(1) if lapack_ else '?'}"]
    if lib:
        parts[0] += f" ({lib.group(1)})"
    if cap:
        parts.append(f"CPU capability {cap.group(1)}")
    return ", ".join(parts)


def machine(threads: int | None = None) -> str:
    import torch

    t = threads if threads is not None else torch.get_num_threads()
    return (f"{cpu_model()}, {os.cpu_count()} cores (shared with other jobs), torch {torch.__version__}, "
            f"{t} thread{'s' if t != 1 else ''}, Python {platform.python_version()}, {lapack()}")


def summary(figure: str, measured: str, target: str, met: bool | None, command: str) -> str:
    verdict = "—" if met is None else ("met" if met else "**missed**")
    cells = [c.replace("|", "\\|") for c in (figure, measured, target, verdict, f"`{command}`")]
    return "<!-- summary | " + " | ".join(cells) + " -->"


def log(*args, **kw) -> None:
    print(*args, file=sys.stderr, flush=True, **kw)
