"""Build the platform fixtures in ``tests/platforms/fixtures/`` from the real data in ``../shared/data``.

Each fixture is a folder in the real file format of one reader, holding real counts and positions:

* ``visium/``: Space Ranger ``outs`` (``filtered_feature_bc_matrix.h5`` in the 10x HDF5 layout,
  ``spatial/tissue_positions.csv``, ``spatial/scalefactors_json.json``, ``spatial/tissue_hires_image.png``,
  ``spatial/tissue_lowres_image.png``): MERFISH mouse-brain transcripts counted in 55 µm circles on a
  100 µm hexagonal lattice; the images are the dataset's DAPI image (grey in RGB), the fullres pixel
  grid is the DAPI pixel grid.
* ``visium_hd/``: Space Ranger HD ``outs`` (``feature_slice.h5`` with its layout metadata,
  ``binned_outputs/square_016um/{filtered_feature_bc_matrix.h5, spatial/tissue_positions.parquet,
  spatial/scalefactors_json.json}``): the same transcripts counted in 16 µm square bins.
* ``xenium/``: Xenium Onboard Analysis 1.0 output (``experiment.xenium``, ``cells.zarr.zip``,
  ``cell_feature_matrix.h5``, ``cells.parquet``, ``cell_boundaries.parquet``): the MERFISH cell outlines
  and the transcripts inside them.
* ``curio/``: Curio Seeker output (``<id>_anndata.h5ad``, ``_cluster_assignment.txt``, ``_Metrics.csv``,
  ``_variable_features_clusters.txt``, ``_variable_features_spatial_moransi.txt``): VeraFISH cells of a
  window of the hippocampus as ~10 µm beads (coordinate unit 0.0628 µm, an assumption of
  ``soscope.datasets.load_verafish``).
* ``dbit/``: the input of spatialdata-io's ``dbit`` reader (an ``.h5ad`` whose spot names are the two
  8-nt channel barcodes, and ``barcode_list.txt``): a 12 x 12 window of the spatial-CITE-seq skin pixels
  (real antibody counts and grid positions). The barcode sequences are stand-ins (deterministic, not
  the chip's): only their format matters to the reader.
* ``soscope_layout/``: the published soScope CSV layout (``original_count.csv``,
  ``position_with_center.csv``) and DBiT CSVs (``adt.csv``, ``rna.csv``, pixels named ``"RxC"``) of the
  same window.

Deterministic: run ``python tests/platforms/make_fixtures.py`` from the project root.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp
from PIL import Image

from soscope.datasets import load_merfish_mini, load_verafish
from soscope.datasets._real import MERFISH_MINI_EXTENT_UM, shared_data_dir

OUT = Path(__file__).parent / "fixtures"
N_GENES = 40
RNG_SEED = 0


def _barcodes(n: int, rng: np.random.Generator, k: int = 16) -> list[str]:
    """Distinct ACGT barcodes of length ``k`` (deterministic for a given generator)."""
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < n:
        s = "".join(rng.choice(list("ACGT"), k))
        if s not in seen:
            seen.add(s)
            out.append(s)
    return out


def write_10x_h5(path: Path, X: sp.spmatrix, barcodes: list[str], genes: list[str], library_id: str) -> None:
    """Write cells x genes counts in the Cell Ranger / Space Ranger v3 HDF5 layout (``matrix/...``)."""
    X = sp.csr_matrix(X, dtype=np.int32)
    X.sort_indices()
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.attrs["filetype"] = "matrix"
        f.attrs["version"] = 2
        f.attrs["library_ids"] = np.array([library_id.encode()])
        f.attrs["chemistry_description"] = b"Spatial 3' v1"
        f.attrs["software_version"] = b"spaceranger-2.0.0"
        m = f.create_group("matrix")
        m.create_dataset("barcodes", data=np.array([b.encode() for b in barcodes]))
        m.create_dataset("data", data=X.data.astype(np.int32))
        m.create_dataset("indices", data=X.indices.astype(np.int64))
        m.create_dataset("indptr", data=X.indptr.astype(np.int64))
        m.create_dataset("shape", data=np.array([X.shape[1], X.shape[0]], dtype=np.int32))
        feats = m.create_group("features")
        feats.create_dataset("_all_tag_keys", data=np.array([b"genome"]))
        feats.create_dataset("id", data=np.array([f"MERFISH_{g}".encode() for g in genes]))
        feats.create_dataset("name", data=np.array([g.encode() for g in genes]))
        feats.create_dataset("feature_type", data=np.array([b"Gene Expression"] * len(genes)))
        feats.create_dataset("genome", data=np.array([b"mm10"] * len(genes)))


def _count(points_xy: np.ndarray, gene_code: np.ndarray, owner: np.ndarray, n_owners: int, n_genes: int):
    ok = owner >= 0
    return sp.coo_matrix(
        (np.ones(int(ok.sum()), dtype=np.int32), (owner[ok], gene_code[ok])), shape=(n_owners, n_genes)
    ).tocsr()


def _merfish():
    sdata = load_merfish_mini(image=True)
    tx = sdata.points["transcripts"].compute()
    genes_all = tx["gene"].astype(str)
    keep = genes_all[~genes_all.str.startswith("Blank-")].value_counts()
    genes = sorted(keep.index[:N_GENES])
    tx = tx.loc[genes_all.isin(genes).to_numpy()].reset_index(drop=True)
    code = pd.Index(genes).get_indexer(tx["gene"].astype(str))
    dapi = np.asarray(sdata.images["dapi"].data[0])
    return sdata, tx, genes, code, dapi


def _rgb(arr: np.ndarray, width: int) -> tuple[np.ndarray, float]:
    """Grey image resized to ``width`` px, as RGB, and its scale factor."""
    scale = width / arr.shape[1]
    im = Image.fromarray(arr).resize((width, round(arr.shape[0] * scale)), Image.Resampling.BILINEAR)
    g = np.asarray(im)
    return np.stack([g, g, g], axis=-1), scale


def make_visium(tx, genes, code, dapi, rng) -> None:
    """55 µm circles on a 100 µm hexagonal lattice over the MERFISH field; fullres = DAPI pixel grid."""
    out = OUT / "visium"
    x0, x1, y0, y1 = MERFISH_MINI_EXTENT_UM
    h, w = dapi.shape
    sx, sy = (x1 - x0) / w, (y1 - y0) / h
    spacing, radius = 100.0, 27.5
    centres, rc = [], []
    for r in range(int((y1 - y0) / (spacing * np.sqrt(3) / 2)) + 1):
        cy = y0 + radius + r * spacing * np.sqrt(3) / 2
        for c in range(int((x1 - x0) / spacing) + 1):
            cx = x0 + radius + c * spacing + (spacing / 2 if r % 2 else 0.0)
            if cx + radius <= x1 and cy + radius <= y1:
                centres.append((cx, cy))
                rc.append((r, 2 * c + (r % 2)))
    centres = np.asarray(centres)
    from scipy.spatial import cKDTree

    d, nearest = cKDTree(centres).query(tx[["x", "y"]].to_numpy())
    owner = np.where(d <= radius, nearest, -1)
    X = _count(None, code, owner, len(centres), len(genes))
    barcodes = [b + "-1" for b in _barcodes(len(centres), rng)]
    write_10x_h5(out / "filtered_feature_bc_matrix.h5", X, barcodes, genes, "merfish_visium")
    rc = np.asarray(rc)
    pos = pd.DataFrame(
        {
            "barcode": barcodes,
            "in_tissue": 1,
            "array_row": rc[:, 0],
            "array_col": rc[:, 1],
            "pxl_row_in_fullres": np.round((centres[:, 1] - y0) / sy).astype(int),
            "pxl_col_in_fullres": np.round((centres[:, 0] - x0) / sx).astype(int),
        }
    )
    (out / "spatial").mkdir(parents=True, exist_ok=True)
    pos.to_csv(out / "spatial" / "tissue_positions.csv", index=False)
    hires, s_hi = _rgb(dapi, 1000)
    lowres, s_lo = _rgb(dapi, 250)
    Image.fromarray(hires).save(out / "spatial" / "tissue_hires_image.png", optimize=True)
    Image.fromarray(lowres).save(out / "spatial" / "tissue_lowres_image.png", optimize=True)
    scalefactors = {
        "spot_diameter_fullres": 2 * radius / sx,
        "fiducial_diameter_fullres": 1.6 * 2 * radius / sx,
        "tissue_hires_scalef": s_hi,
        "tissue_lowres_scalef": s_lo,
    }
    (out / "spatial" / "scalefactors_json.json").write_text(json.dumps(scalefactors, indent=2))


def make_visium_hd(tx, genes, code, rng) -> None:
    """16 µm bins over a 192 x 192 µm window of the MERFISH field; fullres at 0.25 µm per pixel."""
    out = OUT / "visium_hd"
    x0, _, y0, _ = MERFISH_MINI_EXTENT_UM
    bin_um, n_side, mpp = 16.0, 12, 0.25
    ox, oy = x0 + 150.0, y0 + 150.0
    col = np.floor((tx["x"].to_numpy() - ox) / bin_um).astype(int)
    row = np.floor((tx["y"].to_numpy() - oy) / bin_um).astype(int)
    inside = (col >= 0) & (col < n_side) & (row >= 0) & (row < n_side)
    owner = np.where(inside, row * n_side + col, -1)
    X = _count(None, code, owner, n_side * n_side, len(genes))
    rr, cc = np.divmod(np.arange(n_side * n_side), n_side)
    barcodes = [f"s_016um_{r:05d}_{c:05d}-1" for r, c in zip(rr, cc, strict=True)]
    keep = np.flatnonzero(np.asarray(X.sum(axis=1)).ravel() > 0)  # the filtered matrix: bins with counts
    bdir = out / "binned_outputs" / "square_016um"
    write_10x_h5(
        bdir / "filtered_feature_bc_matrix.h5", X[keep], [barcodes[i] for i in keep], genes, "merfish_hd"
    )
    pos = pd.DataFrame(
        {
            "barcode": barcodes,
            "in_tissue": 1,
            "array_row": rr.astype(np.int64),
            "array_col": cc.astype(np.int64),
            "pxl_row_in_fullres": ((rr + 0.5) * bin_um + 150.0) / mpp,
            "pxl_col_in_fullres": ((cc + 0.5) * bin_um + 150.0) / mpp,
        }
    )
    (bdir / "spatial").mkdir(parents=True, exist_ok=True)
    pos.to_parquet(bdir / "spatial" / "tissue_positions.parquet", index=False)
    scalefactors = {
        "spot_diameter_fullres": bin_um / mpp,
        "bin_size_um": bin_um,
        "microns_per_pixel": mpp,
        "tissue_lowres_scalef": 0.01,
        "tissue_hires_scalef": 0.04,
        "fiducial_diameter_fullres": 1000.0,
        "regist_target_img_scalef": 0.04,
    }
    (bdir / "spatial" / "scalefactors_json.json").write_text(json.dumps(scalefactors, indent=2))
    layout = {"file_format": "1.0", "schema_version": "1.0", "transform": [1, 0, 0, 0, 1, 0, 0, 0, 1]}
    with h5py.File(out / "feature_slice.h5", "w") as f:
        f.attrs["metadata_json"] = json.dumps(
            {"hd_layout_json": json.dumps(layout), "transform_matrices": {}}
        )


def make_xenium(sdata, tx, genes, code) -> None:
    """Xenium 1.0 output of the MERFISH cells (µm, origin at the field's corner)."""
    import geopandas as gpd
    import shapely

    out = OUT / "xenium"
    out.mkdir(parents=True, exist_ok=True)
    x0, _, y0, _ = MERFISH_MINI_EXTENT_UM
    cells = sdata.shapes["cells"]
    polys = []
    for g in cells.geometry:  # one outline per cell: the largest part of a MultiPolygon
        polys.append(max(g.geoms, key=lambda p: p.area) if g.geom_type == "MultiPolygon" else g)
    pts = gpd.GeoDataFrame(geometry=gpd.points_from_xy(tx["x"], tx["y"]))
    joined = gpd.sjoin(pts, gpd.GeoDataFrame(geometry=polys), how="left", predicate="within")
    joined = joined[~joined.index.duplicated(keep="first")]
    owner = joined["index_right"].reindex(pts.index).fillna(-1).to_numpy().astype(int)
    X = _count(None, code, owner, len(polys), len(genes))
    n_tx = np.asarray(X.sum(axis=1)).ravel()
    keep = np.flatnonzero(n_tx > 0)
    ids = np.arange(1, len(keep) + 1, dtype=np.int64)  # Xenium 1.0: integer cell ids from 1
    write_10x_h5(out / "cell_feature_matrix.h5", X[keep], [str(i) for i in ids], genes, "merfish_xenium")
    kept = [polys[i] for i in keep]
    cen = shapely.get_coordinates(shapely.centroid(kept))
    pd.DataFrame(
        {
            "cell_id": ids,
            "x_centroid": cen[:, 0] - x0,
            "y_centroid": cen[:, 1] - y0,
            "transcript_counts": n_tx[keep].astype(np.int64),
            "control_probe_counts": 0,
            "control_codeword_counts": 0,
            "total_counts": n_tx[keep].astype(np.int64),
            "cell_area": shapely.area(kept),
            "nucleus_area": 0.3 * shapely.area(kept),
        }
    ).to_parquet(out / "cells.parquet", index=False)
    rows = []
    for cid, p in zip(ids, kept, strict=True):
        xy = np.asarray(shapely.simplify(p, 0.3).exterior.coords)
        rows.append(pd.DataFrame({"cell_id": cid, "vertex_x": xy[:, 0] - x0, "vertex_y": xy[:, 1] - y0}))
    pd.concat(rows, ignore_index=True).to_parquet(out / "cell_boundaries.parquet", index=False)
    specs = {
        "analysis_sw_version": "xenium-1.0.2",
        "pixel_size": 0.2125,
        "run_name": "merfish_mini_as_xenium",
    }
    (out / "experiment.xenium").write_text(json.dumps(specs, indent=2))
    # an empty zarr v2 group in a zip: the 1.0 reader opens cells.zarr.zip but reads no array from it
    with zipfile.ZipFile(out / "cells.zarr.zip", "w") as z:
        entry = zipfile.ZipInfo(".zgroup", date_time=(2024, 1, 1, 0, 0, 0))  # fixed: reproducible bytes
        z.writestr(entry, json.dumps({"zarr_format": 2}))


def make_curio(rng) -> None:
    """VeraFISH cells of the 200 x 200 µm window holding most cells, as Curio Seeker beads."""
    import anndata as ad
    from sklearn.cluster import KMeans

    out = OUT / "curio"
    out.mkdir(parents=True, exist_ok=True)
    v = load_verafish()
    xy = np.asarray([(p.x, p.y) for p in v.shapes["cells"].geometry])
    X = v.tables["table"].X
    X = X.toarray() if sp.issparse(X) else np.asarray(X)
    win = 200.0
    cells = np.floor((xy - xy.min(0)) / win).astype(int)
    key, counts = np.unique(cells, axis=0, return_counts=True)
    best = key[np.argmax(counts)]
    sel = np.flatnonzero((cells == best).all(axis=1))
    sel = sel[np.argsort(xy[sel, 0] + 1e-3 * xy[sel, 1], kind="stable")][:300]
    Xs = X[sel].astype(np.float32)
    genes = np.asarray(v.tables["table"].var_names)
    keep_g = np.argsort(-Xs.sum(0), kind="stable")[:N_GENES]
    Xs, genes = Xs[:, keep_g], genes[keep_g]
    names = _barcodes(len(sel), rng, 14)
    pos = xy[sel] - xy[sel].min(0)
    adata = ad.AnnData(
        X=sp.csr_matrix(Xs), obs=pd.DataFrame(index=names), var=pd.DataFrame(index=list(genes.astype(str)))
    )
    adata.obsm["spatial"] = pos
    adata.obsm["X_spatial"] = pos.copy()
    adata.write_h5ad(out / "verafish_anndata.h5ad")
    clusters = KMeans(4, n_init=1, random_state=0).fit_predict(np.log1p(Xs)) + 1
    pd.DataFrame({0: names, 1: clusters}).to_csv(
        out / "verafish_cluster_assignment.txt", sep="\t", header=False, index=False
    )
    metrics = pd.DataFrame(
        {
            "Metric": ["Number_of_beads", "Mean_counts_per_bead", "Number_of_genes"],
            "Value": [len(sel), float(Xs.sum(1).mean()), len(genes)],
            "Category": ["Beads", "Beads", "Genes"],
        }
    )
    metrics.to_csv(out / "verafish_Metrics.csv", index=False)
    top = [genes[np.argmax(Xs[clusters == k].mean(0))] for k in range(1, 5)]
    pd.DataFrame({"cluster": range(1, 5), "gene": top}).to_csv(
        out / "verafish_variable_features_clusters.txt", sep="\t", index=False
    )
    # Moran's I file: a header one field shorter than the rows, so the genes become the index
    with open(out / "verafish_variable_features_spatial_moransi.txt", "w") as f:
        f.write("observed\tp.value\n")
        for g in genes[:10]:
            f.write(f"{g}\t0.1\t0.01\n")


def make_dbit(rng) -> None:
    """Write a 12 x 12 window of the spatial-CITE-seq skin pixels (spatialdata-io dbit, soscope readers)."""
    import anndata as ad

    skin = shared_data_dir() / "spatial_cite_seq_human_skin"
    prot = pd.read_csv(skin / "x3" / "reordered_filtered_protein.csv", index_col=0)
    pos = pd.read_csv(skin / "position_with_center.csv")
    rna = pd.read_csv(skin / "HVG_top10.csv", index_col=0)
    orig = pd.read_csv(skin / "original_count.csv", index_col=0)
    pos = pos.set_index("barcode")
    win = pos.loc[(pos["row"].between(20, 31)) & (pos["col"].between(20, 31))]
    bcs = [b for b in prot.index.astype(str) if b in win.index]
    bcs = sorted(bcs, key=lambda b: (win.loc[b, "row"], win.loc[b, "col"]))
    p = prot.loc[bcs]
    p = p.loc[:, p.sum(0).sort_values(ascending=False, kind="stable").index[:N_GENES]]
    # spatialdata-io dbit: names are B (row channel) + A (column channel) barcodes, 8 nt each
    seqs = _barcodes(100, rng, 8)
    a_seq, b_seq = seqs[:50], seqs[50:]
    rows, cols = win.loc[bcs, "row"].to_numpy(), win.loc[bcs, "col"].to_numpy()
    names = [b_seq[r] + a_seq[c] for r, c in zip(rows, cols, strict=True)]
    out = OUT / "dbit"
    out.mkdir(parents=True, exist_ok=True)
    adata = ad.AnnData(
        X=sp.csr_matrix(p.to_numpy(dtype=np.float32)),
        obs=pd.DataFrame({"rxc": bcs}, index=names),
        var=pd.DataFrame(index=list(p.columns)),
    )
    adata.write_h5ad(out / "skin_cite.h5ad")
    lines = [f"A{i + 1}\t{s}" for i, s in enumerate(a_seq)] + [f"B{i + 1}\t{s}" for i, s in enumerate(b_seq)]
    (out / "barcode_list.txt").write_text("\n".join(lines) + "\n")
    lay = OUT / "soscope_layout"
    lay.mkdir(parents=True, exist_ok=True)
    p.to_csv(lay / "adt.csv")
    rna.loc[[b for b in bcs if b in rna.index]].to_csv(lay / "rna.csv")
    oc = orig.loc[[b for b in orig.index.astype(str) if b in set(bcs)]]
    oc.to_csv(lay / "original_count.csv")
    pos_full = pd.read_csv(skin / "position_with_center.csv")
    pos_full.loc[pos_full["barcode"].isin(oc.index)].to_csv(lay / "position_with_center.csv", index=False)


def main() -> None:
    """Rebuild every fixture folder."""
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    rng = np.random.default_rng(RNG_SEED)
    sdata, tx, genes, code, dapi = _merfish()
    make_visium(tx, genes, code, dapi, rng)
    make_visium_hd(tx, genes, code, rng)
    make_xenium(sdata, tx, genes, code)
    make_curio(rng)
    make_dbit(rng)
    total = sum(f.stat().st_size for f in OUT.rglob("*") if f.is_file())
    print(f"fixtures: {total / 1e6:.2f} MB in {OUT}")


if __name__ == "__main__":
    main()
