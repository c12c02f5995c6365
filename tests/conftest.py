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


@pytest.fixture(autouse=True)
def _global_state_restored():
    """The global RNGs (torch, NumPy, random) and the thread count as the test found them: a test that draws from
    the RNGs (transformers initialises its models from torch's) cannot change what another test draws. Tests use
    local generators."""
    threads = torch.get_num_threads()
    torch_state, np_state, py_state = torch.random.get_rng_state(), np.random.get_state(), random.getstate()
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.random.set_rng_state(torch_state)
        np.random.set_state(np_state)
        random.setstate(py_state)


@pytest.fixture
def gen():
    """A local, seeded generator: tests never touch the global RNG."""
    return torch.Generator().manual_seed(1234)


def pytest_collection_modifyitems(items):
    """Execute the course (test_notebooks) before the book and the browser, which reuse build/executed/."""
    order = {"test_notebooks.py": 1, "test_book.py": 2, "test_browser.py": 3}
    items.sort(key=lambda item: order.get(item.path.name, 0))
