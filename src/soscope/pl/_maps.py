"""Maps of spots next to soscope's enhanced sub-spots (and the truth, when known), feature by feature."""

from __future__ import annotations

import difflib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp

from soscope._constants import SoscopeKeys
from soscope._errors import SoscopeInputError
from soscope._names import slug
from soscope.io import choose_coordinate_system, layer_names, match_instances, table_annotation
from soscope.pl._utils import (
    affine_xy,
    as_list,
    axes_list,
    new_figure,
    polygon_paths,
    polygon_vertices,
    save_figure,
    shapes_areas,
    shapes_polygons,
)

logger = logging.getLogger(__name__)

__all__ = ["BACKENDS", "enhanced"]

_SOSCOPE_KEY = SoscopeKeys.UNS

#: drawing backends of :func:`enhanced`
BACKENDS = ("auto", "spatialdata-plot", "matplotlib")
Backend = Literal["auto", "spatialdata-plot", "matplotlib"]


def _fmt(names: Any, limit: int = 12) -> str:
    names = [str(n) for n in names]
    shown = ", ".join(repr(n) for n in names[:limit])
    return f"[{shown}{', ...' if len(names) > limit else ''}]"


# --------------------------------------------------------------------------------------------- elements
def _attrs(sdata: Any, table: str) -> tuple[list[str], str, str]:
    """Return ``(regions, region_key, instance_key)`` of a table (:func:`soscope.io.table_annotation`)."""
    annotation = table_annotation(sdata, table)
    return annotation.regions, annotation.region_key, annotation.instance_key


def _soscope_outputs(sdata: Any) -> list[str]:
    return [n for n, t in sdata.tables.items() if _SOSCOPE_KEY in t.uns]


def enhanced_tables(sdata: Any, table: str, key_added: str) -> list[str]:
    """Return the enhanced tables of ``table``.

    That is ``f"{table}_{key_added}"``, or one per modality (``f"{table}_{key_added}_{modality}"``) when the
    table holds several modalities.
    """
    base = f"{table}_{key_added}"
    out = []
    for name, t in sdata.tables.items():
        info = t.uns.get(_SOSCOPE_KEY)
        if info is None:
            continue
        if name == base:
            out.append(name)
        elif name.startswith(base + "_") and hasattr(info, "get"):
            mod = info.get("modality")
            if mod is not None and slug(mod) == name[len(base) + 1 :]:
                out.append(name)
    return out


def _resolve_tables(sdata: Any, table: str | None, key_added: str) -> tuple[str, list[str]]:
    """Return the input table and its enhanced table(s) (one per modality for multi-omics)."""
    outputs = _soscope_outputs(sdata)
    if table is not None:
        if table not in sdata.tables:
            raise SoscopeInputError(
                f"No table '{table}' in the SpatialData; tables present: {_fmt(sdata.tables)}. Pass one of "
                "them as `table=`."
            )
        outs = enhanced_tables(sdata, table, key_added)
        if not outs:
            hint = (
                f"soscope outputs present: {_fmt(outputs)}; pass their `key_added=`"
                if outputs
                else "run `soscope.enhance(sdata)` first"
            )
            raise SoscopeInputError(f"No enhanced table '{table}_{key_added}' for table '{table}': {hint}.")
        return table, outs
    cands = {
        t: outs
        for t in sdata.tables
        if _SOSCOPE_KEY not in sdata.tables[t].uns and (outs := enhanced_tables(sdata, t, key_added))
    }
    if len(cands) == 1:
        return next(iter(cands.items()))
    if len(cands) > 1:
        raise SoscopeInputError(
            f"Several tables have an enhanced version '<table>_{key_added}': {_fmt(cands)}; pass `table=` to "
            "choose one."
        )
    if outputs:
        raise SoscopeInputError(
            f"No enhanced table with key_added='{key_added}' (no table 'T' with 'T_{key_added}'); soscope "
            f"outputs present: {_fmt(outputs)}. Pass `key_added=` (and `table=`) to match them."
        )
    raise SoscopeInputError(
        f"The SpatialData holds no soscope output (tables: {_fmt(sdata.tables)}): run "
        "`soscope.enhance(sdata)` first, or pass `table=` and `key_added=`."
    )


