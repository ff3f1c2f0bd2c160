"""Every bad input of issue 10, through ``soscope.enhance``.

Each gives a clear error naming the problem and the fix, or (soft problems) a warning that says what soscope
did, and a run that still completes.
"""

from __future__ import annotations

import logging
import re

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import spatialdata as sd
from shapely.geometry import Point
from spatialdata.models import Image2DModel, ShapesModel, TableModel
from spatialdata.transformations import Identity, Scale, Translation, get_transformation, set_transformation

import soscope
from soscope import SoscopeInputError
from soscope.datasets import synthetic

FAST = dict(epochs=1, progress=False)


def _sdata(*, image: bool = False, k: int = 7, n_spots: int = 60, n_features: int = 20, seed: int = 0):
    """Make a small synthetic section without its truth elements: one table, one spots element, an image."""
    s = synthetic(n_spots=n_spots, n_features=n_features, k=k, image=image, seed=seed)
    del s.tables["truth"]
    del s.shapes["spots_truth_subspots"]
    return s


def _dense(x) -> np.ndarray:
    return np.asarray(x.toarray() if sp.issparse(x) else x)


def _raises(sdata, *patterns: str, **kwargs) -> str:
    """Run enhance, expect a SoscopeInputError whose message matches every pattern (problem, then fix)."""
    before = {k: id(v) for k, v in [*sdata.shapes.items(), *sdata.tables.items()]}
    with pytest.raises(SoscopeInputError) as info:
        soscope.enhance(sdata, **{**FAST, **kwargs})
    msg = str(info.value)
    for pat in patterns:
        assert re.search(pat, msg, flags=re.S), f"{pat!r} not in: {msg}"
    after = {k: id(v) for k, v in [*sdata.shapes.items(), *sdata.tables.items()]}
    assert after == before, "a refused run must leave the SpatialData as it was"
    return msg


def _replace_geometry(sdata, points: dict[int, Point]) -> None:
    """Move some spots (by position) and re-parse the shapes with their transformations."""
    g = sdata.shapes["spots"]
    tr = get_transformation(g, get_all=True)
    geom = g.geometry.copy()
    for i, p in points.items():
        geom.iloc[i] = p
    g2 = g.copy()
    g2.geometry = geom
    g2.attrs = {}
    sdata.shapes["spots"] = ShapesModel.parse(g2, transformations=tr)


def _image_array(sdata) -> tuple[np.ndarray, dict]:
    img = sdata.images["image"]
    return np.asarray(img["scale0"]["image"].data), get_transformation(img, get_all=True)


# ------------------------------------------------------------------------------ missing / ambiguous elements
def test_missing_table():
    s = _sdata()
    del s.tables["table"]
    _raises(s, r"no table", r"TableModel\.parse\(adata, region='spots'")


def test_missing_named_elements():
    _raises(_sdata(), r"No table 'nope'", r"\['table'\].*`table=`", table="nope")
    _raises(_sdata(), r"No shapes \['nope'\]", r"'spots'.*`spots=`", spots="nope")
    _raises(_sdata(image=True), r"No image 'nope'", r"\['image'\].*image=False", image="nope")


def test_ambiguous_tables():
    s = _sdata()
    s.tables["table_copy"] = s.tables["table"].copy()
    _raises(s, r"Several tables.*'table'.*'table_copy'", r"pass `table=`")


def test_ambiguous_images():
    s = _sdata(image=True)
    arr, tr = _image_array(s)
    s.images["image2"] = Image2DModel.parse(arr, dims=("c", "y", "x"), transformations=tr)
    _raises(s, r"Several images.*'image'.*'image2'", r"pass `image=`.*image=False")


def test_ambiguous_coordinate_systems():
    s = _sdata(image=True)
    set_transformation(s.shapes["spots"], Identity(), to_coordinate_system="aligned")
    set_transformation(s.images["image"], Identity(), to_coordinate_system="aligned")
    _raises(s, r"Several coordinate systems.*'global'.*'aligned'", r"pass `coordinate_system=`")


# --------------------------------------------------------------------------------- table not linked to shapes
def test_table_not_linked_to_shapes():
    s = _sdata()
    del s.tables["table"].uns["spatialdata_attrs"]
    _raises(
        s,
        r"does not annotate any element",
        r"set_table_annotates_spatialelement.*shapes present: \['spots'\]",
    )


