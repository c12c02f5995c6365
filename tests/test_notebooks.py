"""Execute every notebook in notebooks/ with papermill (Python API, one process), with small parameters.

Each notebook keeps its own test-size parameters in its metadata, ``metadata.specdef_lite.test_parameters``,
so adding a notebook never means editing this file. The harness sets SPECDEF_LITE_HEADLESS=1 (explorers
render static figures) and writes the executed copies to build/executed/ for nbval and the HTML book.
Every notebook ends with a cell of assertions, so a pass here means the course's lessons held.

Kernels: every notebook names the default kernelspec ``python3``, so a JupyterHub, a Binder image or a
student's own Jupyter with the package importable runs it without a kernelspec of ours. The harness runs
each notebook on the venv's own kernelspec (``specdef-lite``), except notebook 00, which runs on the
kernelspec its metadata names, exactly as such a Jupyter would.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from specdef_lite.common.checkpoint import atomic_file

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
EXECUTED = ROOT / "build" / "executed"
KERNEL = "specdef-lite"            # the venv's kernelspec: what the harness runs notebooks on
NOTEBOOK_KERNELSPEC = "python3"    # what every notebook names: the default Python kernel of any Jupyter
ON_OWN_KERNELSPEC = {"00_start_here"}  # executed on the kernelspec in their metadata (the "plain Jupyter" case)


def _meta(path: Path) -> dict:
    return json.loads(path.read_text())["metadata"]


def test_course_exists():
    assert NOTEBOOKS, "no notebooks found in notebooks/"
    assert NOTEBOOKS[0].name.startswith("00_")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_committed_clean(path):
    nb = json.loads(path.read_text())
    assert nb["metadata"]["kernelspec"]["name"] == NOTEBOOK_KERNELSPEC, "name the default python3 kernelspec"
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert "parameters" in code[0]["metadata"].get("tags", []), "first code cell must be tagged `parameters`"
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), "commit without outputs"
    assert "widgets" not in nb["metadata"], "commit without widget state"
    assert "assert" in "".join(code[-1]["source"]), "the last cell must assert the lesson"
    assert isinstance(nb["metadata"].get("specdef_lite", {}).get("test_parameters"), dict)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes(path, monkeypatch):
    import papermill as pm

    monkeypatch.setenv("SPECDEF_LITE_HEADLESS", "1")
    monkeypatch.setenv("PYTHONWARNINGS", "ignore::DeprecationWarning")
    params = _meta(path)["specdef_lite"]["test_parameters"]
    EXECUTED.mkdir(parents=True, exist_ok=True)
    out = EXECUTED / path.name
    own = path.stem in ON_OWN_KERNELSPEC
    t0 = time.perf_counter()
    pm.execute_notebook(str(path), str(out), parameters=params, kernel_name=None if own else KERNEL,
                        cwd=str(path.parent), progress_bar=False, log_output=False)
    seconds = time.perf_counter() - t0
    nb = json.loads(out.read_text())
    if own:  # papermill started the kernelspec the notebook names, not ours
        assert nb["metadata"]["kernelspec"]["name"] == NOTEBOOK_KERNELSPEC
        assert nb["metadata"]["papermill"]["parameters"] == params
    assert "widgets" not in nb["metadata"] or not nb["metadata"]["widgets"], "executed notebook carries widget state"
    atomic_file(EXECUTED / f"{path.stem}.seconds", f"{seconds:.2f}\n")
    print(f"{path.name}: {seconds:.1f} s")


COURSE = [p for p in NOTEBOOKS if int(p.name[:2]) <= 5]  # the toy notebooks (06 and 07 train a language model)


def test_nbval_over_the_executed_course():
    """nbval in lax mode (a cell that raises fails it) re-runs the course exactly as papermill executed it above.

    It runs in its own pytest process (nbval collects notebooks, not test modules), on the venv's kernelspec,
    headless. Here rather than as a second command of ``make test``: the course's tests share one pytest-xdist
    worker in this order, so nbval overlaps with the rest of the suite instead of running after it.
    """
    executed = [EXECUTED / p.name for p in COURSE]
    missing = [p.name for p in executed if not p.exists()]
    assert not missing, f"not executed above: {missing}"
    cmd = [sys.executable, "-m", "pytest", "-q", "--nbval-lax", "--nbval-kernel-name", KERNEL,
           "-o", "addopts=", "-o", "testpaths=", "-p", "no:cacheprovider", "-p", "no:xdist", *map(str, executed)]
    env = {**os.environ, "SPECDEF_LITE_HEADLESS": "1", "PYTHONWARNINGS": "ignore::DeprecationWarning"}
    run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    print(run.stdout.strip().splitlines()[-1] if run.stdout.strip() else "")
    assert run.returncode == 0, f"nbval failed (rc {run.returncode}):\n{run.stdout[-6000:]}\n{run.stderr[-2000:]}"
    assert " passed" in run.stdout, run.stdout[-2000:]