def _resolve_features(features: str | Sequence[str], var_names: Sequence[str], table: str) -> list[int]:
    names = [features] if isinstance(features, str) else list(features)
    if not names:
        raise SoscopeInputError("`features` is empty: pass one feature name or a list of them.")
    lookup = {str(v): i for i, v in enumerate(var_names)}
    lower = {str(v).lower(): i for i, v in enumerate(var_names)}
    idx = []
    for name in names:
        if isinstance(name, (int, np.integer)) and not isinstance(name, bool):
            if not 0 <= int(name) < len(var_names):
                raise SoscopeInputError(
                    f"Feature index {name} is out of range (table '{table}' has {len(var_names)} features)."
                )
            idx.append(int(name))
            continue
        name = str(name)
        if name in lookup:
            idx.append(lookup[name])
        elif name.lower() in lower:
            idx.append(lower[name.lower()])
        else:
            close = difflib.get_close_matches(name, [str(v) for v in var_names], n=5, cutoff=0.5)
            hint = f"; close matches: {_fmt(close)}" if close else f"; e.g. {_fmt(list(var_names)[:5])}"
            raise SoscopeInputError(
                f"Feature '{name}' is not in table '{table}'{hint}. Pass names from its var_names."
            )
    return idx


def _columns(adata: Any, idx: Sequence[int], layer: str | None) -> np.ndarray:
    """Return ``(n_obs, len(idx))`` float64 values of the chosen features (reads only those columns)."""
    if layer is not None and layer not in adata.layers:
        raise SoscopeInputError(
            f"The table has no layer '{layer}'; layers: {_fmt(layer_names(adata))}. Pass one of them, or "
            "`layer=None` for X."
        )
    x = adata.layers[layer] if layer is not None else adata.X
    idx = np.asarray(idx, dtype=np.int64)
    if sp.issparse(x):
        part = (x.tocsc() if x.format != "csc" else x)[:, idx]
        return np.asarray(part.toarray(), dtype=np.float64)
    part = x[:, idx]
    if hasattr(part, "compute"):
        part = part.compute()
    if hasattr(part, "to_memory"):
        part = part.to_memory()
    if sp.issparse(part):
        part = part.toarray()
    return np.asarray(part, dtype=np.float64)


@dataclass
class _Map:
    """One map: polygon outlines in the coordinate system and a value per polygon and feature."""

    verts: list[np.ndarray]
    owner: np.ndarray  # (n_parts,) row of `values` for each drawn polygon part
    values: np.ndarray  # (n_shapes, F) counts per unit area (or the table's values: per_area=False)
    n_shapes: int
    _paths: list | None = None
    # which table rows `values` holds (for spatialdata-plot, which joins a table to its shapes itself)
    table: str = ""
    regions: list[str] = field(default_factory=list)
    region_key: str = "region"
    instance_key: str = "instance_id"
    region_of: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=object))
    instance_of: np.ndarray = field(default_factory=lambda: np.zeros(0))
    columns: list[str] = field(default_factory=list)  # feature names of the columns of `values`

    @property
    def paths(self) -> list:
        """Matplotlib paths of the polygons, made once and shared by every panel of this map."""
        if self._paths is None:
            self._paths = polygon_paths(self.verts)
        return self._paths

    def bounds(self) -> np.ndarray:
        if not self.verts:
            return np.array([np.nan] * 4)
        allv = np.concatenate(self.verts)
        return np.array([allv[:, 0].min(), allv[:, 0].max(), allv[:, 1].min(), allv[:, 1].max()])


