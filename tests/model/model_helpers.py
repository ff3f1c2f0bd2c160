"""Helpers of the model tests: small synthetic samples and briefly trained models."""

from __future__ import annotations

import anndata as ad
import numpy as np
import scipy.sparse as sp
import spatialdata as sd

import soscope

N_SPOTS, N_FEATURES, EPOCHS = 200, 40, 5
MODEL_ARGS = dict(table="table", n_hidden=32, n_latent=8, device="cpu", progress=False, seed=0)


def make_sdata(k: int = 7, image: bool = True, seed: int = 0):
    return soscope.datasets.synthetic(n_spots=N_SPOTS, n_features=N_FEATURES, k=k, image=image, seed=seed)


def train_model(sdata, epochs: int = EPOCHS, **kwargs):
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
