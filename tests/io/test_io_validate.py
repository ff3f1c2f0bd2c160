"""Bad inputs: each raises SoscopeInputError naming the problem and the fix; soft problems warn and mask."""

from __future__ import annotations

import logging
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import spatialdata as sd
import xarray as xr
from io_helpers import make_image, make_outputs, make_sdata, make_spots, make_table
from spatialdata.models import Labels2DModel, TableModel

from soscope._errors import SoscopeInputError
from soscope.io import (
    check_counts,
    check_image,
    check_min_spots,
    check_output_names,
    check_values,
    counts_matrix,
    is_integer_valued,
    is_soscope_output,
    select,
    zero_spots_mask,
    zero_variance_mask,
)

NAMES = [f"gene{j}" for j in range(4)]


def test_no_table():
    """No table at all: the message shows how to add one."""
    sdata = sd.SpatialData(shapes={"spots": make_spots()})
    with pytest.raises(SoscopeInputError, match=r"no table.*TableModel\.parse\(adata, region='spots'"):
        select(sdata)


def test_table_not_annotating():
    """A table without region metadata: the message shows how to link it."""
    sdata = make_sdata()
    t = sdata.tables["table"]
    del t.uns["spatialdata_attrs"]
    with pytest.raises(
        SoscopeInputError, match=r"does not annotate.*TableModel\.parse.*set_table_annotates_spatialelement"
    ):
        select(sdata)


def test_table_annotating_labels():
    """A table annotating labels: soscope needs shapes."""
    labels = Labels2DModel.parse(np.arange(20, dtype=np.int32).reshape(4, 5), dims=("y", "x"))
    adata = ad.AnnData(
        X=np.ones((20, 3), np.float32),
        obs=pd.DataFrame(
            {"region": pd.Categorical(["cells"] * 20), "label": np.arange(20)},
            index=[f"c{i}" for i in range(20)],
        ),
    )
    table = TableModel.parse(adata, region="cells", region_key="region", instance_key="label")
    sdata = sd.SpatialData(labels={"cells": labels}, tables={"table": table})
    with pytest.raises(SoscopeInputError, match=r"annotates 'cells' \(labels\).*shapes element.*to_polygons"):
        select(sdata)


def test_table_annotating_missing_element():
    """A table annotating an element that is not there."""
    sdata = sd.SpatialData(shapes={"other": make_spots()})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sdata.tables["table"] = make_table("spots")
    with pytest.raises(
        SoscopeInputError, match=r"annotates \['spots'\], which is not in the SpatialData.*'other'"
    ):
        select(sdata)


def test_duplicated_ids_in_shapes():
    """Duplicated ids in the shapes index."""
    sdata = make_sdata(image=False)
    gdf = sdata.shapes["spots"]
    gdf.index = np.r_[np.arange(19), 3]
    with pytest.raises(
        SoscopeInputError, match=r"Shapes 'spots' has 1 duplicated instance ids.*unique index"
    ):
        select(sdata)


def test_duplicated_ids_in_table():
    """Two table rows for the same spot."""
    sdata = make_sdata(image=False)
    t = sdata.tables["table"]
    t.obs["spot_id"] = np.r_[np.arange(19), 0]
    with pytest.raises(SoscopeInputError, match=r"more than one row"):
        select(sdata)


def test_table_ids_not_in_shapes():
    """Table rows referring to ids absent from the shapes."""
    sdata = make_sdata(image=False)
    t = sdata.tables["table"]
    t.obs["spot_id"] = np.arange(20) + 100
    with pytest.raises(
        SoscopeInputError, match=r"20 rows of table 'table' refer to instance ids not in shapes 'spots'"
    ):
        select(sdata)


def test_single_spot():
    """One spot is not enough."""
    sdata = sd.SpatialData(shapes={"spots": make_spots(1, 1)}, tables={"table": make_table(n_per_region=1)})
    with pytest.raises(SoscopeInputError, match=r"1 spot: soscope needs at least 2 spots"):
        select(sdata)
    with pytest.raises(SoscopeInputError, match="at least 2"):
        check_min_spots(0)


