"""soscope.datasets.synthetic: valid elements, exact observation model, determinism, image alignment."""

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from spatialdata.models import Image2DModel, ShapesModel, TableModel
from spatialdata.transformations import get_transformation

from soscope._errors import SoscopeInputError
from soscope.datasets import synthetic


def _dense(x):
    return x.toarray() if sp.issparse(x) else np.asarray(x)


@pytest.fixture(scope="module")
def small():
    return synthetic(n_spots=150, n_features=40, seed=3)


def _per_spot(truth, layer=None):
    x = _dense(truth.layers[layer] if layer else truth.X)
    return pd.DataFrame(x).groupby(truth.obs["spot_id"].to_numpy()).sum()


def test_elements_validate(small):
    sd = small
    assert set(sd.images) == {"image"}
    assert set(sd.shapes) == {"spots", "spots_truth_subspots"}
    assert set(sd.tables) == {"table", "truth"}
    ShapesModel.validate(sd["spots"])
    ShapesModel.validate(sd["spots_truth_subspots"])
    TableModel().validate(sd["table"])
    TableModel().validate(sd["truth"])
    Image2DModel().validate(sd["image"])
    tab, truth = sd["table"], sd["truth"]
    assert tab.shape == (150, 40)
    assert np.issubdtype(tab.X.dtype, np.integer)
    assert list(tab.var_names[:2]) == ["gene_0", "gene_1"]
    assert tab.var["informative"].dtype == bool and tab.var["informative"].sum() == 12
    assert tab.uns["spatialdata_attrs"]["instance_key"] == "spot_id"
    assert (tab.obs["spot_id"].to_numpy() == sd["spots"].index.to_numpy()).all()
    assert "radius" in sd["spots"].columns
    assert truth.n_obs == 7 * 150 and set(truth.obs["subspot"]) == set(range(7))
    assert {"mean", "footprint"} <= set(truth.layers)
    assert {"cell_type", "cell_type_fraction", "spot_id", "subspot"} <= set(truth.obs.columns)
    assert truth.uns["subspots"]["scheme"] == "hex7"
    # Visium-like library sizes: thousands of counts per spot (scaled to 40 of the features here)
    assert 100 < np.median(_dense(tab.X).sum(axis=1))
    assert tab.uns["synthetic"]["seed"] == 3


def test_transformations_align_spots_and_image(small):
    sd = small
    mpp = sd["table"].uns["synthetic"]["microns_per_pixel"]
    t_spots = get_transformation(sd["spots"], "global").to_affine_matrix(("x", "y"), ("x", "y"))
    t_img = get_transformation(sd["image"], "global").to_affine_matrix(("x", "y"), ("x", "y"))
    t_sub = get_transformation(sd["spots_truth_subspots"], "global").to_affine_matrix(("x", "y"), ("x", "y"))
    np.testing.assert_allclose(t_spots, t_img)
    np.testing.assert_allclose(t_spots, t_sub)
    np.testing.assert_allclose(np.diag(t_spots)[:2], [mpp, mpp])
    # spots are in pixels: the 55 µm diameter is 55 / mpp pixels
    np.testing.assert_allclose(sd["spots"]["radius"].to_numpy(), 27.5 / mpp)


def test_spot_counts_are_sums_of_inside_parts(small):
    tab, truth = small["table"], small["truth"]
    inside = _per_spot(truth, "footprint").loc[tab.obs["spot_id"].to_numpy()].to_numpy()
    np.testing.assert_array_equal(_dense(tab.X), inside)  # exactly
    total = _per_spot(truth).loc[tab.obs["spot_id"].to_numpy()].to_numpy()
    assert (total >= inside).all() and (total.sum() > 2 * inside.sum())  # the footprint is ~27% of the cell
    assert (_dense(truth.X) >= _dense(truth.layers["footprint"])).all()


