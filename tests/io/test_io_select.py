"""select() and counts_matrix(): automatic choices, ambiguity errors, row order, sections, modalities."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import spatialdata as sd
from io_helpers import make_image, make_outputs, make_sdata, make_spots, make_table
from spatialdata.models import TableModel
from spatialdata.transformations import Identity, set_transformation

from soscope._errors import SoscopeInputError
from soscope.io import SINGLE_MODALITY, Selection, counts_matrix, select


def test_auto_picks_everything(backed):
    """With one table, one spots element and one image, every choice is automatic."""
    sel = select(backed)
    assert isinstance(sel, Selection)
    assert sel.table == "table"
    assert sel.spots == ("spots",)
    assert (sel.region_key, sel.instance_key) == ("region", "spot_id")
    assert sel.image == "he"
    assert sel.coordinate_system == "global"
    assert sel.layer is None
    assert sel.n_spots == 20 and sel.n_features == 6
    np.testing.assert_array_equal(sel.spot_rows, np.arange(20))
    assert sel.section_names == ("spots",)
    assert set(sel.modalities) == {SINGLE_MODALITY} and sel.modalities[SINGLE_MODALITY].all()
    with pytest.raises(ValueError):  # arrays are read-only: the selection is frozen
        sel.spot_rows[0] = 3
    m = counts_matrix(backed, sel)
    np.testing.assert_array_equal(m, backed.tables["table"].X)


def test_rows_follow_shapes_order_and_extra_spots_are_left_out():
    """Spots come in shapes order; spots without a table row are left out."""
    sdata = make_sdata(image=False)
    t = sdata.tables["table"]
    perm = np.random.default_rng(1).permutation(t.n_obs)[:15]  # shuffled, 5 spots without a row
    sub = TableModel.parse(t[perm].copy())
    sdata.tables["table"] = sub
    sel = select(sdata)
    assert sel.image is None
    assert sel.n_spots == 15
    assert np.all(np.diff(sel.shape_rows) > 0)  # shapes order
    np.testing.assert_array_equal(sub.obs["spot_id"].to_numpy()[sel.spot_rows], sel.instance_ids)
    np.testing.assert_array_equal(sdata.shapes["spots"].index[sel.shape_rows], sel.instance_ids)
    m = counts_matrix(sdata, sel)
    np.testing.assert_array_equal(m, sub.X[sel.spot_rows])


def test_string_ids_match_integer_index():
    """String instance ids in the table match an integer shapes index."""
    sdata = make_sdata(image=False)
    t = sdata.tables["table"]
    t.obs["spot_id"] = t.obs["spot_id"].astype(str).to_numpy()
    sel = select(sdata)
    assert sel.n_spots == 20


def test_sparse_stays_sparse():
    """A sparse X (CSR or CSC layer) comes back as a CSR matrix."""
    sdata = make_sdata(sparse=True)
    sel = select(sdata)
    m = counts_matrix(sdata, sel)
    assert isinstance(m, sp.csr_matrix)
    np.testing.assert_array_equal(m.toarray(), sdata.tables["table"].X.toarray())
    sdata.tables["table"].layers["counts"] = sp.csc_matrix(sdata.tables["table"].X)
    m2 = counts_matrix(sdata, select(sdata, layer="counts"))
    assert isinstance(m2, sp.csr_matrix)


def test_layer_missing():
    """An unknown layer names the layers present."""
    with pytest.raises(SoscopeInputError, match=r"no layer 'raw'.*layer="):
        select(make_sdata(), layer="raw")


def test_soscope_outputs_are_skipped(backed):
    """Tables and shapes soscope wrote are skipped when choosing automatically."""
    shapes, tables = make_outputs(backed)
    for k, v in shapes.items():
        backed.shapes[k] = v
    for k, v in tables.items():
        backed.tables[k] = v
    sel = select(backed)
    assert sel.table == "table" and sel.spots == ("spots",)
    # explicitly named, a soscope table may still be used
    assert select(backed, table="table_soscope", image=False).spots == ("spots_soscope",)


def test_two_tables_ambiguous():
    """Two usable tables: the error lists both and names `table=`."""
    sdata = make_sdata()
    sdata.tables["table2"] = make_table(seed=3)
    with pytest.raises(SoscopeInputError, match=r"'table'.*'table2'.*table="):
        select(sdata)
    assert select(sdata, table="table2").table == "table2"


def test_unknown_names():
    """Unknown element names list what is present."""
    sdata = make_sdata()
    with pytest.raises(SoscopeInputError, match=r"No table 'nope'.*\['table'\]"):
        select(sdata, table="nope")
    with pytest.raises(SoscopeInputError, match=r"No shapes \['nope'\].*spots="):
        select(sdata, spots="nope")
    with pytest.raises(SoscopeInputError, match=r"No image 'nope'.*\['he'\]"):
        select(sdata, image="nope")


def test_two_images_ambiguous_and_image_false():
    """Two images in the spots' coordinate system need `image=` (or False)."""
    sdata = make_sdata()
    sdata.images["dapi"] = make_image(channels=1)
    with pytest.raises(SoscopeInputError, match=r"'he'.*'dapi'.*image=.*image=False"):
        select(sdata)
    assert select(sdata, image="dapi").image == "dapi"
    assert select(sdata, image=False).image is None


