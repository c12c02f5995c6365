"""conftest's promise: a test cannot change the global state another test sees (RNGs, thread count)."""
import random

import numpy as np
import pytest
import torch

_seen = {}


def test_a_test_that_draws_from_the_global_rngs():
    _seen["state"] = torch.random.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()
    _seen["threads"] = torch.get_num_threads()
    torch.manual_seed(99)
    torch.rand(3), np.random.rand(3), random.random()
    torch.set_num_threads(2)  # even a test that changes the thread count hands the next one the same


def test_the_next_test_sees_them_as_the_first_found_them():
    if "state" not in _seen:
        pytest.skip("compares with the test above, which did not run in this process")
    torch_state, np_key, py_state = _seen["state"]
    assert torch.equal(torch.random.get_rng_state(), torch_state)
    assert np.array_equal(np.random.get_state()[1], np_key) and random.getstate() == py_state
    assert torch.get_num_threads() == _seen["threads"] == 1


def test_every_test_starts_from_the_seeded_rngs_whatever_ran_before(rng_seed):
    """Order-independence (pytest-xdist schedules tests differently in every run): the global RNGs at the start of
    a test are conftest's SEED, even after the tests above drew from and reseeded them."""
    SEED = rng_seed
    assert torch.equal(torch.rand(4), torch.rand(4, generator=torch.Generator().manual_seed(SEED)))
    assert np.random.rand() == np.random.RandomState(SEED % 2 ** 32).rand()
    assert random.random() == random.Random(SEED).random()
