"""Checks on soscope's inputs and outputs; every failure is a :class:`~soscope._errors.SoscopeInputError`.

Each message names the problem *and* what to set or run to fix it. Checks on the counts never densify a
sparse matrix (they read ``.data`` / ``.indices``) and read dense matrices in row blocks.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp

from soscope._constants import SoscopeKeys
from soscope._errors import SoscopeInputError
from soscope._likelihoods import BINARY_LIKELIHOODS, INTEGER_LIKELIHOODS

logger = logging.getLogger(__name__)

#: Key of the marker soscope puts on what it writes (``adata.uns[SOSCOPE_KEY]``, ``gdf.attrs[SOSCOPE_KEY]``).
SOSCOPE_KEY = SoscopeKeys.UNS

ELEMENT_TYPES = ("images", "labels", "points", "shapes", "tables")
_ROW_BLOCK = 8192  # rows per block when scanning a dense matrix
_MAX_LISTED = 5  # features named in a message


# --------------------------------------------------------------------------------------------- helpers
def _fmt_list(names: Iterable[Any], limit: int = 20) -> str:
    names = [str(n) for n in names]
    shown = ", ".join(repr(n) for n in names[:limit])
    if len(names) > limit:
        shown += f", ... ({len(names)} in all)"
    return f"[{shown}]"


def _feature_names(idx: np.ndarray, var_names: Sequence[str] | None) -> str:
    idx = np.asarray(idx)
    names = [str(var_names[i]) if var_names is not None else f"#{i}" for i in idx[:_MAX_LISTED]]
    more = f", ... ({len(idx)} features)" if len(idx) > _MAX_LISTED else ""
    return ", ".join(names) + more


def _dense_blocks(x: Any) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(first_row, block)`` of a dense matrix, a few thousand rows at a time."""
    n = x.shape[0]
    for start in range(0, n, _ROW_BLOCK):
        yield start, np.asarray(x[start : start + _ROW_BLOCK])


def _as_matrix(x: Any) -> Any:
    """Sparse → CSR (no densifying), anything else → itself (indexable 2-D array)."""
    if sp.issparse(x):
        return x if x.format == "csr" else x.tocsr()
    if getattr(x, "ndim", 2) != 2:
        raise SoscopeInputError(
            f"Expected a 2-D spots × features matrix, got shape {getattr(x, 'shape', None)}."
        )
    return x


def layer_names(adata: Any) -> list[str]:
    """Return the names of the table's layers, without X.

    From anndata 0.13 on, X is also ``adata.layers[None]``: ``adata.layers.keys()`` then yields ``None``
    (which breaks ``", ".join``) and ``len(adata.layers)`` counts X. Older anndata yields only named layers.
    """
    return [str(k) for k in adata.layers.keys() if k is not None]


def element_type(sdata: Any, name: str) -> str | None:
    """Return the element type (``"images"``, ``"shapes"``, ``"tables"``, ...) holding ``name``, or None."""
    for etype in ELEMENT_TYPES:
        if name in getattr(sdata, etype):
            return etype
    return None


def is_soscope_output(sdata: Any, name: str) -> bool:
    """Whether the element ``name`` was written by soscope.

    A table is soscope's when ``uns["soscope"]`` is present; a shapes element when its ``attrs`` carry the
    marker (in memory) or when a soscope table annotates it (this survives a write/read round trip).
    """
    etype = element_type(sdata, name)
    if etype == "tables":
        return SOSCOPE_KEY in sdata.tables[name].uns
    if etype == "shapes":
        if SOSCOPE_KEY in getattr(sdata.shapes[name], "attrs", {}):
            return True
        for table in sdata.tables.values():
            if SOSCOPE_KEY in table.uns and name in annotated_regions(table):
                return True
    return False


def annotated_regions(table: Any) -> list[str]:
    """Return the region names a table declares in ``uns["spatialdata_attrs"]`` (empty if none)."""
    attrs = table.uns.get("spatialdata_attrs")
    if not attrs:
        return []
    region = attrs.get("region")
    if region is None:
        return []
    if isinstance(region, str):
        return [region]
    return [str(r) for r in np.asarray(region, dtype=object).ravel().tolist()]


