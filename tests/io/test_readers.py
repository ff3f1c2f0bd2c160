"""Readers of the DBiT family and of the published soScope layout, on real-format files."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

sd = pytest.importorskip("spatialdata")
from spatialdata.models import ShapesModel, TableModel  # noqa: E402
from spatialdata.transformations import get_transformation  # noqa: E402

from soscope._errors import SoscopeInputError  # noqa: E402
from soscope.datasets._real import shared_data_dir  # noqa: E402
from soscope.io._readers import read_dbit, read_soscope_layout  # noqa: E402

PITCH = 20.0
N_SUB = 150  # real pixels used by the fixtures


def _packaged(name: str) -> pd.DataFrame:
    base = resources.files("soscope.datasets").joinpath("data", "spatial_cite_seq_human_skin", name)
    with resources.as_file(base) as p:
        return pd.read_csv(p, index_col=0)


@pytest.fixture(scope="module")
def real():
    """Take real spatial-CITE-seq pixels shipped with the package (proteins, RNA, positions)."""
    prot = _packaged("protein_counts.csv.gz")
    rna = _packaged("rna_hvg10_counts.csv.gz")
    pos = _packaged("positions.csv.gz").reset_index()
    rng = np.random.default_rng(0)
    keep = np.sort(rng.choice(len(prot), N_SUB, replace=False))
    return prot.iloc[keep, :40], rna.iloc[keep], pos.iloc[keep].reset_index(drop=True)


@pytest.fixture
def real_files(real, tmp_path: Path):
    """Write the real subset as files: proteins spots x features CSV, RNA features x spots TSV.gz."""
    prot, rna, pos = real
    p_prot = tmp_path / "adt.csv"
    p_rna = tmp_path / "rna.tsv.gz"
    p_pos = tmp_path / "positions.csv"
    prot.to_csv(p_prot)
    rna.T.to_csv(p_rna, sep="\t")  # the other orientation
    pos.to_csv(p_pos, index=False)
    return p_prot, p_rna, p_pos


def _dense(X) -> np.ndarray:
    return X.toarray() if sp.issparse(X) else np.asarray(X)


def _check_layout(sdata, n: int, shapes_key: str = "pixels"):
    table = sdata["table"]
    TableModel().validate(table)
    ShapesModel.validate(sdata[shapes_key])
    attrs = table.uns["spatialdata_attrs"]
    assert (attrs["region"], attrs["region_key"], attrs["instance_key"]) == (shapes_key, "region", "spot_id")
    assert table.n_obs == n == len(sdata[shapes_key])
    assert set(table.obs["spot_id"]) == set(sdata[shapes_key].index)
    assert {"barcode", "array_row", "array_col"} <= set(table.obs.columns)
    assert "global" in get_transformation(sdata[shapes_key], get_all=True)


def test_read_dbit_real_two_modalities(real, real_files):
    """Two real matrices (CSV, transposed TSV.gz) become one validated table over pitch squares."""
    prot, rna, _ = real
    p_prot, p_rna, _ = real_files
    sdata = read_dbit({"Antibody Capture": p_prot, "Gene Expression": p_rna}, pitch_um=PITCH)
    _check_layout(sdata, N_SUB)
    table = sdata["table"]

    # squares of side = pitch at (col * pitch, row * pitch)
    gdf = sdata["pixels"]
    assert np.allclose(gdf.area, PITCH**2)
    rows = np.array([int(b.split("x")[0]) for b in prot.index])
    cols = np.array([int(b.split("x")[1]) for b in prot.index])
    c = gdf.geometry.centroid
    assert np.allclose(c.x.to_numpy(), cols * PITCH) and np.allclose(c.y.to_numpy(), rows * PITCH)
    b = gdf.bounds
    assert np.allclose(b["maxx"] - b["minx"], PITCH) and np.allclose(b["maxy"] - b["miny"], PITCH)
    np.testing.assert_array_equal(table.obs["array_row"].to_numpy(), rows)

    # one table, both modalities, values exactly those of the files, RNA re-oriented
    assert table.obs_names.tolist() == prot.index.tolist()
    ft = table.var["feature_types"]
    assert (ft == "Antibody Capture").sum() == prot.shape[1]
    assert (ft == "Gene Expression").sum() == rna.shape[1]
    X = _dense(table.X)
    np.testing.assert_array_equal(X[:, ft.to_numpy() == "Antibody Capture"], prot.to_numpy())
    np.testing.assert_array_equal(X[:, ft.to_numpy() == "Gene Expression"], rna.to_numpy())
    assert table.uns["soscope_reader"]["pitch_um"] == PITCH


def test_read_dbit_orientation_auto_and_forced(real):
    """Barcodes on rows or columns are found; transpose= forces the orientation."""
    prot, _, _ = real
    a = read_dbit(prot, pitch_um=PITCH, modality="Antibody Capture")
    b = read_dbit(prot.T, pitch_um=PITCH, modality="Antibody Capture")
    c = read_dbit(prot.T, pitch_um=PITCH, transpose=True)
    for other in (b, c):
        assert other["table"].obs_names.tolist() == a["table"].obs_names.tolist()
        assert other["table"].var_names.tolist() == a["table"].var_names.tolist()
        np.testing.assert_array_equal(_dense(other["table"].X), _dense(a["table"].X))
    assert "feature_types" not in c["table"].var
    with pytest.raises(SoscopeInputError, match="do not parse"):
        read_dbit(prot.T, pitch_um=PITCH, transpose=False)


def test_read_dbit_anndata_and_h5ad(real, tmp_path):
    """AnnData objects and h5ad files are read; sparse=True keeps CSR."""
    import anndata as ad

    prot, _, _ = real
    adata = ad.AnnData(
        sp.csr_matrix(prot.to_numpy(dtype=np.float32)),
        obs=pd.DataFrame(index=prot.index),
        var=pd.DataFrame(index=prot.columns),
    )
    adata.write_h5ad(tmp_path / "adt.h5ad")
    s1 = read_dbit(adata, pitch_um=PITCH, sparse=True)
    s2 = read_dbit(tmp_path / "adt.h5ad", pitch_um=PITCH)
    assert sp.issparse(s1["table"].X)
    np.testing.assert_array_equal(_dense(s1["table"].X), prot.to_numpy())
    np.testing.assert_array_equal(_dense(s2["table"].X), prot.to_numpy())


def test_read_dbit_bad_barcodes():
    """Unparseable barcodes raise SoscopeInputError naming them; barcode_sep is honoured."""
    df = pd.DataFrame(np.ones((3, 2)), index=["1x2", "3x4", "oops"], columns=["a", "b"])
    with pytest.raises(SoscopeInputError, match="do not parse.*'oops'"):
        read_dbit(df, pitch_um=PITCH)
    df2 = pd.DataFrame(np.ones((2, 2)), index=["A1", "B2"], columns=["a", "b"])
    with pytest.raises(SoscopeInputError, match="cannot find the pixel barcodes"):
        read_dbit(df2, pitch_um=PITCH)
    # another separator works when declared
    df3 = pd.DataFrame(np.ones((2, 2)), index=["1_2", "3_4"], columns=["a", "b"])
    s = read_dbit(df3, pitch_um=PITCH, barcode_sep="_")
    assert s["table"].obs["array_col"].tolist() == [2, 4]
    with pytest.raises(SoscopeInputError, match="pitch_um"):
        read_dbit(df3, pitch_um=-1, barcode_sep="_")


def test_read_dbit_mismatched_barcodes(real):
    """Matrices over different pixels are rejected; a different order is aligned."""
    prot, rna, _ = real
    with pytest.raises(SoscopeInputError, match="Barcodes differ"):
        read_dbit({"Antibody Capture": prot, "Gene Expression": rna.iloc[:-3]}, pitch_um=PITCH)
    # same barcodes in another order are aligned, not rejected
    s = read_dbit({"Antibody Capture": prot, "Gene Expression": rna.iloc[::-1]}, pitch_um=PITCH)
    ft = s["table"].var["feature_types"].to_numpy()
    np.testing.assert_array_equal(_dense(s["table"].X)[:, ft == "Gene Expression"], rna.to_numpy())


def test_read_dbit_positions_with_arbitrary_barcodes(real):
    """positions= locates pixels whose barcodes are not 'RxC'."""
    prot, _, pos = real
    names = [f"pix{i:04d}" for i in range(len(prot))]
    counts = prot.set_axis(names, axis=0)
    positions = pd.DataFrame({"barcode": names, "row": pos["row"], "col": pos["col"]})
    # barcodes on the columns, found through positions
    s = read_dbit(counts.T, pitch_um=PITCH, positions=positions)
    np.testing.assert_array_equal(s["table"].obs["array_col"].to_numpy(), pos["col"].to_numpy())
    with pytest.raises(SoscopeInputError, match="absent from positions"):
        read_dbit(counts, pitch_um=PITCH, positions=positions.iloc[5:])


def test_read_dbit_image_aligned_from_positions(real_files, real):
    """imagerow/imagecol give an affine that maps spot pixels onto the squares' centres."""
    _, _, pos = real
    p_prot, _, _ = real_files
    # a downsampled copy of the positions' pixel frame (the real H&E is absent): 1/10 of the original
    pos_small = pos.assign(imagerow=pos["imagerow"] / 10.0, imagecol=pos["imagecol"] / 10.0)
    img = np.zeros((271, 272, 3), dtype=np.uint8)
    s = read_dbit(p_prot, pitch_um=PITCH, positions=pos_small, image=img)
    _check_layout(s, N_SUB)
    assert s["image"].shape == (3, 271, 272)
    m = get_transformation(s["image"], "global").to_affine_matrix(("x", "y"), ("x", "y"))
    xy = np.column_stack([pos_small["imagecol"], pos_small["imagerow"], np.ones(len(pos))]) @ m.T
    np.testing.assert_allclose(xy[:, 0], pos["col"] * PITCH, atol=0.5)
    np.testing.assert_allclose(xy[:, 1], pos["row"] * PITCH, atol=0.5)
    assert s["table"].uns["soscope_reader"]["image_fit_rmse_um"] < 0.5
    # explicit scale (µm per pixel), and an image that cannot be placed
    s2 = read_dbit(p_prot, pitch_um=PITCH, image=img, image_transform=2.0)
    m2 = get_transformation(s2["image"], "global").to_affine_matrix(("x", "y"), ("x", "y"))
    assert np.allclose(np.diag(m2)[:2], 2.0)
    with pytest.raises(SoscopeInputError, match="nothing places it"):
        read_dbit(p_prot, pitch_um=PITCH, image=img)