def _table_map(
    sdata: Any,
    table: str,
    feat_idx: Sequence[int],
    coordinate_system: str,
    *,
    regions: Sequence[str] | None = None,
    layer: str | None = None,
    per_area: bool = True,
) -> _Map:
    """Densities (value / polygon area in the coordinate system) of ``table``'s rows on its shapes.

    With ``per_area=False`` the table's values themselves.
    """
    all_regions, region_key, instance_key = _attrs(sdata, table)
    regions = list(regions) if regions is not None else all_regions
    adata = sdata.tables[table]
    values = _columns(adata, feat_idx, layer)
    region_col = adata.obs[region_key].astype(str).to_numpy()
    inst = adata.obs[instance_key].to_numpy()
    verts: list[np.ndarray] = []
    owners, vals, used_rows = [], [], []
    offset = 0
    for region in regions:
        if region not in sdata.shapes:
            raise SoscopeInputError(
                f"Table '{table}' annotates '{region}', which is not a shapes element of the SpatialData "
                f"(shapes: {_fmt(sdata.shapes)})."
            )
        gdf = sdata.shapes[region]
        rows = np.flatnonzero(region_col == region)
        pos = match_instances(gdf.index, inst[rows])
        ok = pos >= 0
        if not ok.all():
            logger.info(
                "%d rows of table '%s' have no shape in '%s'; not drawn.", int((~ok).sum()), table, region
            )
        rows, pos = rows[ok], pos[ok]
        if rows.size == 0:
            continue
        matrix = affine_xy(gdf, coordinate_system)
        sub = gdf.iloc[pos]
        geoms = shapes_polygons(sub)
        if per_area:
            area = shapes_areas(sub, geoms, matrix)
            with np.errstate(divide="ignore", invalid="ignore"):
                dens = values[rows] / np.where(area > 0, area, np.nan)[:, None]
        else:
            dens = values[rows]
        v, owner = polygon_vertices(geoms, matrix)
        verts.extend(v)
        owners.append(owner + offset)
        vals.append(dens)
        used_rows.append(rows)
        offset += rows.size
    if not vals:
        raise SoscopeInputError(
            f"Table '{table}' has no rows matching the shapes {_fmt(regions)} (obs['{region_key}'] / "
            f"obs['{instance_key}'] vs the shapes' index)."
        )
    rows = np.concatenate(used_rows)
    return _Map(
        verts,
        np.concatenate(owners),
        np.concatenate(vals),
        offset,
        table=table,
        regions=list(dict.fromkeys(region_col[rows])),
        region_key=region_key,
        instance_key=instance_key,
        region_of=region_col[rows],
        instance_of=inst[rows],
        columns=[str(adata.var_names[i]) for i in feat_idx],
    )


# --------------------------------------------------------------------------------------------- image
@dataclass
class _Image:
    data: np.ndarray  # (y, x, 3) RGB in [0, 1] / uint8, or (y, x) grey in [0, 1]
    extent: tuple[float, float, float, float]  # (left, right, bottom, top) in scale0 pixels
    matrix: np.ndarray  # scale0 pixels -> coordinate system

    def draw(self, ax: Any) -> None:
        from matplotlib.transforms import Affine2D

        im = ax.imshow(
            self.data,
            extent=self.extent,
            origin="upper",
            cmap="gray" if self.data.ndim == 2 else None,
            interpolation="bilinear",
            zorder=0,
        )
        im.set_transform(Affine2D(self.matrix) + ax.transData)


def _levels(img: Any) -> list[Any]:
    """Return the image's pyramid levels as (c, y, x) DataArrays, finest first (spatialdata's order)."""
    if hasattr(img, "children") and len(img.children):
        from spatialdata import get_pyramid_levels

        return get_pyramid_levels(img)
    return [img]


