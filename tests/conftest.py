import pytest
import torch


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