def test_table_linked_to_an_absent_element():
    s = _sdata()
    s.tables["table"].uns["spatialdata_attrs"]["region"] = "gone"
    s.tables["table"].obs["region"] = pd.Categorical(["gone"] * s.tables["table"].n_obs)
    _raises(
        s,
        r"annotates \['gone'\], which is not in the SpatialData.*'spots'",
        r"set_table_annotates_spatialelement",
    )


# -------------------------------------------------------------------------- duplicated / missing instance ids
def test_duplicated_instance_ids_in_shapes():
    s = _sdata()
    g = s.shapes["spots"]
    g.index = np.r_[np.arange(len(g) - 1), 0]
    _raises(
        s, r"Shapes 'spots' has 1 duplicated instance ids", r"give every spot a unique index.*reset_index"
    )


def test_duplicated_instance_ids_in_table():
    s = _sdata()
    ids = s.tables["table"].obs["spot_id"].to_numpy().copy()
    ids[1] = ids[0]
    s.tables["table"].obs["spot_id"] = ids
    _raises(s, r"instance ids of 'spots' used by more than one row", r"aggregate or drop the duplicates")


def test_instance_ids_missing_from_shapes():
    s = _sdata()
    s.tables["table"].obs["spot_id"] = s.tables["table"].obs["spot_id"].to_numpy() + 10_000
    _raises(
        s,
        r"60 rows of table 'table' refer to instance ids not in shapes 'spots'",
        r"Make obs\['spot_id'\] hold the shapes' index values, or subset the table",
    )


def test_spots_without_a_table_row_are_left_out(caplog):
    """Spots with no table row are not an error: they are left out of training and output, and logged."""
    s = _sdata()
    t = s.tables["table"]
    s.tables["table"] = TableModel.parse(t[5:].copy())
    with caplog.at_level(logging.INFO, logger="soscope"):
        soscope.enhance(s, **FAST)
    assert "5 spots of 'spots' have no row in table 'table'; they are left out" in caplog.text
    parents = set(s.shapes["spots_soscope"]["spot_id"])
    assert parents == set(t.obs["spot_id"].to_numpy()[5:])


# ------------------------------------------------------------------------------------------- all-zero spots
def test_all_zero_spots_are_skipped_and_reported(caplog):
    """All-zero spots: warned about by count and id, left out of the loss; their in-footprint counts are 0."""
    from soscope.model import SoScope
    from soscope.model._core import build_batches

    s = _sdata(k=9)
    t = s.tables["table"]
    x = _dense(t.X).astype(np.float32)
    zero = [3, 17, 40]
    x[zero] = 0
    t.X = sp.csr_matrix(x)
    ids = t.obs["spot_id"].to_numpy()
    with caplog.at_level(logging.WARNING, logger="soscope"):
        m = SoScope(s, progress=False)
    warn = [r.getMessage() for r in caplog.records if "no counts at all" in r.getMessage()]
    assert len(warn) == 1
    assert warn[0].startswith("3 of 60 spots have no counts at all")
    assert all(f"'{ids[i]}'" in warn[0] for i in zero)
    assert "skipped in training" in warn[0] and "Drop them from the table" in warn[0]
    # left out of the training loss
    data = m.prepared.data
    _, batches = build_batches(data, m.normaliser, m.module.config, chunk_spots=data.n_spots)
    assert not bool(batches[0].loss_mask[zero].any()) and int(batches[0].loss_mask.sum()) == 60 - 3
    # every spot still gets its K sub-spots; grid sub-spots lie inside the footprint, so these are exactly 0
    m.train(epochs=1)
    m.enhance()
    out = s.tables["table_soscope"]
    assert out.obs.groupby("spot_id").size().eq(9).all() and out.obs["spot_id"].nunique() == 60
    is_zero = out.obs["spot_id"].isin(ids[zero]).to_numpy()
    xo = _dense(out.X)
    assert np.all(xo[is_zero] == 0)
    assert np.all(xo[~is_zero].sum(1) > 0)


def test_all_zero_spots_hex7_centre_subspot_is_zero():
    """With hex7 the centre sub-spot lies inside the footprint: 0 for an all-zero spot; the rest finite."""
    s = _sdata()
    t = s.tables["table"]
    x = _dense(t.X).astype(np.float32)
    x[[0, 7]] = 0
    t.X = x
    soscope.enhance(s, **FAST)
    out = s.tables["table_soscope"]
    zero_ids = t.obs["spot_id"].to_numpy()[[0, 7]]
    xo = _dense(out.X)
    inside = (out.obs["footprint_weight"].to_numpy() > 1 - 1e-6) & out.obs["spot_id"].isin(
        zero_ids
    ).to_numpy()
    assert inside.sum() == 2 and np.all(xo[inside] == 0)
    assert np.isfinite(xo).all() and (xo >= 0).all()


