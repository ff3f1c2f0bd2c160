"""Small synthetic samples and briefly trained models, shared by the model tests (built once per session)."""

from __future__ import annotations

import pytest

pytest.importorskip("spatialdata")
pytest.importorskip("torch")

from model_helpers import make_sdata, one_thread, train_model  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Run these tiny networks on one thread (restored after each module, so other tests are unaffected)."""
    with one_thread():
        yield


@pytest.fixture(scope="session")
def hex_sdata():
    """hex7 circles with an H&E-like image (do not modify: copy or use ``inplace=False``)."""
    return make_sdata(k=7, image=True)


@pytest.fixture(scope="session")
def hex_model(hex_sdata):
    return train_model(hex_sdata)


@pytest.fixture(scope="session")
def grid_sdata():
    """grid:3 squares without an image (sub-spots start from the neighbour interpolation)."""
    return make_sdata(k=9, image=False)


@pytest.fixture(scope="session")
def grid_model(grid_sdata):
    return train_model(grid_sdata)