# --------------------------------------------------------------------------------------------- tables
def check_has_table(sdata: Any) -> None:
    """Raise when the SpatialData has no table at all."""
    if len(sdata.tables) == 0:
        shapes = list(sdata.shapes)
        target = shapes[0] if len(shapes) == 1 else "<spots>"
        raise SoscopeInputError(
            "The SpatialData has no table: soscope needs an AnnData of spot profiles (counts in X or a "
            "layer) annotating the spots' shapes element. Add one with `sdata['table'] = "
            f"TableModel.parse(adata, region='{target}', region_key='region', instance_key='spot_id')`"
            + (f" (shapes present: {_fmt_list(shapes)})." if shapes else " and add the spots as shapes.")
        )


def check_table_annotates_shapes(sdata: Any, table_name: str) -> list[str]:
    """Return the shapes elements table ``table_name`` annotates; raise a precise error when there are none.

    Raises
    ------
    SoscopeInputError
        When the table annotates nothing, only elements missing from ``sdata``, or only labels/points/images.

    """
    table = sdata.tables[table_name]
    regions = annotated_regions(table)
    attrs = table.uns.get("spatialdata_attrs") or {}
    how = (
        f"Link it to the spots with `TableModel.parse(adata, region='<spots>', region_key='region', "
        f"instance_key='spot_id')` or `sdata.set_table_annotates_spatialelement('{table_name}', "
        "region='<spots>', region_key=..., instance_key=...)`"
    )
    if not regions or not attrs.get("region_key") or not attrs.get("instance_key"):
        shapes = list(sdata.shapes)
        raise SoscopeInputError(
            f"Table '{table_name}' does not annotate any element (uns['spatialdata_attrs'] with region, "
            f"region_key and instance_key is missing or incomplete). {how}"
            + (f"; shapes present: {_fmt_list(shapes)}." if shapes else ".")
        )
    shapes = [r for r in regions if r in sdata.shapes]
    if shapes:
        return shapes
    other = {r: element_type(sdata, r) for r in regions}
    present = {r: t for r, t in other.items() if t is not None}
    if present:
        kinds = ", ".join(f"'{r}' ({t})" for r, t in present.items())
        raise SoscopeInputError(
            f"Table '{table_name}' annotates {kinds}, but soscope needs the spots as a shapes element "
            "(circles, squares or polygons). Convert them, e.g. `sdata['spots'] = "
            "sd.to_circles(sdata['<labels>'])` or `sd.to_polygons(...)`, and re-link the table with "
            f"`sdata.set_table_annotates_spatialelement('{table_name}', region='spots', ...)`."
        )
    raise SoscopeInputError(
        f"Table '{table_name}' annotates {_fmt_list(regions)}, which is not in the SpatialData "
        f"(shapes present: {_fmt_list(sdata.shapes)}). {how}."
    )


def check_not_empty(adata: Any, table_name: str, layer: str | None = None) -> None:
    """Raise when the table (or the chosen layer) has no rows, no features, or no matrix at all."""
    if adata.n_obs == 0:
        raise SoscopeInputError(
            f"Table '{table_name}' has no rows (0 spots): pass a table with spot profiles."
        )
    if adata.n_vars == 0:
        raise SoscopeInputError(
            f"Table '{table_name}' has no features (0 columns): pass a table with features."
        )
    if layer is None and adata.X is None:
        raise SoscopeInputError(
            f"Table '{table_name}' has no X matrix: pass `layer=` naming the counts "
            f"(layers: {_fmt_list(layer_names(adata))})."
        )


def check_unique_var_names(adata: Any, table_name: str) -> None:
    """Raise when the table has duplicated feature names (``var_names``).

    AnnData accepts them (with a warning), but soscope writes one output column per feature and indexes
    features by name: duplicates otherwise crash deep inside anndata while the outputs are assembled.

    Parameters
    ----------
    adata
        The table of spot profiles.
    table_name
        Its name in the SpatialData, for the message.

    Raises
    ------
    SoscopeInputError
        Naming how many names are duplicated, a few of them, and ``var_names_make_unique()``.

    """
    names = adata.var_names
    if names.is_unique:
        return
    dup = names[names.duplicated()].unique()
    raise SoscopeInputError(
        f"Table '{table_name}' has {len(dup)} duplicated feature names in var_names (e.g. "
        f"{_fmt_list(dup[:_MAX_LISTED])}); soscope needs one name per feature. Make them unique with "
        f"`sdata['{table_name}'].var_names_make_unique()` (appends '-1', '-2', ...), or drop or aggregate "
        "the duplicated features."
    )