def test_every_spot_zero_is_refused():
    s = _sdata()
    t = s.tables["table"]
    t.X = sp.csr_matrix(t.shape, dtype=np.float32)
    _raises(s, r"All 60 spots have no counts at all", r"pass `layer=` naming the layer that holds the counts")


# --------------------------------------------------------------------------------------- NaN / inf / negative
@pytest.mark.parametrize("value, label", [(np.nan, "NaN"), (np.inf, "infinite"), (-3.0, "negative")])
@pytest.mark.parametrize("sparse", [False, True])
def test_nan_inf_negative_values(value, label, sparse):
    s = _sdata()
    t = s.tables["table"]
    x = _dense(t.X).astype(np.float32)
    x[4, 2] = value
    x[9, 2] = value
    t.X = sp.csr_matrix(x) if sparse else x
    name = t.var_names[2]
    _raises(
        s,
        rf"2 {label} values in 1 features \({name}\)",
        r"fill or drop these features.*`layer=` naming the raw counts",
        likelihood="nb",
    )


def test_negative_values_allowed_with_gaussian():
    s = _sdata()
    t = s.tables["table"]
    x = np.log1p(_dense(t.X).astype(np.float32))
    t.X = x - x.mean(0)
    soscope.enhance(s, likelihood="gaussian", **FAST)
    assert np.isfinite(_dense(s.tables["table_soscope"].X)).all()


# ------------------------------------------------------------------------ non-integer data, count likelihood
@pytest.mark.parametrize("likelihood", ["nb", "zinb", "poisson"])
def test_non_integer_data_with_count_likelihood(likelihood):
    s = _sdata()
    t = s.tables["table"]
    t.X = _dense(t.X).astype(np.float32) * 0.37
    _raises(
        s,
        rf"likelihood='{likelihood}' needs integer counts, but \d+ values in \d+ features are not integers",
        r"Pass `layer=` naming the raw counts, or `likelihood='gaussian'`",
        likelihood=likelihood,
    )


def test_non_integer_data_with_auto_likelihood_uses_gaussian():
    s = _sdata()
    t = s.tables["table"]
    t.X = np.log1p(_dense(t.X).astype(np.float32))
    soscope.enhance(s, **FAST)
    assert dict(s.tables["table_soscope"].uns["soscope"]["likelihood"]) == {"all": "gaussian"}


def test_binary_likelihood_needs_zero_one():
    _raises(
        _sdata(), r"likelihood='bernoulli' needs values 0/1", r"Binarise the data", likelihood="bernoulli"
    )


# ------------------------------------------------------------------------------------------- sparse vs dense
def _guard_densify(monkeypatch, n_rows: int) -> list:
    """Make every scipy sparse densification of >= n_rows rows fail (and record the sizes densified)."""
    seen: list[int] = []

    def guard(orig):
        def f(self, *a, **k):
            seen.append(self.shape[0])
            if self.shape[0] >= n_rows:
                raise AssertionError(f"densified a whole {self.shape} sparse matrix")
            return orig(self, *a, **k)

        return f

    for cls in (sp.csr_matrix, sp.csc_matrix, sp.coo_matrix, sp.csr_array, sp.csc_array, sp.coo_array):
        monkeypatch.setattr(cls, "toarray", guard(cls.toarray))
        monkeypatch.setattr(cls, "todense", guard(cls.todense))
    return seen


def test_sparse_counts_are_never_densified_whole(monkeypatch):
    """A sparse table is read a block of rows at a time, from validation to training and inference.

    Chunks and blocks are made small (24–32 spots of 200) so that densifying the whole matrix anywhere fails.
    """
    s = _sdata(image=True, n_spots=200)
    t = s.tables["table"]
    assert sp.issparse(t.X)
    n = t.n_obs
    seen = _guard_densify(monkeypatch, n)
    # training steps (batch_size), inference tasks and statistics blocks of 24-32 spots
    with soscope.settings.override(infer_chunk_spots=24, dense_block_rows=32):
        soscope.enhance(s, table="table", batch_size=24, **FAST)
    assert seen and max(seen) < n  # blocks were densified, never the whole matrix
    assert s.tables["table_soscope"].n_obs == 7 * n