# ----------------------------------------------------------------------------------------------------
# the published soScope layout (shared data; skipped when absent)
# ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def skin_dir() -> Path:
    """Return the shared spatial-CITE-seq folder, or skip."""
    root = shared_data_dir(required=False)
    folder = root / "spatial_cite_seq_human_skin" if root is not None else None
    if folder is None or not folder.is_dir():
        pytest.skip("shared data folder spatial_cite_seq_human_skin is absent")
    return folder


def test_read_soscope_layout_reproduces_csvs(skin_dir: Path):
    """Spots, counts and positions equal those of the published CSVs."""
    sdata = read_soscope_layout(skin_dir, pitch_um=PITCH)  # original_count.csv + position_with_center.csv
    counts = pd.read_csv(skin_dir / "original_count.csv", index_col=0)
    pos = pd.read_csv(skin_dir / "position_with_center.csv")
    _check_layout(sdata, len(counts))
    table = sdata["table"]
    assert table.obs_names.tolist() == counts.index.tolist()
    assert table.var_names.tolist() == counts.columns.tolist()
    np.testing.assert_array_equal(_dense(table.X), counts.to_numpy())
    p = pos.set_index("barcode").loc[counts.index]
    for ours, theirs in [
        ("array_row", "row"),
        ("array_col", "col"),
        ("imagerow", "imagerow"),
        ("imagecol", "imagecol"),
        ("is_center", "is_center"),
    ]:
        np.testing.assert_array_equal(table.obs[ours].to_numpy(), p[theirs].to_numpy())
    c = sdata["pixels"].geometry.centroid
    np.testing.assert_allclose(c.x.to_numpy(), p["col"].to_numpy() * PITCH)
    np.testing.assert_allclose(c.y.to_numpy(), p["row"].to_numpy() * PITCH)
    assert table.uns["soscope_reader"]["geometry"] == "square"