def check_instance_ids(
    shape_ids: Any, table_ids: Any, *, spots: str, table: str, instance_key: str
) -> np.ndarray:
    """Match table rows to shapes rows by instance id.

    Parameters
    ----------
    shape_ids
        The shapes element's index (the instance ids of the spots).
    table_ids
        ``table.obs[instance_key]`` of the rows annotating this shapes element.
    spots, table, instance_key
        Names used in the messages.

    Returns
    -------
    ``(n_rows,)`` int64 positions in the shapes element of each table row.

    Raises
    ------
    SoscopeInputError
        Duplicated ids in the shapes or in the table; table ids absent from the shapes.

    """
    s_ids, t_ids = _comparable_ids(shape_ids, table_ids)
    s_index = _index(s_ids)
    if s_index.has_duplicates:
        dup = s_index[s_index.duplicated()].unique()
        raise SoscopeInputError(
            f"Shapes '{spots}' has {len(dup)} duplicated instance ids in its index (e.g. "
            f"{_fmt_list(dup[:5])}): give every spot a unique index, e.g. `sdata['{spots}'] = "
            "ShapesModel.parse(gdf.reset_index(drop=True), transformations=...)` and update the table's "
            "instance column to match."
        )
    t_index = _index(t_ids)
    if t_index.has_duplicates:
        dup = t_index[t_index.duplicated()].unique()
        raise SoscopeInputError(
            f"Table '{table}' has {len(dup)} instance ids of '{spots}' used by more than one row "
            f"(obs['{instance_key}'], e.g. {_fmt_list(dup[:5])}): each spot must have one row; aggregate or "
            "drop the duplicates."
        )
    pos = s_index.get_indexer(t_index)
    missing = pos < 0
    if missing.any():
        raise SoscopeInputError(
            f"{int(missing.sum())} rows of table '{table}' refer to instance ids not in shapes '{spots}' "
            f"(obs['{instance_key}'] values such as {_fmt_list(np.asarray(t_index[missing])[:5])}; the "
            f"shapes' index looks like {_fmt_list(np.asarray(s_index[:3]))}). Make obs['{instance_key}'] "
            "hold the shapes' index values, or subset the table to the spots present."
        )
    return pos.astype(np.int64)


def _index(values: np.ndarray) -> Any:
    import pandas as pd

    return pd.Index(values)


def _comparable_ids(a: Any, b: Any) -> tuple[np.ndarray, np.ndarray]:
    """Bring two id vectors to a common comparable dtype (int64 when both integer-like, else str)."""
    a_int, b_int = _int_ids(a), _int_ids(b)
    if a_int is not None and b_int is not None:
        return a_int, b_int
    return _str_ids(a), _str_ids(b)


def _int_ids(values: Any) -> np.ndarray | None:
    arr = np.asarray(values)
    if arr.dtype.kind in "iub":
        return arr.astype(np.int64)
    if arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(arr == np.rint(arr)):
        return arr.astype(np.int64)
    return None


def _str_ids(values: Any) -> np.ndarray:
    arr = np.asarray(values, dtype=object)
    return np.array([str(v) for v in arr], dtype=object)