def test_sparse_and_dense_give_the_same_result():
    a, b = _sdata(), _sdata()
    b.tables["table"].X = _dense(b.tables["table"].X)
    assert sp.issparse(a.tables["table"].X) and not sp.issparse(b.tables["table"].X)
    soscope.enhance(a, **FAST)
    soscope.enhance(b, **FAST)
    np.testing.assert_allclose(
        _dense(a.tables["table_soscope"].X), _dense(b.tables["table_soscope"].X), rtol=1e-4, atol=1e-4
    )


# ------------------------------------------------------- coordinate systems / transformations image ↔ spots
def test_image_in_another_coordinate_system(caplog):
    s = _sdata(image=True)
    set_transformation(s.images["image"], {"other": Identity()}, set_all=True)
    _raises(
        s,
        r"Image 'image' is in coordinate systems \['other'\] but spots 'spots' in \['global'\]",
        r"set_transformation\(sdata\['image'\].*to_coordinate_system='global'.*image=False",
        image="image",
    )
    with caplog.at_level(logging.WARNING, logger="soscope"):  # not named: used only when registered
        soscope.enhance(s, **FAST)
    assert "No image shares a coordinate system with the spots" in caplog.text
    assert "'image': ['other']" in caplog.text and "set_transformation" in caplog.text
    assert s.tables["table_soscope"].n_obs == 7 * 60


def test_image_transformation_puts_spots_off_the_image():
    """Same coordinate system, but the image's transformation places it away from every spot."""
    s = _sdata(image=True)
    set_transformation(
        s.images["image"], Translation([1e5, 1e5], axes=("x", "y")), to_coordinate_system="global"
    )
    _raises(
        s,
        r"None of the 60 spots of 'spots' lies on image 'image': in coordinate system 'global' the spots "
        r"span "
        r"x .* but the image covers x 1e\+05",
        r"transformations of the image and the spots do not match.*set_transformation.*image=False",
    )


def test_image_in_pixels_spots_scaled_some_spots_outside(caplog):
    """The image's transformation lost its scale (pixels vs µm): spots beyond it are reported, run ends."""
    s = _sdata(image=True)
    assert isinstance(get_transformation(s.images["image"]), Scale)
    set_transformation(s.images["image"], Identity(), to_coordinate_system="global")
    with caplog.at_level(logging.WARNING, logger="soscope"):
        soscope.enhance(s, **FAST)
    msg = next(r.getMessage() for r in caplog.records if "lie outside image" in r.getMessage())
    n_out = int(msg.split(" of ")[0])
    assert 0 < n_out < 60 and "check the transformations" in msg
    assert np.isfinite(_dense(s.tables["table_soscope"].X)).all()


# -------------------------------------------------------------------------------- image channel order / dtype
def test_image_channels_last_parsed_as_cyx():
    s = _sdata(image=True)
    arr, tr = _image_array(s)
    s.images["image"] = Image2DModel.parse(np.moveaxis(arr, 0, -1), dims=("c", "y", "x"), transformations=tr)
    _raises(s, r"\['x'\] only 3 pixels wide.*channels-last data", r"dims=\('y', 'x', 'c'\).*image=False")


def test_image_cyx_parsed_as_channels_last():
    s = _sdata(image=True)
    arr, tr = _image_array(s)  # (3, y, x) read as (y, x, c): 3 rows, c = the real x
    s.images["image"] = Image2DModel.parse(arr, dims=("y", "x", "c"), transformations=tr)
    _raises(s, r"\['y'\] only 3 pixels wide", r"Parse it with the axes in their real order")


def test_image_with_too_many_channels():
    s = _sdata(image=True)
    _, tr = _image_array(s)
    s.images["image"] = Image2DModel.parse(
        np.zeros((300, 64, 64), np.uint8), dims=("c", "y", "x"), transformations=tr
    )
    _raises(s, r"has 300 channels.*wrong order", r"img\.isel\(c=\[\.\.\.\]\).*image=False")


@pytest.mark.parametrize("dtype", ["bool", "int64", "uint32"])
def test_image_dtype_refused(dtype):
    s = _sdata(image=True)
    arr, tr = _image_array(s)
    s.images["image"] = Image2DModel.parse(
        (arr > 128).astype(dtype), dims=("c", "y", "x"), transformations=tr
    )
    _raises(
        s,
        rf"Image 'image' has dtype {dtype}; soscope reads uint8, uint16 or float",
        r"astype\('float32'\).*image=False",
    )


