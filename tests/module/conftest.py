"""The module tests run tiny tensors: one torch thread is fastest (restored after each module)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread):
    """Every module here runs torch on one thread (tests/conftest.py)."""
    yield