def test_empty_table():
    """A table without features."""
    sdata = make_sdata(image=False)
    sdata.tables["table"] = TableModel.parse(sdata.tables["table"][:, []].copy())
    with pytest.raises(SoscopeInputError, match="no features"):
        select(sdata)


@pytest.mark.parametrize("sparse", [False, True])
def test_nan_inf_negative(sparse):
    """NaN, infinite and negative values are counted per feature."""
    x = np.ones((5, 4), np.float32)
    x[0, 1] = np.nan
    x[1, 1] = np.nan
    x[2, 3] = np.inf
    x[3, 0] = -2
    m = sp.csr_matrix(x) if sparse else x
    with pytest.raises(SoscopeInputError) as e:
        check_values(m, var_names=NAMES)
    msg = str(e.value)
    assert "2 NaN values in 1 features (gene1)" in msg
    assert "1 infinite values in 1 features (gene3)" in msg
    assert "1 negative values in 1 features (gene0)" in msg
    x[np.isnan(x) | np.isinf(x)] = 0
    check_values(sp.csr_matrix(x) if sparse else x, allow_negative=True)


@pytest.mark.parametrize("sparse", [False, True])
def test_non_integer_counts(sparse):
    """Count likelihoods need integers, Bernoulli needs 0/1."""
    x = np.ones((5, 4), np.float32)
    x[:, 2] = 0.5
    m = sp.csr_matrix(x) if sparse else x
    with pytest.raises(
        SoscopeInputError,
        match=r"likelihood='nb' needs integer counts.*5 values in 1 features are not integers "
        r"\(gene2\).*layer=",
    ):
        check_counts(m, "nb", var_names=NAMES)
    check_counts(m, "gaussian")
    check_counts(m, "poisson", features=np.array([True, True, False, True]))  # other modality left out
    assert not is_integer_valued(m) and is_integer_valued(m, np.array([1, 1, 0, 1], bool))
    with pytest.raises(SoscopeInputError, match="needs values 0/1"):
        check_counts(m, "bernoulli", var_names=NAMES)
    check_counts(np.array([[0, 1], [1, 0]]), "bernoulli")


@pytest.mark.parametrize("sparse", [False, True])
def test_zero_spots_and_constant_features_warn(sparse, caplog):
    """All-zero spots and constant features warn and return masks."""
    x = np.array([[1, 0, 2], [0, 0, 2], [3, 0, 2], [0, 0, 0]], np.float32)
    x[3, 2] = 2  # feature 2 constant, feature 1 all zero
    x[1] = 0
    x[1, 2] = 2  # spot 1 not all-zero (feature 2)
    x2 = x.copy()
    x2[3] = 0
    m = sp.csr_matrix(x2) if sparse else x2
    with caplog.at_level(logging.WARNING, logger="soscope"):
        spots = zero_spots_mask(m)
        feats = zero_variance_mask(sp.csr_matrix(x) if sparse else x, var_names=["a", "b", "c"])
    np.testing.assert_array_equal(spots, [False, False, False, True])
    np.testing.assert_array_equal(feats, [False, True, True])
    assert "1 of 4 spots have no counts" in caplog.text
    assert "2 of 3 features are constant" in caplog.text and "b, c" in caplog.text


def test_image_checks():
    """Channel axis, dtype and channel count of images."""
    check_image(make_image(), "he")
    check_image(make_image(channels=1), "dapi")
    with pytest.raises(SoscopeInputError, match=r"2 channels.*1 channel.*3 or more.*image=False"):
        check_image(make_image(channels=2), "two")
    no_c = xr.DataArray(np.zeros((8, 8), np.uint8), dims=("y", "x"))
    with pytest.raises(SoscopeInputError, match=r"without a channel axis 'c'.*Image2DModel\.parse"):
        check_image(no_c, "flat")
    bad = xr.DataArray(np.zeros((3, 8, 8), np.int64), dims=("c", "y", "x"))
    with pytest.raises(SoscopeInputError, match=r"dtype int64.*uint8, uint16 or float"):
        check_image(bad, "ints")
    sdata = make_sdata()
    sdata.images["he"] = make_image(channels=2)
    with pytest.raises(SoscopeInputError, match="2 channels"):
        select(sdata)


