"""pseudo_spots on a small hand-made cell table: exact sums, checked independently."""

import anndata as ad
import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import shapely
from spatialdata import SpatialData
from spatialdata.models import ShapesModel, TableModel
from spatialdata.transformations import Scale, get_transformation

from soscope._errors import SoscopeInputError
from soscope.evaluate import pseudo_spots

MPP = 0.5  # cells are stored in pixels of 0.5 µm


@pytest.fixture(scope="module")
def cells():
    rng = np.random.default_rng(0)
    n = 900
    xy_um = rng.uniform(0, 420, (n, 2))
    counts = rng.poisson(3.0, (n, 5)).astype(np.int64)
    return xy_um, counts


def _sdata(xy_um, counts, kind="circles"):
    xy_px = xy_um / MPP
    if kind == "circles":
        gdf = gpd.GeoDataFrame({"radius": np.full(len(xy_px), 4.0)}, geometry=shapely.points(xy_px))
    else:  # small square polygons centred on the cells
        gdf = gpd.GeoDataFrame(
            geometry=shapely.box(xy_px[:, 0] - 3, xy_px[:, 1] - 3, xy_px[:, 0] + 3, xy_px[:, 1] + 3)
        )
    gdf.index = pd.Index(np.arange(100, 100 + len(xy_px)))  # ids that are not row numbers
    shapes = ShapesModel.parse(gdf, transformations={"global": Scale([MPP, MPP], axes=("x", "y"))})
    obs = pd.DataFrame({"cell_id": gdf.index.to_numpy(), "region": pd.Categorical(["cells"] * len(gdf))})
    obs.index = obs.index.astype(str)
    # shuffle the table rows: matching must go through the instance key
    perm = np.random.default_rng(5).permutation(len(gdf))
    obs = obs.iloc[perm].reset_index(drop=True)
    obs.index = obs.index.astype(str)
    adata = ad.AnnData(X=sp.csr_matrix(counts[perm]), obs=obs)
    adata.var_names = [f"g{i}" for i in range(counts.shape[1])]
    table = TableModel.parse(adata, region="cells", region_key="region", instance_key="cell_id")
    return SpatialData(shapes={"cells": shapes}, tables={"cells_table": table})


@pytest.mark.parametrize("kind", ["circles", "polygons"])
def test_hex_pseudo_spots_exact_sums(cells, kind):
    xy_um, counts = cells
    sd = _sdata(xy_um, counts, kind)
    out = pseudo_spots(sd, table="cells_table", spot_diameter=55.0, spacing=100.0)
    assert {"spots", "table", "spots_truth_subspots", "truth"} <= set(out.shapes) | set(out.tables)
    spots, tab, truth, subs = out["spots"], out["table"], out["truth"], out["spots_truth_subspots"]
    assert get_transformation(spots, "global") is not None
    centres = shapely.get_coordinates(spots.geometry.values)
    x = tab.X.toarray()
    # independent check: cells whose centre lies within 27.5 µm of each centre
    d = np.hypot(xy_um[:, None, 0] - centres[None, :, 0], xy_um[:, None, 1] - centres[None, :, 1])
    expected = ((d <= 27.5).T.astype(np.int64)) @ counts
    np.testing.assert_array_equal(x, expected)
    assert (tab.obs["n_cells"].to_numpy() == (d <= 27.5).sum(axis=0)).all()
    assert (tab.obs["n_cells"] > 0).all()  # empty pseudo-spots dropped
    # truth: cells whose centre lies in each sub-spot polygon
    tx = truth.X.toarray()
    inside = shapely.contains_xy(
        np.asarray(subs.geometry.values, dtype=object)[:, None], xy_um[None, :, 0], xy_um[None, :, 1]
    )
    np.testing.assert_array_equal(tx, inside.astype(np.int64) @ counts)
    assert (truth.obs["subspot"].groupby(truth.obs["spot_id"]).size() == 7).all()
    # hex7 tiles the lattice cell, which holds the footprint: sub-spot sums >= spot counts
    per_spot = pd.DataFrame(tx).groupby(truth.obs["spot_id"].to_numpy()).sum().to_numpy()
    assert (per_spot >= x).all() and (per_spot > x).any()
    assert truth.uns["subspots"]["scheme"] == "hex7"


def test_square_pseudo_spots_plain_sum(cells):
    xy_um, counts = cells
    sd = _sdata(xy_um, counts)
    out = pseudo_spots(sd, table="cells_table", spacing=60.0, lattice="square", subspots="grid:2")
    tab, truth = out["table"], out["truth"]
    x, tx = tab.X.toarray(), truth.X.toarray()
    per_spot = pd.DataFrame(tx).groupby(truth.obs["spot_id"].to_numpy()).sum().to_numpy()
    np.testing.assert_array_equal(per_spot, x)  # squares tile: spot = plain sum of its sub-spots
    assert x.sum() == counts.sum()  # every cell lands in exactly one square
    assert (truth.obs["subspot"].groupby(truth.obs["spot_id"]).size() == 4).all()


def test_pseudo_spots_errors(cells):
    xy_um, counts = cells
    sd = _sdata(xy_um, counts)
    with pytest.raises(SoscopeInputError, match="spot_diameter"):
        pseudo_spots(sd, table="cells_table", spacing=100.0)
    with pytest.raises(SoscopeInputError, match="No table"):
        pseudo_spots(sd, table="nope", spot_diameter=55.0, spacing=100.0)
    with pytest.raises(SoscopeInputError, match="lattice"):
        pseudo_spots(sd, spot_diameter=55.0, spacing=100.0, lattice="tri")


def test_image_is_carried_with_its_transformation(cells):
    from spatialdata.models import Image2DModel

    xy_um, counts = cells
    sd = _sdata(xy_um, counts)
    img = np.zeros((3, 900, 900), dtype=np.uint8)
    sd.images["he"] = Image2DModel.parse(
        img, dims=("c", "y", "x"), transformations={"global": Scale([MPP, MPP], axes=("x", "y"))}
    )
    out = pseudo_spots(sd, table="cells_table", spot_diameter=55.0, spacing=100.0, image="he")
    assert "image" in out.images
    t = get_transformation(out["image"], "global").to_affine_matrix(("x", "y"), ("x", "y"))
    np.testing.assert_allclose(np.diag(t)[:2], [MPP, MPP])
    # the spots live in the coordinate system (µm) with an identity
    t_spots = get_transformation(out["spots"], "global").to_affine_matrix(("x", "y"), ("x", "y"))
    np.testing.assert_allclose(t_spots, np.eye(3))
