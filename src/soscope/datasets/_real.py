"""Loaders for the real high-resolution datasets kept beside the project (never downloaded).

The data live outside the package, in a ``shared/data`` folder (see ``shared/data/README.md``):

* ``merfish_mouse_brain_mini/`` — Vizgen MERFISH mouse brain mini dataset (GiottoData, MIT; Vizgen terms).
* ``verafish_mouse_hippocampus/`` — VeraFISH mouse hippocampus (Banksy repository, MIT-style).

Where that folder is found (first match wins):

1. the environment variable ``SOSCOPE_SHARED_DATA`` (the folder that holds the dataset folders);
2. ``shared/data`` in the current directory or any of its parents (so ``../shared/data`` relative to a
   checkout such as ``/work/main`` is found from anywhere inside it);
3. the same walk up from this file's location (editable installs).

Every loader also takes an explicit ``path`` to the dataset folder. They are used by benchmarks and
tests; tests skip when the folder is absent.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import scipy.sparse as sp

if TYPE_CHECKING:
    from spatialdata import SpatialData

__all__ = [
    "shared_data_dir",
    "load_merfish_mini",
    "load_verafish",
    "MERFISH_MINI_EXTENT_UM",
    "VERAFISH_UNIT_UM",
    "VERAFISH_CELL_RADIUS_UM",
]

ENV_VAR = "SOSCOPE_SHARED_DATA"

#: Extent of the MERFISH mini images in µm (x0, x1, y0, y1), as used by GiottoData's own script
#: (``terra::ext(6400.029, 6900.037, -5150.007, -4699.967)`` in its y-negated frame).
MERFISH_MINI_EXTENT_UM = (6400.029, 6900.037, 4699.967, 5150.007)

#: ASSUMED size of one VeraFISH coordinate unit in µm. The unit is undocumented; with this value the
#: median nearest-neighbour distance between cells (159.3 units) is 10.0 µm, a typical soma spacing
#: in mouse hippocampus. Treat distances in µm from this dataset as estimates.
VERAFISH_UNIT_UM = 0.0628

#: ASSUMED radius (µm) of the circles drawn for VeraFISH cells (no segmentation is available).
VERAFISH_CELL_RADIUS_UM = 5.0


def shared_data_dir(required: bool = True) -> Path | None:
    """Return the folder holding the shared real datasets (search order: see the module docstring).

    Parameters
    ----------
    required
        When ``True`` (default) raise :class:`FileNotFoundError` if no folder is found; otherwise return
        ``None``.

    """
    env = os.environ.get(ENV_VAR)
    if env:
        p = Path(env).expanduser()
        if p.is_dir():
            return p
        if required:
            raise FileNotFoundError(f"{ENV_VAR}={env!r} is not a folder.")
        return None
    starts = [Path.cwd().resolve(), Path(__file__).resolve().parent]
    for start in starts:
        for parent in (start, *start.parents):
            cand = parent / "shared" / "data"
            if cand.is_dir():
                return cand
    if required:
        raise FileNotFoundError(
            "The shared data folder was not found: set the environment variable "
            f"{ENV_VAR} to the folder that holds the datasets (e.g. .../shared/data), or pass path=."
        )
    return None


def _dataset_dir(path: str | Path | None, name: str) -> Path:
    folder = Path(path) if path is not None else shared_data_dir() / name  # type: ignore[operator]
    if not folder.is_dir():
        raise FileNotFoundError(f"Dataset folder not found: {str(folder)!r}.")
    return folder


def _counts_matrix(X: np.ndarray | sp.spmatrix):
    """float32, CSR when fewer than 30% of entries are non-zero (the readers' convention)."""
    if sp.issparse(X):
        X = sp.csr_matrix(X, dtype=np.float32)
        return X if X.nnz < 0.3 * X.shape[0] * X.shape[1] else X.toarray()
    X = np.asarray(X, dtype=np.float32)
    return sp.csr_matrix(X) if np.count_nonzero(X) < 0.3 * X.size else X


def _merfish_cells(boundaries: Path):
    """Cell outlines (GeoDataFrame, index 0..N-1, column poly_ID) in µm, y flipped back to the image frame."""
    import geopandas as gpd
    import shapely

    df = pd.read_csv(boundaries, dtype={"poly_ID": str})
    codes, ids = pd.factorize(df["poly_ID"], sort=False)
    # the files store y negated: flip it back to Vizgen's global frame (the transcripts' global_y)
    xy = np.column_stack([df["x"].to_numpy(dtype=float), -df["y"].to_numpy(dtype=float)])
    rings = shapely.linearrings(xy, indices=codes)
    polys = shapely.make_valid(shapely.polygons(rings))
    return gpd.GeoDataFrame(
        {"poly_ID": np.asarray(ids, dtype=object)}, geometry=polys, index=pd.RangeIndex(len(ids))
    )


def load_merfish_mini(
    path: str | Path | None = None,
    *,
    z_planes: int | list[int] | None = None,
    max_distance_um: float = 0.0,
    image: bool = True,
) -> SpatialData:
    """Load the Vizgen MERFISH mouse-brain mini dataset (500 x 450 µm, 498 cells, 559 genes).

    Coordinates are Vizgen's global µm frame (x to the right, y downwards as in the images): the cell
    outlines' stored y is negated and is flipped back here, matching the transcripts' ``global_y``.

    Parameters
    ----------
    path
        The dataset folder (holding ``Raw/``); default ``<shared data>/merfish_mouse_brain_mini``.
    z_planes
        Transcripts of these z planes (0 and/or 1); default all (both planes are assigned to the z0
        outlines, a 2-D projection — the z1 outlines carry different ids).
    max_distance_um
        0 (default): a transcript belongs to the cell whose outline contains it (point in polygon);
        otherwise also to the nearest cell within this distance (an expansion of the outlines; ties go to
        one cell). With 0, ~39% of the transcripts fall inside the outlines, which cover ~14% of the field.
    image
        Include the DAPI image (z0) as ``"dapi"``.

    Returns
    -------
    SpatialData with, in coordinate system ``"global"`` (µm):

    * shapes ``"cells"``: 498 outlines (z0), index 0..497 = ``cell_id``;
    * points ``"transcripts"``: ``x``, ``y``, ``gene`` (feature key), ``global_z``, ``cell_id``
      (-1 when unassigned) — bin them to any polygons for pseudo-spots and truth;
    * table ``"table"``: cells x 559 genes (float32 counts, CSR), annotating ``"cells"``
      (region_key ``"region"``, instance_key ``"cell_id"``); obs ``poly_ID``, ``area_um2``;
      ``var["blank"]`` marks the ``Blank-*`` control probes;
    * image ``"dapi"`` (1 x 4143 x 4603, uint8): pixel (col, row) maps to
      ``(x0 + col * sx, y0 + row * sy)`` µm with the extent :data:`MERFISH_MINI_EXTENT_UM`
      (sx ≈ sy ≈ 0.1086 µm); image row 0 is the smallest y. Checked: mean DAPI intensity inside the cell
      outlines is ~3x that outside (the y-flipped alternative gives ~1.3x).

    """
    import anndata as ad
    import geopandas as gpd
    from spatialdata import SpatialData
    from spatialdata.models import Image2DModel, PointsModel, ShapesModel, TableModel
    from spatialdata.transformations import Identity, Scale, Sequence, Translation

    folder = _dataset_dir(path, "merfish_mouse_brain_mini")
    raw = folder / "Raw"
    cells = _merfish_cells(raw / "cell_boundaries" / "z0_polygons.gz")

    tx = pd.read_csv(raw / "vizgen_transcripts.gz")
    if z_planes is not None:
        tx = tx.loc[tx["global_z"].isin(np.atleast_1d(z_planes))].reset_index(drop=True)
    pts = gpd.GeoDataFrame(
        index=pd.RangeIndex(len(tx)), geometry=gpd.points_from_xy(tx["global_x"], tx["global_y"])
    )
    geoms = gpd.GeoDataFrame(geometry=cells.geometry, index=cells.index)
    if max_distance_um > 0:
        joined = gpd.sjoin_nearest(pts, geoms, how="left", max_distance=float(max_distance_um))
    else:
        joined = gpd.sjoin(pts, geoms, how="left", predicate="within")
    joined = joined[~joined.index.duplicated(keep="first")]  # a point on a shared edge / a tie: keep one
    cell_of = joined["index_right"].reindex(pts.index).fillna(-1).to_numpy().astype(np.int64)

    genes = pd.Index(np.sort(tx["gene"].astype(str).unique()), dtype=object)
    gene_code = genes.get_indexer(tx["gene"].astype(str))
    ok = cell_of >= 0
    X = sp.coo_matrix(
        (np.ones(int(ok.sum()), dtype=np.float32), (cell_of[ok], gene_code[ok])),
        shape=(len(cells), len(genes)),
    ).tocsr()
    X.sum_duplicates()

    obs = pd.DataFrame(index=pd.Index(cells["poly_ID"].to_numpy(dtype=object), dtype=object))
    obs["poly_ID"] = cells["poly_ID"].to_numpy(dtype=object)
    obs["area_um2"] = cells.geometry.area.to_numpy()
    obs["region"] = pd.Categorical(["cells"] * len(cells))
    obs["cell_id"] = cells.index.to_numpy(dtype=np.int64)
    var = pd.DataFrame({"blank": genes.str.startswith("Blank-")}, index=genes)
    adata = ad.AnnData(X=_counts_matrix(X), obs=obs, var=var)
    adata.uns["soscope_dataset"] = {
        "name": "merfish_mouse_brain_mini",
        "assignment": "point_in_polygon" if max_distance_um <= 0 else f"nearest_within_{max_distance_um}um",
        "fraction_transcripts_assigned": float(ok.mean()) if len(ok) else 0.0,
    }
    table = TableModel.parse(adata, region="cells", region_key="region", instance_key="cell_id")

    shapes = ShapesModel.parse(
        gpd.GeoDataFrame(geometry=cells.geometry, index=cells.index), transformations={"global": Identity()}
    )
    points_df = pd.DataFrame(
        {
            "x": tx["global_x"].to_numpy(dtype=float),
            "y": tx["global_y"].to_numpy(dtype=float),
            "gene": pd.Categorical(tx["gene"].astype(str), categories=genes),
            "global_z": tx["global_z"].to_numpy(dtype=np.int64),
            "cell_id": cell_of,
        }
    )
    points = PointsModel.parse(
        points_df,
        coordinates={"x": "x", "y": "y"},
        feature_key="gene",
        transformations={"global": Identity()},
    )

    images = {}
    if image:
        from PIL import Image

        with Image.open(raw / "images" / "mini_dataset_dapi_z0.jpg") as im:
            arr = np.asarray(im.convert("L"))
        x0, x1, y0, y1 = MERFISH_MINI_EXTENT_UM
        h, w = arr.shape
        to_um = Sequence(
            [Scale([(x1 - x0) / w, (y1 - y0) / h], axes=("x", "y")), Translation([x0, y0], axes=("x", "y"))]
        )
        images["dapi"] = Image2DModel.parse(
            arr[None],
            dims=("c", "y", "x"),
            c_coords=["DAPI"],
            transformations={"global": to_um},
            chunks=(1, 1024, 1024),
        )
    return SpatialData(
        images=images, shapes={"cells": shapes}, points={"transcripts": points}, tables={"table": table}
    )


def load_verafish(
    path: str | Path | None = None,
    *,
    unit_um: float = VERAFISH_UNIT_UM,
    cell_radius_um: float = VERAFISH_CELL_RADIUS_UM,
) -> SpatialData:
    """Load the VeraFISH mouse hippocampus dataset: 10,994 cells x 120 genes, integer counts, no image.

    Parameters
    ----------
    path
        The dataset folder; default ``<shared data>/verafish_mouse_hippocampus``.
    unit_um
        µm per coordinate unit. The unit is undocumented: the default :data:`VERAFISH_UNIT_UM` (0.0628) is an
        ASSUMPTION that makes the median nearest-neighbour distance between cells 10 µm.
    cell_radius_um
        Radius of the circle drawn for each cell (an assumption; no segmentation exists).

    Returns
    -------
    SpatialData with shapes ``"cells"`` (circles at ``(sdimx, sdimy) * unit_um``, index 0..N-1 =
    ``cell_id``) and table ``"table"`` (float32 counts; obs names = the original cell names) annotating
    them; coordinate system ``"global"`` in (assumed) µm. ``table.uns["soscope_dataset"]["unit_um"]``
    records the scale used.

    """
    import anndata as ad
    import geopandas as gpd
    import shapely
    from spatialdata import SpatialData
    from spatialdata.models import ShapesModel, TableModel
    from spatialdata.transformations import Identity

    folder = _dataset_dir(path, "verafish_mouse_hippocampus")
    unit_um = float(unit_um)
    if not unit_um > 0:
        raise ValueError(f"unit_um must be > 0, got {unit_um}.")
    loc = pd.read_csv(folder / "locations.csv", index_col=0)
    expr = pd.read_csv(folder / "expression_cells_x_genes.csv.gz", index_col=0)
    loc.index = loc.index.astype(str)
    expr.index = expr.index.astype(str)
    if not loc.index.equals(expr.index):
        loc = loc.loc[expr.index]
    n = len(expr)
    xy = loc[["sdimx", "sdimy"]].to_numpy(dtype=float) * unit_um
    gdf = gpd.GeoDataFrame(
        {"radius": np.full(n, float(cell_radius_um))},
        geometry=shapely.points(xy[:, 0], xy[:, 1]),
        index=pd.RangeIndex(n),
    )
    shapes = ShapesModel.parse(gdf, transformations={"global": Identity()})

    obs = pd.DataFrame(index=pd.Index(expr.index.to_numpy(dtype=object), dtype=object))
    obs["region"] = pd.Categorical(["cells"] * n)
    obs["cell_id"] = np.arange(n, dtype=np.int64)
    var = pd.DataFrame(index=pd.Index(expr.columns.astype(str).to_numpy(dtype=object), dtype=object))
    adata = ad.AnnData(X=_counts_matrix(expr.to_numpy()), obs=obs, var=var)
    adata.uns["soscope_dataset"] = {
        "name": "verafish_mouse_hippocampus",
        "unit_um": unit_um,
        "unit_um_is_assumed": True,
        "cell_radius_um": float(cell_radius_um),
    }
    table = TableModel.parse(adata, region="cells", region_key="region", instance_key="cell_id")
    return SpatialData(shapes={"cells": shapes}, tables={"table": table})