# --------------------------------------------------------------------------------------------- values
def check_values(
    matrix: Any,
    *,
    var_names: Sequence[str] | None = None,
    allow_negative: bool = False,
    what: str = "The counts",
) -> None:
    """Raise on NaN, infinite or (unless ``allow_negative``) negative values, naming how many and where.

    Parameters
    ----------
    matrix
        Spots × features, dense or scipy sparse.
    var_names
        Feature names, for the message.
    allow_negative
        Accept negative values (continuous data with a Gaussian likelihood).
    what
        How to name the matrix in the message.

    """
    x = _as_matrix(matrix)
    n_feat = x.shape[1]
    nan = np.zeros(n_feat, np.int64)
    inf = np.zeros(n_feat, np.int64)
    neg = np.zeros(n_feat, np.int64)
    if sp.issparse(x):
        d = x.data
        if d.dtype.kind == "f":
            nan += np.bincount(x.indices[np.isnan(d)], minlength=n_feat)
            inf += np.bincount(x.indices[np.isinf(d)], minlength=n_feat)
        if d.dtype.kind in "if":
            neg += np.bincount(x.indices[d < 0], minlength=n_feat)
    else:
        for _, blk in _dense_blocks(x):
            if blk.dtype.kind == "f":
                nan += np.isnan(blk).sum(0)
                inf += np.isinf(blk).sum(0)
            if blk.dtype.kind in "if":
                neg += (blk < 0).sum(0)
    problems = []
    for label, counts in (("NaN", nan), ("infinite", inf)) + (
        (("negative", neg),) if not allow_negative else ()
    ):
        if counts.any():
            feats = np.flatnonzero(counts)
            problems.append(
                f"{int(counts.sum())} {label} values in {len(feats)} features "
                f"({_feature_names(feats, var_names)})"
            )
    if problems:
        raise SoscopeInputError(
            f"{what} contain {'; '.join(problems)}. soscope needs finite, non-negative measurements: fill or "
            "drop these features (e.g. `adata = adata[:, mask]`), or pass `layer=` naming the raw counts"
            + ("" if allow_negative else ", or use `likelihood='gaussian'` for signed continuous data")
            + "."
        )


def is_integer_valued(matrix: Any, features: np.ndarray | None = None) -> bool:
    """Whether every value (of the selected features) is an integer."""
    return _count_non_integer(_as_matrix(matrix), features)[0] == 0


def _count_non_integer(x: Any, features: np.ndarray | None) -> tuple[int, np.ndarray]:
    n_feat = x.shape[1]
    per_feat = np.zeros(n_feat, np.int64)
    if sp.issparse(x):
        if x.dtype.kind in "iub":
            return 0, per_feat
        d = x.data
        bad = np.abs(d - np.rint(d)) > 1e-6
        per_feat += np.bincount(x.indices[bad], minlength=n_feat)
    else:
        for _, blk in _dense_blocks(x):
            if blk.dtype.kind in "iub":
                return 0, per_feat
            per_feat += (np.abs(blk - np.rint(blk)) > 1e-6).sum(0)
    if features is not None:
        per_feat = np.where(np.asarray(features, bool), per_feat, 0)
    return int(per_feat.sum()), per_feat


def check_counts(
    matrix: Any,
    likelihood: str,
    *,
    var_names: Sequence[str] | None = None,
    features: np.ndarray | None = None,
) -> None:
    """Check that the values suit ``likelihood``: integers for count likelihoods, 0/1 for Bernoulli.

    Parameters
    ----------
    matrix
        Spots × features, dense or scipy sparse.
    likelihood
        ``"nb"``, ``"zinb"``, ``"poisson"``, ``"bernoulli"``, ``"gaussian"`` (or ``"auto"``: nothing checked).
    var_names
        Feature names, for the message.
    features
        Optional boolean mask: check only these features (one modality of a multi-omics table).

    """
    if likelihood in INTEGER_LIKELIHOODS:
        x = _as_matrix(matrix)
        total, per_feat = _count_non_integer(x, features)
        if total:
            feats = np.flatnonzero(per_feat)
            raise SoscopeInputError(
                f"likelihood='{likelihood}' needs integer counts, but {total} values in {len(feats)} "
                f"features are not integers ({_feature_names(feats, var_names)}); the table looks "
                "normalised. Pass `layer=` naming the raw counts, or `likelihood='gaussian'` for continuous "
                "values."
            )
    elif likelihood in BINARY_LIKELIHOODS:
        x = _as_matrix(matrix)
        n_feat = x.shape[1]
        per_feat = np.zeros(n_feat, np.int64)
        if sp.issparse(x):
            per_feat += np.bincount(x.indices[(x.data != 0) & (x.data != 1)], minlength=n_feat)
        else:
            for _, blk in _dense_blocks(x):
                per_feat += ((blk != 0) & (blk != 1)).sum(0)
        if features is not None:
            per_feat = np.where(np.asarray(features, bool), per_feat, 0)
        if per_feat.any():
            feats = np.flatnonzero(per_feat)
            raise SoscopeInputError(
                f"likelihood='{likelihood}' needs values 0/1, but {int(per_feat.sum())} values in "
                f"{len(feats)} features are not ({_feature_names(feats, var_names)}). Binarise the data (`X "
                "> 0`) or use `likelihood='poisson'`."
            )


