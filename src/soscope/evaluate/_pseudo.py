"""Pseudo-spots: coarse spots with known sub-spot truth, built from high-resolution data (cells or bins).

The field's protocol (iStar, Thor, SuperResolvedST, soScope): a pseudo-spot's counts are the sum of the
cells (or bins) whose centre lies in its footprint — a 55 µm circle on a 100 µm hexagonal lattice, or a
coarse square bin — and the truth of a sub-spot is the sum of the cells whose centre lies in its polygon.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import shapely
from scipy.spatial import cKDTree

from soscope._constants import SoscopeKeys

from .._errors import SoscopeInputError
from .._transforms import affine_xy
from ..io import choose_coordinate_system, layer_names, match_instances, table_annotation

if TYPE_CHECKING:  # pragma: no cover
    from spatialdata import SpatialData

__all__ = ["pseudo_spots"]


def _pick_table(sdata: SpatialData, table: str | None) -> str:
    names = list(sdata.tables.keys())
    if table is None:
        if len(names) == 1:
            return names[0]
        raise SoscopeInputError(
            f"Several tables ({names}) could hold the high-resolution profiles; set `table=` to one of them."
            if names
            else "The SpatialData has no table: pseudo-spots need a table of cell (or bin) profiles."
        )
    if table not in sdata.tables:
        raise SoscopeInputError(f"No table named {table!r}; set `table=` to one of {names}.")
    return table


def _element_centroids(element: Any, ids: pd.Index, name: str) -> np.ndarray:
    """``(n, 2)`` intrinsic centres of the element's members ``ids`` (shapes: centroids; points: x, y)."""
    import geopandas as gpd

    if isinstance(element, gpd.GeoDataFrame):
        missing = ~ids.isin(element.index)
        if missing.any():
            raise SoscopeInputError(
                f"{int(missing.sum())} table rows name instances missing from {name!r} (e.g. "
                f"{list(ids[missing][:3])}); the table's instance key must match the element's index."
            )
        geoms = np.asarray(element.geometry.loc[ids].values, dtype=object)
        return shapely.get_coordinates(shapely.centroid(geoms)).reshape(len(ids), 2)
    # points (dask dataframe)
    try:
        df = element.compute() if hasattr(element, "compute") else element
        xy = df[["x", "y"]]
    except Exception as err:  # pragma: no cover - defensive
        raise SoscopeInputError(
            f"Element {name!r} is neither shapes nor points; pseudo-spots need cell/bin centres."
        ) from err
    missing = ~ids.isin(xy.index)
    if missing.any():
        raise SoscopeInputError(
            f"{int(missing.sum())} table rows name instances missing from the points {name!r}; the table's "
            "instance key must match the points' index."
        )
    return xy.loc[ids].to_numpy(dtype=np.float64)


def _element_ids(element: Any) -> pd.Index:
    """Index of a shapes (GeoDataFrame) or points (dask dataframe) element's members."""
    import geopandas as gpd

    if isinstance(element, gpd.GeoDataFrame):
        return pd.Index(element.index)
    df = element.compute() if hasattr(element, "compute") else element
    return pd.Index(df.index)


def _cell_centres(sdata: SpatialData, name: str, cs: str) -> np.ndarray:
    """``(n, 2)`` centres of every member of the shapes or points element ``name``, in system ``cs``."""
    element = sdata[name]
    local = _element_centroids(element, _element_ids(element), name)
    a = affine_xy(element, cs)
    return local @ a[:2, :2].T + a[:2, 2]


def _cell_types_of(sdata: SpatialData, cells: str, key: str) -> tuple[pd.Categorical, str]:
    """Type of every member of the element ``cells`` (its own column, else a table annotating it).

    Returns the types (categorical, in the element's order; NaN where unknown) and where they came from.
    """
    element = sdata[cells]
    columns = getattr(element, "columns", [])
    if key in columns:
        col = element[key]
        col = col.compute() if hasattr(col, "compute") else col
        return pd.Categorical(pd.Series(col).reset_index(drop=True)), f"column {key!r} of {cells!r}"
    for tname in sdata.tables:
        try:
            annotation = table_annotation(sdata, tname)
        except SoscopeInputError:
            continue
        adata = sdata.tables[tname]
        if cells not in annotation.regions or key not in adata.obs.columns:
            continue
        rows = annotation.rows_of(adata, cells)
        ids = annotation.instance_ids(adata, rows)
        pos = match_instances(ids, _element_ids(element))  # each member's row among the table's
        types = pd.Categorical(adata.obs[key].iloc[rows])  # a categorical keeps its categories
        codes = np.where(pos >= 0, types.codes[np.maximum(pos, 0)], -1)
        source = f"obs {key!r} of table {tname!r}"
        return pd.Categorical.from_codes(codes, categories=types.categories), source
    raise SoscopeInputError(
        f"The cells {cells!r} carry no cell type {key!r}: neither a column of the element nor an obs column "
        "of a table annotating it. Type the cells first (e.g. soscope.evaluate.reference_from_cells) or set "
        "`cell_type_key=`."
    )


