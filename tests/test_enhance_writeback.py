"""soscope.enhance writes valid, linked sub-spot shapes and tables into the store; bad input fails cleanly."""

import numpy as np
import pytest
import spatialdata as sd
from spatialdata.models import ShapesModel, TableModel
from spatialdata.transformations import Identity, get_transformation, set_transformation
from store_helpers import tree_digest

import soscope
from soscope import SoscopeInputError
from soscope.datasets import synthetic


@pytest.fixture(scope="module")
def hex_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("wb") / "hex.zarr"
    synthetic(n_spots=150, n_features=30, seed=1).write(path)
    return path


@pytest.fixture(scope="module")
def enhanced_hex(hex_store):
    sdata = sd.read_zarr(hex_store)
    soscope.enhance(sdata, table="table", epochs=3, progress=False)
    return sdata


def test_roundtrip_elements_valid_and_linked(hex_store, enhanced_hex):
    back = sd.read_zarr(hex_store)
    assert "spots_soscope" in back.shapes and "table_soscope" in back.tables
    shapes, table = back.shapes["spots_soscope"], back.tables["table_soscope"]
    ShapesModel.validate(shapes)
    TableModel().validate(table)
    attrs = table.uns["spatialdata_attrs"]
    assert attrs["region"] == "spots_soscope" or list(attrs["region"]) == ["spots_soscope"]
    # every table row refers to a polygon, and every polygon has a row
    ids = table.obs[attrs["instance_key"]].to_numpy()
    assert sorted(ids) == sorted(shapes.index.to_numpy())
    # K = 7 sub-spots per spot, numbered 0..6, parents are the spots
    spots = back.shapes["spots"]
    counts = shapes.groupby("spot_id").size()
    assert len(counts) == len(spots) and (counts == 7).all()
    assert set(shapes["subspot"]) == set(range(7))
    assert set(shapes["spot_id"]) == set(spots.index)
    # same transformations as the spots
    assert get_transformation(shapes, get_all=True) == get_transformation(spots, get_all=True)
    # input elements untouched; features and parameters carried
    assert back.tables["table"].shape == enhanced_hex.tables["table"].shape
    assert list(table.var_names) == list(back.tables["table"].var_names)
    uns = table.uns["soscope"]
    assert uns["version"] == soscope.__version__ and uns["subspots"] == "hex7"
    assert len(uns["history"]["train_loss"]) >= 1


def test_subspot_sums_consistent_with_spots(hex_store, enhanced_hex):
    table = enhanced_hex.tables["table_soscope"]
    spot_table = enhanced_hex.tables["table"]
    x = np.asarray(table.X)
    obs = table.obs
    # the part inside each footprint is the observed counts redistributed, the outside part is added:
    # so sub-spot totals never fall below the spot's counts, and exceed them by the unobserved area only
    order = {sid: i for i, sid in enumerate(spot_table.obs["spot_id"].to_numpy())}
    spot_pos = np.array([order[s] for s in obs["spot_id"].to_numpy()])
    totals = np.zeros((spot_table.n_obs, x.shape[1]))
    np.add.at(totals, spot_pos, x)
    observed = np.asarray(spot_table.X.todense() if hasattr(spot_table.X, "todense") else spot_table.X)
    assert (totals >= observed - 1e-3).all()
    inside = np.zeros_like(totals)
    np.add.at(inside, spot_pos, x * obs["footprint_weight"].to_numpy()[:, None])
    # footprint-weighted sums are close to the observations (the model's split of the observed counts)
    rel = np.abs(inside.sum(1) - observed.sum(1)) / observed.sum(1)
    assert np.median(rel) < 0.25