def test_image_elsewhere_is_not_a_candidate_and_explicit_one_errors():
    """Images in other coordinate systems are not picked; naming one errors."""
    sdata = make_sdata(image=False)
    sdata.images["other"] = make_image(cs="aligned")
    assert select(sdata).image is None  # only images in the spots' coordinate system are picked
    with pytest.raises(SoscopeInputError, match=r"'other'.*\['aligned'\].*\['global'\].*set_transformation"):
        select(sdata, image="other")


def test_coordinate_system_ambiguous():
    """Several shared coordinate systems need `coordinate_system=`; the image narrows them."""
    sdata = make_sdata()
    set_transformation(sdata.shapes["spots"], Identity(), to_coordinate_system="aligned")
    set_transformation(sdata.images["he"], Identity(), to_coordinate_system="aligned")
    with pytest.raises(
        SoscopeInputError, match=r"coordinate systems.*'global'.*'aligned'.*coordinate_system="
    ):
        select(sdata)
    assert select(sdata, coordinate_system="aligned").coordinate_system == "aligned"
    with pytest.raises(SoscopeInputError, match=r"coordinate_system='nope'.*pass one of"):
        select(sdata, coordinate_system="nope")
    # the image narrows the choice when it is in only one of them
    sdata2 = make_sdata()
    set_transformation(sdata2.shapes["spots"], Identity(), to_coordinate_system="aligned")
    assert select(sdata2).coordinate_system == "global"
    # no image: the coordinate system is only a label, 'global' is preferred
    assert select(sdata2, image=False).coordinate_system == "global"


def _two_sections():
    return sd.SpatialData(
        shapes={"A1": make_spots(), "B1": make_spots(4, 3)},
        tables={"table": make_table(["A1", "B1"], [20, 12])},
        images={"he": make_image()},
    )


def test_regions_are_sections():
    """Regions of a table are sections; `spots=` and `sections=` restrict them."""
    sdata = _two_sections()
    sel = select(sdata)
    assert sel.spots == ("A1", "B1")
    assert sel.section_names == ("A1", "B1")
    assert sel.n_spots == 32
    np.testing.assert_array_equal(sel.spots_of("B1"), np.arange(20, 32))
    assert list(pd.unique(sel.sections)) == ["A1", "B1"]
    one = select(sdata, spots="B1")
    assert one.spots == ("B1",) and one.n_spots == 12
    np.testing.assert_array_equal(counts_matrix(sdata, one), sdata.tables["table"].X[20:])
    restricted = select(sdata, sections=["B1"])
    assert restricted.spots == ("B1",) and restricted.n_spots == 12
    with pytest.raises(SoscopeInputError, match=r"Unknown sections \['C1'\].*'A1', 'B1'"):
        select(sdata, sections=["C1"])


def test_section_key():
    """`section_key` defines sections from an obs column."""
    sdata = make_sdata()
    t = sdata.tables["table"]
    t.obs["slide"] = np.where(np.arange(t.n_obs) < 10, "s1", "s2")
    sel = select(sdata, section_key="slide")
    assert sel.section_names == ("s1", "s2")
    sel2 = select(sdata, section_key="slide", sections="s2")
    assert sel2.n_spots == 10
    np.testing.assert_array_equal(sel2.spot_rows, np.arange(10, 20))
    with pytest.raises(SoscopeInputError, match=r"section_key='nope'.*columns"):
        select(sdata, section_key="nope")


def test_modalities():
    """A var column such as feature_types splits the features into modalities."""
    sdata = make_sdata()
    t = sdata.tables["table"]
    t.var["feature_types"] = ["Gene Expression"] * 4 + ["Antibody Capture"] * 2
    sel = select(sdata)
    assert sel.modality_key == "feature_types"
    assert list(sel.modalities) == ["Gene Expression", "Antibody Capture"]
    np.testing.assert_array_equal(sel.modalities["Antibody Capture"], [0, 0, 0, 0, 1, 1])
    with pytest.raises(SoscopeInputError, match=r"modality_key='kind'.*feature_types"):
        select(sdata, modality_key="kind")
    t.var["feature_types"] = "Gene Expression"  # a single value is not a split
    assert select(sdata).modality_key is None
