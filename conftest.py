"""Fixtures for every test and every doctest (tests/ and specdef_lite/ alike): headless, one intra-op thread, and
the same seeded global RNGs at the start of each, whatever ran before (pytest-xdist changes the order)."""
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
def rng_seed() -> int:
    """The seed every test's global RNGs start from."""
    return SEED
