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


# ----------------------------------------------------------------------------------- style="realistic"
@pytest.fixture(scope="module")
def realistic():
    return synthetic(n_spots=150, n_features=40, seed=3, style="realistic")


@pytest.fixture(scope="module")
def realistic_flat():
    """Make the same tissue and counts with a uniform stain (no gradient, no section factor)."""
    return synthetic(n_spots=150, n_features=40, seed=3, style="realistic", stain_gradient=0.0)


def _image(sd, name="image"):
    return sd[name]["scale0"]["image"].values


def test_realistic_records_options_and_keeps_painted_default(realistic, small):
    p = realistic["table"].uns["synthetic"]
    assert p["style"] == "realistic" and p["look_alike_types"]
    assert p["stain_gradient"] == 0.25 and p["expression_states"] == 0.5 and list(p["depth"]) == [100, 3000]
    q = small["table"].uns["synthetic"]
    assert q["style"] == "painted" and q["stain_gradient"] == 0 and q["expression_states"] == 0
    assert len(q["depth"]) == 0
    with pytest.raises(SoscopeInputError):
        synthetic(n_spots=10, n_features=5, look_alike_types=True)  # painted has no such image
    with pytest.raises(SoscopeInputError):
        synthetic(n_spots=10, n_features=5, style="photo")
    with pytest.raises(SoscopeInputError):
        synthetic(n_spots=10, n_features=5, depth=(300, 100))


def test_realistic_deterministic(realistic):
    again = synthetic(n_spots=150, n_features=40, seed=3, style="realistic")
    np.testing.assert_array_equal(_dense(again["table"].X), _dense(realistic["table"].X))
    np.testing.assert_array_equal(_dense(again["truth"].X), _dense(realistic["truth"].X))
    np.testing.assert_array_equal(_image(again), _image(realistic))
    other = synthetic(n_spots=150, n_features=40, seed=4, style="realistic", image=False)
    assert not np.array_equal(_dense(other["table"].X), _dense(realistic["table"].X))


def test_realistic_spot_counts_are_sums_of_inside_parts(realistic):
    tab, truth = realistic["table"], realistic["truth"]
    inside = _per_spot(truth, "footprint").loc[tab.obs["spot_id"].to_numpy()].to_numpy()
    np.testing.assert_array_equal(_dense(tab.X), inside)  # exactly, as in the painted style
    assert (_dense(truth.X) >= _dense(truth.layers["footprint"])).all()


def test_realistic_depth_spans_100_to_3000():
    # a slide large enough for the smooth depth field to sweep its range (a small patch sees part of it)
    sd = synthetic(n_spots=800, n_features=40, seed=3, style="realistic", image=False)
    tot = _dense(sd["table"].X).sum(axis=1)
    lo, med, hi = np.percentile(tot, [5, 50, 95])
    # depth is log-uniform in [100, 3000] for a spot of median content; totals also follow the cells
    assert lo < 200 and 300 < med < 1500 and hi > 2000
    painted = _dense(synthetic(n_spots=800, n_features=40, seed=3, image=False)["table"].X).sum(axis=1)
    assert np.percentile(painted, 95) / np.percentile(painted, 5) < 4 < 8 < hi / lo
    fixed = synthetic(n_spots=150, n_features=40, seed=3, style="realistic", image=False, depth=(500, 500))
    assert 300 < np.median(_dense(fixed["table"].X).sum(axis=1)) < 800


def _pure(truth, t, least=0.8):
    return (truth.obs["cell_type"] == f"type_{t}").to_numpy() & (
        truth.obs["cell_type_fraction"] > least
    ).to_numpy()


def test_look_alike_types_share_colour_but_not_nucleus_size(realistic_flat):
    from shapely import STRtree, points

    from soscope.features import segment_nuclei
    from soscope.features._morphology import rgb_to_hed

    sd = realistic_flat
    looks = list(sd["table"].uns["synthetic"]["cell_type_looks"])
    assert looks[1] == "epithelial (twin: nucleus size)" and looks[3].startswith("stroma (twin")
    img = _image(sd)
    truth = sd["truth"]
    cent = np.array([g.centroid.coords[0] for g in sd["spots_truth_subspots"].geometry])
    haem = rgb_to_hed(img.astype(np.float32) / 255, channel_axis=0)[0]
    low_h = haem < np.median(haem)  # cytoplasm, not nuclei

    def cytoplasm_rgb(t):
        sel = _pure(truth, t, 0.9)
        assert sel.sum() >= 8, t
        vals = []
        for x, y in cent[sel]:
            win = (slice(None), slice(int(y) - 5, int(y) + 6), slice(int(x) - 5, int(x) + 6))
            vals.append(img[win][:, low_h[win[1:]]].mean(axis=1))
        return np.mean(vals, axis=0)

    c0, c1, c2 = cytoplasm_rgb(0), cytoplasm_rgb(1), cytoplasm_rgb(2)
    assert np.abs(c0 - c1).max() < 3  # the look-alike pair: the same colour
    assert np.abs(c0 - c2).max() > 8  # another look: a visibly different colour

    mpp = sd["table"].uns["synthetic"]["microns_per_pixel"]
    nuc = segment_nuclei(img, microns_per_pixel=mpp, stain="he")
    hit, sub = STRtree(sd["spots_truth_subspots"].geometry.values).query(
        points(nuc[["x_px", "y_px"]].to_numpy()), predicate="within"
    )
    area = nuc["area_um2"].to_numpy()

    def median_area(t):
        sel = _pure(truth, t)[sub]
        assert sel.sum() >= 100, t
        return np.median(area[hit[sel]])

    assert median_area(0) > 1.3 * median_area(1)  # the twin's nuclei are smaller (radius x 0.7)


def test_stain_gradient_varies_across_the_slide_and_sections(realistic, realistic_flat):
    def block_od(img, n=6):
        od = -np.log(np.maximum(img.astype(float), 1.0) / 255).sum(axis=0)
        h, w = od.shape
        return np.array(
            [
                od[i * h // n : (i + 1) * h // n, j * w // n : (j + 1) * w // n].mean()
                for i in range(n)
                for j in range(n)
            ]
        )

    # same tissue, same cells: the ratio of the blocks' optical densities is the stain field
    ratio = block_od(_image(realistic)) / block_od(_image(realistic_flat))
    assert ratio.max() / ratio.min() > 1.15
    two = synthetic(n_spots=60, n_features=20, n_sections=2, seed=2, style="realistic", stain_gradient=0.5)
    a, b = (block_od(_image(two, f"image_{s}"), 3).mean() for s in "AB")
    assert abs(np.log(a / b)) > 0.05  # each section has its own stain


def test_expression_states_vary_within_a_type():
    kw = {"n_spots": 150, "n_features": 40, "seed": 3, "style": "realistic", "image": False, "depth": False}
    with_states, without = synthetic(**kw), synthetic(**kw, expression_states=0.0)

    def within_type_cv(sd):
        truth = sd["truth"]
        sel = _pure(truth, 0, 0.999) & (truth.obs["n_cells"] >= 3).to_numpy()
        per_cell = _dense(truth.layers["mean"])[sel] / truth.obs["n_cells"].to_numpy()[sel, None]
        return np.percentile(per_cell.std(axis=0) / per_cell.mean(axis=0), 90)  # the loaded features

    assert within_type_cv(with_states) > within_type_cv(without) + 0.05
