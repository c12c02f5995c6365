"""Whole-course time under papermill with test parameters, and per notebook: what `make test` pays for the course.

Executes every notebooks/NN_*.ipynb the way tests/test_notebooks.py does (papermill's Python API in one
process, a fresh ``specdef-lite`` kernel per notebook, each notebook's ``metadata.specdef_lite.
test_parameters``, ``SPECDEF_LITE_HEADLESS=1``) into a temporary folder, one after the other. A trivial
notebook that only imports the course's stack measures papermill's fixed cost per notebook (kernel start
and imports), which every notebook pays before its own work.

Run:  .venv/bin/python benchmarks/bench_course.py
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

from _common import ROOT, load, log, machine, summary

COMMAND = ".venv/bin/python benchmarks/bench_course.py"
TARGET_S = 240.0
KERNEL = "specdef-lite"
IMPORTS = "import numpy, torch, plotly.graph_objects, ipywidgets\nimport specdef_lite as sl\n"


def execute(pm, src: Path, out: Path, params: dict) -> float:
    t0 = time.perf_counter()
    pm.execute_notebook(str(src), str(out), parameters=params, kernel_name=KERNEL, cwd=str(src.parent),
                        progress_bar=False, log_output=False)
    return time.perf_counter() - t0


def main() -> None:
    import nbformat
    import papermill as pm

    os.environ["SPECDEF_LITE_HEADLESS"] = "1"
    os.environ["PYTHONWARNINGS"] = "ignore::DeprecationWarning"
    load0, t_start = load(), time.perf_counter()
    notebooks = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    rows, times, failed = [], {}, []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        trivial = nbformat.v4.new_notebook()
        trivial.metadata["kernelspec"] = {"name": KERNEL, "display_name": KERNEL, "language": "python"}
        trivial.cells = [nbformat.v4.new_code_cell(IMPORTS)]
        nbformat.write(trivial, tmp / "trivial.ipynb")
        fixed = execute(pm, tmp / "trivial.ipynb", tmp / "trivial.out.ipynb", {})
        log(f"fixed cost (kernel + imports): {fixed:.1f} s")
        for src in notebooks:
            params = json.loads(src.read_text())["metadata"].get("specdef_lite", {}).get("test_parameters", {})
            try:
                times[src.stem] = execute(pm, src, tmp / src.name, params)
                log(f"{src.name}: {times[src.stem]:.1f} s")
            except Exception as e:  # noqa: BLE001 - report the failure, time the rest
                failed.append(f"{src.name}: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}")
                log(failed[-1])
    total = sum(times.values())
    for stem, s in times.items():
        rows.append(f"| {stem} | {s:.1f} | {s / total:.0%} |")
    met = total <= TARGET_S and not failed
    biggest = max(times, key=times.get) if times else None
    print(f"""## The course under papermill (test parameters)

Every notebook executed as `tests/test_notebooks.py` does: papermill's Python API in one process, a fresh
`{KERNEL}` kernel per notebook, the notebook's own `test_parameters`, `SPECDEF_LITE_HEADLESS=1`, one
notebook after the other. A notebook that only imports the course's stack measures the fixed cost that
each notebook pays first (kernel start + imports): **{fixed:.1f} s** this run.

Command: `{COMMAND}` ({time.perf_counter() - t_start:.0f} s this run).
Machine: {machine()}; load average {load0} at the start, {load()} at the end.
{summary("whole course under papermill, test parameters", f"{total:.0f} s" + (" (failures)" if failed else ""),
         f"≤ {TARGET_S:.0f} s", met, COMMAND)}

| notebook | seconds | share |
|---|---|---|""")
    print(*rows, sep="\n")
    print(f"| **course** ({len(times)} notebooks) | **{total:.0f}** | of which fixed cost ≈ {fixed * len(times):.0f} s |")
    if failed:
        print("\nFailed (not counted in the total):\n" + "\n".join(f"- {f}" for f in failed))
    verdict = (f"within the {TARGET_S:.0f} s target" if met else
               f"**over the {TARGET_S:.0f} s target by {total - TARGET_S:.0f} s**" if total > TARGET_S else
               "not comparable with the target: some notebooks failed")
    if biggest:
        print(f"\nReading: {total:.0f} s for the course, {verdict}; the largest share is {biggest} "
              f"({times[biggest]:.0f} s, {times[biggest] / total:.0%}).")


if __name__ == "__main__":
    main()