def _display_array(arr: np.ndarray) -> np.ndarray:
    """(c, y, x) → RGB (y, x, 3) or grey (y, x), scaled for display."""
    c = arr.shape[0]
    if c in (3, 4):
        rgb = np.moveaxis(arr[:3], 0, -1)
        if rgb.dtype == np.uint8:
            return rgb
        rgb = rgb.astype(np.float32)
        lo = np.nanpercentile(rgb, 0.5, axis=(0, 1))
        hi = np.nanpercentile(rgb, 99.5, axis=(0, 1))
        return np.clip((rgb - lo) / np.where(hi > lo, hi - lo, 1.0), 0, 1)
    grey = arr[0].astype(np.float32)
    lo, hi = np.nanpercentile(grey, [0.5, 99.5])
    return np.clip((grey - lo) / (hi - lo if hi > lo else 1.0), 0, 1)


def _read_image(
    sdata: Any, name: str, coordinate_system: str, bounds: np.ndarray, max_pixels: int
) -> _Image | None:
    """Read the part of image ``name`` under ``bounds`` from a low-resolution level.

    ``bounds`` is (xmin, xmax, ymin, ymax) in the coordinate system; the level is the finest one whose crop is
    at most ``max_pixels`` on a side.
    """
    img = sdata.images[name]
    matrix = affine_xy(img, coordinate_system)
    levels = _levels(img)
    base = levels[0].transpose("c", "y", "x") if "c" in levels[0].dims else levels[0]
    h0, w0 = int(base.sizes["y"]), int(base.sizes["x"])
    corners = np.array(
        [[bounds[0], bounds[2]], [bounds[1], bounds[2]], [bounds[0], bounds[3]], [bounds[1], bounds[3]]]
    )
    inv = np.linalg.inv(matrix)
    px = corners @ inv[:2, :2].T + inv[:2, 2]
    x0, x1 = max(0.0, px[:, 0].min()), min(float(w0), px[:, 0].max())
    y0, y1 = max(0.0, px[:, 1].min()), min(float(h0), px[:, 1].max())
    if x1 <= x0 or y1 <= y0:
        return None  # the image does not lie under the spots
    chosen = None
    for level in levels:
        fy, fx = h0 / level.sizes["y"], w0 / level.sizes["x"]
        chosen = (level, fy, fx)
        if max((x1 - x0) / fx, (y1 - y0) / fy) <= max_pixels:
            break
    assert chosen is not None
    level, fy, fx = chosen
    xs, xe = int(np.floor(x0 / fx)), int(np.ceil(x1 / fx))
    ys, ye = int(np.floor(y0 / fy)), int(np.ceil(y1 / fy))
    crop = level.transpose("c", "y", "x") if "c" in level.dims else level.expand_dims("c")
    data = np.asarray(crop.isel(y=slice(ys, ye), x=slice(xs, xe)).values)
    if data.size == 0:
        return None
    return _Image(_display_array(data), (xs * fx, xe * fx, ye * fy, ys * fy), matrix)


def _images_under(
    sdata: Any, image: str | Sequence[str] | None, coordinate_system: str, bounds: np.ndarray, max_pixels: int
) -> list[_Image]:
    from spatialdata.transformations import get_transformation

    names = as_list(image)
    if names is not None:
        missing = [n for n in names if n not in sdata.images]
        if missing:
            raise SoscopeInputError(
                f"No image {_fmt(missing)} in the SpatialData; images present: {_fmt(sdata.images)}. Pass "
                "one of them as `image=`, or `show_image=False`."
            )
        bad = [n for n in names if coordinate_system not in get_transformation(sdata.images[n], get_all=True)]
        if bad:
            raise SoscopeInputError(
                f"Image {_fmt(bad)} has no transformation to coordinate system '{coordinate_system}' of the "
                "spots: pass `coordinate_system=` or `show_image=False`."
            )
    else:
        names = [
            n for n, el in sdata.images.items() if coordinate_system in get_transformation(el, get_all=True)
        ]
    out = []
    for n in names:
        layer = _read_image(sdata, n, coordinate_system, bounds, max_pixels)
        if layer is not None:
            out.append(layer)
    return out


