"""Executed notebooks: papermill runs each notebook headless, with its test or default parameters, into a folder.

``params="test"`` executes with each notebook's ``metadata.specdef_lite.test_parameters`` into build/executed/,
the folder the papermill test harness writes, so a book built after the tests reuses its executions
(``reuse=True``: only copies newer than their notebook and the library, run with the same parameters).
``params="default"`` runs the notebooks as a student would, into build/executed-default/.
"""
from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

__all__ = ["KERNEL", "execute"]

KERNEL = "specdef-lite"
# modules that only render executed notebooks: a change to them does not make an executed copy stale
RENDERING = ("book.py", "execution.py")


@contextlib.contextmanager
def _environ(**values: str) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _parameters(src: Path, params: str) -> dict:
    meta = json.loads(src.read_text())["metadata"]
    if params == "test":
        return dict(meta.get("specdef_lite", {}).get("test_parameters", {}))
    if params == "default":
        return {}
    raise ValueError(f"params must be 'test' or 'default', got {params!r}")


def _fresh(src: Path, out: Path, parameters: dict, library_mtime: float) -> bool:
    """An executed copy can be reused if it is newer than its notebook and the library, ran with the same
    parameters and ran to its end (papermill saves the output as it goes: a killed run leaves a copy without
    ``end_time``)."""
    if not out.exists() or out.stat().st_mtime < max(src.stat().st_mtime, library_mtime):
        return False
    meta = json.loads(out.read_text())["metadata"].get("papermill", {})
    return meta.get("parameters", {}) == parameters and not meta.get("exception") and bool(meta.get("end_time"))


def execute(sources: list[Path], executed: Path, *, params: str = "test", reuse: bool = False,
            log: Callable[[str], object] = print) -> dict[str, float | None]:
    """Run each notebook with papermill (headless) into ``executed``; seconds per notebook (None: reused)."""
    import papermill as pm

    executed.mkdir(parents=True, exist_ok=True)
    library_mtime = max(p.stat().st_mtime for p in Path(__file__).parents[1].rglob("*.py") if p.name not in RENDERING)
    seconds: dict[str, float | None] = {}
    for src in sources:
        out = executed / src.name
        parameters = _parameters(src, params)
        if reuse and _fresh(src, out, parameters, library_mtime):
            seconds[src.stem] = None
            log(f"  reuse   {out}")
            continue
        t0 = time.perf_counter()
        with _environ(SPECDEF_LITE_HEADLESS="1", PYTHONWARNINGS="ignore::DeprecationWarning"):
            pm.execute_notebook(str(src), str(out), parameters=parameters, kernel_name=KERNEL,
                                cwd=str(src.parent), progress_bar=False, log_output=False)
        seconds[src.stem] = time.perf_counter() - t0
        log(f"  execute {src.name}: {seconds[src.stem]:.1f} s")
    return seconds
