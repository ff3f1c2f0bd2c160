"""A small synthetic sample shared by the training tests; torch on one thread (tiny networks)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("spatialdata")

import soscope  # noqa: E402

N_SPOTS, N_FEATURES = 100, 20
#: small networks, CPU, silent, no image (its per-minibatch sub-spot graph costs seconds, and the training
#: loop does not depend on it): a few epochs take about a second
MODEL_ARGS = dict(table="table", image=False, n_hidden=16, n_latent=4, device="cpu", progress=False)


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread):
    """Every module here runs torch on one thread (tests/conftest.py)."""
    yield


@pytest.fixture(scope="session")
def small_sdata():
    """hex7 circles with an image (do not modify)."""
    return soscope.datasets.synthetic(n_spots=N_SPOTS, n_features=N_FEATURES, seed=0)


@pytest.fixture
def new_model(small_sdata):
    """Return a factory of untrained models on the small sample (keyword arguments override the defaults)."""

    def make(**kwargs):
        return soscope.SoScope(small_sdata, **{**MODEL_ARGS, "seed": 0, **kwargs})

    return make
