"""The count oracle (uses the truth's cells): a hand-made case, pseudo_spots' cell counts, score."""

import anndata as ad
import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import shapely
from spatialdata import SpatialData
from spatialdata.models import ShapesModel, TableModel
from spatialdata.transformations import Identity

from soscope._errors import SoscopeInputError
from soscope.datasets import synthetic
from soscope.evaluate import (
    BASELINES,
    ORACLES,
    count_oracle,
    even_split,
    expected_counts_oracle,
    pseudo_spots,
    score,
)
from soscope.geometry import make_subspots


@pytest.fixture(scope="module")
def squares():
    """Three 30 x 30 square spots side by side, each split grid:3 (9 sub-spots, all inside the footprint)."""
    x0 = np.array([0.0, 30.0, 60.0])
    gdf = gpd.GeoDataFrame(geometry=shapely.box(x0, 0.0, x0 + 30.0, 30.0))
    gdf.index = pd.RangeIndex(3)
    return make_subspots(gdf, "grid:3", spacing=30.0)


def test_oracle_splits_by_true_cells(squares):
    lay = squares
    assert lay.n_subspots == 27 and np.allclose(lay.footprint_weight, 1.0)
    counts = np.array([[90.0, 9.0], [30.0, 3.0], [18.0, 0.0]])
    cells = np.zeros(lay.n_subspots)
    s0 = np.flatnonzero(lay.spot_index == 0)
    s1 = np.flatnonzero(lay.spot_index == 1)
    cells[s0[4]] = 5  # spot 0: every cell in one sub-spot
    cells[s1[0]], cells[s1[8]] = 2, 1  # spot 1: cells 2 : 1
    # spot 2: no cell at all
    pred = count_oracle(counts, cells, lay)
    assert pred.shape == (27, 2) and pred.dtype == np.float32
    # all of spot 0's counts in the sub-spot holding all its cells
    np.testing.assert_allclose(pred[s0[4]], counts[0], rtol=1e-6)
    np.testing.assert_allclose(np.delete(pred[s0], 4, axis=0), 0.0)
    # 2 : 1
    np.testing.assert_allclose(pred[s1[0]], counts[1] * 2 / 3, rtol=1e-6)
    np.testing.assert_allclose(pred[s1[8]], counts[1] / 3, rtol=1e-6)
    np.testing.assert_allclose(np.delete(pred[s1], [0, 8], axis=0), 0.0)
    # no cell: the even split
    s2 = np.flatnonzero(lay.spot_index == 2)
    np.testing.assert_allclose(pred[s2], even_split(counts, lay)[s2], rtol=1e-6)
    np.testing.assert_allclose(pred[s2, 0], 2.0, rtol=1e-6)
    # every spot's counts conserved
    back = np.zeros(counts.shape)
    np.add.at(back, lay.spot_index, pred)
    np.testing.assert_allclose(back, counts, rtol=1e-5)


def test_oracle_counts_only_the_footprint():
    gdf = gpd.GeoDataFrame({"radius": [27.5]}, geometry=shapely.points([[0.0, 0.0]]))
    gdf.index = pd.RangeIndex(1)
    lay = make_subspots(gdf, "hex7", spacing=100.0)
    w = lay.footprint_weight
    cells = np.ones(lay.n_subspots)
    pred = count_oracle(np.array([[70.0]]), cells, lay)
    # equal cells: every sub-spot gets counts / sum(w), so the footprint holds the counts
    np.testing.assert_allclose(pred[:, 0], 70.0 / w.sum(), rtol=1e-5)
    np.testing.assert_allclose((pred[:, 0] * w).sum(), 70.0, rtol=1e-5)


def test_oracle_bad_input(squares):
    with pytest.raises(SoscopeInputError, match="one number per sub-spot"):
        count_oracle(np.ones((3, 1)), np.ones(5), squares)
    with pytest.raises(SoscopeInputError, match="non-negative"):
        count_oracle(np.ones((3, 1)), -np.ones(27), squares)


def _bins_and_cells():
    """Transcript-like 1 µm bins (the table) plus separate cell outlines (another shapes element)."""
    rng = np.random.default_rng(3)
    bxy = rng.uniform(0, 200, (3000, 2))
    counts = rng.poisson(1.0, (len(bxy), 4))
    bins = gpd.GeoDataFrame({"radius": np.full(len(bxy), 0.5)}, geometry=shapely.points(bxy))
    bins.index = pd.RangeIndex(len(bxy))
    cxy = rng.uniform(0, 200, (60, 2))
    cells = gpd.GeoDataFrame(geometry=shapely.buffer(shapely.points(cxy), 3.0))
    cells.index = pd.RangeIndex(len(cxy))
    obs = pd.DataFrame({"bin_id": np.arange(len(bxy)), "region": pd.Categorical(["bins"] * len(bxy))})
    obs.index = obs.index.astype(str)
    adata = ad.AnnData(X=sp.csr_matrix(counts), obs=obs)
    adata.var_names = [f"g{i}" for i in range(4)]
    tab = TableModel.parse(adata, region="bins", region_key="region", instance_key="bin_id")
    tr = {"global": Identity()}
    sd = SpatialData(
        shapes={
            "bins": ShapesModel.parse(bins, transformations=tr),
            "cells": ShapesModel.parse(cells, transformations=tr),
        },
        tables={"table": tab},
    )
    return sd, cxy


