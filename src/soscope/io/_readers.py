"""Readers that build a :class:`~spatialdata.SpatialData` from grid-barcoded spatial omics files.

Two entry points:

* :func:`read_dbit` — the DBiT family (DBiT-seq, spatial-CUT&Tag, spatial-ATAC(-RNA)-seq,
  spatial-CITE-seq): one or several count matrices whose spots are named by pixel barcodes such as
  ``"12x34"`` (row x column of the microfluidic grid) or located by a positions table.
* :func:`read_soscope_layout` — the preprocessed CSV layout of the published soScope code
  (``*_count.csv`` + ``position_with_center.csv``), including Visium-like hexagonal layouts.

Both produce the same layout:

* shapes ``"pixels"`` (squares) or ``"spots"`` (circles: Point geometry + ``radius`` column), in µm, in
  the coordinate system ``"global"`` with an Identity transformation;
* table ``"table"`` annotating them (``region_key="region"``, ``instance_key="spot_id"``), with obs
  ``barcode``, ``array_row``, ``array_col`` (plus ``imagerow``/``imagecol``/``is_center`` when the
  positions carry them), ``var["feature_types"]`` when modalities are named, and
  ``uns["soscope_reader"]`` recording the geometry (pitch, footprint, lattice);
* optionally an image ``"image"`` whose transformation maps its pixels to µm.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp

from soscope._errors import SoscopeInputError

if TYPE_CHECKING:
    from spatialdata import SpatialData

__all__ = ["read_dbit", "read_soscope_layout"]

PathLike = str | Path

#: Matrices with fewer non-zero entries than this fraction are stored as CSR in ``table.X``.
SPARSE_DENSITY = 0.3
#: Images with a side longer than this many pixels are stored as a multiscale image (DataTree).
MULTISCALE_MIN_SIDE = 4096

_BARCODE_COLUMNS = ("barcode", "barcodes", "position", "spot", "spot_name")
_ROW_COLUMNS = ("row", "array_row", "row_index")
_COL_COLUMNS = ("col", "array_col", "column", "col_index")
_IMAGEROW_COLUMNS = ("imagerow", "pxl_row_in_fullres", "pixel_row", "image_row")
_IMAGECOL_COLUMNS = ("imagecol", "pxl_col_in_fullres", "pixel_col", "image_col")


# --------------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------------
_REGEX_SEP: dict[str, str] = {}


def _barcode_regex(sep: str) -> re.Pattern[str]:
    if not isinstance(sep, str) or not sep:
        raise SoscopeInputError(f"barcode_sep must be a non-empty string, got {sep!r}.")
    regex = re.compile(rf"^\s*(\d+)\s*{re.escape(sep)}\s*(\d+)\s*$")
    _REGEX_SEP[regex.pattern] = sep
    return regex


def _parse_barcodes(barcodes: pd.Index | np.ndarray, regex: re.Pattern[str]) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised parse of ``"RxC"`` barcodes: (row, col) float arrays, NaN where a barcode does not parse."""
    parts = pd.Series(np.asarray(barcodes, dtype=object)).astype(str).str.extract(regex)
    row = pd.to_numeric(parts[0], errors="coerce").to_numpy(dtype=float)
    col = pd.to_numeric(parts[1], errors="coerce").to_numpy(dtype=float)
    return row, col


def _fraction_parsed(labels: pd.Index, regex: re.Pattern[str]) -> float:
    if len(labels) == 0:
        return 0.0
    row, _ = _parse_barcodes(labels, regex)
    return float(np.mean(~np.isnan(row)))


def _examples(values: Any, k: int = 5) -> str:
    vals = [str(v) for v in list(values)[:k]]
    return ", ".join(repr(v) for v in vals) + (", ..." if len(values) > k else "")


