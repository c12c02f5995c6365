"""Slider-update latency of every explorer the course shows, measured in Python with live FigureWidgets.

Each notebook that builds an explorer (``sl.widgets.…Explorer(``) is executed in this process, cell by
cell, with its test parameters and ``SPECDEF_LITE_HEADLESS=0``, so every explorer is exactly the one the
notebook builds, live: ipywidgets controls and a plotly ``FigureWidget``. Then its α control (κ where
there is no α) is stepped through every value of its slider twice, with ``explorer.set(...)``: the widget's
value changes, its observer looks the state up (or computes it on a first visit) and assigns the traces
inside ``fig.batch_update()``, and ipywidgets serialises the update for the front end. With no front end
attached the message goes nowhere; the browser's share (TOOLCHAIN.md, headless Chromium: key press →
plot changed, 59–117 ms median, 2–30 ms of it in Python) comes on top.

Run:  .venv/bin/python benchmarks/bench_widgets.py
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from _common import ROOT, load, log, machine, summary

COMMAND = ".venv/bin/python benchmarks/bench_widgets.py"
TARGET_MS = 100.0
BROWSER_MS = "≈ 60–110 ms"


def _cells(path: Path) -> list[str]:
    """The notebook's code cells, its test parameters appended to the parameters cell (as papermill would)."""
    nb = json.loads(path.read_text())
    params = nb["metadata"].get("specdef_lite", {}).get("test_parameters", {})
    code = []
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        src = "".join(cell["source"])
        src = "\n".join(line for line in src.splitlines() if not line.lstrip().startswith(("%", "!")))
        if "parameters" in cell["metadata"].get("tags", []):
            src += "\n" + "\n".join(f"{k} = {v!r}" for k, v in params.items())
        code.append(src)
    return code


def build_explorers(path: Path) -> dict[str, object]:
    """Execute a notebook's cells here and return its explorers by variable name (live)."""
    from specdef_lite.widgets import Explorer

    ns: dict = {"__name__": f"bench_{path.stem}"}
    cwd = os.getcwd()
    os.chdir(path.parent)
    try:
        with contextlib.redirect_stdout(sys.stderr):  # the notebook's prints are progress, not the report
            for i, src in enumerate(_cells(path)):
                exec(compile(src, f"{path.name}[{i}]", "exec"), ns)  # noqa: S102 - our own course notebook
    finally:
        os.chdir(cwd)
    found, seen = {}, set()
    for name, value in ns.items():
        if isinstance(value, Explorer) and id(value) not in seen:
            seen.add(id(value))
            found[name] = value
    return found


def slider_values(widget) -> list:
    """Every value a slider (or a toggle) can take, in order."""
    if hasattr(widget, "options") and widget.options:
        opts = list(widget.options)
        return [o[1] if isinstance(o, tuple) else o for o in opts]
    if type(widget).__name__ == "FloatLogSlider":
        n = int(round((widget.max - widget.min) / widget.step)) + 1
        return [float(widget.base ** (widget.min + i * widget.step)) for i in range(n)]
    if type(widget).__name__ == "IntSlider":
        return list(range(widget.min, widget.max + 1, widget.step))
    raise TypeError(f"no value list for {type(widget).__name__}")


def measure(explorer) -> dict:
    controls = explorer.controls
    name = "alpha" if "alpha" in controls else next(iter(controls))
    values = slider_values(controls[name])
    start = controls[name].value
    order = [v for v in values if v != start] + [start]  # leave from the start, visit every value, come back
    times = {"first": [], "again": []}
    explorer.latencies.clear()
    for rnd in ("first", "again"):
        for v in order:
            t0 = time.perf_counter()
            explorer.set(**{name: v})
            times[rnd].append(time.perf_counter() - t0)
    apply_ms = np.array(explorer.latencies) * 1e3
    ms = {k: np.array(v) * 1e3 for k, v in times.items()}
    return dict(control=name, n=len(order), first=float(np.median(ms["first"])), again=float(np.median(ms["again"])),
                worst=float(max(ms["first"].max(), ms["again"].max())),
                apply=float(np.median(apply_ms)) if apply_ms.size else float("nan"),
                traces=len(explorer.figure.data))