def zero_spots_mask(matrix: Any, *, spot_names: Sequence[str] | None = None) -> np.ndarray:
    """Return a boolean mask of spots whose profile is all zeros; log a warning naming them if any.

    Such spots are skipped, not refused: they are left out of the training loss (a spot with no counts says
    nothing about how counts split), and their enhanced counts are conditioned on their observation: 0
    inside their footprint, so every sub-spot lying inside the footprint (all of them with ``grid:K``) is 0,
    while the parts of hex7 / rings sub-spots outside the footprint get the model's estimate from the
    neighbours, as for every spot.

    Raises
    ------
    SoscopeInputError
        When every spot is all zeros.

    """
    x = _as_matrix(matrix)
    if sp.issparse(x):
        nz = np.asarray((x != 0).sum(axis=1)).ravel()
    else:
        nz = np.concatenate([(blk != 0).sum(1) for _, blk in _dense_blocks(x)]) if x.shape[0] else np.zeros(0)
    mask = nz == 0
    if mask.any() and mask.all():
        raise SoscopeInputError(
            f"All {x.shape[0]} spots have no counts at all (the matrix is all zeros): pass `layer=` naming "
            "the layer that holds the counts, or check that the table is the one with the spot profiles."
        )
    if mask.any():
        examples = ""
        if spot_names is not None:
            examples = f" ({_fmt_list([spot_names[i] for i in np.flatnonzero(mask)], limit=_MAX_LISTED)})"
        logger.warning(
            "%d of %d spots have no counts at all%s: they are skipped in training, and their enhanced counts "
            "are 0 inside their footprints (sub-spots outside a footprint get the model's estimate). Drop "
            "them from the table to leave them out of the output.",
            int(mask.sum()),
            x.shape[0],
            examples,
        )
    return mask


def zero_variance_mask(matrix: Any, *, var_names: Sequence[str] | None = None) -> np.ndarray:
    """Return a boolean mask of features with the same value in every spot; log a warning if any."""
    x = _as_matrix(matrix)
    if x.shape[0] == 0:
        return np.zeros(x.shape[1], bool)
    if sp.issparse(x):
        lo = np.asarray(x.min(axis=0).toarray()).ravel()
        hi = np.asarray(x.max(axis=0).toarray()).ravel()
    else:
        lo = np.full(x.shape[1], np.inf)
        hi = np.full(x.shape[1], -np.inf)
        for _, blk in _dense_blocks(x):
            lo = np.minimum(lo, blk.min(0))
            hi = np.maximum(hi, blk.max(0))
    mask = lo == hi
    if mask.any():
        feats = np.flatnonzero(mask)
        logger.warning(
            "%d of %d features are constant across spots (%s); they are carried through unchanged.",
            len(feats),
            x.shape[1],
            _feature_names(feats, var_names),
        )
    return mask


def check_min_spots(n_spots: int, *, where: str = "the selection") -> None:
    """Raise when fewer than two spots are selected (no spatial neighbourhood to learn from)."""
    if n_spots < 2:
        raise SoscopeInputError(
            f"{where} has {n_spots} spot{'s' if n_spots != 1 else ''}: soscope needs at least 2 spots (it "
            "learns from neighbouring spots). Check `sections=` / `spots=` and the table's rows."
        )


# --------------------------------------------------------------------------------------------- images
_OK_DTYPES = ("uint8", "uint16")
_MIN_IMAGE_SIDE = 4  # an image axis this short is a channel axis in the wrong place
_MAX_CHANNELS = 256  # more channels than this: the axes are almost surely in the wrong order


