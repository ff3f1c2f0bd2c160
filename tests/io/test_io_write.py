"""write_results(): round trip through the zarr store, replacement, refusals, and atomicity under failure."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import spatialdata as sd
from io_helpers import make_outputs, make_sdata, tree_digest
from spatialdata.models import ShapesModel, TableModel
from spatialdata.transformations import get_transformation

import soscope.io._write as write_mod
from soscope._errors import SoscopeInputError
from soscope.io import write_results


def _assert_written(path: Path, sdata_mem, shapes, tables):
    back = sd.read_zarr(path)
    for name, gdf in shapes.items():
        assert name in back.shapes and back.shapes[name] is not None
        ShapesModel.validate(back.shapes[name])
        assert get_transformation(back.shapes[name], get_all=True) == get_transformation(gdf, get_all=True)
        np.testing.assert_array_equal(back.shapes[name]["subspot"].to_numpy(), gdf["subspot"].to_numpy())
        assert sdata_mem.shapes[name] is gdf  # in memory: the very objects passed
    for name, adata in tables.items():
        t = back.tables[name]
        TableModel().validate(t)
        assert t.uns["spatialdata_attrs"]["region"] == adata.uns["spatialdata_attrs"]["region"]
        assert t.uns["soscope"]["factor"] == adata.uns["soscope"]["factor"]
        np.testing.assert_array_equal(t.X, adata.X)
        assert sdata_mem.tables[name] is adata
        # the table is linked to the shapes it annotates
        region = t.uns["spatialdata_attrs"]["region"]
        assert region in back.shapes
        joined = (
            sd.match_table_to_element(back, region, table_name=name)
            if hasattr(sd, "match_table_to_element")
            else None
        )
        if joined is not None:
            assert len(joined) == len(back.shapes[region])
    assert not list(path.glob(".soscope_tmp_*"))  # temporary folder removed
    return back


def test_round_trip(store, backed):
    """New elements are in the store and in memory, validated, linked, with the same transformations."""
    shapes, tables = make_outputs(backed)
    write_results(backed, shapes=shapes, tables=tables)
    assert Path(backed.path) == store
    back = _assert_written(store, backed, shapes, tables)
    # original elements untouched
    np.testing.assert_array_equal(back.tables["table"].X, backed.tables["table"].X)
    assert get_transformation(back.shapes["spots_soscope"], get_all=True) == get_transformation(
        back.shapes["spots"], get_all=True
    )


def test_rewrite_replaces_cleanly(store, backed):
    """Writing again under the same names replaces soscope's earlier output."""
    write_results(backed, **dict(zip(("shapes", "tables"), make_outputs(backed, factor=0.5), strict=True)))
    shapes, tables = make_outputs(backed, factor=2.0)
    write_results(backed, shapes=shapes, tables=tables)  # same names: earlier soscope output replaced
    back = _assert_written(store, backed, shapes, tables)
    assert float(back.tables["table_soscope"].X[0, 0]) == 2.0
    # the fresh read also replaces (soscope marker survives the round trip)
    shapes3, tables3 = make_outputs(back, factor=3.0)
    write_results(back, shapes=shapes3, tables=tables3)
    assert float(sd.read_zarr(store).tables["table_soscope"].X[0, 0]) == 3.0


def test_collision_with_user_element_refused(store, backed):
    """A user element of the same name is kept unless overwrite=True."""
    shapes, tables = make_outputs(backed)
    before = tree_digest(store)
    user = {"spots": shapes.pop("spots_soscope")}  # would replace the user's spots
    tables["table_soscope"].uns["spatialdata_attrs"]["region"] = "spots"
    tables["table_soscope"].obs["region"] = (
        tables["table_soscope"].obs["region"].cat.rename_categories(["spots"])
    )
    with pytest.raises(SoscopeInputError, match=r"shapes 'spots' that soscope did not write.*overwrite=True"):
        write_results(backed, shapes=user, tables=tables)
    assert tree_digest(store) == before
    assert len(backed.shapes["spots"]) == 20
    write_results(backed, shapes=user, tables=tables, overwrite=True)
    assert len(sd.read_zarr(store).shapes["spots"]) == 40


def test_collision_with_element_only_on_disk(store, backed):
    """An element present only in the store is not replaced silently."""
    shapes, tables = make_outputs(backed)
    write_results(backed, shapes=shapes, tables=tables)
    fresh = sd.read_zarr(store)
    del fresh.tables["table_soscope"]  # in memory only; still in the store
    with pytest.raises(
        SoscopeInputError, match=r"store already holds an element 'table_soscope'.*overwrite=True"
    ):
        write_results(fresh, tables=tables)


def test_not_backed_goes_to_memory_only():
    """Without a store, results go to memory only."""
    sdata = make_sdata()
    shapes, tables = make_outputs(sdata)
    write_results(sdata, shapes=shapes, tables=tables)
    assert sdata.path is None
    assert "spots_soscope" in sdata.shapes and "table_soscope" in sdata.tables


def test_store_folder_gone(store, backed):
    """A SpatialData whose store was removed gets a clear error, and memory is left as it was."""
    import shutil

    shutil.rmtree(store)
    shapes, tables = make_outputs(backed)
    with pytest.raises(SoscopeInputError, match=r"not a folder any more.*sdata\.path = None"):
        write_results(backed, shapes=shapes, tables=tables)
    assert "spots_soscope" not in backed.shapes and "table_soscope" not in backed.tables


