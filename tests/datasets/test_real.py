"""The embedded example and the loaders of the shared real datasets (skipped when the folder is absent)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

sd = pytest.importorskip("spatialdata")
from spatialdata.models import TableModel  # noqa: E402
from spatialdata.transformations import get_transformation  # noqa: E402

from soscope.datasets._example import EXAMPLE_PITCH_UM, example  # noqa: E402
from soscope.datasets._real import (  # noqa: E402
    ENV_VAR,
    load_merfish_mini,
    load_verafish,
    shared_data_dir,
)


def _dense(X) -> np.ndarray:
    return X.toarray() if sp.issparse(X) else np.asarray(X)


# ----------------------------------------------------------------------------------------------------
# embedded example (always available)
# ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ex():
    """Load the embedded example once."""
    return example()


def test_example_holds_both_modalities(ex):
    """example() holds 1,618 pixels with proteins and RNA."""
    sdata = example()
    table = sdata["table"]
    TableModel().validate(table)
    assert table.shape == (1618, 293)
    assert len(sdata["pixels"]) == 1618
    assert list(sdata.images) == []
    assert table.var["feature_types"].value_counts().to_dict() == {
        "Antibody Capture": 283,
        "Gene Expression": 10,
    }
    assert table.uns["spatialdata_attrs"]["region"] == "pixels"
    assert np.allclose(sdata["pixels"].area, EXAMPLE_PITCH_UM**2)
    assert table.obs["array_row"].between(0, 49).all() and table.obs["array_col"].between(0, 49).all()
    assert "license" in table.uns["dataset"]


def test_example_counts_match_shipped_files(ex):
    """The table's counts are the shipped files' values, licence beside them."""
    base = resources.files("soscope.datasets").joinpath("data", "spatial_cite_seq_human_skin")
    with resources.as_file(base.joinpath("protein_counts.csv.gz")) as p:
        prot = pd.read_csv(p, index_col=0)
    with resources.as_file(base.joinpath("rna_hvg10_counts.csv.gz")) as p:
        rna = pd.read_csv(p, index_col=0)
    X = _dense(ex["table"].X)
    assert ex["table"].obs_names.tolist() == prot.index.tolist()
    np.testing.assert_array_equal(X, np.hstack([prot.to_numpy(), rna.to_numpy()]))
    assert (base / "LICENSE").is_file() and (base / "PROVENANCE.txt").is_file()


def test_example_zarr_round_trip(ex, tmp_path: Path):
    """Writing to zarr and reading back keeps counts, var and shapes."""
    path = tmp_path / "example.zarr"
    ex.write(path)
    back = sd.read_zarr(path)
    np.testing.assert_array_equal(_dense(back["table"].X), _dense(ex["table"].X))
    assert back["table"].var["feature_types"].tolist() == ex["table"].var["feature_types"].tolist()
    assert back["table"].obs["barcode"].tolist() == ex["table"].obs["barcode"].tolist()
    assert len(back["pixels"]) == 1618
    np.testing.assert_allclose(back["pixels"].area.to_numpy(), ex["pixels"].area.to_numpy())


def test_shared_data_dir_env(monkeypatch, tmp_path: Path):
    """SOSCOPE_SHARED_DATA points at the shared folder."""
    monkeypatch.setenv(ENV_VAR, str(tmp_path))
    assert shared_data_dir() == tmp_path
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "missing"))
    assert shared_data_dir(required=False) is None
    with pytest.raises(FileNotFoundError):
        shared_data_dir()


# ----------------------------------------------------------------------------------------------------
# shared high-resolution data
# ----------------------------------------------------------------------------------------------------
def _dataset(name: str) -> Path:
    root = shared_data_dir(required=False)
    if root is None or not (root / name).is_dir():
        pytest.skip(f"shared data folder {name} is absent")
    return root / name


@pytest.fixture(scope="module")
def merfish():
    """Load the MERFISH mini dataset once (skip when absent)."""
    return load_merfish_mini(_dataset("merfish_mouse_brain_mini"))


def test_merfish_cells_table_and_transcripts(merfish):
    """498 cells x 559 genes built from the transcripts inside the outlines."""
    table = merfish["table"]
    TableModel().validate(table)
    assert table.shape == (498, 559)
    assert len(merfish["cells"]) == 498
    assert table.uns["spatialdata_attrs"]["region"] == "cells"
    tx = merfish["transcripts"].compute()
    assert len(tx) == 80_343
    assigned = tx["cell_id"].to_numpy() >= 0
    # the z0 outlines cover ~14% of the field and hold ~39% of the transcripts
    assert 0.3 < assigned.mean() < 0.5
    assert _dense(table.X).sum() == assigned.sum()
    # per-cell counts agree with the transcripts' cell ids
    per_cell = np.bincount(tx["cell_id"].to_numpy()[assigned], minlength=498)
    np.testing.assert_array_equal(_dense(table.X).sum(1), per_cell)
    # cells in the µm frame of the transcripts (y flipped back)
    minx, miny, maxx, maxy = merfish["cells"].total_bounds
    assert 6390 < minx and maxx < 6910 and 4690 < miny and maxy < 5160


def test_merfish_expanded_assignment():
    """max_distance_um assigns transcripts near the outlines too."""
    sdata = load_merfish_mini(_dataset("merfish_mouse_brain_mini"), max_distance_um=3.0, image=False)
    assert sdata["table"].uns["soscope_dataset"]["fraction_transcripts_assigned"] > 0.6
    assert "dapi" not in sdata.images


def test_merfish_dapi_aligned_with_cells(merfish):
    """Cells sit over bright DAPI: mean intensity inside > 2x outside."""
    import geopandas as gpd

    img = merfish["dapi"]
    arr = np.asarray(img.data[0])
    m = get_transformation(img, "global").to_affine_matrix(("x", "y"), ("x", "y"))
    step = 6
    rr, cc = np.mgrid[0 : arr.shape[0] : step, 0 : arr.shape[1] : step]
    px = np.column_stack([cc.ravel() + 0.5, rr.ravel() + 0.5, np.ones(rr.size)]) @ m.T
    pts = gpd.GeoDataFrame(geometry=gpd.points_from_xy(px[:, 0], px[:, 1]))
    hit = gpd.sjoin(pts, gpd.GeoDataFrame(geometry=merfish["cells"].geometry), predicate="within")
    inside = np.zeros(len(pts), bool)
    inside[hit.index.unique()] = True
    values = arr[rr.ravel(), cc.ravel()].astype(float)
    mean_in, mean_out = values[inside].mean(), values[~inside].mean()
    assert mean_in > 2.0 * mean_out, (mean_in, mean_out)
    # the image covers the documented extent
    corners = np.array([[0, 0, 1], [arr.shape[1], arr.shape[0], 1]]) @ m.T
    np.testing.assert_allclose(corners[:, :2], [[6400.029, 4699.967], [6900.037, 5150.007]], atol=1e-6)


def test_verafish_cells_and_scale():
    """10,994 cells x 120 genes; the assumed scale gives a 10 µm median NN distance."""
    from scipy.spatial import cKDTree

    sdata = load_verafish(_dataset("verafish_mouse_hippocampus"))
    table = sdata["table"]
    TableModel().validate(table)
    assert table.shape == (10_994, 120)
    X = _dense(table.X)
    assert np.all(X == np.round(X)) and X.min() >= 0
    gdf = sdata["cells"]
    assert len(gdf) == 10_994 and (gdf.geometry.geom_type == "Point").all()
    xy = np.column_stack([gdf.geometry.x, gdf.geometry.y])
    d, _ = cKDTree(xy).query(xy, k=2)
    assert abs(np.median(d[:, 1]) - 10.0) < 0.5  # the documented assumption: cells ~10 µm apart
    assert table.uns["soscope_dataset"]["unit_um_is_assumed"]