def test_grid_subspots_sum_exactly_to_spots(tmp_path):
    sdata = synthetic(n_spots=100, n_features=20, k=9, seed=2)
    soscope.enhance(sdata, table="table", epochs=2, progress=False)
    table = sdata.tables["table_soscope"]
    assert sdata.shapes["spots_soscope"].groupby("spot_id").size().eq(9).all()
    spot_table = sdata.tables["table"]
    order = {sid: i for i, sid in enumerate(spot_table.obs["spot_id"].to_numpy())}
    pos = np.array([order[s] for s in table.obs["spot_id"].to_numpy()])
    totals = np.zeros((spot_table.n_obs, table.n_vars))
    np.add.at(totals, pos, np.asarray(table.X))
    observed = spot_table.X.toarray() if hasattr(spot_table.X, "toarray") else np.asarray(spot_table.X)
    np.testing.assert_allclose(totals, observed, rtol=1e-4, atol=1e-3)


def test_rerun_same_key_replaces_cleanly(hex_store, enhanced_hex):
    sdata = sd.read_zarr(hex_store)
    before = np.asarray(sdata.tables["table_soscope"].X).copy()
    soscope.enhance(sdata, table="table", epochs=2, progress=False, seed=5)
    back = sd.read_zarr(hex_store)
    assert back.tables["table_soscope"].shape == before.shape
    assert not np.allclose(np.asarray(back.tables["table_soscope"].X), before)
    assert not any(p.name.startswith(".soscope_tmp") for p in hex_store.iterdir())


# ---------------------------------------------------------------- bad input: clear errors, store unchanged
@pytest.fixture
def small_store(tmp_path):
    path = tmp_path / "small.zarr"
    synthetic(n_spots=60, n_features=10, seed=3, image=True).write(path)
    return path


def _fails_cleanly(path, match, mutate=None, **kwargs):
    sdata = sd.read_zarr(path)
    if mutate is not None:
        mutate(sdata)
    before = tree_digest(path)
    with pytest.raises(SoscopeInputError, match=match):
        soscope.enhance(sdata, epochs=1, progress=False, **kwargs)
    assert tree_digest(path) == before


def test_ambiguous_tables_listed(small_store):
    def second_table(s):
        t = s.tables["table"].copy()
        s.tables["table_copy"] = t

    _fails_cleanly(small_store, r"(?s)(table.*table_copy|table_copy.*table).*table=", mutate=second_table)


def test_truth_table_is_never_picked(small_store):
    sdata = sd.read_zarr(small_store)
    assert soscope.io.select(sdata).table == "table"


def test_no_table(small_store):
    def drop_tables(s):
        for name in list(s.tables):
            del s.tables[name]

    _fails_cleanly(small_store, r"(?i)no table", mutate=drop_tables)


def test_table_not_annotating_shapes(small_store):
    def unlink(s):
        del s.tables["truth"]
        s.tables["table"].uns.pop("spatialdata_attrs")

    _fails_cleanly(small_store, r"(?i)annotat", mutate=unlink)


def test_non_count_data_with_count_likelihood(small_store):
    def to_float(s):
        t = s.tables["table"]
        x = t.X.toarray() if hasattr(t.X, "toarray") else np.asarray(t.X)
        t.X = x * 0.37

    _fails_cleanly(small_store, r"(?i)integer|count", mutate=to_float, table="table", likelihood="nb")


def test_nan_and_negative_values(small_store):
    def poison(value):
        def f(s):
            t = s.tables["table"]
            x = t.X.toarray() if hasattr(t.X, "toarray") else np.asarray(t.X, dtype=float)
            x = x.astype(float)
            x[0, 0] = value
            t.X = x

        return f

    _fails_cleanly(small_store, r"(?i)nan", mutate=poison(np.nan), table="table")
    _fails_cleanly(small_store, r"(?i)negative", mutate=poison(-3.0), table="table")


def test_image_in_other_coordinate_system(small_store):
    def move_image(s):
        set_transformation(s.images["image"], {"other": Identity()}, set_all=True)

    _fails_cleanly(small_store, r"(?i)coordinate", mutate=move_image, table="table", image="image")
