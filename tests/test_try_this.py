"""Every "Try this" of the course runs: each notebook is executed once per entry of its
``metadata.specdef_lite.try_this``, at test sizes.

The convention (COMMON.md): ``try_this = [{"label": "...", "parameters": {...}}]``; the parameters are merged over the
notebook's ``test_parameters``; an entry with ``"lesson": false`` is meant to break the lesson, and its run drops the
notebook's final cell tagged ``lesson``. New notebooks and new entries are picked up from the metadata, so adding one
never means editing this file.

Cost: a student who tries a suggestion edits the parameters cell and reruns the notebook in the same kernel. The
runs here do the same — one kernel for the whole module, with the user namespace cleared (``%reset -f``) before
every run — so an entry pays for its own computation, not for another interpreter start and the course's imports
(about 3 s a notebook, TOOLCHAIN.md). The seconds of every run go to build/try-this.json.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from specdef_lite.common.checkpoint import atomic_file, exclusive

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
COURSE = [p for p in NOTEBOOKS if int(p.name[:2]) <= 5]  # the toy notebooks: every one tags its lesson cell
KERNEL = "specdef-lite"
TIMES = ROOT / "build" / "try-this.json"


def _nb(path: Path) -> dict:
    return json.loads(path.read_text())


def _entries(path: Path) -> list[dict]:
    return _nb(path)["metadata"].get("specdef_lite", {}).get("try_this", [])


def _parameters(nb: dict) -> set[str]:
    """The names the ``parameters`` cell assigns (literals only, so a plain ``name = …`` scan suffices)."""
    import ast
    cell = next(c for c in nb["cells"] if c["cell_type"] == "code" and "parameters" in c["metadata"].get("tags", []))
    tree = ast.parse("".join(cell["source"]))
    return {t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets if isinstance(t, ast.Name)}


def _lesson_cells(nb: dict) -> list[int]:
    return [i for i, c in enumerate(nb["cells"]) if "lesson" in c.get("metadata", {}).get("tags", [])]


CASES = [pytest.param(path, i, entry, id=f"{path.stem[:2]}-{i}-{entry.get('label', '?')}")
         for path in NOTEBOOKS for i, entry in enumerate(_entries(path))]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_try_this_entries_are_well_formed(path):
    nb = _nb(path)
    names = _parameters(nb)
    for entry in _entries(path):
        assert set(entry) <= {"label", "parameters", "lesson"} and entry.get("label"), f"malformed entry {entry}"
        unknown = set(entry["parameters"]) - names
        assert not unknown, f"{entry['label']!r} sets {sorted(unknown)}, which the parameters cell does not define"
        if entry.get("lesson", True) is False:
            assert len(_lesson_cells(nb)) == 1, "an entry that breaks the lesson needs exactly one cell tagged `lesson`"


@pytest.mark.parametrize("path", COURSE, ids=[p.stem for p in COURSE])
def test_course_notebooks_tag_their_final_assertions_and_offer_something_to_try(path):
    nb = _nb(path)
    code = [i for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code"]
    assert _lesson_cells(nb) == [code[-1]], "the last code cell, and only it, is tagged `lesson`"
    assert "assert" in "".join(nb["cells"][code[-1]]["source"])
    assert _entries(path), "every course notebook offers at least one executable Try this"


@pytest.fixture(scope="module")
def kernel():
    """One started kernel, headless, in notebooks/ (every notebook's own folder), shut down at the end."""
    from jupyter_client.manager import KernelManager
    old = {k: os.environ.get(k) for k in ("SPECDEF_LITE_HEADLESS", "PYTHONWARNINGS")}
    os.environ["SPECDEF_LITE_HEADLESS"] = "1"  # the kernel inherits it: explorers render static figures
    os.environ["PYTHONWARNINGS"] = "ignore::DeprecationWarning"
    km = KernelManager(kernel_name=KERNEL)
    km.start_kernel(cwd=str(ROOT / "notebooks"))
    yield km
    km.shutdown_kernel(now=True)
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _prepared(path: Path, entry: dict):
    """The notebook with a namespace reset in front and, for a lesson-breaking entry, without its lesson cell."""
    import nbformat
    nb = nbformat.reads(path.read_text(), as_version=4)
    if entry.get("lesson", True) is False:
        nb.cells = [c for c in nb.cells if "lesson" not in c.metadata.get("tags", [])]
    nb.cells.insert(0, nbformat.v4.new_code_cell("%reset -f"))
    return nb


@pytest.mark.parametrize("path, i, entry", CASES)
def test_try_this_runs(path, i, entry, kernel, tmp_path):
    import papermill as pm
    params = {**_nb(path)["metadata"]["specdef_lite"]["test_parameters"], **entry["parameters"]}
    t0 = time.perf_counter()
    pm.execute_notebook(_prepared(path, entry), str(tmp_path / path.name), parameters=params, kernel_name=KERNEL,
                        km=kernel, cwd=str(path.parent), progress_bar=False, log_output=False)
    seconds = time.perf_counter() - t0
    with exclusive(TIMES):  # test workers (pytest-xdist) add their runs to the same table
        times = json.loads(TIMES.read_text()) if TIMES.exists() else {}
        times[f"{path.stem}[{i}] {entry['label']}"] = round(seconds, 2)
        atomic_file(TIMES, json.dumps(times, indent=1, ensure_ascii=False) + "\n")
    print(f"{path.stem} · {entry['label']}: {seconds:.1f} s")