def _scale0(image: Any) -> Any:
    """Return the full-resolution DataArray of an image element (DataArray or multiscale DataTree)."""
    from spatialdata import get_pyramid_levels

    if hasattr(image, "dims") and hasattr(image, "dtype"):
        return image
    return get_pyramid_levels(image, n=0)


def check_image(image: Any, name: str) -> None:
    """Check an image element: a ``c`` axis, 2-D, dtype uint8/uint16/float, 1 or 3–256 channels.

    Axes of at most 4 pixels, or more than 256 channels, mean the axes were given in the wrong order
    (channels-last data parsed as ``(c, y, x)``) and are refused. Float images may hold any range: the
    feature extraction rescales them by their maximum when it exceeds 1. Boolean and other integer dtypes are
    refused (convert them).
    """
    arr = _scale0(image)
    dims = tuple(arr.dims)
    if "c" not in dims:
        raise SoscopeInputError(
            f"Image '{name}' has axes {dims} without a channel axis 'c': parse it with "
            "`Image2DModel.parse(array, dims=('c', 'y', 'x'))`, or pass `image=False` to run without an "
            "image."
        )
    if "z" in dims:
        raise SoscopeInputError(
            f"Image '{name}' is 3-D (axes {dims}); soscope reads 2-D images: pass a 2-D image (e.g. one z "
            "plane parsed with Image2DModel) or `image=False`."
        )
    dt = np.dtype(arr.dtype)
    if not (dt.name in _OK_DTYPES or dt.kind == "f"):
        raise SoscopeInputError(
            f"Image '{name}' has dtype {dt.name}; soscope reads uint8, uint16 or float images: convert it "
            "(e.g. `Image2DModel.parse(img.data.astype('float32'), dims=img.dims, ...)`) or pass "
            "`image=False`."
        )
    n_c = int(arr.sizes["c"])
    small = {
        d: int(arr.sizes[d]) for d in ("y", "x") if d in arr.sizes and int(arr.sizes[d]) <= _MIN_IMAGE_SIDE
    }
    if small:
        sizes = ", ".join(f"{d}={arr.sizes[d]}" for d in dims)
        raise SoscopeInputError(
            f"Image '{name}' has axes ({sizes}): {_fmt_list(small)} only {max(small.values())} pixels wide, "
            "which looks like channels-last data (y, x, c) parsed as (c, y, x). Parse it with the axes in "
            "their real order, e.g. `Image2DModel.parse(array, dims=('y', 'x', 'c'))` (it is transposed to "
            "(c, y, x)), or pass `image=False`."
        )
    if n_c > _MAX_CHANNELS:
        raise SoscopeInputError(
            f"Image '{name}' has {n_c} channels (axes {dims}, shape {tuple(arr.shape)}); more than "
            f"{_MAX_CHANNELS} suggests the axes are in the wrong order (e.g. (y, x, c) parsed as (c, y, x)). "
            "Parse it with its real axis order (`Image2DModel.parse(array, dims=('y', 'x', 'c'))`), keep the "
            "channels you need (`img.isel(c=[...])`), or pass `image=False`."
        )
    if n_c == 2 or n_c < 1:
        raise SoscopeInputError(
            f"Image '{name}' has {n_c} channels; soscope reads 1 channel (DAPI / grey) or 3 or more (H&E "
            "RGB, IF panels): add or drop channels (e.g. `sdata['img1'] = "
            "Image2DModel.parse(img.isel(c=[0]).data, dims=('c', 'y', 'x'), ...)`), or pass `image=False`."
        )


def coordinate_systems_of(element: Any) -> list[str]:
    """Return the coordinate systems an element has a transformation to."""
    from spatialdata.transformations import get_transformation

    return list(get_transformation(element, get_all=True).keys())


