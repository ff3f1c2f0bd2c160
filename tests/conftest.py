"""Suite-wide set-up: one torch thread per core and pytest-xdist worker (`make test` runs 2 workers).

The slowest test files run first: with ``--dist loadfile`` a file stays on one worker, and the longest
ones, collected last (top-level files sort after the sub-folders), left one worker running alone for
minutes at the end of the suite.
"""

from __future__ import annotations

import os

import pytest

#: the test files that take longest (``--durations`` of the fresh-clone CI run), slowest first
SLOW_FILES = (
    "tests/cli/test_cli.py",
    "tests/test_tutorials.py",
    "tests/test_enhance_accuracy.py",
    "tests/test_interrupted_run.py",
    "tests/test_docs.py",
    "tests/model/test_concatenated_sections.py",
    "tests/model/test_sections.py",
)


def pytest_collection_modifyitems(config, items) -> None:  # noqa: D103 - pytest hook
    # a stable sort: each file's tests stay together and in their order, other files keep theirs
    root = config.rootpath
    rank = {name: i for i, name in enumerate(SLOW_FILES)}
    items.sort(key=lambda item: rank.get(item.path.relative_to(root).as_posix(), len(rank)))


def pytest_configure(config) -> None:  # noqa: D103 - pytest hook
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers:
        # two workers each running torch on every core would oversubscribe the CPU and slow both; results
        # do not depend on the thread count beyond float32 rounding (tests that compare across thread
        # counts set them explicitly)
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(workers)))


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run torch on one thread for a module (fastest for tiny networks), then restore the setting.

    The directories of tiny-tensor tests (tests/module, tests/train) use it for every module.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
