import contextlib
import os
import random

import numpy as np
import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def _headless_one_thread():
    """The whole run is headless and on one intra-op thread; both are put back when it ends.

    One thread: the tests train and differentiate tiny float64 models, thousands of small ops, for which a
    second thread only adds synchronisation (measured 2 ms/step on one thread vs ~8 ms on two, busy box).
    Session scope, so module-scoped fixtures (built before any function-scoped one) get it too.
    """
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        if "SPECDEF_LITE_HEADLESS" not in os.environ:  # a value set by the caller wins
            mp.setenv("SPECDEF_LITE_HEADLESS", "1")
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(threads)


SEED = 67280421310721  # torch's own default seed: a test sees the global RNGs as a fresh process would


@contextlib.contextmanager
def _seeded_then_restored():
    """The global RNGs (torch, NumPy, random) seeded with SEED inside, and put back as found afterwards."""
    torch_state, np_state, py_state = torch.random.get_rng_state(), np.random.get_state(), random.getstate()
    torch.manual_seed(SEED)
    np.random.seed(SEED % 2 ** 32)
    random.seed(SEED)
    try:
        yield
    finally:
        torch.random.set_rng_state(torch_state)
        np.random.set_state(np_state)
        random.setstate(py_state)


@pytest.fixture(scope="module", autouse=True)
def _module_rng_seeded():
    """Module fixtures (built before any test's own fixtures) draw from the same seeded RNGs, whichever modules ran
    before in this process: under pytest-xdist that depends on the scheduling."""
    with _seeded_then_restored():
        yield


@pytest.fixture(autouse=True)
def _global_state_restored():
    """Every test starts from the same global RNG state (SEED), whatever ran before it — in which order, or in
    which pytest-xdist worker — and leaves the RNGs and the thread count as it found them: a test that draws
    from the RNGs (``nn.Linear`` initialises from torch's; so does transformers) draws the same numbers in any
    order, and cannot change what another test draws. Tests use local generators where they can."""
    threads = torch.get_num_threads()
    try:
        with _seeded_then_restored():
            yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture
def gen():
    """A local, seeded generator: tests never touch the global RNG."""
    return torch.Generator().manual_seed(1234)


# The longest chain first: the course's executions, nbval over them and the book that reuses them; then every
# "Try this" run (the LLM notebooks' first: a minute each); then everything else; the browser last.
ORDER = {"test_notebooks.py": 0, "test_book.py": 1, "test_try_this.py": 2, "test_browser.py": 4}
OTHER = 3
TOGETHER = {"test_notebooks.py": "course", "test_book.py": "course"}  # one worker, in this order


def pytest_collection_modifyitems(items):
    """Order the run, and group it for pytest-xdist (``make test`` runs ``-n N --dist loadgroup``).

    Order: the course (test_notebooks, then the book, which reuses build/executed/), the "Try this" runs, the
    rest, the browser. Groups (``xdist_group``): the course and the book share one worker; each other module
    is one group, so its module-scoped fixtures (a started kernel, a loaded SmolLM2, a trained grid) are built
    once; each "Try this" run is its own group, so the runs spread over the workers. Without xdist the marks
    do nothing and the order is the same.
    """
    items.sort(key=lambda item: (ORDER.get(item.path.name, OTHER),
                                 not item.name.startswith(("test_try_this_runs[06", "test_try_this_runs[07"))))
    for item in items:
        name = item.path.name
        if name in TOGETHER:
            group = TOGETHER[name]
        elif name == "test_try_this.py" and item.name.startswith("test_try_this_runs["):
            group = item.nodeid  # one run per group: they spread over the workers
        else:
            group = name
        item.add_marker(pytest.mark.xdist_group(group))