def test_deterministic(small):
    again = synthetic(n_spots=150, n_features=40, seed=3)
    np.testing.assert_array_equal(_dense(again["table"].X), _dense(small["table"].X))
    np.testing.assert_array_equal(_dense(again["truth"].X), _dense(small["truth"].X))
    a = again["image"]["scale0"]["image"].values
    np.testing.assert_array_equal(a, small["image"]["scale0"]["image"].values)
    other = synthetic(n_spots=150, n_features=40, seed=4, image=False)
    assert not np.array_equal(_dense(other["table"].X), _dense(small["table"].X))
    assert "image" not in other.images


def test_image_follows_cell_types(small):
    sd = small
    truth = sd["truth"]
    looks = list(sd["table"].uns["synthetic"]["cell_type_looks"])
    img = sd["image"]["scale0"]["image"].values.astype(float)  # (3, H, W), same pixels as the spots
    cent = np.array([g.centroid.coords[0] for g in sd["spots_truth_subspots"].geometry])
    grey = img.mean(axis=0)

    def mean_grey(type_name):
        t = f"type_{looks.index(type_name)}"
        sel = (truth.obs["cell_type"] == t).to_numpy() & (truth.obs["cell_type_fraction"] > 0.7).to_numpy()
        assert sel.sum() >= 3, type_name
        vals = [grey[int(y) - 6 : int(y) + 7, int(x) - 6 : int(x) + 7].mean() for x, y in cent[sel]]
        return np.mean(vals)

    # pale tissue is brighter than nucleus-dense epithelium
    assert mean_grey("pale") > mean_grey("epithelial") + 15


def test_grid_variant():
    sd = synthetic(n_spots=100, n_features=20, k=9, image=False, seed=1)
    spots, tab, truth = sd["spots"], sd["table"], sd["truth"]
    assert (spots.geometry.geom_type == "Polygon").all()
    assert truth.uns["subspots"]["scheme"] == "grid:3"
    assert truth.n_obs == 900
    # squares tile: the footprint is the whole square, spot = plain sum of its sub-spots
    per_spot = _per_spot(truth).loc[tab.obs["spot_id"].to_numpy()].to_numpy()
    np.testing.assert_array_equal(_dense(tab.X), per_spot)
    np.testing.assert_allclose(truth.obs["footprint_weight"], 1.0)


def test_sections_and_bias():
    sd = synthetic(n_spots=60, n_features=20, n_sections=2, section_bias=0.5, seed=2)
    assert {"spots_A", "spots_B", "spots_A_truth_subspots", "spots_B_truth_subspots"} <= set(sd.shapes)
    assert {"image_A", "image_B"} <= set(sd.images)
    tab, truth = sd["table"], sd["truth"]
    assert sorted(tab.uns["spatialdata_attrs"]["region"]) == ["spots_A", "spots_B"]
    assert tab.obs["spot_id"].is_unique and tab.n_obs == 120
    assert set(tab.obs["section"]) == {"A", "B"}
    # sections lie side by side in "global"
    ta = get_transformation(sd["spots_A"], "global").to_affine_matrix(("x", "y"), ("x", "y"))
    tb = get_transformation(sd["spots_B"], "global").to_affine_matrix(("x", "y"), ("x", "y"))
    assert tb[0, 2] > ta[0, 2]
    # different layouts, same profiles; the bias changes the observed counts but not the truth
    inside = _per_spot(truth, "footprint").loc[tab.obs["spot_id"].to_numpy()].to_numpy()
    obs = _dense(tab.X)
    assert not np.array_equal(obs, inside)
    r = np.corrcoef(np.log1p(obs.sum(0)), np.log1p(inside.sum(0)))[0, 1]
    assert r > 0.7


def test_bad_arguments():
    with pytest.raises(SoscopeInputError):
        synthetic(n_spots=10, n_features=5, k=5)
    with pytest.raises(SoscopeInputError):
        synthetic(n_spots=10, n_features=5, n_types=1)
