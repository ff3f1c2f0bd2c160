"""score / score_arrays on synthetic data with an oracle 'enhancement'."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from spatialdata.models import TableModel

from soscope._errors import SoscopeInputError
from soscope.datasets import synthetic
from soscope.evaluate import BASELINES, ORACLES, score, score_arrays


def _add_enhanced(sd, values, key="soscope", spots="spots"):
    truth = sd["truth"]
    obs = pd.DataFrame(
        {
            "spot_id": truth.obs["spot_id"].to_numpy(),
            "subspot": truth.obs["subspot"].to_numpy(),
            "region": pd.Categorical([f"{spots}_{key}"] * truth.n_obs),
            "instance": np.arange(truth.n_obs),
        },
        index=[f"s{i}" for i in range(truth.n_obs)],
    )
    perm = np.random.default_rng(0).permutation(truth.n_obs)  # row order must not matter
    enh = ad.AnnData(X=np.asarray(values)[perm], obs=obs.iloc[perm], var=truth.var.copy())
    sd.tables[f"table_{key}"] = TableModel.parse(
        enh, region=f"{spots}_{key}", region_key="region", instance_key="instance"
    )


@pytest.fixture(scope="module")
def sd():
    s = synthetic(n_spots=200, n_features=30, seed=7)
    _add_enhanced(s, s["truth"].layers["mean"])
    return s


def test_oracle_beats_baselines(sd):
    per_feature, summ = score(sd, features="informative")
    assert len(per_feature) == int(sd["table"].var["informative"].sum())
    assert summ["methods"] == ["soscope", *BASELINES, *ORACLES]
    for m in ("pearson", "spearman", "rmse", "ssim"):
        assert f"{m}_soscope" in per_feature.columns
    means = summ["mean"]
    assert means["soscope"]["pearson"] > means["gaussian_interpolation"]["pearson"] > 0.3
    assert summ["beats"]["even_split"]["pearson"] > 0.9
    assert summ["n_subspots"] == sd["truth"].n_obs


def test_baselines_only_and_arrays(sd):
    per_feature, summ = score(
        sd, key_added=None, baselines=["even_split"], ssim=False, features=["gene_1", "gene_2"]
    )
    assert list(per_feature.index) == ["gene_1", "gene_2"]
    assert summ["methods"] == ["even_split"] and "ssim_even_split" not in per_feature
    t = sd["truth"].X
    df = score_arrays(t, t, centroids=np.random.default_rng(0).random((t.shape[0], 2)))
    np.testing.assert_allclose(df["pearson"].dropna(), 1.0)
    np.testing.assert_allclose(df["ssim"].dropna(), 1.0, atol=1e-9)


def test_errors(sd):
    with pytest.raises(SoscopeInputError, match="table_other"):
        score(sd, key_added="other")
    with pytest.raises(SoscopeInputError, match="Unknown baseline"):
        score(sd, baselines=["nope"])
    with pytest.raises(SoscopeInputError, match="Nothing to score"):
        score(sd, key_added=None, baselines=False)


def test_sections():
    s = synthetic(n_spots=40, n_features=12, n_sections=2, seed=1)
    per_feature, summ = score(s, key_added=None, ssim=False)
    assert summ["n_subspots"] == 2 * 40 * 7
    assert "image_regression" in summ["methods"] and not summ["skipped"]