def _type_fractions(assign: sp.csr_matrix, types: pd.Categorical) -> np.ndarray:
    """``(rows, K)`` share of each type among the typed members each row of ``assign`` holds (NaN: none)."""
    codes = np.asarray(types.codes)
    typed = np.flatnonzero(codes >= 0)
    onehot = sp.csr_matrix(
        (np.ones(len(typed)), (typed, codes[typed])), shape=(len(codes), len(types.categories))
    )
    n = np.asarray((assign @ onehot).todense(), dtype=np.float64)
    tot = n.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(tot > 0, n / np.where(tot > 0, tot, 1.0), np.nan)


def pseudo_spots(
    sdata: SpatialData,
    *,
    table: str | None = None,
    spot_diameter: float | None = None,
    spacing: float,
    lattice: str = "hex",
    subspots: str = "auto",
    coordinate_system: str | None = None,
    image: str | None = None,
    layer: str | None = None,
    min_cells: int = 1,
    cells: str | None = None,
    cell_type_key: str | None = None,
) -> SpatialData:
    """Coarse pseudo-spots with sub-spot truth from high-resolution data.

    Parameters
    ----------
    sdata
        Holds a table of high-resolution profiles (cells, bins) annotating one or more shapes (circles,
        polygons) or points elements; their centres (centroids) place the profiles.
    table
        That table's name (optional when there is only one table).
    spot_diameter
        Diameter of the circular pseudo-spots (``lattice="hex"``), in ``coordinate_system`` units
        (Visium: 55 µm). Ignored for ``"square"``.
    spacing
        Lattice spacing (centre to centre; Visium: 100 µm); for ``"square"`` also the side of the squares,
        which tile the plane.
    lattice
        ``"hex"``: circles on a hexagonal lattice (rows along x); ``"square"``: square bins.
    subspots
        Sub-spot scheme for :func:`soscope.geometry.make_subspots`; ``"auto"`` is ``"hex7"`` for circles and
        ``"grid:3"`` for squares.
    coordinate_system
        The system in which spots are laid out (default: the only one shared by the elements, else
        ``"global"``). The pseudo-spots get an ``Identity`` to it.
    image
        Name of an image element to carry over (as ``"image"``, with its transformations).
    layer
        Layer of the table holding counts (default ``X``).
    min_cells
        Pseudo-spots with fewer cells than this in their footprint are dropped (default: empty ones). It
        counts the table's rows (bins when the table holds bins), also when ``cells`` is given.
    cells
        A shapes (or points) element of ``sdata`` whose members are the cells, for tables whose rows are
        not cells (e.g. transcripts binned in small squares): ``obs["n_cells"]`` of the spot and truth
        tables then counts that element's centres (centroids) in each footprint and sub-spot polygon, and
        ``obs["n_units"]`` the table's rows. Default: the table's rows are the cells.
    cell_type_key
        Cell-type column of the cells: a column of the ``cells`` element or an obs column of a table
        annotating it (with ``cells``), else an obs column of ``table`` (its rows are the cells). The truth
        then gets the true type fractions (see Returns). Cells without a type (NaN) are left out of them.

    Returns
    -------
    A new SpatialData with the element names of :func:`soscope.datasets.synthetic`: ``"spots"`` (circles
    with ``radius`` or square polygons; index ``spot_id``), ``"table"`` (summed counts of the cells whose
    centre lies in the footprint; obs ``spot_id``, ``region``, ``n_cells``, ``array_row``, ``array_col``;
    ``var`` of the input; ``uns["pseudo_spots"]``), ``"spots_truth_subspots"`` (sub-spot polygons, columns
    ``spot_id``, ``subspot``) and ``"truth"`` (summed counts of the cells whose centre lies in each
    sub-spot polygon; obs ``subspot_id``, ``spot_id``, ``subspot``, ``n_cells`` (the cells whose centre
    lies in the polygon: what :func:`soscope.evaluate.count_oracle` splits by), ``footprint_weight``;
    ``uns["subspots"]``), plus ``"image"`` when asked. With ``cells`` both tables also have obs ``n_units``.

    With ``cell_type_key``, the truth has ``obsm["cell_type_fraction"]`` (sub-spots × types, float64): the
    share of each type among the typed cells whose centre lies in the sub-spot (the cells ``n_cells``
    counts); a row is NaN where no typed cell lies in the sub-spot (no composition to score), so the rows
    with numbers sum to 1. The type names (column order) are in ``uns["cell_type_fraction"]["cell_types"]``
    (with ``cell_type_key`` and ``source``). The spot table, the input of an enhancement, gets nothing.

    """
    import anndata as ad
    import geopandas as gpd
    from spatialdata import SpatialData
    from spatialdata.models import ShapesModel, TableModel
    from spatialdata.transformations import Identity

    from ..geometry import make_subspots

    tname = _pick_table(sdata, table)
    adata = sdata.tables[tname]
    annotation = table_annotation(sdata, tname)
    regions = annotation.regions
    missing = [r for r in regions if r not in sdata]
    if missing:
        raise SoscopeInputError(f"Table {tname!r} annotates {missing}, which are not in the SpatialData.")
    if lattice not in ("hex", "square"):
        raise SoscopeInputError(f"`lattice` must be 'hex' or 'square'; got {lattice!r}.")
    if not (spacing and spacing > 0):
        raise SoscopeInputError("`spacing` must be a positive number (centre-to-centre distance).")
    if lattice == "hex":
        if spot_diameter is None or not (0 < spot_diameter <= spacing):
            raise SoscopeInputError(
                "With lattice='hex' set `spot_diameter` to a positive value no larger than `spacing` "
                "(Visium: spot_diameter=55, spacing=100 in µm)."
            )
    if cells is not None and cells not in sdata:
        raise SoscopeInputError(f"No element named {cells!r} (`cells=`) in the SpatialData.")
    types = None
    if cell_type_key is not None:
        if cells is not None:
            types, type_source = _cell_types_of(sdata, cells, cell_type_key)
        elif cell_type_key in adata.obs.columns:
            types = pd.Categorical(adata.obs[cell_type_key])
            type_source = f"obs {cell_type_key!r} of table {tname!r}"
        else:
            raise SoscopeInputError(
                f"Table {tname!r} has no obs column {cell_type_key!r} (`cell_type_key=`); its columns: "
                f"{list(adata.obs.columns)}."
            )
    cs = choose_coordinate_system(
        {n: sdata[n] for n in regions + ([image] if image else []) + ([cells] if cells else [])},
        coordinate_system,
        purpose="pseudo-spots",
    )

    # centres of every table row in the coordinate system
    xy = np.empty((adata.n_obs, 2))
    for r in regions:
        rows = annotation.rows_of(adata, r)
        if len(rows) == 0:
            continue
        ids = annotation.instance_ids(adata, rows)
        local = _element_centroids(sdata[r], ids, r)
        a = affine_xy(sdata[r], cs)
        xy[rows] = local @ a[:2, :2].T + a[:2, 2]
    finite = np.isfinite(xy).all(axis=1)
    if not finite.any():
        raise SoscopeInputError(f"No finite cell centres found for table {tname!r}.")
    counts = adata.layers[layer] if layer is not None else adata.X
    if layer is not None and layer not in adata.layers:
        raise SoscopeInputError(f"Table {tname!r} has no layer {layer!r}; layers: {layer_names(adata)}.")
    counts = sp.csr_matrix(counts)

    # lattice covering the extent
    lo, hi = xy[finite].min(axis=0), xy[finite].max(axis=0)
    if lattice == "hex":
        dy = spacing * np.sqrt(3) / 2
        n_row = int(np.ceil((hi[1] - lo[1]) / dy)) + 2
        n_col = int(np.ceil((hi[0] - lo[0]) / spacing)) + 2
        rr, cc = np.divmod(np.arange(n_row * n_col), n_col)
        centres = np.column_stack([lo[0] + cc * spacing + (rr % 2) * spacing / 2, lo[1] + rr * dy])
        tree = cKDTree(centres)

        def spot_of(pts: np.ndarray) -> np.ndarray:
            """Lattice index of the footprint holding each (finite) point, -1 outside every footprint."""
            dist, nearest = tree.query(pts)
            return np.where(dist <= spot_diameter / 2, nearest, -1).astype(np.int64)

    else:
        n_col = int(np.floor((hi[0] - lo[0]) / spacing)) + 1
        n_row = int(np.floor((hi[1] - lo[1]) / spacing)) + 1
        lo_data = lo
        lo = lo - (np.array([n_col, n_row]) * spacing - (hi - lo)) / 2  # centre the grid on the data
        rr, cc = np.divmod(np.arange(n_row * n_col), n_col)
        centres = np.column_stack([lo[0] + (cc + 0.5) * spacing, lo[1] + (rr + 0.5) * spacing])

        def spot_of(pts: np.ndarray) -> np.ndarray:
            """Lattice index of the square holding each (finite) point, -1 outside the grid.

            The grid covers the table's centres (the extent ``lo .. hi``), so only other points (cells)
            can fall outside it.
            """
            ij = np.floor((pts - lo) / spacing).astype(np.int64)
            inside = ((pts >= lo) & (pts <= lo + np.array([n_col, n_row]) * spacing)).all(axis=1)
            inside |= ((pts >= lo_data) & (pts <= hi)).all(axis=1)
            ij = np.clip(ij, 0, [n_col - 1, n_row - 1])
            return np.where(inside, ij[:, 1] * n_col + ij[:, 0], -1).astype(np.int64)

    cell_spot = np.full(adata.n_obs, -1, dtype=np.int64)
    cell_spot[finite] = spot_of(xy[finite])
    n_in = np.bincount(cell_spot[cell_spot >= 0], minlength=len(centres))
    keep = np.flatnonzero(n_in >= max(min_cells, 1))
    if len(keep) == 0:
        raise SoscopeInputError(
            "No pseudo-spot holds a cell: check `spot_diameter`, `spacing` and the units."
        )
    new_id = np.full(len(centres), -1, dtype=np.int64)
    new_id[keep] = np.arange(len(keep))
    cs_spot = np.where(cell_spot >= 0, new_id[np.maximum(cell_spot, 0)], -1)
    n_spots = len(keep)
    c_keep = centres[keep]
    if lattice == "hex":
        gdf = gpd.GeoDataFrame(
            {"radius": np.full(n_spots, spot_diameter / 2)}, geometry=shapely.points(c_keep)
        )
    else:
        h = spacing / 2
        gdf = gpd.GeoDataFrame(
            geometry=shapely.box(c_keep[:, 0] - h, c_keep[:, 1] - h, c_keep[:, 0] + h, c_keep[:, 1] + h)
        )
    gdf["array_row"] = rr[keep].astype(np.int64)
    gdf["array_col"] = cc[keep].astype(np.int64)
    gdf.index = pd.Index(np.arange(n_spots), name="spot_id")

    scheme = ("hex7" if lattice == "hex" else "grid:3") if subspots == "auto" else subspots
    layout = make_subspots(gdf, scheme, spacing=spacing)
    m = layout.n_subspots

    # aggregation matrices (sparse; a cell counts once)
    rows = np.flatnonzero(cs_spot >= 0)
    a_spot = sp.csr_matrix((np.ones(len(rows)), (cs_spot[rows], rows)), shape=(n_spots, adata.n_obs))
    sub_tree = shapely.STRtree(layout.geometry)

    def subspot_of(pts: np.ndarray, own_spot: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(point, sub-spot)`` pairs of the points whose centre lies in a sub-spot polygon."""
        ci, si = sub_tree.query(shapely.points(pts), predicate="intersects")
        # a centre on a shared border goes to one sub-spot: one of its own spot's when it has one
        other = layout.spot_index[si] != own_spot[ci]
        order = np.lexsort((si, other, ci))
        ci, si = ci[order], si[order]
        ci, first = np.unique(ci, return_index=True)
        return ci, si[first]

    fin = np.flatnonzero(finite)
    ci, si = subspot_of(xy[fin], cs_spot[fin])
    a_sub = sp.csr_matrix((np.ones(len(ci)), (si, fin[ci])), shape=(m, adata.n_obs))
    n_units_spot = np.asarray(a_spot.sum(axis=1)).ravel().astype(np.int64)
    n_units_sub = np.asarray(a_sub.sum(axis=1)).ravel().astype(np.int64)
    fractions = None
    if cells is None:
        n_cells_spot, n_cells_sub = n_units_spot, n_units_sub
        if types is not None:
            fractions = _type_fractions(a_sub, types)
    else:
        cxy = _cell_centres(sdata, cells, cs)
        c_ok = np.isfinite(cxy).all(axis=1)
        cxy = cxy[c_ok]
        c_spot = spot_of(cxy) if len(cxy) else np.zeros(0, dtype=np.int64)
        c_spot = np.where(c_spot >= 0, new_id[np.maximum(c_spot, 0)], -1)
        n_cells_spot = np.bincount(c_spot[c_spot >= 0], minlength=n_spots).astype(np.int64)
        n_cells_sub = np.zeros(m, dtype=np.int64)
        c_ci, c_si = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        if len(cxy):
            c_ci, c_si = subspot_of(cxy, c_spot)
            n_cells_sub = np.bincount(c_si, minlength=m).astype(np.int64)
        if types is not None:
            c_assign = sp.csr_matrix((np.ones(len(c_ci)), (c_si, c_ci)), shape=(m, len(cxy)))
            fractions = _type_fractions(c_assign, types[c_ok])
    spot_x = (a_spot @ counts).tocsr()
    sub_x = (a_sub @ counts).tocsr()
    if np.issubdtype(counts.dtype, np.integer) or (counts.nnz == 0 or np.all(np.mod(counts.data, 1) == 0)):
        spot_x = spot_x.astype(np.int64)
        sub_x = sub_x.astype(np.int64)

    tr = {cs: Identity()}
    var = adata.var.copy()
    obs = pd.DataFrame(
        {
            "spot_id": np.arange(n_spots, dtype=np.int64),
            "region": pd.Categorical(["spots"] * n_spots),
            "n_cells": n_cells_spot,
            "array_row": gdf["array_row"].to_numpy(),
            "array_col": gdf["array_col"].to_numpy(),
        },
        index=pd.Index([f"spot_{i}" for i in range(n_spots)]),
    )
    if cells is not None:
        obs["n_units"] = n_units_spot
    params = {
        "source_table": tname,
        "spot_diameter": float(spot_diameter) if spot_diameter else float(spacing),
        "spacing": float(spacing),
        "lattice": lattice,
        "scheme": scheme,
        "coordinate_system": cs,
        "layer": layer or "X",
        "min_cells": int(min_cells),
        "cells": cells,
        "cell_type_key": cell_type_key,
    }
    tab = ad.AnnData(X=spot_x, obs=obs, var=var)
    tab.obsm["spatial"] = c_keep
    tab.uns["pseudo_spots"] = params
    tab = TableModel.parse(tab, region="spots", region_key="region", instance_key="spot_id")

    spot_ids = layout.spot_index.astype(np.int64)
    tobs = pd.DataFrame(
        {
            "subspot_id": np.arange(m, dtype=np.int64),
            "region": pd.Categorical(["spots_truth_subspots"] * m),
            "spot_id": spot_ids,
            "subspot": layout.subspot.astype(np.int64),
            "n_cells": n_cells_sub,
            "footprint_weight": layout.footprint_weight,
        },
        index=pd.Index([f"subspot_{i}" for i in range(m)]),
    )
    if cells is not None:
        tobs["n_units"] = n_units_sub
    truth = ad.AnnData(X=sub_x, obs=tobs, var=var.copy())
    truth.uns[SoscopeKeys.TRUTH] = True  # reference truth: soscope never picks it as input
    if fractions is not None:
        truth.obsm["cell_type_fraction"] = fractions
        truth.uns["cell_type_fraction"] = {
            "cell_types": [str(c) for c in types.categories],
            "cell_type_key": cell_type_key,
            "source": type_source,
        }
    truth.uns["subspots"] = {"scheme": scheme, "spots": ["spots"], "spacing": float(spacing)}
    truth = TableModel.parse(
        truth, region="spots_truth_subspots", region_key="region", instance_key="subspot_id"
    )

    tgdf = gpd.GeoDataFrame(
        {"spot_id": spot_ids, "subspot": layout.subspot.astype(np.int64)}, geometry=list(layout.geometry)
    )
    tgdf.index = pd.Index(np.arange(m), name="subspot_id")
    images = {}
    if image is not None:
        if image not in sdata.images:
            raise SoscopeInputError(f"No image named {image!r}; images: {list(sdata.images)}.")
        images["image"] = sdata.images[image]
    return SpatialData(
        images=images,
        shapes={
            "spots": ShapesModel.parse(gdf, transformations=tr),
            "spots_truth_subspots": ShapesModel.parse(tgdf, transformations=dict(tr)),
        },
        tables={"table": tab, "truth": truth},
    )