def test_read_soscope_layout_x3_variant_and_modalities(skin_dir: Path):
    """The x3 positions (x/y = row/col) and two modalities in one table."""
    x3 = skin_dir / "x3"
    sdata = read_soscope_layout(
        x3,
        counts={
            "Antibody Capture": "reordered_filtered_protein.csv",
            "Gene Expression": skin_dir / "HVG_top10.csv",
        },
        pitch_um=PITCH,
    )
    table = sdata["table"]
    pos = pd.read_csv(x3 / "position_with_center.csv").set_index("barcode").loc[table.obs_names]
    # x3's positions use x/y for (row, col) (x = the barcode's first component)
    np.testing.assert_array_equal(table.obs["array_row"].to_numpy(), pos["x"].to_numpy())
    np.testing.assert_array_equal(table.obs["array_col"].to_numpy(), pos["y"].to_numpy())
    np.testing.assert_array_equal(table.obs["imagerow"].to_numpy(), pos["imagerow"].to_numpy())
    assert table.shape == (1618, 293)
    assert table.var["feature_types"].value_counts().to_dict() == {
        "Antibody Capture": 283,
        "Gene Expression": 10,
    }
    prot = pd.read_csv(x3 / "reordered_filtered_protein.csv", index_col=0)
    np.testing.assert_array_equal(_dense(table.X)[:, :283], prot.loc[table.obs_names].to_numpy())
    with pytest.raises(SoscopeInputError, match="pitch_um is required"):
        read_soscope_layout(skin_dir)


