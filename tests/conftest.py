"""Suite-wide set-up: one torch thread per core and pytest-xdist worker (`make test` runs 2 workers)."""

from __future__ import annotations

import os

import pytest


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