def _csv_sep(path: Path) -> str:
    name = path.name.lower()
    for suffix in (".gz", ".bz2", ".zip", ".xz"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return "\t" if name.endswith((".tsv", ".txt", ".tab")) else ","


def _find_column(df: pd.DataFrame, candidates: tuple[str, ...]) -> str | None:
    lower = {str(c).lower(): c for c in df.columns}
    for cand in candidates:
        if cand in lower:
            return lower[cand]
    return None


def _as_int_if_integral(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=float)
    if np.all(np.isfinite(values)) and np.all(values == np.round(values)):
        return values.astype(np.int64)
    return values


# --------------------------------------------------------------------------------------------------
# count matrices
# --------------------------------------------------------------------------------------------------
class _Matrix:
    """A count matrix with row and column labels, in whatever orientation it was given."""

    def __init__(self, X: np.ndarray | sp.spmatrix, rows: pd.Index, cols: pd.Index, name: str):
        self.X = X
        self.rows = pd.Index(np.asarray(rows, dtype=object).astype(str), dtype=object)
        self.cols = pd.Index(np.asarray(cols, dtype=object).astype(str), dtype=object)
        self.name = name

    def transposed(self) -> _Matrix:
        return _Matrix(self.X.T, self.cols, self.rows, self.name)


def _dataframe_to_matrix(df: pd.DataFrame, name: str) -> _Matrix:
    df = df.copy()
    bc_col = _find_column(df, _BARCODE_COLUMNS)
    if bc_col is not None:  # barcodes given as a column rather than as the index
        df = df.set_index(bc_col)
    non_numeric = [c for c in df.columns if not pd.api.types.is_numeric_dtype(df[c])]
    if non_numeric:
        raise SoscopeInputError(
            f"Counts {name}: non-numeric columns {_examples(non_numeric)}. Counts must be a numeric matrix "
            "with barcodes (or feature names) as the row index; put barcodes in the index "
            "(df.set_index('barcode')) or drop the annotation columns."
        )
    values = df.to_numpy()
    if values.dtype == bool:
        values = values.astype(np.float32)
    return _Matrix(values, df.index, df.columns, name)


def _load_matrix(obj: Any, name: str) -> _Matrix:
    """Load counts from a path (CSV/TSV, gz ok; h5ad), a DataFrame or an AnnData."""
    from anndata import AnnData

    if isinstance(obj, AnnData):
        return _Matrix(obj.X, obj.obs_names, obj.var_names, name)
    if isinstance(obj, pd.DataFrame):
        return _dataframe_to_matrix(obj, name)
    if isinstance(obj, str | Path):
        path = Path(obj)
        if not path.exists():
            raise SoscopeInputError(f"Counts {name}: file not found: {str(path)!r}.")
        if path.name.lower().endswith(".h5ad"):
            import anndata as ad

            adata = ad.read_h5ad(path)
            return _Matrix(adata.X, adata.obs_names, adata.var_names, f"{name} ({path.name})")
        try:
            df = pd.read_csv(path, sep=_csv_sep(path), index_col=0)
        except Exception as err:  # pandas raises several types; report them the same way
            raise SoscopeInputError(f"Counts {name}: cannot read {str(path)!r} as CSV/TSV: {err}") from err
        return _dataframe_to_matrix(df, f"{name} ({path.name})")
    raise SoscopeInputError(
        f"Counts {name}: unsupported type {type(obj).__name__}; pass a CSV/TSV/h5ad path, a pandas "
        "DataFrame or an AnnData."
    )


def _orient(
    m: _Matrix,
    *,
    transpose: bool | Literal["auto"],
    regex: re.Pattern[str],
    known: pd.Index | None,
) -> _Matrix:
    """Return the matrix with barcodes as rows (spots x features)."""
    if transpose is True:
        return m.transposed()
    if transpose is False:
        return m
    if transpose != "auto":
        raise SoscopeInputError(f"transpose must be 'auto', True or False, got {transpose!r}.")

    def score(labels: pd.Index) -> float:
        if known is not None:
            return float(np.mean(labels.isin(known))) if len(labels) else 0.0
        return _fraction_parsed(labels, regex)

    s_rows, s_cols = score(m.rows), score(m.cols)
    if s_rows == 0 and s_cols == 0:
        if known is not None:
            how = "none of the row or column labels is a barcode listed in positions"
        else:
            how = f"no label looks like a pixel barcode 'ROW{_sep_of(regex)}COL'"
        raise SoscopeInputError(
            f"Counts {m.name}: cannot find the pixel barcodes: {how}. Row labels: {_examples(m.rows)}; "
            f"column labels: {_examples(m.cols)}. Set barcode_sep, pass positions=... (barcode,row,col), "
            "or set transpose=True/False."
        )
    return m.transposed() if s_cols > s_rows else m


def _sep_of(regex: re.Pattern[str]) -> str:
    """Return the separator a barcode regex was built with (for messages)."""
    return _REGEX_SEP.get(regex.pattern, "?")


def _to_table_matrix(mats: list[np.ndarray | sp.spmatrix], sparse: bool | Literal["auto"]):
    """Concatenate spot-aligned blocks column-wise into float32 dense or CSR."""
    blocks = []
    for X in mats:
        if sp.issparse(X):
            blocks.append(sp.csr_matrix(X, dtype=np.float32))
        else:
            arr = np.asarray(X)
            if not np.issubdtype(arr.dtype, np.number) and arr.dtype != bool:
                raise SoscopeInputError(f"Counts must be numeric, got dtype {arr.dtype}.")
            blocks.append(arr.astype(np.float32, copy=False))
    n = blocks[0].shape[0]
    size = n * sum(b.shape[1] for b in blocks)
    nnz = sum(b.nnz if sp.issparse(b) else int(np.count_nonzero(b)) for b in blocks)
    density = nnz / size if size else 1.0
    make_sparse = (density < SPARSE_DENSITY) if sparse == "auto" else bool(sparse)
    if make_sparse:
        return sp.hstack([sp.csr_matrix(b) for b in blocks], format="csr", dtype=np.float32)
    return np.hstack([b.toarray() if sp.issparse(b) else b for b in blocks]).astype(np.float32, copy=False)


def _collect_counts(
    counts: Any,
    *,
    modality: str | None,
    transpose: bool | Literal["auto"],
    regex: re.Pattern[str],
    known: pd.Index | None,
    sparse: bool | Literal["auto"],
) -> tuple[Any, pd.Index, pd.DataFrame]:
    """Load one or several matrices, align them on barcodes, return (X, barcodes, var)."""
    if isinstance(counts, Mapping):
        if modality is not None:
            raise SoscopeInputError(
                "modality= names the single matrix; with a dict of matrices the keys already name the "
                "modalities. Drop modality=."
            )
        if len(counts) == 0:
            raise SoscopeInputError("counts is an empty dict; pass at least one modality -> matrix.")
        items = [(str(k), v) for k, v in counts.items()]
    else:
        items = [(modality, counts)]

    mats: list[_Matrix] = []
    for mod, obj in items:
        label = repr(mod) if mod is not None else "matrix"
        m = _orient(_load_matrix(obj, label), transpose=transpose, regex=regex, known=known)
        if m.rows.has_duplicates:
            dup = m.rows[m.rows.duplicated()].unique()
            raise SoscopeInputError(
                f"Counts {m.name}: duplicated barcodes {_examples(dup)}; barcodes must be unique."
            )
        mats.append(m)

    barcodes = mats[0].rows
    aligned = [mats[0].X]
    for m in mats[1:]:
        if not m.rows.equals(barcodes):
            missing = barcodes.difference(m.rows)
            extra = m.rows.difference(barcodes)
            if len(missing) or len(extra):
                raise SoscopeInputError(
                    f"Barcodes differ between counts {mats[0].name} and {m.name}: {len(missing)} barcodes "
                    f"of the first are absent from the second (e.g. {_examples(missing)}), {len(extra)} are "
                    f"only in the second (e.g. {_examples(extra)}). All modalities must measure the same "
                    "pixels; subset them to the common barcodes first."
                )
            order = m.rows.get_indexer(barcodes)
            aligned.append(m.X[order])
        else:
            aligned.append(m.X)

    # features and their modality
    names: list[str] = []
    types: list[str | None] = []
    for (mod, _), m in zip(items, mats, strict=True):
        names.extend(m.cols.tolist())
        types.extend([mod] * len(m.cols))
    names_arr = pd.Index(names, dtype=object)
    if names_arr.has_duplicates:
        if len(mats) > 1:
            # rename duplicates that come from a later modality: "CD4" protein vs "CD4" gene
            seen: set[str] = set()
            renamed = []
            for n_, t in zip(names, types, strict=True):
                renamed.append(n_ if n_ not in seen else f"{n_}-{t}")
                seen.add(n_)
            if pd.Index(renamed).has_duplicates:
                raise SoscopeInputError(
                    f"Duplicated feature names within one matrix: "
                    f"{_examples(names_arr[names_arr.duplicated()].unique())}; make them unique."
                )
            warnings.warn(
                "Feature names shared between modalities were suffixed with '-<modality>' "
                "(original names are in var['feature_name']).",
                UserWarning,
                stacklevel=3,
            )
            var = pd.DataFrame({"feature_name": names}, index=pd.Index(renamed, dtype=object))
        else:
            raise SoscopeInputError(
                f"Counts {mats[0].name}: duplicated feature names "
                f"{_examples(names_arr[names_arr.duplicated()].unique())}; make them unique."
            )
    else:
        var = pd.DataFrame(index=names_arr)
    if any(t is not None for t in types):
        var["feature_types"] = np.asarray(types, dtype=object)
    X = _to_table_matrix(aligned, sparse)
    return X, barcodes, var


# --------------------------------------------------------------------------------------------------
# positions
# --------------------------------------------------------------------------------------------------
def _read_positions(positions: Any, regex: re.Pattern[str]) -> pd.DataFrame:
    """Normalise positions: index = barcode (str); array_row, array_col[, imagerow, imagecol, is_center].

    Accepted columns (case-insensitive): barcode (``barcode``/``barcodes``/``Position``/``spot``; else an
    ``index`` column; else the first unnamed column; else the frame's index), ``row``/``array_row`` and
    ``col``/``array_col`` — or ``x``/``y`` (soScope's variant), mapped to row/col by agreement with the
    barcodes — and optionally ``imagerow``/``imagecol`` (or ``pixel_x``/``pixel_y`` mapped like x/y) and
    ``is_center``.
    """
    if isinstance(positions, str | Path):
        path = Path(positions)
        if not path.exists():
            raise SoscopeInputError(f"positions file not found: {str(path)!r}.")
        df = pd.read_csv(path, sep=_csv_sep(path))
        src = path.name
    elif isinstance(positions, pd.DataFrame):
        df = positions.copy()
        src = "DataFrame"
    else:
        raise SoscopeInputError(
            f"positions must be a CSV path or a DataFrame (barcode,row,col[,imagerow,imagecol]), "
            f"got {type(positions).__name__}."
        )
    df = df.loc[:, [c for c in df.columns if not str(c).startswith("Unnamed:") or c == df.columns[0]]]

    bc = _find_column(df, _BARCODE_COLUMNS)
    if bc is None and str(df.columns[0]).startswith("Unnamed:"):
        bc = df.columns[0]
    if bc is None:
        bc = _find_column(df, ("index",))
    bc_values = df[bc] if bc is not None else pd.Series(df.index, index=df.index)
    barcodes = bc_values.astype(str).to_numpy(dtype=object)
    df = df.drop(columns=[c for c in df.columns if str(c).startswith("Unnamed:")], errors="ignore")

    p_row, p_col = _parse_barcodes(barcodes, regex)
    parsed_ok = np.mean(~np.isnan(p_row)) if len(p_row) else 0.0

    r_col, c_col = _find_column(df, _ROW_COLUMNS), _find_column(df, _COL_COLUMNS)
    ir_col, ic_col = _find_column(df, _IMAGEROW_COLUMNS), _find_column(df, _IMAGECOL_COLUMNS)
    x_col, y_col = _find_column(df, ("x",)), _find_column(df, ("y",))
    px_col, py_col = _find_column(df, ("pixel_x",)), _find_column(df, ("pixel_y",))

    if r_col is not None and c_col is not None:
        row, col = df[r_col].to_numpy(dtype=float), df[c_col].to_numpy(dtype=float)
        x_is_row = None
    elif x_col is not None and y_col is not None:
        xv, yv = df[x_col].to_numpy(dtype=float), df[y_col].to_numpy(dtype=float)
        ok = ~np.isnan(p_row)
        if parsed_ok > 0.5 and np.all(xv[ok] == p_row[ok]) and np.all(yv[ok] == p_col[ok]):
            x_is_row = True  # soScope's x3 variant: x = first barcode component = row
        elif parsed_ok > 0.5 and np.all(xv[ok] == p_col[ok]) and np.all(yv[ok] == p_row[ok]):
            x_is_row = False
        elif parsed_ok > 0.5:
            raise SoscopeInputError(
                f"positions ({src}): columns x/y agree neither with the barcodes' (row, col) nor with "
                "(col, row). Give explicit 'row' and 'col' columns."
            )
        else:
            x_is_row = False  # plain convention: x = column, y = row
        row, col = (xv, yv) if x_is_row else (yv, xv)
    elif parsed_ok == 1.0:
        row, col, x_is_row = p_row, p_col, None
    else:
        raise SoscopeInputError(
            f"positions ({src}) has no 'row'/'col' (or 'x'/'y') columns and its barcodes do not parse as "
            f"'R{_sep_of(regex)}C'; columns are {list(map(str, df.columns))}."
        )

    out = pd.DataFrame(
        {"array_row": _as_int_if_integral(row), "array_col": _as_int_if_integral(col)},
        index=pd.Index(barcodes, dtype=object, name=None),
    )
    if ir_col is not None and ic_col is not None:
        out["imagerow"] = df[ir_col].to_numpy(dtype=float)
        out["imagecol"] = df[ic_col].to_numpy(dtype=float)
    elif px_col is not None and py_col is not None and x_is_row is not None:
        pxv, pyv = df[px_col].to_numpy(dtype=float), df[py_col].to_numpy(dtype=float)
        out["imagerow"], out["imagecol"] = (pxv, pyv) if x_is_row else (pyv, pxv)
    ctr = _find_column(df, ("is_center",))
    if ctr is not None:
        out["is_center"] = df[ctr].to_numpy()
    if out[["array_row", "array_col"]].isna().to_numpy().any():
        raise SoscopeInputError(f"positions ({src}): missing row/col values.")
    if out.index.has_duplicates:
        raise SoscopeInputError(
            f"positions ({src}): duplicated barcodes {_examples(out.index[out.index.duplicated()].unique())}."
        )
    return out


# --------------------------------------------------------------------------------------------------
# geometry, image, assembly
# --------------------------------------------------------------------------------------------------
def _is_hex_offset(row: np.ndarray, col: np.ndarray) -> bool:
    """Visium-style offset coordinates: (row + col) has one parity for every spot, both col parities occur."""
    row = np.asarray(row)
    col = np.asarray(col)
    if len(row) < 3 or not (np.issubdtype(row.dtype, np.integer) and np.issubdtype(col.dtype, np.integer)):
        return False
    parity = (row + col) % 2
    return bool(np.all(parity == parity[0]) and len(np.unique(col % 2)) == 2 and len(np.unique(row % 2)) == 2)


def _centres(
    row: np.ndarray, col: np.ndarray, pitch: float, hex_layout: bool
) -> tuple[np.ndarray, np.ndarray]:
    row = np.asarray(row, dtype=float)
    col = np.asarray(col, dtype=float)
    if hex_layout:
        # offset coordinates: neighbours in a row are 2 columns apart, rows are sqrt(3)/2 pitch apart
        return col * pitch / 2.0, row * pitch * np.sqrt(3.0) / 2.0
    return col * pitch, row * pitch


def _load_image(image: Any) -> np.ndarray:
    """Image as a (c, y, x) array from a path (jpg/png/tif...) or an ndarray ((y,x), (y,x,c) or (c,y,x))."""
    if isinstance(image, str | Path):
        path = Path(image)
        if not path.exists():
            raise SoscopeInputError(f"image file not found: {str(path)!r}.")
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            arr = tifffile.imread(path)
        else:
            from PIL import Image

            old = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = None  # whole-slide H&E images exceed PIL's default guard
            try:
                with Image.open(path) as im:
                    if im.mode not in ("L", "RGB", "RGBA", "I;16", "I", "F"):
                        im = im.convert("RGB")
                    arr = np.asarray(im)
            finally:
                Image.MAX_IMAGE_PIXELS = old
    elif isinstance(image, np.ndarray) or hasattr(image, "__array__"):
        arr = np.asarray(image)
    else:
        raise SoscopeInputError(f"image must be a file path or an array, got {type(image).__name__}.")
    if arr.ndim == 2:
        return arr[None]
    if arr.ndim == 3:
        if arr.shape[-1] <= 4 and arr.shape[0] > 4:
            return np.moveaxis(arr, -1, 0)
        return arr
    raise SoscopeInputError(f"image must be 2-D or 3-D, got shape {arr.shape}.")


def _image_transformation(image_transform: Any):
    """Turn a user transform (spatialdata transformation, 3x3 / 2x3 matrix, or scalar µm-per-px) into one."""
    from spatialdata.transformations import Affine, BaseTransformation, Scale

    if isinstance(image_transform, BaseTransformation):
        return image_transform
    if np.isscalar(image_transform):
        s = float(image_transform)
        if not s > 0:
            raise SoscopeInputError(f"image_transform as a scale must be > 0 µm per pixel, got {s}.")
        return Scale([s, s], axes=("x", "y"))
    m = np.asarray(image_transform, dtype=float)
    if m.shape == (2, 3):
        m = np.vstack([m, [0.0, 0.0, 1.0]])
    if m.shape != (3, 3):
        raise SoscopeInputError(
            "image_transform must be a spatialdata transformation, a scalar (µm per pixel) or a 3x3 / 2x3 "
            f"affine matrix mapping image (x, y) pixels to µm; got shape {m.shape}."
        )
    return Affine(m, input_axes=("x", "y"), output_axes=("x", "y"))


def _fit_image_affine(imagecol: np.ndarray, imagerow: np.ndarray, x_um: np.ndarray, y_um: np.ndarray):
    """Fit a least-squares affine from image pixels (x=imagecol, y=imagerow) to µm: (3x3 matrix, rmse µm)."""
    A = np.column_stack([imagecol, imagerow, np.ones_like(imagecol)])
    ok = np.all(np.isfinite(A), axis=1) & np.isfinite(x_um) & np.isfinite(y_um)
    if ok.sum() < 3 or np.linalg.matrix_rank(A[ok]) < 3:
        raise SoscopeInputError(
            "Cannot fit the image transformation: positions need imagerow/imagecol for at least 3 spots not "
            "on one line. Pass image_transform=... instead."
        )
    B = np.column_stack([x_um, y_um])[ok]
    coef, *_ = np.linalg.lstsq(A[ok], B, rcond=None)  # (3, 2)
    resid = A[ok] @ coef - B
    rmse = float(np.sqrt(np.mean(np.sum(resid**2, axis=1))))
    matrix = np.vstack([coef.T, [0.0, 0.0, 1.0]])
    return matrix, rmse


def _parse_image_element(arr: np.ndarray, transformation):
    from spatialdata.models import Image2DModel

    kwargs: dict[str, Any] = {}
    longest = max(arr.shape[1:])
    if longest > MULTISCALE_MIN_SIDE:
        factors = []
        side = longest
        while side > 2 * 1024 and len(factors) < 5:
            factors.append(2)
            side //= 2
        kwargs["scale_factors"] = factors
    return Image2DModel.parse(
        arr,
        dims=("c", "y", "x"),
        transformations={"global": transformation},
        chunks=(arr.shape[0], 1024, 1024),
        **kwargs,
    )


def _assemble(
    X: Any,
    barcodes: pd.Index,
    var: pd.DataFrame,
    pos: pd.DataFrame,
    *,
    pitch_um: float,
    geometry: str,
    hex_layout: bool,
    footprint_um: float,
    image: Any,
    image_transform: Any,
    reader: str,
) -> SpatialData:
    import anndata as ad
    import geopandas as gpd
    import shapely
    from spatialdata import SpatialData
    from spatialdata.models import ShapesModel, TableModel
    from spatialdata.transformations import Identity

    n = len(barcodes)
    row = pos["array_row"].to_numpy()
    col = pos["array_col"].to_numpy()
    cx, cy = _centres(row, col, pitch_um, hex_layout)
    index = pd.RangeIndex(n)

    if geometry == "square":
        h = footprint_um / 2.0
        geoms = shapely.box(cx - h, cy - h, cx + h, cy + h, ccw=True)
        gdf = gpd.GeoDataFrame(geometry=geoms, index=index)
        shapes_key = "pixels"
    else:
        gdf = gpd.GeoDataFrame(
            {"radius": np.full(n, footprint_um / 2.0)}, geometry=shapely.points(cx, cy), index=index
        )
        shapes_key = "spots"
    shapes = ShapesModel.parse(gdf, transformations={"global": Identity()})

    obs = pd.DataFrame(index=pd.Index(barcodes.to_numpy(dtype=object), dtype=object))
    obs["barcode"] = barcodes.to_numpy(dtype=object)
    for c in pos.columns:
        obs[c] = pos[c].to_numpy()
    obs["region"] = pd.Categorical([shapes_key] * n)
    obs["spot_id"] = np.arange(n, dtype=np.int64)
    adata = ad.AnnData(X=X, obs=obs, var=var)
    meta: dict[str, Any] = {
        "reader": reader,
        "pitch_um": float(pitch_um),
        "geometry": geometry,
        "lattice": "hex" if hex_layout else "square",
        "footprint_um": float(footprint_um),
    }

    images = {}
    if image is not None:
        arr = _load_image(image)
        if image_transform is not None:
            transformation = _image_transformation(image_transform)
        elif "imagerow" in pos.columns and "imagecol" in pos.columns:
            from spatialdata.transformations import Affine

            matrix, rmse = _fit_image_affine(
                pos["imagecol"].to_numpy(dtype=float), pos["imagerow"].to_numpy(dtype=float), cx, cy
            )
            if rmse > 0.25 * pitch_um:
                warnings.warn(
                    f"The image-to-µm fit from imagerow/imagecol leaves an RMS error of {rmse:.2f} µm "
                    f"(pitch {pitch_um} µm): the pixel positions may not be linear in row/col.",
                    UserWarning,
                    stacklevel=3,
                )
            transformation = Affine(matrix, input_axes=("x", "y"), output_axes=("x", "y"))
            meta["image_fit_rmse_um"] = rmse
        else:
            raise SoscopeInputError(
                "An image was given but nothing places it: pass image_transform= (an affine / µm-per-pixel "
                "scale) or positions with imagerow/imagecol columns."
            )
        images["image"] = _parse_image_element(arr, transformation)

    adata.uns["soscope_reader"] = meta
    table = TableModel.parse(adata, region=shapes_key, region_key="region", instance_key="spot_id")
    return SpatialData(images=images, shapes={shapes_key: shapes}, tables={"table": table})


def _check_pitch(pitch_um: Any, name: str = "pitch_um") -> float:
    try:
        p = float(pitch_um)
    except (TypeError, ValueError):
        raise SoscopeInputError(f"{name} must be a positive number of µm, got {pitch_um!r}.") from None
    if not np.isfinite(p) or p <= 0:
        raise SoscopeInputError(f"{name} must be a positive number of µm, got {pitch_um!r}.")
    return p


def _positions_for(
    barcodes: pd.Index, pos: pd.DataFrame | None, regex: re.Pattern[str], what: str
) -> pd.DataFrame:
    """Rows of ``pos`` for ``barcodes`` (in that order), or row/col parsed from the barcodes."""
    if pos is not None:
        missing = barcodes[~barcodes.isin(pos.index)]
        if len(missing):
            raise SoscopeInputError(
                f"{len(missing)} of {len(barcodes)} barcodes of the counts are absent from positions "
                f"(e.g. {_examples(missing)}); positions' barcodes look like {_examples(pos.index)}."
            )
        return pos.loc[barcodes]
    row, col = _parse_barcodes(barcodes, regex)
    bad = np.isnan(row) | np.isnan(col)
    if bad.any():
        raise SoscopeInputError(
            f"{int(bad.sum())} barcodes of the {what} do not parse as 'ROW{_sep_of(regex)}COL' "
            f"(e.g. {_examples(barcodes[bad])}). Set barcode_sep= or pass positions= (barcode,row,col)."
        )
    return pd.DataFrame(
        {"array_row": row.astype(np.int64), "array_col": col.astype(np.int64)},
        index=pd.Index(barcodes.to_numpy(dtype=object), dtype=object),
    )


# --------------------------------------------------------------------------------------------------
# public readers
# --------------------------------------------------------------------------------------------------
def read_dbit(
    counts: Any,
    *,
    pitch_um: float,
    positions: PathLike | pd.DataFrame | None = None,
    barcode_sep: str = "x",
    image: PathLike | np.ndarray | None = None,
    image_transform: Any = None,
    modality: str | None = None,
    transpose: bool | Literal["auto"] = "auto",
    pixel_size_um: float | None = None,
    sparse: bool | Literal["auto"] = "auto",
) -> SpatialData:
    """Read DBiT-family data (DBiT-seq, spatial-CUT&Tag, spatial-ATAC(-RNA)-seq, spatial-CITE-seq).

    Parameters
    ----------
    counts
        Pixel-by-feature counts: a CSV/TSV path (``.gz`` ok), an ``.h5ad`` path, a DataFrame or an AnnData;
        or a dict ``{modality: counts}`` for several matrices measured on the same pixels, e.g.
        ``{"Antibody Capture": proteins, "Gene Expression": rna}`` — they become one table whose
        ``var["feature_types"]`` names each feature's modality. Pixels are named by barcodes ``"RxC"``
        (grid row, ``barcode_sep``, grid column), either as the row labels or as the column labels
        (see ``transpose``), or by any labels listed in ``positions``.
    pitch_um
        Centre-to-centre distance of neighbouring pixels in µm (the microfluidic channel pitch).
    positions
        Optional CSV path or DataFrame with columns ``barcode, row, col`` and optionally ``imagerow,
        imagecol`` (image pixel of each spot centre) and ``is_center``. When given, it locates the pixels
        (barcodes then need not be ``"RxC"``); extra rows (pixels without counts) are ignored.
    barcode_sep
        Separator between row and column in barcodes (``"x"`` for ``"12x34"``).
    image
        Optional histology image: a path (jpg / png / tif) or an array ``(y, x)``, ``(y, x, c)`` or
        ``(c, y, x)``; stored as the image element ``"image"`` (multiscale above 4096 px).
    image_transform
        How image pixels map to µm: a spatialdata transformation, a 3x3 (or 2x3) affine matrix acting on
        ``(x_px, y_px, 1)``, or a scalar (µm per pixel). Default: a least-squares affine fit of the
        positions' ``imagecol, imagerow`` to the pixel centres in µm, so the image and the pixels align
        (the RMS residual is kept in ``table.uns["soscope_reader"]["image_fit_rmse_um"]``).
    modality
        Name of the single matrix's modality (fills ``var["feature_types"]``), e.g. ``"Peaks"``.
    transpose
        ``"auto"`` (default) finds the barcodes on the rows or on the columns; ``True`` / ``False`` forces
        the orientation (``True``: features are rows).
    pixel_size_um
        Side of the measured square footprint; default ``pitch_um`` (squares tile the grid). Set it smaller
        than the pitch when the chip's channels are separated by walls that were not measured.
    sparse
        ``"auto"`` stores ``X`` as CSR when fewer than 30% of entries are non-zero, else dense; ``True`` /
        ``False`` force it. Values are stored as float32.

    Returns
    -------
    SpatialData with shapes ``"pixels"`` (squares of side ``pixel_size_um`` centred at
    ``(col * pitch_um, row * pitch_um)``, coordinate system ``"global"``, Identity), table ``"table"``
    annotating them (region ``"pixels"``, region_key ``"region"``, instance_key ``"spot_id"``; obs
    ``barcode``, ``array_row``, ``array_col``) and, with ``image``, the image ``"image"``.

    Raises
    ------
    SoscopeInputError
        Unparseable barcodes, barcodes that differ between matrices or are absent from ``positions``,
        non-numeric counts, an image without a way to place it, bad arguments.

    """
    pitch = _check_pitch(pitch_um)
    footprint = pitch if pixel_size_um is None else _check_pitch(pixel_size_um, "pixel_size_um")
    regex = _barcode_regex(barcode_sep)
    pos = _read_positions(positions, regex) if positions is not None else None
    X, barcodes, var = _collect_counts(
        counts,
        modality=modality,
        transpose=transpose,
        regex=regex,
        known=pos.index if pos is not None else None,
        sparse=sparse,
    )
    pos_rows = _positions_for(barcodes, pos, regex, "counts")
    return _assemble(
        X,
        barcodes,
        var,
        pos_rows,
        pitch_um=pitch,
        geometry="square",
        hex_layout=False,
        footprint_um=footprint,
        image=image,
        image_transform=image_transform,
        reader="read_dbit",
    )


_SOSCOPE_COUNT_FILES = ("reordered_count.csv", "original_count.csv", "count.csv", "counts.csv")
_SOSCOPE_POSITION_FILES = (
    "position_with_center.csv",
    "reordered_position_with_center.csv",
    "position.csv",
    "positions.csv",
)


def _resolve(folder: Path | None, name: Any) -> Any:
    if isinstance(name, str | Path) and folder is not None and not Path(name).is_absolute():
        return folder / name
    return name


def read_soscope_layout(
    folder_or_paths: PathLike | Mapping[str, Any],
    *,
    counts: Any = None,
    positions: Any = None,
    pitch_um: float | None = None,
    geometry: Literal["auto", "square", "circle"] = "auto",
    spot_diameter_um: float | None = None,
    modality: str | None = None,
    image: PathLike | np.ndarray | None = None,
    image_transform: Any = None,
    barcode_sep: str = "x",
    sparse: bool | Literal["auto"] = "auto",
) -> SpatialData:
    """Read the preprocessed CSV layout of the published soScope code (``deng-ai-lab/soScope``).

    That layout is a folder with spot-by-feature count CSVs (spots as rows, indexed by a barcode such as
    ``"45x44"`` or by an integer ``index``) and a positions CSV (``position_with_center.csv``: ``index,
    barcode, row, col, imagerow, imagecol, is_center``; the ``x3/`` variant has ``x, y, pixel_x, pixel_y``
    where ``x`` is the barcode's first component, the row). Spots, counts and positions are reproduced
    exactly: the table's rows follow the counts CSV, ``X`` holds its values, obs ``array_row`` /
    ``array_col`` / ``imagerow`` / ``imagecol`` / ``is_center`` the positions' values.

    Parameters
    ----------
    folder_or_paths
        The folder, or a mapping with keys ``"counts"`` and ``"positions"`` (paths or DataFrames).
    counts
        File name in the folder (or path, DataFrame, AnnData), or a dict ``{modality: file}`` for several
        matrices (joined into one table with ``var["feature_types"]``). Default: the first of
        ``reordered_count.csv``, ``original_count.csv``, ``count.csv``, ``counts.csv`` found.
    positions
        File name / path / DataFrame. Default: the first of ``position_with_center.csv``,
        ``reordered_position_with_center.csv``, ``position.csv``, ``positions.csv`` found.
    pitch_um
        Centre-to-centre distance of neighbouring spots in µm. Required for square grids (e.g. 20 for a
        20-µm DBiT chip); for hexagonal (Visium-like) layouts the default is 100 (Visium).
    geometry
        ``"auto"``: circles when the row/col coordinates have Visium's hexagonal offset pattern (every
        spot has the same parity of row + col, and both column parities occur), squares otherwise.
        ``"square"`` / ``"circle"`` force the shape. Hexagonal offsets place spots at
        ``x = col * pitch / 2, y = row * pitch * sqrt(3) / 2``; otherwise at ``(col * pitch, row * pitch)``.
    spot_diameter_um
        Circle diameter; default ``0.55 * pitch_um`` (Visium: 55 µm spots at 100 µm). For squares, the
        square's side (default ``pitch_um``).
    modality
        Modality of a single counts matrix (``var["feature_types"]``).
    image, image_transform
        As in :func:`read_dbit` (default transform: least-squares fit of imagerow/imagecol).
    barcode_sep
        Separator of ``"RxC"`` barcodes.
    sparse
        As in :func:`read_dbit`.

    Returns
    -------
    SpatialData with shapes ``"pixels"`` (squares) or ``"spots"`` (circles), table ``"table"`` annotating
    them, and ``"image"`` when given.

    """
    folder: Path | None
    if isinstance(folder_or_paths, Mapping):
        folder = None
        unknown = set(folder_or_paths) - {"counts", "positions"}
        if unknown:
            raise SoscopeInputError(
                f"folder_or_paths as a mapping takes keys 'counts' and 'positions', got {sorted(unknown)}."
            )
        counts = folder_or_paths.get("counts", counts)
        positions = folder_or_paths.get("positions", positions)
    else:
        folder = Path(folder_or_paths)
        if not folder.is_dir():
            raise SoscopeInputError(f"Not a folder: {str(folder)!r}.")

    def pick(default_names: tuple[str, ...], what: str) -> Path:
        if folder is None:
            raise SoscopeInputError(f"Pass {what}= (a path or DataFrame) when no folder is given.")
        for name in default_names:
            if (folder / name).exists():
                return folder / name
        csvs = sorted(p.name for p in folder.glob("*.csv"))
        raise SoscopeInputError(f"No {what} file found in {str(folder)!r}; set {what}= to one of {csvs}.")

    if counts is None:
        counts = pick(_SOSCOPE_COUNT_FILES, "counts")
    if positions is None:
        positions = pick(_SOSCOPE_POSITION_FILES, "positions")
    if isinstance(counts, Mapping):
        counts = {k: _resolve(folder, v) for k, v in counts.items()}
    else:
        counts = _resolve(folder, counts)
    positions = _resolve(folder, positions)

    regex = _barcode_regex(barcode_sep)
    pos = _read_positions(positions, regex)
    X, barcodes, var = _collect_counts(
        counts, modality=modality, transpose=False, regex=regex, known=pos.index, sparse=sparse
    )
    pos_rows = _positions_for(barcodes, pos, regex, "counts")

    hex_layout = _is_hex_offset(pos_rows["array_row"].to_numpy(), pos_rows["array_col"].to_numpy())
    if geometry == "auto":
        geom = "circle" if hex_layout else "square"
    elif geometry in ("square", "circle"):
        geom = geometry
    else:
        raise SoscopeInputError(f"geometry must be 'auto', 'square' or 'circle', got {geometry!r}.")
    if pitch_um is None:
        if not hex_layout:
            raise SoscopeInputError(
                "pitch_um is required for square grids (the centre-to-centre distance in µm, e.g. 20 for a "
                "20-µm DBiT chip); only hexagonal Visium-like layouts default to 100 µm."
            )
        pitch_um = 100.0
    pitch = _check_pitch(pitch_um)
    if spot_diameter_um is None:
        footprint = 0.55 * pitch if geom == "circle" else pitch
    else:
        footprint = _check_pitch(spot_diameter_um, "spot_diameter_um")
    return _assemble(
        X,
        barcodes,
        var,
        pos_rows,
        pitch_um=pitch,
        geometry=geom,
        hex_layout=hex_layout,
        footprint_um=footprint,
        image=image,
        image_transform=image_transform,
        reader="read_soscope_layout",
    )