# --------------------------------------------------------------------------------------------- drawing
def _color_limits(arrays: Sequence[np.ndarray], quantile: float) -> tuple[float, float]:
    vals = np.concatenate([a[np.isfinite(a)] for a in arrays]) if arrays else np.zeros(0)
    if vals.size == 0:
        return 0.0, 1.0
    lo = float(np.quantile(vals, 1 - quantile)) if (vals < 0).any() else 0.0
    hi = float(np.quantile(vals, quantile))
    if not hi > lo:
        hi = float(vals.max()) if vals.max() > lo else lo + 1.0
    return lo, hi


def _draw_map(ax: Any, m: _Map, j: int, cmap: Any, norm: Any, alpha: float) -> None:
    from matplotlib.collections import PathCollection

    coll = PathCollection(
        m.paths,
        sizes=None,
        array=m.values[m.owner, j],
        cmap=cmap,
        norm=norm,
        edgecolors="face",
        linewidths=0.2,
        alpha=alpha,
        rasterized=True,
        zorder=1,
    )
    ax.add_collection(coll, autolim=False)


def _resolve_backend(backend: str) -> str:
    """Return the backend to draw with: spatialdata-plot when installed (``"auto"``), else matplotlib."""
    if backend not in BACKENDS:
        raise SoscopeInputError(f"Unknown `backend={backend!r}`; choose from {list(BACKENDS)}.")
    if backend == "matplotlib":
        return backend
    try:
        import spatialdata_plot  # noqa: F401  (importing it registers the `sdata.pl` accessor)
    except ImportError as err:
        if backend == "spatialdata-plot":
            raise SoscopeInputError(
                "backend='spatialdata-plot' needs spatialdata-plot, which is not installed: "
                "`pip install spatialdata-plot` (or `pip install 'soscope[plot]'`), or pass "
                "backend='matplotlib'."
            ) from err
        return "matplotlib"
    return "spatialdata-plot"


def _values_sdata(sdata: Any, m: _Map, j: int) -> tuple[Any, str]:
    """Return a SpatialData of ``m``'s shapes and a one-feature table of the values drawn (column ``j``).

    The table annotates the shapes exactly as the source table does (same ``region`` / ``region_key`` /
    ``instance_key`` values), so spatialdata-plot joins it to them as it joins the source table; only the
    values differ (per unit area). Returns it and the name of the table.
    """
    import anndata as ad
    import pandas as pd
    from spatialdata import SpatialData
    from spatialdata.models import TableModel

    name = "soscope_plot_values"
    obs = pd.DataFrame(
        {
            m.region_key: pd.Categorical(m.region_of.astype(str), categories=m.regions),
            m.instance_key: m.instance_of,
        },
        index=pd.Index([str(i) for i in range(len(m.region_of))]),
    )
    adata = ad.AnnData(
        X=np.asarray(m.values[:, [j]], dtype=np.float64), obs=obs, var=pd.DataFrame(index=[m.columns[j]])
    )
    table = TableModel.parse(
        adata, region=list(m.regions), region_key=m.region_key, instance_key=m.instance_key
    )
    return SpatialData(shapes={r: sdata.shapes[r] for r in m.regions}, tables={name: table}), name


def _draw_map_sdata_plot(
    ax: Any,
    sdata: Any,
    m: _Map,
    j: int,
    coordinate_system: str,
    cmap: Any,
    norm: Any,
    alpha: float,
    *,
    per_area: bool,
    layer: str | None,
) -> None:
    """Draw column ``j`` of map ``m`` with spatialdata-plot's ``render_shapes`` coloured by the table.

    Without ``per_area`` the source table itself is passed (``table_name=``): spatialdata-plot joins it to
    the shapes through its own annotation. With ``per_area`` a table of the densities, annotating the same
    shapes the same way, is passed instead (spatialdata-plot has no per-area colouring).
    """
    import spatialdata_plot  # noqa: F401  (registers the `sdata.pl` accessor)

    if per_area:
        target, table_name = _values_sdata(sdata, m, j)
        table_layer = None
    else:
        target, table_name, table_layer = sdata, m.table, layer
    for region in m.regions:
        target = target.pl.render_shapes(
            region,
            color=m.columns[j],
            table_name=table_name,
            table_layer=table_layer,
            cmap=cmap,
            norm=norm,
            fill_alpha=alpha,
            colorbar=False,
        )
    before = {id(a) for a in [*ax.collections, *ax.images]}
    target.pl.show(coordinate_systems=coordinate_system, ax=ax, colorbar=False, show=False, title="")
    # spatialdata-plot stacks its layers from zorder 0, the image's level: lift them above the image
    for artist in [*ax.collections, *ax.images]:
        if id(artist) not in before:
            artist.set_zorder(artist.get_zorder() + 1)