@pytest.mark.parametrize("lattice", ["hex", "square"])
def test_pseudo_spots_counts_cells_of_another_element(lattice):
    sd, cxy = _bins_and_cells()
    kw = (
        {"spot_diameter": 55.0, "spacing": 100.0}
        if lattice == "hex"
        else {"spacing": 50.0, "subspots": "grid:2"}
    )
    plain = pseudo_spots(sd, table="table", lattice=lattice, **kw)
    out = pseudo_spots(sd, table="table", lattice=lattice, cells="cells", **kw)
    truth, subs = out["truth"], out["spots_truth_subspots"]
    # without cells=, n_cells counts the table's rows (bins); with it, the cells' centroids
    np.testing.assert_array_equal(truth.obs["n_units"], plain["truth"].obs["n_cells"])
    np.testing.assert_array_equal(out["table"].obs["n_units"], plain["table"].obs["n_cells"])
    inside = shapely.contains_xy(
        np.asarray(subs.geometry.values, dtype=object)[:, None], cxy[None, :, 0], cxy[None, :, 1]
    )
    np.testing.assert_array_equal(truth.obs["n_cells"].to_numpy(), inside.sum(axis=1))
    assert truth.obs["n_cells"].sum() > 0
    assert out["table"].uns["pseudo_spots"]["cells"] == "cells"
    with pytest.raises(SoscopeInputError, match="nope"):
        pseudo_spots(sd, table="table", lattice=lattice, cells="nope", **kw)


def test_score_includes_the_oracle_when_the_truth_has_cells():
    s = synthetic(n_spots=60, n_features=12, seed=2)
    assert "n_cells" in s["truth"].obs
    per_feature, summ = score(s, key_added=None, ssim=False, baselines=[*BASELINES, "count_oracle"])
    assert "count_oracle" in ORACLES and "count_oracle" not in BASELINES
    assert summ["methods"][-1] == "count_oracle" and summ["oracles"] == ["count_oracle"]
    assert "pearson_count_oracle" in per_feature and not summ["skipped"]
    # the synthetic counts are sums of cells: knowing the cells beats splitting evenly
    assert summ["mean"]["count_oracle"]["pearson"] > summ["mean"]["even_split"]["pearson"]
    # without cell counts in the truth: skipped (named) or absent (all baselines)
    s["truth"].obs = s["truth"].obs.drop(columns="n_cells")
    _, summ = score(s, key_added=None, ssim=False)
    assert "count_oracle" not in summ["methods"] and "count_oracle" in summ["skipped"]
    assert summ["oracles"] == ["expected_counts_oracle"]
    _, summ = score(s, key_added=None, ssim=False, baselines=["even_split", "count_oracle"])
    assert summ["methods"] == ["even_split"] and "n_cells" in summ["skipped"]["count_oracle"]


def test_expected_counts_oracle_splits_by_the_true_means_and_bounds_every_split():
    s = synthetic(n_spots=150, n_features=40, seed=3)
    truth = s["truth"]
    assert "expected_counts_oracle" in ORACLES and "expected_counts_oracle" not in BASELINES
    # the truth's footprint means are the expectation of its footprint counts (and part of the means)
    foot_mean, mean = truth.layers["mean_footprint"], truth.layers["mean"]
    assert np.all(foot_mean <= mean + 1e-4) and foot_mean.sum() < 0.9 * mean.sum()
    np.testing.assert_allclose(truth.layers["footprint"].sum(), foot_mean.sum(), rtol=0.02)
    per_feature, summ = score(s, key_added=None, ssim=False)
    assert summ["oracles"] == ["count_oracle", "expected_counts_oracle"] and not summ["skipped"]
    ceiling = summ["mean"]["expected_counts_oracle"]["pearson"]
    # the split that knows every sub-spot's mean beats the runnable splits and the count oracle here
    for m in ("even_split", "interpolation_split", "image_ridge_split", "count_oracle"):
        assert ceiling > summ["mean"][m]["pearson"] + 0.02, (m, summ["mean"][m], ceiling)
    # by hand on one spot: the footprint's counts split in proportion to the footprint means, the outside
    # part at its mean
    lay = make_subspots(s.shapes["spots"].iloc[:1], "hex7")
    w = lay.footprint_weight
    means = np.arange(1.0, 8.0)[:, None] * np.array([[1.0, 0.0]])
    pred = expected_counts_oracle(np.array([[70.0, 7.0]]), means, lay)  # footprint means: w * means
    inside = pred[:, 0] - (1 - w) * means[:, 0]
    np.testing.assert_allclose(inside.sum(), 70.0, rtol=1e-6)
    np.testing.assert_allclose(inside, 70.0 * w * means[:, 0] / (w * means[:, 0]).sum(), rtol=1e-6)
    np.testing.assert_allclose(pred[:, 1], 7.0 * w * lay.area / (w * lay.area).sum(), rtol=1e-6)  # even
    foot = means * np.linspace(0.1, 0.7, 7)[:, None]
    pred = expected_counts_oracle(np.array([[70.0, 7.0]]), means, lay, foot)
    np.testing.assert_allclose(pred[:, 0], means[:, 0] - foot[:, 0] + 70.0 * foot[:, 0] / foot[:, 0].sum())
    with pytest.raises(SoscopeInputError, match="subspot_means"):
        expected_counts_oracle(np.ones((1, 2)), -means, lay)
    # without the truth's expected counts (real data): skipped, named
    del truth.layers["mean"]
    _, summ = score(s, key_added=None, ssim=False)
    assert "expected_counts_oracle" in summ["skipped"] and summ["oracles"] == ["count_oracle"]