def test_image_two_channels_refused():
    s = _sdata(image=True)
    arr, tr = _image_array(s)
    s.images["image"] = Image2DModel.parse(arr[:2], dims=("c", "y", "x"), transformations=tr)
    _raises(s, r"has 2 channels", r"isel\(c=\[0\]\).*image=False")


def test_float_image_outside_unit_range_is_rescaled():
    """A float image in 0..255 (not 0..1) is accepted and gives the same image features as its uint8 twin."""
    from soscope.model._setup import prepare

    s = _sdata(image=True)
    arr, tr = _image_array(s)
    assert arr.max() == 255  # the rescale divides by the image's maximum: the same as uint8's 255
    f = _sdata(image=True)
    f.images["image"] = Image2DModel.parse(arr.astype(np.float32), dims=("c", "y", "x"), transformations=tr)
    a = prepare(s).data.image_features
    b = prepare(f).data.image_features
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    soscope.enhance(f, **FAST)
    assert np.isfinite(_dense(f.tables["table_soscope"].X)).all()


# ------------------------------------------------------------------------- spots outside the image (partly)
def test_some_spots_outside_the_image(caplog):
    s = _sdata(image=True)
    far = {0: Point(-5e3, -5e3), 1: Point(-5e3, -4e3)}
    _replace_geometry(s, far)
    with caplog.at_level(logging.WARNING, logger="soscope"):
        soscope.enhance(s, **FAST)
    assert "2 of 60 spots of 'spots' lie outside image 'image'" in caplog.text
    out = s.tables["table_soscope"]
    assert np.isfinite(_dense(out.X)).all() and out.obs["spot_id"].nunique() == 60


# --------------------------------------------------------------------------- a single spot / no neighbours
def test_single_spot():
    s = _sdata()
    t = s.tables["table"]
    s.tables["table"] = TableModel.parse(t[:1].copy())
    _raises(s, r"the selection has 1 spot: soscope needs at least 2 spots", r"Check `sections=` / `spots=`")


def test_single_spot_after_choosing_sections():
    s = _sdata()
    t = s.tables["table"]
    t.obs["slide"] = np.where(np.arange(t.n_obs) == 0, "lonely", "main")
    _raises(s, r"1 spot: soscope needs at least 2", r"sections=", section_key="slide", sections=["lonely"])


def test_section_with_no_neighbours_works():
    """A section of one spot (beside a normal one) and isolated spots far from the rest are enhanced."""
    s = _sdata()
    t = s.tables["table"]
    t.obs["slide"] = np.where(np.arange(t.n_obs) == 0, "lonely", "main")
    _replace_geometry(s, {5: Point(1e5, 1e5), 6: Point(-1e5, 1e5)})  # two isolated spots in "main"
    soscope.enhance(s, section_key="slide", **FAST)
    out = s.tables["table_soscope"]
    sizes = out.obs.groupby("spot_id").size()
    assert len(sizes) == 60 and sizes.eq(7).all()
    x = _dense(out.X)
    assert np.isfinite(x).all() and (x >= 0).all()
    for sid in t.obs["spot_id"].to_numpy()[[0, 5, 6]]:
        assert x[(out.obs["spot_id"] == sid).to_numpy()].sum() > 0


def test_spots_all_far_apart_work():
    s = _sdata(n_spots=30)
    _replace_geometry(s, {i: Point(1e4 * i, 0.0) for i in range(len(s.shapes["spots"]))})
    soscope.enhance(s, **FAST)
    out = s.tables["table_soscope"]
    k = int(out.obs["subspot"].max()) + 1  # the scheme chosen for spots off any lattice
    sizes = out.obs.groupby("spot_id").size()
    assert len(sizes) == len(s.shapes["spots"]) and sizes.eq(k).all()
    x = _dense(out.X)
    assert np.isfinite(x).all() and (x >= 0).all()


# ---------------------------------------------------------------------------------- zero-variance features
def test_zero_variance_features(caplog):
    s = _sdata(k=9)
    t = s.tables["table"]
    x = _dense(t.X).astype(np.float32)
    x[:, 3] = 0
    x[:, 11] = 2
    t.X = x
    with caplog.at_level(logging.WARNING, logger="soscope"):
        soscope.enhance(s, **FAST)
    names = f"{t.var_names[3]}, {t.var_names[11]}"
    assert (
        f"2 of 20 features are constant across spots ({names}); they are carried through unchanged"
        in caplog.text
    )
    out = _dense(s.tables["table_soscope"].X)
    assert np.isfinite(out).all()
    assert np.all(out[:, 3] == 0)  # a feature never observed stays 0 in sub-spots inside the footprints


