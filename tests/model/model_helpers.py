"""Helpers of the model tests: small synthetic samples and briefly trained models."""

from __future__ import annotations

from contextlib import contextmanager

import anndata as ad
import numpy as np
import scipy.sparse as sp
import spatialdata as sd
import torch

import soscope

N_SPOTS, N_FEATURES, EPOCHS = 200, 40, 5
MODEL_ARGS = dict(table="table", n_hidden=32, n_latent=8, device="cpu", progress=False, seed=0)


def make_sdata(k: int = 7, image: bool = True, seed: int = 0):
    """Build the small synthetic sample of these tests (the same object for the same arguments)."""
    return soscope.datasets.synthetic(n_spots=N_SPOTS, n_features=N_FEATURES, k=k, image=image, seed=seed)


@contextmanager
def one_thread():
    """Run torch on one thread inside the block.

    For tiny networks one thread is fastest, and much faster than several on a shared, busy CPU.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_model(sdata, epochs: int = EPOCHS, **kwargs):
    """Set up a small model on ``sdata`` and train it for a few epochs (on one thread)."""
    with one_thread():
        model = soscope.SoScope(sdata, **{**MODEL_ARGS, **kwargs})
        model.train(epochs=epochs)
    return model


def _with_x(sdata, x, var=None):
    """``sdata`` with the table's X replaced (and optionally its var); other elements shared."""
    old = sdata.tables["table"]
    table = ad.AnnData(
        X=x, obs=old.obs.copy(), var=(old.var if var is None else var).copy(), uns=dict(old.uns)
    )
    return sd.SpatialData(
        images=dict(sdata.images), shapes=dict(sdata.shapes), tables={**dict(sdata.tables), "table": table}
    )


def _counts(sdata) -> np.ndarray:
    return np.asarray(sdata.tables["table"].X.toarray(), dtype=np.float64)


def _variant(sdata, kind: str):
    x = _counts(sdata)
    if kind == "counts":
        return sdata
    if kind == "normalised":
        return _with_x(sdata, np.log1p(x / x.sum(1, keepdims=True) * 1e4).astype(np.float32))
    if kind == "binary":
        return _with_x(sdata, sp.csr_matrix((x > np.median(x, 0)).astype(np.float32)))
    if kind == "peaks":
        var = sdata.tables["table"].var.copy()
        var["feature_types"] = ["Gene Expression"] * 20 + ["Peaks"] * (len(var) - 20)
        return _with_x(sdata, sp.csr_matrix(x.astype(np.int32)), var=var)
    raise AssertionError(kind)