def test_read_soscope_layout_hex_is_circles(tmp_path: Path):
    """Visium-like offset coordinates become circles at 100 µm centre-to-centre, 55 µm diameter."""
    rows, cols = np.meshgrid(np.arange(6), np.arange(12), indexing="ij")
    keep = (rows + cols) % 2 == 0
    rows, cols = rows[keep], cols[keep]
    idx = np.arange(len(rows))
    pd.DataFrame({"index": idx, "row": rows, "col": cols, "is_center": 0}).to_csv(
        tmp_path / "reordered_position_with_center.csv", index=False
    )
    counts = pd.DataFrame(np.arange(len(rows) * 3).reshape(-1, 3) % 5, index=idx, columns=["g1", "g2", "g3"])
    counts.to_csv(tmp_path / "reordered_count.csv")
    sdata = read_soscope_layout(tmp_path)
    _check_layout(sdata, len(rows), shapes_key="spots")
    gdf = sdata["spots"]
    assert (gdf.geometry.geom_type == "Point").all()
    np.testing.assert_allclose(gdf["radius"], 27.5)
    from scipy.spatial import cKDTree

    xy = np.column_stack([gdf.geometry.x, gdf.geometry.y])
    d, _ = cKDTree(xy).query(xy, k=7)
    np.testing.assert_allclose(d[:, 1], 100.0)  # six neighbours at the pitch for interior spots
    assert np.isclose(d[:, 1:7], 100.0).all(axis=1).sum() > 0
    np.testing.assert_array_equal(_dense(sdata["table"].X), counts.to_numpy())
    forced = read_soscope_layout(tmp_path, geometry="square", pitch_um=100.0)
    assert "pixels" in forced.shapes