def test_multiscale_image_ok():
    """A multiscale image is checked at full resolution."""
    from spatialdata.models import Image2DModel

    arr = np.zeros((3, 64, 64), np.uint16)
    img = Image2DModel.parse(arr, dims=("c", "y", "x"), scale_factors=[2])
    check_image(img, "pyramid")


def test_check_output_names():
    """Output names may replace soscope's outputs, not user elements (unless overwrite)."""
    sdata = make_sdata()
    shapes, tables = make_outputs(sdata)
    check_output_names(sdata, ["spots_soscope", "table_soscope"])  # nothing there yet
    with pytest.raises(
        SoscopeInputError,
        match=r"already has shapes 'spots' that soscope did not write.*key_added=.*overwrite=True",
    ):
        check_output_names(sdata, {"spots": "shapes"})
    check_output_names(sdata, {"spots": "shapes"}, overwrite=True)
    with pytest.raises(SoscopeInputError, match=r"'he' already names images.*key_added="):
        check_output_names(sdata, {"he": "shapes"}, overwrite=True)
    with pytest.raises(SoscopeInputError, match="not a valid element name"):
        check_output_names(sdata, ["bad name"])
    for k, v in {**shapes, **tables}.items():
        sdata[k] = v
    assert is_soscope_output(sdata, "table_soscope") and is_soscope_output(sdata, "spots_soscope")
    assert not is_soscope_output(sdata, "table") and not is_soscope_output(sdata, "spots")
    check_output_names(sdata, {"spots_soscope": "shapes", "table_soscope": "tables"})  # replaced freely


def test_checks_never_densify_sparse(monkeypatch):
    """counts_matrix and every check work on .data/.indices: a (N>1)-row toarray would be a bug."""
    sdata = make_sdata(sparse=True)
    orig_toarray, orig_todense = sp.csr_matrix.toarray, sp.csr_matrix.todense

    def guard(orig):
        def f(self, *a, **k):
            if self.shape[0] > 1:
                raise AssertionError("densified a sparse matrix")
            return orig(self, *a, **k)

        return f

    for cls in (sp.csr_matrix, sp.csc_matrix, sp.coo_matrix):
        monkeypatch.setattr(cls, "toarray", guard(cls.toarray))
        monkeypatch.setattr(cls, "todense", guard(cls.todense))
    m = counts_matrix(sdata, select(sdata))
    assert sp.issparse(m)
    check_values(m)
    check_counts(m, "nb")
    zero_spots_mask(m)
    zero_variance_mask(m)
    del orig_toarray, orig_todense


def test_choose_coordinate_system_given_only_global_or_error():
    import geopandas as gpd
    from shapely.geometry import Point
    from spatialdata.models import ShapesModel
    from spatialdata.transformations import Identity

    def shapes(*systems):
        gdf = gpd.GeoDataFrame({"radius": [1.0]}, geometry=[Point(0, 0)])
        return ShapesModel.parse(gdf, transformations={s: Identity() for s in systems})

    from soscope.io import choose_coordinate_system

    a, b = shapes("global", "aligned"), shapes("global", "aligned")
    assert choose_coordinate_system({"a": a, "b": b}) == "global"  # ambiguous, "global" shared
    assert choose_coordinate_system({"a": a, "b": b}, "aligned") == "aligned"
    assert choose_coordinate_system({"a": shapes("A"), "b": shapes("A", "B")}) == "A"  # the only one shared
    with pytest.raises(SoscopeInputError, match=r"coordinate_system='B' is not shared by \['a', 'b'\]"):
        choose_coordinate_system({"a": shapes("A"), "b": shapes("A", "B")}, "B")
    with pytest.raises(SoscopeInputError, match=r"share the coordinate systems \['x', 'y'\]; pass"):
        choose_coordinate_system({"a": shapes("x", "y"), "b": shapes("x", "y")}, purpose="the maps")
    with pytest.raises(SoscopeInputError, match="share no coordinate system, which pseudo-spots needs"):
        choose_coordinate_system({"a": shapes("A"), "b": shapes("B")}, purpose="pseudo-spots")
