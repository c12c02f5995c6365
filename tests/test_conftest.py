"""conftest's promise: a test cannot change the global state another test sees (RNGs, thread count)."""
import random

import numpy as np
import torch

_seen = {}


def test_a_test_that_draws_from_the_global_rngs():
    _seen["state"] = torch.random.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()
    _seen["threads"] = torch.get_num_threads()
    torch.manual_seed(99)
    torch.rand(3), np.random.rand(3), random.random()
    torch.set_num_threads(2)  # even a test that changes the thread count hands the next one the same


def test_the_next_test_sees_them_as_the_first_found_them():
    torch_state, np_key, py_state = _seen["state"]
    assert torch.equal(torch.random.get_rng_state(), torch_state)
    assert np.array_equal(np.random.get_state()[1], np_key) and random.getstate() == py_state
    assert torch.get_num_threads() == _seen["threads"] == 1