# -------------------------------------------------------------------------------------- key_added collisions
def test_key_added_collision_refused_before_training(monkeypatch):
    from soscope.model import SoScope

    s = _sdata()
    s.shapes["spots_soscope"] = ShapesModel.parse(s.shapes["spots"].copy())  # the user's own element

    def no_training(self, *a, **k):
        raise AssertionError("trained before checking the output names")

    monkeypatch.setattr(SoScope, "train", no_training)
    _raises(
        s,
        r"already has shapes 'spots_soscope' that soscope did not write",
        r"another `key_added=`.*`overwrite=True`",
    )
    monkeypatch.undo()
    assert len(s.shapes["spots_soscope"]) == 60  # the user's element is untouched
    soscope.enhance(s, overwrite=True, **FAST)
    assert len(s.shapes["spots_soscope"]) == 7 * 60


def test_key_added_collision_on_disk(tmp_path):
    """An element in the store that is not loaded is treated as the user's."""
    path = tmp_path / "s.zarr"
    s = _sdata()
    s.write(path)
    s2 = sd.read_zarr(path)
    s2.tables["table_x"] = TableModel.parse(s2.tables["table"].copy())
    s2.write_element("table_x")
    del s2.tables["table_x"]  # on disk, not in memory
    _raises(
        s2,
        r"zarr store already holds an element 'table_x'",
        r"another `key_added=`.*overwrite=True",
        key_added="x",
    )


def test_earlier_soscope_output_is_replaced():
    s = _sdata()
    soscope.enhance(s, **FAST)
    first = _dense(s.tables["table_soscope"].X).copy()
    s.tables["table"].X = s.tables["table"].X * 2  # new counts: the enhanced values must change
    soscope.enhance(s, **FAST)  # no overwrite needed: soscope wrote them
    second = _dense(s.tables["table_soscope"].X)
    assert second.shape == first.shape and not np.allclose(first, second)


def test_key_added_invalid_name():
    _raises(
        _sdata(),
        r"'spots_bad key' is not a valid element name",
        r"choose another `key_added=`",
        key_added="bad key",
    )


def test_output_name_of_another_element_type():
    s = _sdata()
    s.tables["spots_soscope"] = TableModel.parse(s.tables["table"].copy())
    _raises(
        s,
        r"'spots_soscope' already names tables.*shapes of that name",
        r"another `key_added=`",
        table="table",
        overwrite=True,
    )


# -------------------------------------------------------------------------------------- duplicate features
def test_duplicate_feature_names_refused_store_unchanged(tmp_path):
    """Duplicated var_names (anndata only warns) are refused before anything is written, naming the fix."""
    from io_helpers import tree_digest

    s = _sdata()
    names = [str(v) for v in s.tables["table"].var_names]
    names[3], names[5], names[7] = names[1], names[1], names[2]  # gene_1 three times, gene_2 twice
    s.tables["table"].var_names = names
    path = tmp_path / "dup.zarr"
    s.write(path)  # the user's store, as written with the duplicates
    sdata = sd.read_zarr(path)
    before = tree_digest(path)
    msg = _raises(
        sdata,
        r"Table 'table' has 2 duplicated feature names",
        r"'gene_1', 'gene_2'",
        r"var_names_make_unique\(\)",
    )
    assert "gene_0" not in msg  # only the duplicated names are listed
    assert tree_digest(path) == before, "a refused run must leave the store byte-identical"
    assert not any(k.endswith("_soscope") for k in [*sdata.shapes, *sdata.tables])

    sdata.tables["table"].var_names_make_unique()  # the fix the message names
    soscope.enhance(sdata, **FAST)
    assert list(sdata.tables["table_soscope"].var_names) == list(sdata.tables["table"].var_names)


def test_missing_layer_lists_only_named_layers():
    """The message lists the named layers: from anndata 0.13 on, X is also ``layers[None]``."""
    s = _sdata()
    s.tables["table"].layers["counts"] = s.tables["table"].X.copy()
    msg = _raises(s, r"has no layer 'raw'; layers: \['counts'\]", r"`layer=`", layer="raw")
    assert "'None'" not in msg  # X is not a layer to choose