def choose_coordinate_system(
    elements: Mapping[str, Any], coordinate_system: str | None = None, *, purpose: str = "soscope"
) -> str:
    """Return the coordinate system shared by ``elements`` that soscope works in.

    The one given (it must be shared); else the only shared one; else ``"global"`` when shared; else an
    error listing the shared systems (or saying there are none) and naming ``coordinate_system=``.

    Parameters
    ----------
    elements
        Element name → element (shapes, points, images).
    coordinate_system
        The user's choice, if any.
    purpose
        What needs the system, for the messages (e.g. ``"pseudo-spots"``).

    """
    names = list(elements)
    sets = [set(coordinate_systems_of(e)) for e in elements.values()]
    shared = sorted(set.intersection(*sets)) if sets else []
    if coordinate_system is not None:
        if coordinate_system not in shared:
            raise SoscopeInputError(
                f"coordinate_system={coordinate_system!r} is not shared by {_fmt_list(names)}; shared: "
                f"{_fmt_list(shared)}. Pass one of those."
            )
        return coordinate_system
    if len(shared) == 1:
        return shared[0]
    if "global" in shared:
        return "global"
    if shared:
        raise SoscopeInputError(
            f"{_fmt_list(names)} share the coordinate systems {_fmt_list(shared)}; pass `coordinate_system=` "
            f"to choose the one for {purpose}."
        )
    raise SoscopeInputError(
        f"{_fmt_list(names)} share no coordinate system, which {purpose} needs: register them in a common "
        "one with `spatialdata.transformations.set_transformation`."
    )


def check_image_coordinate_system(sdata: Any, image: str, spots: Sequence[str] | str) -> list[str]:
    """Return the coordinate systems shared by ``image`` and every spots element; raise if none."""
    spots = [spots] if isinstance(spots, str) else list(spots)
    img_cs = coordinate_systems_of(sdata.images[image])
    spot_cs = {s: coordinate_systems_of(sdata.shapes[s]) for s in spots}
    shared = [c for c in img_cs if all(c in v for v in spot_cs.values())]
    if not shared:
        spots_desc = "; ".join(f"spots '{s}' in {_fmt_list(v)}" for s, v in spot_cs.items())
        first_cs = next(iter(next(iter(spot_cs.values()))), "global")
        raise SoscopeInputError(
            f"Image '{image}' is in coordinate systems {_fmt_list(img_cs)} but {spots_desc}: they share "
            "none, so soscope cannot place the image on the spots. Register them, e.g. "
            f"`sd.transformations.set_transformation(sdata['{image}'], transformation, "
            f"to_coordinate_system='{first_cs}')`, or pass `image=False`."
        )
    return shared


def check_spots_on_image(
    sdata: Any, image: str, spots: str, coordinate_system: str, *, rows: np.ndarray | None = None
) -> np.ndarray:
    """Check that the spots lie on the image once both are placed in ``coordinate_system``.

    Parameters
    ----------
    sdata
        The SpatialData.
    image, spots
        Names of the image and of the shapes element with the spots.
    coordinate_system
        The coordinate system relating them.
    rows
        ``iloc`` rows of the spots to check (default all).

    Returns
    -------
    ``(n,)`` boolean mask of the spots whose centre lies outside the image. Some outside: a warning (their
    sub-spots get no image features, filled with the mean); all outside: an error.

    Raises
    ------
    SoscopeInputError
        When no spot lies on the image: the transformations of image and spots do not match.

    """
    from soscope._transforms import affine_xy
    from soscope.geometry import spot_centres

    gdf = sdata.shapes[spots] if rows is None else sdata.shapes[spots].iloc[np.asarray(rows)]
    arr = _scale0(sdata.images[image])
    h, w = int(arr.sizes["y"]), int(arr.sizes["x"])
    to_cs_spots = affine_xy(sdata.shapes[spots], coordinate_system)
    to_cs_image = affine_xy(sdata.images[image], coordinate_system)
    try:
        spots_to_pixels = np.linalg.inv(to_cs_image) @ to_cs_spots
    except np.linalg.LinAlgError:
        raise SoscopeInputError(
            f"The transformation of image '{image}' to '{coordinate_system}' is not invertible: set a proper "
            "one with `sd.transformations.set_transformation`, or pass `image=False`."
        ) from None
    xy = spot_centres(gdf)
    px = xy @ spots_to_pixels[:2, :2].T + spots_to_pixels[:2, 2]
    outside = ~((px[:, 0] >= 0) & (px[:, 0] < w) & (px[:, 1] >= 0) & (px[:, 1] < h))
    if len(outside) and outside.all():
        cs_xy = xy @ to_cs_spots[:2, :2].T + to_cs_spots[:2, 2]
        corners = (
            np.array([[0, 0], [w, 0], [0, h], [w, h]], float) @ to_cs_image[:2, :2].T + to_cs_image[:2, 2]
        )

        def span(a: np.ndarray) -> str:
            return f"x {a[:, 0].min():.4g}..{a[:, 0].max():.4g}, y {a[:, 1].min():.4g}..{a[:, 1].max():.4g}"

        raise SoscopeInputError(
            f"None of the {len(xy)} spots of '{spots}' lies on image '{image}': in coordinate system "
            f"'{coordinate_system}' the spots span {span(cs_xy)} but the image covers {span(corners)}. The "
            "transformations of the image and the spots do not match (e.g. one in pixels, the other in µm, "
            "or an image of another section): fix them with `sd.transformations.set_transformation(sdata"
            f"['{image}'], transformation, to_coordinate_system='{coordinate_system}')`, pass another "
            "`image=`, or `image=False` to run without an image."
        )
    if outside.any():
        logger.warning(
            "%d of %d spots of '%s' lie outside image '%s' (in '%s'): their sub-spots get no image features "
            "(the mean is used). If that is unexpected, check the transformations of the image and spots.",
            int(outside.sum()),
            len(outside),
            spots,
            image,
            coordinate_system,
        )
    return outside


