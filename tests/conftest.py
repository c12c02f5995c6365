import os

import pytest
import torch

os.environ.setdefault("SPECDEF_LITE_HEADLESS", "1")
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def gen():
    """A local, seeded generator: tests never touch the global RNG."""
    return torch.Generator().manual_seed(1234)
