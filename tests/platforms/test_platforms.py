"""Every platform path: real-format files → reader → ``soscope.enhance`` → results read back from zarr.

The fixtures in ``fixtures/`` are built from the real datasets of ``../shared/data`` by
``make_fixtures.py`` (committed, so these tests do not need the shared folder). Each test checks the
platform soscope detects, the sub-spot scheme and likelihood it picks with ``"auto"``, and the number of
sub-spots, counted independently of soscope's geometry code.
"""

from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

sd = pytest.importorskip("spatialdata")
sio = pytest.importorskip("spatialdata_io")

import anndata as ad  # noqa: E402
import geopandas as gpd  # noqa: E402
import shapely  # noqa: E402
from scipy.spatial import cKDTree  # noqa: E402
from spatialdata.models import ShapesModel, TableModel  # noqa: E402
from spatialdata.transformations import get_transformation  # noqa: E402

import soscope  # noqa: E402
from soscope.io import PLATFORM_DEFAULTS, detect_platform, read_dbit, read_soscope_layout, select  # noqa: E402

FIX = Path(__file__).parent / "fixtures"
DOCS = Path(__file__).parents[2] / "docs" / "platforms.md"
EPOCHS = 2


def _enhance_roundtrip(sdata, tmp_path: Path, caplog, **kwargs):
    """Write ``sdata`` to zarr, enhance the backed object, read the store back; return it and the log."""
    path = tmp_path / "store.zarr"
    sdata.write(path)
    backed = sd.read_zarr(path)
    with caplog.at_level(logging.INFO, logger="soscope"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        soscope.enhance(backed, epochs=EPOCHS, progress=False, **kwargs)
    line = [r.getMessage() for r in caplog.records if r.getMessage().startswith("platform: ")]
    assert len(line) == 1, [r.getMessage() for r in caplog.records]
    return sd.read_zarr(path), line[0]


def _check_output(back, spots: str, table: str, n_sub: int, scheme: str, platform: str, likelihood: dict):
    """Check the written-back elements: valid, linked, naming the scheme, likelihood and platform."""
    shapes = back.shapes[f"{spots}_soscope"]
    out = back.tables[f"{table}_soscope"]
    ShapesModel.validate(shapes)
    TableModel().validate(out)
    assert len(shapes) == n_sub and out.n_obs == n_sub
    attrs = out.uns["spatialdata_attrs"]
    region = attrs["region"] if isinstance(attrs["region"], str) else list(attrs["region"])[0]
    assert region == f"{spots}_soscope"
    assert set(out.obs[attrs["instance_key"]]) == set(shapes.index)
    uns = out.uns["soscope"]
    assert uns["subspots"] == scheme and uns["platform"] == platform
    assert dict(uns["likelihood"]) == likelihood
    x = out.X.toarray() if sp.issparse(out.X) else np.asarray(out.X)
    assert np.isfinite(x).all() and (x >= 0).all() and x.sum() > 0
    # the sub-spots keep their spots' coordinate systems
    assert set(get_transformation(shapes, get_all=True)) == set(
        get_transformation(back.shapes[spots], get_all=True)
    )
    return shapes, out


# ----------------------------------------------------------------------------------------- Visium
def test_visium_spaceranger_outs(tmp_path, caplog):
    sdata = sio.visium(FIX / "visium", dataset_id="merfish")
    assert set(sdata.images) == {"merfish_hires_image", "merfish_lowres_image"}
    n = len(sdata.shapes["merfish"])
    assert n == sdata.tables["table"].n_obs == 23
    back, line = _enhance_roundtrip(sdata, tmp_path, caplog)  # image and coordinate system: automatic
    assert line.startswith("platform: visium") and "sub-spots: hex7" in line
    _, out = _check_output(back, "merfish", "table", 7 * n, "hex7", "visium", {"all": "nb"})
    assert out.uns["soscope"]["parameters"]["image"] == "None"  # picked, not given
    setup = [r.getMessage() for r in caplog.records if r.getMessage().startswith("soscope set up")]
    assert setup and not setup[0].endswith("image features none")  # the hires DAPI image was used


# -------------------------------------------------------------------------------------- Visium HD
def test_visium_hd_binned_outputs(tmp_path, caplog):
    sdata = sio.visium_hd(FIX / "visium_hd", dataset_id="merfish_hd", load_segmentations_only=False)
    spots, table = "merfish_hd_square_016um", "square_016um"
    n = len(sdata.shapes[spots])
    assert n == sdata.tables[table].n_obs > 100
    back, line = _enhance_roundtrip(sdata, tmp_path, caplog)
    assert "platform: visium_hd (Visium HD 16 µm bins" in line
    shapes, _ = _check_output(back, spots, table, 4 * n, "grid:2", "visium_hd", {"all": "nb"})
    # 16 µm bins (64 fullres px at 0.25 µm/px) → 8 µm sub-bins
    np.testing.assert_allclose(shapes.geometry.area.to_numpy(), (8 / 0.25) ** 2, rtol=1e-6)


# ----------------------------------------------------------------------------- Xenium: cells
def _xenium():
    return sio.xenium(
        FIX / "xenium",
        cells_as_circles=True,
        nucleus_boundaries=False,
        cells_labels=False,
        nucleus_labels=False,
        transcripts=False,
        morphology_mip=False,
        morphology_focus=False,
        aligned_images=False,
    )


def _hex_pseudo_spots(sdata, cells: str, table: str, spacing: float = 100.0, diameter: float = 55.0):
    """Make Visium-like circles over the cells (intrinsic µm), counting the cells in each lattice cell."""
    cen = shapely.get_coordinates(shapely.centroid(np.asarray(sdata.shapes[cells].geometry.values)))
    lo, hi = cen.min(0) - spacing, cen.max(0) + spacing
    dy = spacing * np.sqrt(3) / 2
    pts = [
        (x + (spacing / 2 if r % 2 else 0.0), y)
        for r, y in enumerate(np.arange(lo[1], hi[1], dy))
        for x in np.arange(lo[0], hi[0], spacing)
    ]
    lattice = np.asarray(pts)
    owner = cKDTree(lattice).query(cen)[1]  # the hexagonal lattice cell holding each centroid
    used, owner = np.unique(owner, return_inverse=True)
    tab = sdata.tables[table]
    ids = pd.Index(sdata.shapes[cells].index.astype(str))
    X = tab.X.toarray() if sp.issparse(tab.X) else np.asarray(tab.X)
    rows = pd.Index(tab.obs["cell_id"].astype(str)).get_indexer(ids)
    assert (rows >= 0).all()
    agg = sp.coo_matrix((np.ones(len(owner)), (owner, rows)), shape=(len(used), tab.n_obs)) @ X
    gdf = gpd.GeoDataFrame(
        {"radius": np.full(len(used), diameter / 2)},
        geometry=shapely.points(lattice[used]),
        index=np.arange(len(used)),
    )
    spots = ShapesModel.parse(gdf, transformations=get_transformation(sdata.shapes[cells], get_all=True))
    obs = pd.DataFrame({"region": pd.Categorical(["spots"] * len(used)), "spot_id": np.arange(len(used))})
    obs.index = obs.index.astype(str)
    adata = ad.AnnData(X=sp.csr_matrix(agg.astype(np.float32)), obs=obs, var=tab.var[[]].copy())
    return spots, TableModel.parse(adata, region="spots", region_key="region", instance_key="spot_id"), owner


def test_xenium_cells_as_subspots(tmp_path, caplog):
    sdata = _xenium()
    assert {"cell_boundaries", "cell_circles"} <= set(sdata.shapes)
    n_cells = len(sdata.shapes["cell_boundaries"])
    spots, table, owner = _hex_pseudo_spots(sdata, "cell_boundaries", "table")
    sdata.shapes["spots"] = spots
    sdata.tables["spots_table"] = table
    back, line = _enhance_roundtrip(sdata, tmp_path, caplog, table="spots_table", image=False)
    assert line.startswith("platform: xenium (segmented cells 'cell_boundaries'")
    shapes, _ = _check_output(
        back, "spots", "spots_table", n_cells, "cells:cell_boundaries", "xenium", {"all": "nb"}
    )
    # every cell is one sub-spot of the spot whose lattice cell holds its centroid
    got = pd.Series(
        shapes["spot_id"].to_numpy(), index=shapely.get_coordinates(shapes.geometry.centroid)[:, 0]
    )
    cen = shapely.get_coordinates(sdata.shapes["cell_boundaries"].geometry.centroid)
    want = pd.Series(owner, index=cen[:, 0])
    assert np.array_equal(np.sort(got.index), np.sort(want.index))
    np.testing.assert_array_equal(got.sort_index().to_numpy(), want.sort_index().to_numpy())


# ------------------------------------------------------------------------ Slide-seq / Curio beads
def _curio(path: Path):
    """Run ``spatialdata_io.curio``, adapting its last call if needed.

    spatialdata-io 0.7.1 builds ``SpatialData(table=...)``, which spatialdata 0.7 no longer accepts
    (``TypeError``); the reader then runs again with that one call adapted.
    """
    try:
        return sio.curio(path)
    except TypeError as err:
        if "table" not in str(err):
            raise
    import spatialdata_io.readers.curio as curio_mod

    real = curio_mod.SpatialData

    def shim(*args, table=None, **kwargs):
        return real(*args, tables={"table": table}, **kwargs)

    curio_mod.SpatialData = shim
    try:
        return sio.curio(path)
    finally:
        curio_mod.SpatialData = real


def test_curio_beads(tmp_path, caplog):
    sdata = _curio(FIX / "curio")
    n = len(sdata.shapes["cells"])
    assert (
        n == sdata.tables["table"].n_obs == ad.read_h5ad(FIX / "curio" / "verafish_anndata.h5ad").n_obs > 100
    )
    back, line = _enhance_roundtrip(sdata, tmp_path, caplog)
    assert line.startswith("platform: slide_seq")
    _check_output(back, "cells", "table", 4 * n, "grid:2", "slide_seq", {"all": "nb"})


# ------------------------------------------------------------------------------------ DBiT family
def test_dbit_spatialdata_io_reader(tmp_path, caplog):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sdata = sio.dbit(FIX / "dbit", dataset_id="skin")
    n = len(sdata.shapes["skin"])
    obs = sdata.tables["table"].obs
    # the reader's grid positions are the real pixel positions: "RxC" (0-based) = array_B x array_A (1-based)
    rxc = obs["rxc"].str.split("x", expand=True).astype(int).to_numpy()
    np.testing.assert_array_equal(rxc + 1, obs[["array_B", "array_A"]].to_numpy())
    back, line = _enhance_roundtrip(sdata, tmp_path, caplog)
    assert line.startswith("platform: dbit")
    _check_output(back, "skin", "table", 9 * n, "grid:3", "dbit", {"all": "nb"})


def test_read_dbit_two_modalities(tmp_path, caplog):
    lay = FIX / "soscope_layout"
    sdata = read_dbit(
        {"Antibody Capture": lay / "adt.csv", "Gene Expression": lay / "rna.csv"}, pitch_um=20.0
    )
    n = len(sdata.shapes["pixels"])
    back, line = _enhance_roundtrip(sdata, tmp_path, caplog)
    assert line.startswith("platform: dbit")
    for mod in ("antibody_capture", "gene_expression"):
        names = [t for t in back.tables if t.startswith("table_soscope") and mod in t.lower()]
        assert len(names) == 1, list(back.tables)
        out = back.tables[names[0]]
        assert out.n_obs == 9 * n and out.uns["soscope"]["subspots"] == "grid:3"
        assert set(dict(out.uns["soscope"]["likelihood"]).values()) == {"nb"}


def test_read_soscope_layout(tmp_path, caplog):
    lay = FIX / "soscope_layout"
    sdata = read_soscope_layout(lay, pitch_um=20.0)
    counts = pd.read_csv(lay / "original_count.csv", index_col=0)
    n = len(counts)
    assert len(sdata.shapes["pixels"]) == n
    back, line = _enhance_roundtrip(sdata, tmp_path, caplog)
    assert line.startswith("platform: dbit")
    _check_output(back, "pixels", "table", 9 * n, "grid:3", "dbit", {"all": "nb"})


# ------------------------------------------------------------------------------- detection, docs
def _anonymous(sdata):
    """Drop the reader's provenance and the "RxC" names: only the geometry is left as evidence."""
    t = sdata.tables["table"]
    t.uns.pop("soscope_reader")
    t.obs_names = [f"px{i}" for i in range(t.n_obs)]
    return sdata


@pytest.mark.parametrize(
    ("pitch", "names", "platform", "scheme"),
    [
        (20.0, None, "dbit", "grid:3"),  # read_dbit's provenance / "RxC" names
        (20.0, "anonymous", "generic", "auto"),  # 20 µm squares and nothing else: no platform claimed
        (16.0, "anonymous", "visium_hd", "grid:2"),  # squares tiling the plane with a 16 µm side
        (20.0, "hd", "visium_hd", "grid:2"),  # Visium HD bin barcodes
    ],
)
def test_detection_evidence(pitch, names, platform, scheme):
    sdata = read_soscope_layout(FIX / "soscope_layout", pitch_um=pitch)
    if names is not None:
        _anonymous(sdata)
    if names == "hd":
        sdata.tables["table"].obs_names = [
            f"s_016um_{i:05d}_00001-1" for i in range(sdata.tables["table"].n_obs)
        ]
    found = detect_platform(sdata, select(sdata, image=False))
    assert (found.name, found.subspots) == (platform, scheme)


def test_detection_without_reader_provenance(tmp_path):
    """Visium circles and Curio beads are recognised from their geometry alone (no reader attrs)."""
    v = sio.visium(FIX / "visium", dataset_id="merfish")
    v.attrs.pop("spatialdata_io_reader", None)
    assert detect_platform(v, select(v, image=False, coordinate_system="merfish")).name == "visium"
    c = _curio(FIX / "curio")
    c.attrs.pop("spatialdata_io_reader", None)
    assert detect_platform(c, select(c, image=False)).name == "slide_seq"


def test_docs_table_matches_defaults():
    """docs/platforms.md lists every platform with the defaults of PLATFORM_DEFAULTS."""
    text = DOCS.read_text()
    rows = {}
    for line in text.splitlines():
        m = re.match(r"^\|\s*`(\w+)`\s*\|", line)
        if m:
            rows[m.group(1)] = [c.strip() for c in line.strip().strip("|").split("|")]
    assert set(rows) == set(PLATFORM_DEFAULTS)
    for name, d in PLATFORM_DEFAULTS.items():
        cells = rows[name]
        assert (
            f"`{d.subspots}`" in cells[3]
            and f"`{d.likelihood}`" in cells[4]
            and cells[5] == str(d.neighbours)
        )
