import os

import pytest
import torch

os.environ.setdefault("SPECDEF_LITE_HEADLESS", "1")
# The tests train and differentiate tiny float64 models: thousands of small ops, for which a second
# intra-op thread only adds synchronisation (measured 2 ms/step on one thread vs ~8 ms on two, busy box).
torch.set_num_threads(1)


@pytest.fixture
def gen():
    """A local, seeded generator: tests never touch the global RNG."""
    return torch.Generator().manual_seed(1234)


def pytest_collection_modifyitems(items):
    """Execute the course (test_notebooks) before the book and the browser, which reuse build/executed/."""
    order = {"test_notebooks.py": 1, "test_book.py": 2, "test_browser.py": 3}
    items.sort(key=lambda item: order.get(item.path.name, 0))