def _style(ax: Any, bounds: np.ndarray, title: str) -> None:
    pad_x = 0.02 * (bounds[1] - bounds[0] or 1.0)
    pad_y = 0.02 * (bounds[3] - bounds[2] or 1.0)
    ax.set_xlim(bounds[0] - pad_x, bounds[1] + pad_x)
    ax.set_ylim(bounds[3] + pad_y, bounds[2] - pad_y)  # image convention: y down
    ax.set_aspect("equal")
    ax.set_axis_on()  # spatialdata-plot may have turned the frame off or labelled the axes
    ax.set_xlabel("")
    ax.set_ylabel("")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_linewidth(0.5)
        spine.set_color("0.6")
    ax.set_title(title, fontsize=10)


def enhanced(
    sdata: Any,
    features: str | Sequence[str],
    *,
    key_added: str = "soscope",
    table: str | None = None,
    spots: str | Sequence[str] | None = None,
    image: str | Sequence[str] | None = None,
    show_image: bool = True,
    truth: str | None = None,
    coordinate_system: str | None = None,
    layer: str | None = None,
    ax: Any = None,
    save: str | os.PathLike | None = None,
    cmap: str = "viridis",
    vmax_quantile: float = 0.99,
    alpha: float | None = None,
    panel_size: float = 4.0,
    dpi: float = 100,
    max_image_pixels: int = 1500,
    per_area: bool = True,
    backend: Backend = "auto",
):
    """Plot, for each feature, the measured spots next to soscope's enhanced sub-spots on one colour scale.

    Every map is coloured by the value **per unit area** (of the coordinate system): a spot's counts divided
    by the area of its footprint, a sub-spot's expected counts divided by its polygon area. So the two maps
    are directly comparable: a sub-spot brighter than its spot holds more than its share of the spot.

    The shapes are drawn by spatialdata-plot when it is installed (``render_shapes`` of each shapes element,
    coloured by the feature through the table that annotates it), else by matplotlib directly; both give
    the same colours. The image underneath is read by soscope (a low-resolution level, only the part under
    the spots) with either backend.

    Parameters
    ----------
    sdata
        A SpatialData that :func:`soscope.enhance` has written into (shapes ``f"{spots}_{key_added}"``,
        table ``f"{table}_{key_added}"``).
    features
        One feature name or a list of them (the table's ``var_names``); one row of panels each.
    key_added
        The ``key_added`` the enhancement was written with.
    table
        The input table of spot profiles; default the only table ``T`` with an enhanced ``T_{key_added}``.
    spots
        The spots element(s) to draw; default every region the table annotates (all sections).
    image
        Image element(s) to draw underneath; default every image in the coordinate system that lies under
        the spots. A low-resolution pyramid level (at most ``max_image_pixels`` on a side) is read, and only
        the part under the spots.
    show_image
        Draw the image underneath (when there is one).
    truth
        A table of true sub-spot values (e.g. ``"truth"`` from :func:`soscope.datasets.synthetic`,
        annotating ``spots_truth_subspots``): drawn as a third panel on the same colour scale.
    coordinate_system
        Where to draw; default ``"global"`` when shared by the plotted shapes, else the first shared one.
    layer
        Layer of the input table holding the spot counts (default ``X``).
    ax
        Existing Axes to draw into: ``n_features × n_panels`` of them (a list or 2-D array, row by row).
    save
        Write the figure to this path (format from the suffix; PNG by default).
    cmap
        Matplotlib colour map.
    vmax_quantile
        Upper end of each feature's colour scale: this quantile of all its plotted values.
    alpha
        Opacity of the spots and sub-spots; default 0.85 over an image, 1 otherwise.
    panel_size
        Width of one panel (inches).
    dpi
        Resolution of the figure.
    max_image_pixels
        Largest side (pixels) of the image part read for the background.
    per_area
        Colour by the value per unit area (default). ``False`` colours by the tables' values themselves (with
        spatialdata-plot: the tables as written, joined to their shapes by spatialdata-plot); spots and
        sub-spots then differ in scale by their areas.
    backend
        ``"spatialdata-plot"`` (``pip install spatialdata-plot``, or the ``soscope[plot]`` extra),
        ``"matplotlib"``, or ``"auto"``: spatialdata-plot when it is installed, else matplotlib.

    Returns
    -------
    The matplotlib :class:`~matplotlib.figure.Figure` (made without pyplot: nothing opens, and it can be
    saved headless).

    Raises
    ------
    SoscopeInputError
        No enhanced output for ``key_added``, unknown features, tables or images; ``backend=
        "spatialdata-plot"`` without spatialdata-plot installed.

    Examples
    --------
    >>> sdata = soscope.datasets.synthetic(n_spots=300, n_features=50)
    >>> soscope.enhance(sdata, table="table")
    >>> soscope.pl.enhanced(sdata, ["gene_0", "gene_1"], truth="truth", save="maps.png")

    """
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    used = _resolve_backend(backend)
    tname, onames = _resolve_tables(sdata, table, key_added)
    in_regions, _, _ = _attrs(sdata, tname)
    out_regions = list(dict.fromkeys(r for o in onames for r in _attrs(sdata, o)[0]))
    spot_names = as_list(spots)
    if spot_names is None:
        spot_names = [s for s in in_regions if f"{s}_{key_added}" in out_regions] or in_regions
    else:
        bad = [s for s in spot_names if s not in in_regions]
        if bad:
            raise SoscopeInputError(
                f"Table '{tname}' does not annotate {_fmt(bad)}; it annotates {_fmt(in_regions)}. Pass "
                "`spots=` one of those."
            )
    sub_names = [f"{s}_{key_added}" for s in spot_names if f"{s}_{key_added}" in out_regions]
    if not sub_names:
        raise SoscopeInputError(
            f"Enhanced table(s) {_fmt(onames)} annotate {_fmt(out_regions)}, none of which is "
            f"'<spots>_{key_added}' for spots {_fmt(spot_names)}: pass `spots=` and `key_added=` as given to "
            "`soscope.enhance`."
        )

    in_adata = sdata.tables[tname]
    feat_in = _resolve_features(features, list(in_adata.var_names), tname)
    names = [str(in_adata.var_names[i]) for i in feat_in]
    # each feature's enhanced table (several with multi-omics: one per modality)
    where: dict[str, tuple[str, int]] = {}
    for o in onames:
        lookup = {str(v): i for i, v in enumerate(sdata.tables[o].var_names)}
        for n in names:
            if n not in where and n in lookup:
                where[n] = (o, lookup[n])
    missing = [n for n in names if n not in where]
    if missing:
        raise SoscopeInputError(
            f"Features {_fmt(missing)} are not in the enhanced table(s) {_fmt(onames)}: enhance them first "
            "(they may have been left out as constant or empty)."
        )

    elements = {s: sdata.shapes[s] for s in spot_names + sub_names}
    truth_regions: list[str] = []
    feat_truth: list[int] = []
    if truth is not None:
        if truth not in sdata.tables:
            raise SoscopeInputError(
                f"No truth table '{truth}' in the SpatialData; tables present: {_fmt(sdata.tables)}. Pass "
                "one of them as `truth=`, or leave it unset."
            )
        truth_regions = [r for r in _attrs(sdata, truth)[0] if r in sdata.shapes]
        feat_truth = _resolve_features(names, list(sdata.tables[truth].var_names), truth)
        elements.update({r: sdata.shapes[r] for r in truth_regions})
    cs = choose_coordinate_system(elements, coordinate_system, purpose="the maps")

    spot_map = _table_map(sdata, tname, feat_in, cs, regions=spot_names, layer=layer, per_area=per_area)
    enh_maps: dict[str, _Map] = {}
    for o in dict.fromkeys(o for o, _ in where.values()):
        cols = [where[n][1] for n in names if where[n][0] == o]
        enh_maps[o] = _table_map(sdata, o, cols, cs, regions=sub_names, per_area=per_area)
    # per feature: the panels as (kind, map, column of map.values)
    panels: list[list[tuple[str, _Map, int]]] = []
    for i, n in enumerate(names):
        o = where[n][0]
        col = [m for m in names if where[m][0] == o].index(n)
        row = [("spots", spot_map, i), ("soscope", enh_maps[o], col)]
        panels.append(row)
    if truth is not None:
        truth_map = _table_map(sdata, truth, feat_truth, cs, regions=truth_regions, per_area=per_area)
        for i, row in enumerate(panels):
            row.append(("truth", truth_map, i))
    first_enh = next(iter(enh_maps.values()))
    maps = [("spots", spot_map), ("soscope", first_enh)]

    b = np.array([m.bounds() for _, m in maps[:2]])
    bounds = np.array([np.nanmin(b[:, 0]), np.nanmax(b[:, 1]), np.nanmin(b[:, 2]), np.nanmax(b[:, 3])])
    images = _images_under(sdata, image, cs, bounds, max_image_pixels) if show_image else []
    if alpha is None:
        alpha = 0.85 if images else 1.0

    n_rows, n_cols = len(names), len(panels[0])
    if ax is None:
        aspect = float(np.clip((bounds[3] - bounds[2]) / max(bounds[1] - bounds[0], 1e-12), 0.25, 4.0))
        fig = new_figure((n_cols * panel_size + 1.2, n_rows * (panel_size * aspect + 0.5)), dpi=dpi)
        axes = np.asarray(fig.subplots(n_rows, n_cols, squeeze=False), dtype=object)
    else:
        flat = axes_list(ax, n_rows * n_cols, f"{n_rows} feature(s) × {n_cols} panels")
        axes = np.asarray(flat, dtype=object).reshape(n_rows, n_cols)
        fig = flat[0].figure

    cm = colormaps[cmap] if isinstance(cmap, str) else cmap
    labels = {
        "spots": f"spots ({spot_map.n_shapes:,})",
        "soscope": f"soscope ({first_enh.n_shapes:,} sub-spots)",
        "truth": "truth",
    }
    for i, name in enumerate(names):
        lo, hi = _color_limits([m.values[:, j] for _, m, j in panels[i]], vmax_quantile)
        norm = Normalize(vmin=lo, vmax=hi)
        for c, (kind, m, j) in enumerate(panels[i]):
            a = axes[i, c]
            if used == "spatialdata-plot":
                _draw_map_sdata_plot(
                    a,
                    sdata,
                    m,
                    j,
                    cs,
                    cm,
                    norm,
                    alpha,
                    per_area=per_area,
                    layer=layer if kind == "spots" else None,
                )
            else:
                _draw_map(a, m, j, cm, norm, alpha)
            for im in images:  # zorder 0: under the shapes whichever backend drew them
                im.draw(a)
            _style(a, bounds, labels[kind])
            if c == 0:  # the feature names the row: vertical, so long names (e.g. ADT barcodes) fit
                short = name if len(name) <= 40 else name[:38] + "…"
                a.set_ylabel(short, fontsize=11, fontweight="bold")
        fig.colorbar(
            ScalarMappable(norm=norm, cmap=cm),
            ax=list(axes[i]),
            shrink=0.85,
            pad=0.01,
            label=f"counts per unit area ({cs})" if per_area else "value in the table",
        )
    save_figure(fig, save)
    return fig