def test_table_must_annotate_known_shapes(backed):
    """A table annotating shapes that are not written nor present is refused."""
    shapes, tables = make_outputs(backed)
    with pytest.raises(SoscopeInputError, match=r"annotates \['spots_soscope'\].*shapes="):
        write_results(backed, tables=tables)


def _with_earlier_output(store, backed):
    write_results(backed, **dict(zip(("shapes", "tables"), make_outputs(backed, factor=0.5), strict=True)))
    sdata = sd.read_zarr(store)
    return sdata, tree_digest(store)


def _assert_unchanged(store, sdata, before):
    assert tree_digest(store) == before
    back = sd.read_zarr(store)
    assert set(back.shapes) == {"spots", "spots_soscope"} and set(back.tables) == {"table", "table_soscope"}
    assert float(back.tables["table_soscope"].X[0, 0]) == 0.5
    assert float(sdata.tables["table_soscope"].X[0, 0]) == 0.5  # in memory: old result kept
    assert len(back.shapes["spots_soscope"]) == 40


def test_failure_while_staging_leaves_store_as_before(store, backed, monkeypatch):
    """A failure while writing the second element leaves the store untouched."""
    sdata, before = _with_earlier_output(store, backed)
    shapes, tables = make_outputs(sdata, factor=9.0)
    calls = []
    real = sdata._write_element.__func__

    def flaky(self, element, *a, **k):
        calls.append(1)
        if len(calls) == 2:  # after the first element (the shapes) is written
            raise OSError("disk full (injected)")
        return real(self, element, *a, **k)

    monkeypatch.setattr(type(sdata), "_write_element", flaky)
    with pytest.raises(OSError, match="injected"):
        write_results(sdata, shapes=shapes, tables=tables)
    assert len(calls) == 2
    _assert_unchanged(store, sdata, before)


@pytest.mark.parametrize("fail_at", [1, 2, 3, 4])
def test_failure_while_moving_into_place_rolls_back(store, backed, monkeypatch, fail_at):
    """os.replace calls: 1 old shapes aside, 2 new shapes in, 3 old table aside, 4 new table in."""
    sdata, before = _with_earlier_output(store, backed)
    shapes, tables = make_outputs(sdata, factor=9.0)
    calls = []
    real = os.replace

    def flaky(src, dst):
        if str(src).endswith(".part"):  # the temporary folder's own records (owner, journal)
            return real(src, dst)
        calls.append((src, dst))
        if len(calls) == fail_at:
            raise OSError("rename failed (injected)")
        return real(src, dst)

    monkeypatch.setattr(write_mod.os, "replace", flaky)
    with pytest.raises(OSError, match="injected"):
        write_results(sdata, shapes=shapes, tables=tables)
    monkeypatch.setattr(write_mod.os, "replace", real)
    _assert_unchanged(store, sdata, before)


def test_failure_while_consolidating_rolls_back(store, backed, monkeypatch):
    """A failure while consolidating undoes the renames and re-consolidates."""
    sdata, before = _with_earlier_output(store, backed)
    shapes, tables = make_outputs(sdata, factor=9.0)
    real = write_mod._consolidate
    calls = []

    def flaky(s, root):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("consolidation failed (injected)")
        return real(s, root)

    monkeypatch.setattr(write_mod, "_consolidate", flaky)
    with pytest.raises(RuntimeError, match="injected"):
        write_results(sdata, shapes=shapes, tables=tables)
    assert len(calls) == 2  # re-consolidated after the rollback
    _assert_unchanged(store, sdata, before)  # re-consolidation gives back the same bytes


def test_first_output_into_store_without_shapes_group(tmp_path, monkeypatch):
    """A store with only an image and a table: the shapes/ group is created (and removed on rollback)."""
    sdata = make_sdata()
    spots = sdata.shapes["spots"]
    path = tmp_path / "noshapes.zarr"
    sd.SpatialData(images={"he": sdata.images["he"]}).write(path)
    backed = sd.read_zarr(path)
    backed.shapes["spots"] = spots  # in memory only: the new shapes go to disk with soscope's write
    shapes, tables = make_outputs(backed)
    before = tree_digest(path)

    def fail(src, dst):
        raise OSError("rename failed (injected)")

    with monkeypatch.context() as m:
        m.setattr(write_mod.os, "replace", fail)
        with pytest.raises(OSError, match="injected"):
            write_results(backed, shapes=shapes, tables=tables)
    assert tree_digest(path) == before and not (path / "shapes").exists()
    write_results(backed, shapes=shapes, tables=tables)
    back = sd.read_zarr(path)
    assert "spots_soscope" in back.shapes and "table_soscope" in back.tables


def test_zarr_v2_store(tmp_path):
    """A zarr v2 store (old spatialdata) gets v2 elements and stays readable."""
    fmt = pytest.importorskip("spatialdata._io.format")
    path = tmp_path / "v2.zarr"
    make_sdata().write(path, sdata_formats=fmt.SpatialDataContainerFormatV01())
    assert (path / ".zgroup").is_file()
    with pytest.warns(UserWarning):
        backed = sd.read_zarr(path)
    shapes, tables = make_outputs(backed)
    write_results(backed, shapes=shapes, tables=tables)
    assert (path / "shapes" / "spots_soscope" / ".zgroup").is_file()  # same zarr format as the store
    assert not (path / "shapes" / "spots_soscope" / "zarr.json").exists()
    with pytest.warns(UserWarning):
        back = sd.read_zarr(path)
    assert "spots_soscope" in back.shapes and "table_soscope" in back.tables
