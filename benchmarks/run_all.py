"""Run every benchmarks/bench_*.py (each in a fresh process) and rewrite benchmarks/RESULTS.md.

Each script prints its own Markdown section; this runner puts them in one file behind a summary table
built from their ``<!-- summary | … -->`` lines. Naming scripts reruns only those and keeps the other
sections as they were (their measurement dates stay in their own text).

Run:  .venv/bin/python benchmarks/run_all.py            (make bench)
      .venv/bin/python benchmarks/run_all.py bench_lock  (one section)
"""
from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

from specdef_lite.common.checkpoint import atomic_file

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"
SECTION = re.compile(r"<!-- begin (\S+) -->\n(.*?)<!-- end \1 -->\n", re.S)
SUMMARY = re.compile(r"^<!-- summary \| (.*) -->$", re.M)

HEADER = """# Benchmark results

Written by `make bench` (`.venv/bin/python benchmarks/run_all.py`), which runs every `benchmarks/bench_*.py`
in a fresh process; each section says how it measured and the command that reruns it alone. Machines here
are small and shared (2 cores; other jobs run beside the benchmarks), so every section records the load
average it saw and compares its ratios within one run.

## Summary

| figure | measured | target | verdict | load (start → end of its run) | command |
|---|---|---|---|---|---|
"""
# the load each section recorded in its "Machine:" line (or its own wording of it)
LOAD = re.compile(r"load average ([\d.]+) on \d+ cores at (?:the|its) start(?:(?:,| and) ([\d.]+) on \d+ cores at (?:the|its) end)?")


def _old_sections() -> dict[str, str]:
    if not RESULTS.exists():
        return {}
    return {m.group(1): m.group(2) for m in SECTION.finditer(RESULTS.read_text())}


def run(script: Path) -> str:
    t0 = time.perf_counter()
    print(f"== {script.name}", file=sys.stderr, flush=True)
    proc = subprocess.run([sys.executable, str(script)], cwd=HERE.parent, stdout=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - t0
    print(f"== {script.name}: exit {proc.returncode} after {seconds:.0f} s", file=sys.stderr, flush=True)
    body = proc.stdout.rstrip() + "\n"
    if proc.returncode != 0:
        body += (f"\n**This run failed** (exit code {proc.returncode} after {seconds:.0f} s); "
                 f"its output above is incomplete.\n")
    return body


def _with_load(row: str, section: str) -> str:
    """A summary row with the load its section recorded put in before the command column."""
    m = LOAD.search(section)
    load = "not recorded" if m is None else (m[1] if m[2] is None else f"{m[1]} → {m[2]}")
    cells = row.rsplit(" | ", 1)
    return f"| {cells[0]} | {load} | {cells[1]} |"


def main(argv: list[str]) -> int:
    scripts = sorted(HERE.glob("bench_*.py"))
    table_only = "--table-only" in argv  # rebuild the summary from the sections as they are, running nothing
    argv = [a for a in argv if a != "--table-only"]
    wanted = {a.removesuffix(".py") for a in argv}
    unknown = wanted - {s.stem for s in scripts}
    if unknown:
        print(f"unknown benchmark(s): {sorted(unknown)}; have {[s.stem for s in scripts]}", file=sys.stderr)
        return 2
    sections = _old_sections()
    failed = 0
    for script in scripts:
        if table_only or (wanted and script.stem not in wanted):
            continue
        sections[script.name] = body = run(script)
        failed += "**This run failed**" in body
    order = [s.name for s in scripts if s.name in sections]
    rows = [_with_load(row, sections[name]) for name in order for row in SUMMARY.findall(sections[name])]
    parts = [HEADER + "\n".join(rows) + "\n"]
    parts += [f"<!-- begin {name} -->\n{sections[name]}<!-- end {name} -->\n" for name in order]
    atomic_file(RESULTS, "\n".join(parts))  # beside RESULTS.md, then renamed: an interrupted run keeps the old file
    print(f"wrote {RESULTS}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
