"""References from in-situ cells, true type fractions in pseudo-spots, and scoring of type abundances."""

import anndata as ad
import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import shapely
from sklearn.metrics import adjusted_rand_score
from spatialdata import SpatialData
from spatialdata.models import ShapesModel, TableModel
from spatialdata.transformations import Identity

from soscope._errors import SoscopeInputError
from soscope.evaluate import pseudo_spots, reference_from_cells, score_cell_types

N_TYPES = 4


def _planted_cells(n: int = 600, n_genes: int = 40, seed: int = 0) -> tuple[ad.AnnData, np.ndarray]:
    """Cells of ``N_TYPES`` planted types: each type over-expresses its own block of genes."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, N_TYPES, n)
    base = rng.gamma(2.0, 1.0, (N_TYPES, n_genes))
    block = n_genes // N_TYPES
    for t in range(N_TYPES):
        base[t, t * block : (t + 1) * block] *= 8.0
    profiles = base / base.sum(axis=1, keepdims=True)
    size = rng.integers(60, 200, n)
    x = rng.poisson(profiles[truth] * size[:, None]).astype(np.float32)
    cells = ad.AnnData(X=sp.csr_matrix(x), obs=pd.DataFrame(index=[f"c{i}" for i in range(n)]))
    cells.var_names = [f"g{i}" for i in range(n_genes)]
    return cells, truth


def test_reference_recovers_planted_types_and_types_every_cell():
    cells, truth = _planted_cells(n=400)
    exclude = np.random.default_rng(1).random(cells.n_obs) < 0.4
    ref = reference_from_cells(cells, exclude=exclude, k_range=(3, 6), seed=0)
    # the number of types is chosen by silhouette: the planted one
    assert ref.uns["reference_from_cells"]["n_types"] == N_TYPES
    assert set(ref.uns["reference_from_cells"]["silhouette"]) == {str(k) for k in range(3, 7)}
    # the reference: the cells used, raw counts, categorical types
    assert ref.n_obs == int((~exclude).sum())
    assert list(ref.obs_names) == list(cells.obs_names[~exclude])
    np.testing.assert_array_equal(ref.X.toarray(), cells.X[~exclude].toarray())
    assert isinstance(ref.obs["cell_type"].dtype, pd.CategoricalDtype)
    assert adjusted_rand_score(truth[~exclude], ref.obs["cell_type"]) > 0.95
    # every cell of the input is typed, the excluded ones by nearest centroid, with the same names
    lab = cells.obs["cell_type"]
    assert lab.notna().all() and list(lab.cat.categories) == list(ref.obs["cell_type"].cat.categories)
    np.testing.assert_array_equal(lab[~exclude].to_numpy(), ref.obs["cell_type"].to_numpy())
    assert adjusted_rand_score(truth[exclude], lab[exclude]) > 0.95
    # names by size: type_0 is the largest
    sizes = ref.obs["cell_type"].value_counts()
    assert sizes.idxmax() == "type_0"


def test_reference_fixed_n_types_key_and_untyped_cells():
    cells, truth = _planted_cells(n=300, seed=2)
    x = cells.X.toarray()
    x[:5] = 0  # cells without counts cannot be typed
    cells.X = sp.csr_matrix(x)
    ref = reference_from_cells(cells, n_types=6, cell_type_key="ct", seed=3)
    assert ref.obs["ct"].nunique() == 6 and ref.uns["reference_from_cells"]["silhouette"] == {}
    assert cells.obs["ct"][:5].isna().all() and cells.obs["ct"][5:].notna().all()
    assert ref.n_obs == 295 and ref.uns["reference_from_cells"]["n_untyped"] == 5


def test_reference_k_choice_ignores_types_of_a_few_outlying_cells():
    """Two outlying cells: the best silhouette splits them off (k = 4); min_type_size keeps the 3 types."""
    rng = np.random.default_rng(0)
    base = rng.gamma(2.0, 1.0, (3, 40))
    for t in range(3):
        base[t, t * 10 : (t + 1) * 10] *= 8
    odd = rng.gamma(2.0, 1.0, 40)
    odd[30:] *= 50
    prof = np.vstack([base, odd])
    prof /= prof.sum(axis=1, keepdims=True)
    truth = np.r_[np.repeat([0, 1, 2], 60), [3, 3]]
    x = rng.poisson(prof[truth] * rng.integers(60, 200, len(truth))[:, None]).astype(np.float32)
    cells = ad.AnnData(X=sp.csr_matrix(x))
    cells.var_names = [f"g{i}" for i in range(40)]
    loose = reference_from_cells(cells, min_type_size=1, k_range=(2, 6))
    assert loose.uns["reference_from_cells"]["n_types"] == 4
    ref = reference_from_cells(cells, k_range=(2, 6))  # default min_type_size=5
    assert ref.uns["reference_from_cells"]["n_types"] == 3
    assert adjusted_rand_score(truth[:180], ref.obs["cell_type"][:180]) == pytest.approx(1.0)


def test_reference_leiden_recovers_planted_types():
    pytest.importorskip("igraph")
    cells, truth = _planted_cells(n=400, seed=4)
    ref = reference_from_cells(cells, method="leiden", resolution=0.3, seed=0)
    assert adjusted_rand_score(truth, ref.obs["cell_type"]) > 0.9


def test_reference_errors():
    cells, _ = _planted_cells(n=50)
    with pytest.raises(SoscopeInputError, match="AnnData"):
        reference_from_cells(cells.X)
    with pytest.raises(SoscopeInputError, match="Unknown `method"):
        reference_from_cells(cells, method="louvain")
    with pytest.raises(SoscopeInputError, match="leiden finds its own number"):
        reference_from_cells(cells, method="leiden", n_types=3)
    with pytest.raises(SoscopeInputError, match="at least 2"):
        reference_from_cells(cells, n_types=1)
    with pytest.raises(SoscopeInputError, match="boolean mask"):
        reference_from_cells(cells, exclude=np.arange(50))
    with pytest.raises(SoscopeInputError, match=r"shape \(50,\)"):
        reference_from_cells(cells, exclude=np.zeros(49, dtype=bool))
    with pytest.raises(SoscopeInputError, match="too few"):
        reference_from_cells(cells, exclude=np.arange(50) > 4)
    with pytest.raises(SoscopeInputError, match="no layer"):
        reference_from_cells(cells, layer="counts")
    bad = cells.copy()
    bad.X = -bad.X.toarray()
    with pytest.raises(SoscopeInputError, match="non-negative"):
        reference_from_cells(bad)


# ------------------------------------------------------------------------------- truth type fractions
def _typed_sdata(seed: int = 0):
    """Cells (circles) with a type column, a cell table, and separate 2 µm 'transcript' bins."""
    rng = np.random.default_rng(seed)
    n = 500
    xy = rng.uniform(0, 300, (n, 2))
    types = np.array(["a", "b", "c"], dtype=object)[rng.integers(0, 3, n)]
    types[:10] = None  # untyped cells: in n_cells, not in the fractions
    counts = rng.poisson(2.0, (n, 4))
    cells = gpd.GeoDataFrame({"radius": np.full(n, 3.0)}, geometry=shapely.points(xy))
    cells.index = pd.Index(np.arange(1000, 1000 + n))
    obs = pd.DataFrame(
        {
            "cell_id": cells.index.to_numpy(),
            "region": pd.Categorical(["cells"] * n),
            "cell_type": pd.Categorical(types, categories=["a", "b", "c", "unused"]),
        },
        index=[f"cell{i}" for i in range(n)],
    )
    perm = rng.permutation(n)  # table rows in another order than the shapes
    tab = ad.AnnData(X=sp.csr_matrix(counts[perm]), obs=obs.iloc[perm].copy())
    tab.var_names = [f"g{i}" for i in range(4)]
    tab = TableModel.parse(tab, region="cells", region_key="region", instance_key="cell_id")
    tr = {"global": Identity()}
    bxy = rng.uniform(0, 300, (3000, 2))
    bins = gpd.GeoDataFrame({"radius": np.full(len(bxy), 1.0)}, geometry=shapely.points(bxy))
    bins.index = pd.RangeIndex(len(bxy))
    bobs = pd.DataFrame(
        {"bin_id": np.arange(len(bxy)), "region": pd.Categorical(["bins"] * len(bxy))},
        index=[f"b{i}" for i in range(len(bxy))],
    )
    btab = TableModel.parse(
        ad.AnnData(X=sp.csr_matrix(rng.poisson(1.0, (len(bxy), 4))), obs=bobs, var=tab.var.copy()),
        region="bins",
        region_key="region",
        instance_key="bin_id",
    )
    sd = SpatialData(
        shapes={
            "cells": ShapesModel.parse(cells, transformations=tr),
            "bins": ShapesModel.parse(bins, transformations=tr),
        },
        tables={"cell_table": tab, "bin_table": btab},
    )
    return sd, xy, types


def _hand_fractions(truth, subs, xy, types):
    """Type shares counted by hand: cells whose centre is inside each truth sub-spot polygon."""
    names = truth.uns["cell_type_fraction"]["cell_types"]
    out = np.full((truth.n_obs, len(names)), np.nan)
    pts = shapely.points(xy)
    for r, sid in enumerate(truth.obs["subspot_id"].to_numpy()):
        inside = shapely.contains(subs.geometry.loc[sid], pts) | shapely.touches(subs.geometry.loc[sid], pts)
        t = types[inside]
        t = t[pd.notna(t)]
        if len(t):
            out[r] = [(t == nm).mean() for nm in names]
    return out


@pytest.mark.parametrize("mode", ["table_rows", "cells_table", "cells_column"])
def test_truth_type_fractions_sum_to_one_and_match_a_hand_count(mode):
    sd, xy, types = _typed_sdata()
    if mode == "table_rows":  # the table's rows are the cells
        p = pseudo_spots(sd, table="cell_table", spacing=60.0, spot_diameter=40.0, cell_type_key="cell_type")
    else:  # transcript-like bins, cells typed by a table annotating them or a column of the shapes
        if mode == "cells_column":
            sd.shapes["cells"]["kind"] = pd.Categorical(types)
            key = "kind"
        else:
            key = "cell_type"
        p = pseudo_spots(
            sd, table="bin_table", spacing=60.0, spot_diameter=40.0, cells="cells", cell_type_key=key
        )
    truth, subs = p.tables["truth"], p.shapes["spots_truth_subspots"]
    f = truth.obsm["cell_type_fraction"]
    names = truth.uns["cell_type_fraction"]["cell_types"]
    assert f.shape == (truth.n_obs, len(names)) and {"a", "b", "c"} <= set(names)
    assert "cell_type" not in p.tables["table"].obsm and "cell_type_fraction" not in p.tables["table"].obsm
    full = np.isfinite(f).all(axis=1)
    assert full.sum() > 50 and (~full).sum() > 0  # both kinds of rows in this layout
    assert np.isnan(f[~full]).all()
    np.testing.assert_allclose(f[full].sum(axis=1), 1.0)
    np.testing.assert_allclose(f, _hand_fractions(truth, subs, xy, types), equal_nan=True)
    # a sub-spot without any cell has NaN fractions
    assert np.isnan(f[truth.obs["n_cells"].to_numpy() == 0]).all()


def test_truth_type_fractions_errors():
    sd, _, _ = _typed_sdata()
    with pytest.raises(SoscopeInputError, match="no obs column 'nope'"):
        pseudo_spots(sd, table="cell_table", spacing=60.0, spot_diameter=40.0, cell_type_key="nope")
    with pytest.raises(SoscopeInputError, match="carry no cell type 'nope'"):
        pseudo_spots(
            sd, table="bin_table", spacing=60.0, spot_diameter=40.0, cells="cells", cell_type_key="nope"
        )


# ---------------------------------------------------------------------------------------- scoring types
@pytest.fixture(scope="module")
def typed_truth():
    sd, _, _ = _typed_sdata(seed=5)
    p = pseudo_spots(sd, table="cell_table", spacing=40.0, spot_diameter=36.0, cell_type_key="cell_type")
    return p.tables["truth"]


def _as_prediction(truth, fractions, names):
    """Return an 'enhanced' table holding ``fractions`` scaled to cell-like abundances (soscope's names)."""
    enh = ad.AnnData(obs=truth.obs[["spot_id", "subspot"]].copy())
    scale = np.random.default_rng(0).uniform(0.5, 3.0, (truth.n_obs, 1))  # not fractions: normalised
    enh.obsm["cell_type_abundance"] = np.nan_to_num(fractions) * scale
    enh.uns["soscope"] = {"reference": {"cell_types": list(names)}}
    return enh


def test_score_cell_types_truth_itself_is_perfect(typed_truth):
    truth = typed_truth
    names = truth.uns["cell_type_fraction"]["cell_types"]
    f = truth.obsm["cell_type_fraction"]
    # columns in another order, rows shuffled, one extra predicted type with nothing in it
    order = [2, 0, 1, 3]
    enh = _as_prediction(
        truth, np.column_stack([f[:, order], np.zeros(len(f))]), [*np.asarray(names)[order], "x"]
    )
    enh = enh[np.random.default_rng(1).permutation(enh.n_obs)].copy()
    per_type, summ = score_cell_types(enh, truth)
    scored = ["a", "b", "c"]  # "unused" has no cell: a constant truth, NaN
    np.testing.assert_allclose(per_type.loc[scored, "pearson"], 1.0)
    np.testing.assert_allclose(per_type.loc[scored, "rmse"], 0.0, atol=1e-12)
    assert np.isnan(per_type.loc["unused", "pearson"])
    assert summ["mean"]["pearson"] == pytest.approx(1.0)
    assert summ["n_subspots"] == int(np.isfinite(f).all(axis=1).sum())
    assert summ["only_in_prediction"] == ["x"] and summ["only_in_truth"] == []


def test_score_cell_types_shuffled_is_worse(typed_truth):
    truth = typed_truth
    names = truth.uns["cell_type_fraction"]["cell_types"]
    f = truth.obsm["cell_type_fraction"]
    full = np.flatnonzero(np.isfinite(f).all(axis=1))
    shuffled = f.copy()
    shuffled[full] = f[np.random.default_rng(2).permutation(full)]
    _, summ = score_cell_types(_as_prediction(truth, shuffled, names), truth)
    assert summ["mean"]["pearson"] < 0.3
    # a prediction with no cell anywhere: equal fractions, constant, NaN correlations
    _, empty = score_cell_types(_as_prediction(truth, np.zeros_like(f), names), truth)
    assert empty["n_no_abundance"] == empty["n_subspots"] and np.isnan(empty["mean"]["pearson"])


def test_score_cell_types_errors(typed_truth):
    truth = typed_truth
    enh = ad.AnnData(obs=truth.obs[["spot_id", "subspot"]].copy())
    with pytest.raises(SoscopeInputError, match="reference="):
        score_cell_types(enh, truth)
    enh.obsm["cell_type_abundance"] = np.ones((enh.n_obs, 2))
    with pytest.raises(SoscopeInputError, match="names no cell types"):
        score_cell_types(enh, truth)
    with pytest.raises(SoscopeInputError, match="No cell type is named in both"):
        score_cell_types(enh, truth, cell_types=["p", "q"])
    with pytest.raises(SoscopeInputError, match="shape"):
        score_cell_types(enh, truth, cell_types=["a"])
    other = enh.copy()
    other.obs["spot_id"] = other.obs["spot_id"] + 10_000
    with pytest.raises(SoscopeInputError, match="Fewer than two"):
        score_cell_types(other, truth, cell_types=["a", "b"])