# --------------------------------------------------------------------------------------------- outputs
def check_output_names(
    sdata: Any,
    names: Iterable[str] | Mapping[str, str],
    overwrite: bool = False,
    *,
    on_disk: Iterable[str] = (),
) -> None:
    """Refuse output names that would replace an element soscope did not write.

    Parameters
    ----------
    sdata
        The SpatialData to write into.
    names
        Output names, or a mapping name → element type (``"shapes"`` / ``"tables"``) to also check that an
        existing element of that name has the same type.
    overwrite
        Replace existing elements of the same name that soscope did not write.
    on_disk
        Names of elements present in the zarr store but not in memory (``"shapes/x"`` paths or bare names);
        they are treated as user data.

    Raises
    ------
    SoscopeInputError
        Invalid name; an element of another type with that name; a non-soscope element without ``overwrite``.

    """
    types = dict(names) if isinstance(names, Mapping) else dict.fromkeys(names)
    disk = {p.split("/", 1)[-1]: (p.split("/", 1)[0] if "/" in p else None) for p in on_disk}
    for name, etype in types.items():
        check_element_name(name)
        existing = element_type(sdata, name)
        if existing is None and name in disk:
            existing = disk[name]
            if etype is not None and existing is not None and existing != etype:
                raise SoscopeInputError(
                    f"The zarr store already holds {existing} '{name}' and soscope would write {etype} of "
                    "that name: pass another `key_added=`."
                )
            if not overwrite:
                raise SoscopeInputError(
                    f"The zarr store already holds an element '{name}' (not loaded in memory) that soscope "
                    "cannot confirm it wrote: pass another `key_added=`, delete it "
                    f"(`sdata.delete_element_from_disk('{name}')`), or pass `overwrite=True` to replace it."
                )
            continue
        if existing is None:
            continue
        if etype is not None and existing != etype:
            raise SoscopeInputError(
                f"'{name}' already names {existing} in the SpatialData and soscope would write {etype} of "
                "that name (names are unique across element types): pass another `key_added=`."
            )
        if is_soscope_output(sdata, name):
            continue  # an earlier soscope result: replaced
        if not overwrite:
            raise SoscopeInputError(
                f"The SpatialData already has {existing} '{name}' that soscope did not write: pass another "
                "`key_added=`, or `overwrite=True` to replace it."
            )


def check_element_name(name: str) -> None:
    """Raise unless ``name`` is a valid SpatialData element name (alphanumerics, ``_``, ``-``, ``.``)."""
    # spatialdata's own rule (what its writer enforces), so a name accepted here is never refused there
    from spatialdata._core.validation import check_valid_name

    try:
        check_valid_name(name)
    except (TypeError, ValueError) as err:
        raise SoscopeInputError(
            f"{name!r} is not a valid element name ({err}): use letters, digits, '_', '-' or '.', not "
            "starting with '__' (choose another `key_added=`)."
        ) from None