def main() -> None:
    import torch

    os.environ["SPECDEF_LITE_HEADLESS"] = "0"  # live explorers, whatever the caller's environment says
    os.environ.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning")
    load0, t_start = load(), time.perf_counter()
    notebooks = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    rows, failures, headline = [], [], []
    for path in notebooks:
        text = path.read_text()
        if "Explorer(" not in text or "sl.widgets." not in text:
            continue
        log(f"building the explorers of {path.name} (test parameters)")
        t0 = time.perf_counter()
        try:
            explorers = build_explorers(path)
        except Exception as e:  # noqa: BLE001 - a broken notebook is reported, the others still measured
            failures.append(f"{path.name}: {type(e).__name__}: {e}")
            log(failures[-1])
            continue
        built = time.perf_counter() - t0
        for var, ex in explorers.items():
            if not ex.live:
                failures.append(f"{path.name}: `{var}` is not live (live= forced off in the notebook?)")
                continue
            m = measure(ex)
            log(f"  {type(ex).__name__}: {m}")
            headline.append(m["first"])
            rows.append(f"| {type(ex).__name__} ({path.stem[:2]}, `{var}`) | {m['control']} × {m['n']} | "
                        f"**{m['first']:.1f}** | {m['again']:.1f} | {m['worst']:.0f} | {m['apply']:.1f} | "
                        f"{m['traces']} | {built:.0f} s |")
    worst_median = max(headline) if headline else float("nan")
    met = bool(headline) and worst_median <= TARGET_MS and not failures
    print(f"""## Slider-update latency of the explorers

Every explorer a notebook builds, built by executing that notebook here with its test parameters and
`SPECDEF_LITE_HEADLESS=0` (live `FigureWidget`s), then stepped through every value of its α slider (κ in
notebook 01) twice with `explorer.set(...)`: widget value → observer → cached or computed frame → trace
assignment in `fig.batch_update()` → ipywidgets serialisation. "first visit" is the median over states
not seen since the explorer was built (what a student's first drag costs), "revisit" over the same
states again (cache lookups); "apply" is the explorer's own `latencies` (look-up + assignment only).
The browser adds its share on top: {BROWSER_MS} median from key press to redrawn plot in headless
Chromium (TOOLCHAIN.md; 2–30 ms of it in Python, already counted here).

Command: `{COMMAND}` ({time.perf_counter() - t_start:.0f} s this run).
Machine: {machine(torch.get_num_threads())}; load average {load0} at the start, {load()} at the end.
{summary("slider update in Python, median per explorer (worst explorer, first visits)",
         f"{worst_median:.1f} ms" + (" (some explorers failed)" if failures else ""),
         f"≤ {TARGET_MS:.0f} ms (+ browser {BROWSER_MS})", met, COMMAND)}

| explorer (notebook, variable) | control × values | first visit, median ms | revisit, median ms | worst ms | apply, median ms | traces | notebook built in |
|---|---|---|---|---|---|---|---|""")
    print(*rows, sep="\n")
    explorers_now = ("ConditioningExplorer", "DeformationExplorer", "RaceExplorer", "AttackerExplorer",
                     "PrecisionExplorer")
    shown = {r.split(" (")[0].strip("| ") for r in rows}
    missing = [e for e in explorers_now if e not in shown]
    if missing:
        print(f"\nNot measured (no course notebook builds them yet): {', '.join(missing)}.")
    if failures:
        print("\nFailures:\n" + "\n".join(f"- {f}" for f in failures))
    browser = ROOT / "build" / "browser-latency.json"
    if browser.exists():
        b = json.loads(browser.read_text())
        b_ms = ", ".join(f"{m:.0f}" for m in b["key_to_plot_ms"])
        print(f"""
In the browser, end to end: the last run of `tests/test_browser.py` ({b['when']}, Chromium {b['chromium']},
load {b['load']:.1f} on {b['cores']} cores) pressed the α key of `{b['notebook']}` one press at a time:
key press → plot data changed in the page **{b['median_ms']:.0f} ms** median ({b_ms} ms). The Python share
above is a few ms; the rest is the comm round trip and plotly.js redrawing every restyled subplot.""")
        print(summary("key press → plot changed in the browser (tests/test_browser.py, notebook 02)",
                      f"{b['median_ms']:.0f} ms (load {b['load']:.1f})", f"≤ {TARGET_MS:.0f} ms",
                      b["median_ms"] <= TARGET_MS, ".venv/bin/python -m pytest -s tests/test_browser.py"))
    verdict = "within" if met else "over"
    print(f"\nReading: the slowest explorer's median first-visit update is {worst_median:.1f} ms, {verdict} the "
          f"{TARGET_MS:.0f} ms target before the browser's {BROWSER_MS}. Explorers that precompute their α grid "
          "pay a look-up and an assignment; those that compute on a first visit pay that once per state.")


if __name__ == "__main__":
    main()
