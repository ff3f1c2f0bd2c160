"""Calibrated uncertainty: with ``n_samples > 0`` the [q10, q90] intervals cover the true sub-spot counts.

The intervals are posterior predictive quantiles of each sub-spot's counts (the multinomial split of the
observed spot inside the footprint, observation noise outside it, latent draws for the prior), so on
synthetic data about 80 % of the true counts should fall inside them; the issue asks for 70-90 %.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from model_helpers import MODEL_ARGS, one_thread

import soscope

N_SAMPLES = 40


@pytest.fixture(scope="module")
def enhanced():
    sdata = soscope.datasets.synthetic(n_spots=300, n_features=30, seed=0)
    with one_thread():
        model = soscope.SoScope(sdata, **MODEL_ARGS)
        model.train(epochs=30)
        model.enhance(sdata, key_added="unc", n_samples=N_SAMPLES)
    return sdata


def _aligned(sdata):
    """Truth counts and the enhanced table's X and layers on the truth's rows and columns."""
    enh, truth = sdata.tables["table_unc"], sdata.tables["truth"]
    key = lambda obs: pd.MultiIndex.from_arrays([obs["spot_id"].astype(str), obs["subspot"].astype(int)])  # noqa: E731
    rows = key(enh.obs).get_indexer(key(truth.obs))
    cols = enh.var_names.get_indexer(truth.var_names)
    assert (rows >= 0).all() and (cols >= 0).all()
    pick = lambda a: np.asarray(a)[rows][:, cols]  # noqa: E731
    layers = {k: pick(enh.layers[k]) for k in ("std", "q10", "q90")}
    return (
        np.asarray(truth.X, dtype=np.float64),
        pick(enh.X),
        layers,
        enh.obs["footprint_weight"].to_numpy()[rows],
    )


def test_quantile_layers_are_ordered_around_the_enhanced_counts(enhanced):
    _, x, layers, _ = _aligned(enhanced)
    q10, q90, std = layers["q10"], layers["q90"], layers["std"]
    assert np.isfinite(std).all() and (std >= 0).all()
    assert (q10 <= q90).all() and (q10 >= 0).all()
    # the posterior mean lies inside its own 10-90 % interval for nearly every sub-spot and feature
    assert ((x >= q10 - 1e-4) & (x <= q90 + 1e-4)).mean() > 0.95
    # spread where counts are: sub-spots with more expected counts have wider intervals
    assert np.corrcoef(x.ravel(), (q90 - q10).ravel())[0, 1] > 0.5


def test_intervals_cover_70_to_90_percent_of_the_true_counts(enhanced):
    truth, _, layers, fw = _aligned(enhanced)
    inside = (truth >= layers["q10"]) & (truth <= layers["q90"])
    coverage = float(inside.mean())
    print(f"coverage of [q10, q90]: {coverage:.3f} (inside footprint {inside[fw > 0.99].mean():.3f})")
    assert 0.70 <= coverage <= 0.90, coverage
