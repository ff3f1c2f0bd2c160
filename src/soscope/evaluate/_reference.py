"""Single-cell references built from in-situ cells, and scoring of predicted cell-type abundances.

Real in-situ data (MERFISH, CosMx, VeraFISH) carries cells but no cell-type annotation. To benchmark an
enhancement guided by a paired single-cell reference (``soscope.enhance(sdata, reference=ref,
cell_type_key=...)``), the reference and the truth need types that agree: :func:`reference_from_cells`
clusters some cells into types (the reference) and gives every other cell the type of the nearest type
centroid, so the truth's cells (:func:`soscope.evaluate.pseudo_spots` with ``cell_type_key=``) carry the
same type names without being part of the reference. :func:`score_cell_types` then compares a predicted
per-sub-spot abundance of each type with the true fractions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .._errors import SoscopeInputError
from ..io import match_instances
from ._domains import _kmeans, _need
from ._metrics import pearson_per_feature, spearman_per_feature
from ._score import _keys

__all__ = ["reference_from_cells", "score_cell_types", "REFERENCE_METHODS", "REFERENCE_K_RANGE"]

#: clustering methods of :func:`reference_from_cells`
REFERENCE_METHODS = ("kmeans", "leiden")
#: numbers of types :func:`reference_from_cells` chooses from (by silhouette) when ``n_types`` is None
REFERENCE_K_RANGE = (3, 8)


def _counts(cells: Any, layer: str | None) -> sp.csr_matrix:
    if layer is not None and layer not in cells.layers:
        raise SoscopeInputError(f"`cells` has no layer {layer!r}; layers: {list(cells.layers)}.")
    x = cells.layers[layer] if layer is not None else cells.X
    if x is None:
        raise SoscopeInputError("`cells` has no X: give the cells' counts in X or in `layer=`.")
    x = sp.csr_matrix(x, dtype=np.float64)
    if x.nnz and (not np.isfinite(x.data).all() or x.data.min() < 0):
        raise SoscopeInputError(
            "The cells' counts must be finite and non-negative (raw counts, not log-normalised values)."
        )
    return x


def _log_normalise(x: sp.csr_matrix, target_sum: float) -> sp.csr_matrix:
    """Rows scaled to ``target_sum`` and ``log1p`` (scanpy's normalize_total + log1p), kept sparse."""
    total = np.asarray(x.sum(axis=1)).ravel()
    scale = np.divide(target_sum, total, out=np.zeros_like(total), where=total > 0)
    out = sp.diags(scale) @ x
    out = sp.csr_matrix(out)
    out.data = np.log1p(out.data)
    return out


def _exclude_mask(exclude: Any, n: int) -> np.ndarray:
    if exclude is None:
        return np.zeros(n, dtype=bool)
    mask = np.asarray(exclude)
    if mask.dtype != bool:
        raise SoscopeInputError(
            f"`exclude` must be a boolean mask with one value per cell; got dtype {mask.dtype}."
        )
    if mask.shape != (n,):
        raise SoscopeInputError(f"`exclude` has shape {mask.shape}; the cells need a mask of shape ({n},).")
    return mask


def reference_from_cells(
    cells: Any,
    *,
    n_types: int | None = None,
    cell_type_key: str = "cell_type",
    exclude: Any = None,
    method: str = "kmeans",
    layer: str | None = None,
    k_range: tuple[int, int] = REFERENCE_K_RANGE,
    n_pcs: int = 15,
    resolution: float = 1.0,
    n_neighbors: int = 15,
    min_counts: float = 1.0,
    min_type_size: int = 5,
    seed: int = 0,
):
    """Cell types by clustering in-situ cells: a single-cell reference, and a type for every cell.

    The cells that are not excluded (and have at least ``min_counts`` counts) are normalised to their
    median total count, ``log1p``-transformed, reduced by PCA (scanpy, seeded) and clustered: k-means with
    ``n_types`` clusters (or the number in ``k_range`` with the highest silhouette among those whose
    smallest type has ``min_type_size`` cells), or leiden. Excluded
    cells are projected into the same principal components and take the type of the nearest type centroid,
    so cells kept out of the reference (e.g. the ones a benchmark scores) still carry a type of the same
    set.

    Parameters
    ----------
    cells
        AnnData of cells × genes with raw counts in ``X`` (or ``layer``).
    n_types
        Number of types for k-means; ``None`` chooses it by silhouette over ``k_range``. Not used by
        leiden (its ``resolution`` decides).
    cell_type_key
        obs column written into ``cells`` (every cell) and into the returned reference.
    exclude
        Boolean mask, one value per cell: cells kept out of the reference and out of the clustering; they
        are typed by the nearest centroid. Default: none excluded.
    method
        ``"kmeans"`` (seeded, ``n_init=10``) or ``"leiden"`` (scanpy; needs python-igraph).
    layer
        Layer holding the counts (default ``X``); the reference's ``X`` is taken from it.
    k_range
        Smallest and largest number of types tried when ``n_types`` is None (k-means).
    n_pcs
        Principal components (fewer when there are fewer cells or genes).
    resolution, n_neighbors
        Leiden resolution; neighbours of its kNN graph.
    min_counts
        Cells with fewer counts carry no expression to type: they get no type (NaN) and stay out of the
        reference.
    min_type_size
        When ``n_types`` is None, a ``k`` whose k-means leaves a type with fewer cells is not chosen: on
        few, sparse cells the silhouette otherwise favours splitting off one or two outlying cells as a
        "type". When no ``k`` qualifies, the one whose smallest type is largest is used.
    seed
        Seed of PCA, k-means, the silhouette's subsample and leiden.

    Returns
    -------
    The reference: an AnnData of the cells used (not excluded, with counts) with their raw counts in
    ``X``, ``var`` of the input, categorical ``obs[cell_type_key]`` (types ``"type_0"``, ``"type_1"``, ...)
    and ``uns["reference_from_cells"]`` (method, number of types, silhouette per ``k`` tried, seed, cells
    used, excluded and untyped, ``cell_type_key``).

    Also writes categorical ``cells.obs[cell_type_key]`` for EVERY cell (as scanpy's tools annotate their
    input): the cluster of the cells used, the nearest centroid's type for excluded ones, NaN for cells
    under ``min_counts``.

    Examples
    --------
    >>> left = cells.obs["x"].to_numpy() < 500
    >>> ref = soscope.evaluate.reference_from_cells(cells, exclude=~left)  # types from the left half
    >>> cells.obs["cell_type"]  # every cell typed, the right half by nearest centroid

    """
    import anndata as ad

    if not isinstance(cells, ad.AnnData):
        raise SoscopeInputError(f"`cells` must be an AnnData of cells × genes; got {type(cells).__name__}.")
    if method not in REFERENCE_METHODS:
        raise SoscopeInputError(f"Unknown `method={method!r}`; choose from {list(REFERENCE_METHODS)}.")
    if not isinstance(cell_type_key, str) or not cell_type_key:
        raise SoscopeInputError("`cell_type_key` must be a non-empty string (the obs column to write).")
    if method == "leiden" and n_types is not None:
        raise SoscopeInputError(
            "`n_types` sets the number of k-means clusters; leiden finds its own number (set `resolution=`), "
            "so pass n_types=None with method='leiden'."
        )
    if n_types is not None and (not isinstance(n_types, int | np.integer) or int(n_types) < 2):
        raise SoscopeInputError(f"`n_types` must be an integer of at least 2; got {n_types!r}.")
    lo, hi = (int(k) for k in k_range)
    if method == "kmeans" and n_types is None and not 2 <= lo <= hi:
        raise SoscopeInputError(f"`k_range` must be (low, high) with 2 <= low <= high; got {k_range}.")
    if cells.n_vars < 2:
        raise SoscopeInputError(f"`cells` has {cells.n_vars} gene(s); typing cells needs at least two.")
    x = _counts(cells, layer)
    excluded = _exclude_mask(exclude, cells.n_obs)
    total = np.asarray(x.sum(axis=1)).ravel()
    typed = total >= min_counts
    used = typed & ~excluded
    n_used = int(used.sum())
    need = int(n_types) if n_types is not None else (hi if method == "kmeans" else 2)
    if n_used <= need:
        raise SoscopeInputError(
            f"Only {n_used} cells are left for the reference (not excluded, at least {min_counts:g} counts): "
            f"too few for {need} types."
        )

    sc = _need("scanpy", "soscope.evaluate.reference_from_cells")
    target_sum = float(np.median(total[used]))
    z = _log_normalise(x, target_sum)
    a = ad.AnnData(X=z[used].astype(np.float32))
    n_comps = int(min(n_pcs, n_used - 1, cells.n_vars - 1))
    sc.pp.pca(a, n_comps=n_comps, random_state=seed)
    # the same projection for every cell: scanpy centres on the used cells' mean
    mean = np.asarray(z[used].mean(axis=0)).ravel()
    pcs = np.asarray(a.varm["PCs"], dtype=np.float64)
    rep_all = np.asarray(z @ pcs) - mean @ pcs
    rep = rep_all[used]

    silhouette: dict[int, float] = {}
    if method == "kmeans":
        if n_types is None:
            metrics = _need("sklearn.metrics", "soscope.evaluate.reference_from_cells")
            sample = int(min(n_used, 3000))  # the silhouette is quadratic in cells: a fixed subsample
            best, fallback = None, None
            for k in range(lo, min(hi, n_used - 1) + 1):
                codes = _kmeans(rep, k, seed)
                sizes = np.bincount(codes)
                if (sizes > 0).sum() < 2:
                    continue
                silhouette[k] = float(
                    metrics.silhouette_score(rep, codes, sample_size=sample, random_state=seed)
                )
                smallest = int(sizes[sizes > 0].min())
                if fallback is None or smallest > fallback[0]:
                    fallback = (smallest, codes)
                if smallest >= min_type_size and (best is None or silhouette[k] > silhouette[best[0]]):
                    best = (k, codes)
            if fallback is None:
                raise SoscopeInputError("The cells' profiles do not separate into two or more types.")
            codes = (best or fallback)[1]
        else:
            codes = _kmeans(rep, int(n_types), seed)
    else:
        from ._domains import _has_igraph

        if not _has_igraph():
            raise SoscopeInputError(
                "Leiden clustering needs python-igraph (scanpy's flavor='igraph'): `pip install igraph`, or "
                "use method='kmeans'."
            )
        a.obsm["X_rep"] = rep.astype(np.float32)
        sc.pp.neighbors(
            a,
            n_neighbors=int(min(n_neighbors, n_used - 1)),
            use_rep="X_rep",
            transformer="sklearn",  # exact neighbours; see soscope.evaluate.domains for why
            method="gauss",
            random_state=seed,
        )
        sc.tl.leiden(
            a, resolution=resolution, flavor="igraph", n_iterations=2, directed=False, random_state=seed
        )
        codes = a.obs["leiden"].astype(int).to_numpy()
    # renumber by size (largest first): names then do not depend on the clustering's arbitrary numbering
    uniq, sizes = np.unique(codes, return_counts=True)
    remap = np.empty(int(uniq.max()) + 1, dtype=np.int64)
    remap[uniq[np.argsort(-sizes, kind="stable")]] = np.arange(len(uniq))
    codes = remap[codes]
    k = len(uniq)
    names = [f"type_{i}" for i in range(k)]

    centroids = np.vstack([rep[codes == i].mean(axis=0) for i in range(k)])
    all_codes = np.full(cells.n_obs, -1, dtype=np.int64)
    all_codes[used] = codes
    others = np.flatnonzero(typed & excluded)
    if len(others):
        r = rep_all[others]
        d2 = (r**2).sum(axis=1)[:, None] - 2.0 * r @ centroids.T + (centroids**2).sum(axis=1)[None]
        all_codes[others] = np.argmin(d2, axis=1)
    labels = pd.Categorical.from_codes(all_codes, categories=names)
    cells.obs[cell_type_key] = pd.Categorical(labels, categories=names)

    ref_x = cells.layers[layer] if layer is not None else cells.X
    ref_x = ref_x[np.flatnonzero(used)]
    ref = ad.AnnData(
        X=ref_x.copy() if hasattr(ref_x, "copy") else np.array(ref_x),
        obs=pd.DataFrame(
            {cell_type_key: pd.Categorical(np.asarray(names)[codes], categories=names)},
            index=cells.obs_names[used],
        ),
        var=cells.var.copy(),
    )
    ref.uns["reference_from_cells"] = {
        "method": method,
        "cell_type_key": cell_type_key,
        "n_types": int(k),
        "cell_types": names,
        "silhouette": {str(kk): v for kk, v in silhouette.items()},
        "min_type_size": int(min_type_size),
        "n_pcs": int(n_comps),
        "target_sum": target_sum,
        "seed": int(seed),
        "n_cells": int(n_used),
        "n_excluded": int(excluded.sum()),
        "n_untyped": int((~typed).sum()),
    }
    return ref


# ------------------------------------------------------------------------------------------ scoring types
def _type_names(adata: Any, key: str, uns_path: Sequence[str], given: Sequence[str] | None, what: str):
    """Return ``(values (n, K) float64, names)`` of ``obsm[key]`` with its type names."""
    if key not in adata.obsm:
        raise SoscopeInputError(
            f"The {what} table has no obsm[{key!r}] (obsm: {list(adata.obsm)})"
            + (
                "; enhance with `reference=` to get cell-type abundances."
                if what == "enhanced"
                else "; build the truth with pseudo_spots(..., cell_type_key=...)."
            )
        )
    val = adata.obsm[key]
    names = None
    if isinstance(val, pd.DataFrame):
        names = [str(c) for c in val.columns]
        val = val.to_numpy()
    if given is not None:
        names = [str(n) for n in given]
    if names is None:
        node: Any = adata.uns
        for part in uns_path:
            node = node.get(part) if isinstance(node, dict) or hasattr(node, "get") else None
            if node is None:
                break
        if node is None:
            raise SoscopeInputError(
                f"The {what} table names no cell types: expected uns{''.join(f'[{p!r}]' for p in uns_path)} "
                f"(or a DataFrame in obsm[{key!r}], or pass the names)."
            )
        names = [str(n) for n in np.asarray(node).ravel()]
    val = val.toarray() if sp.issparse(val) else np.asarray(val, dtype=np.float64)
    if val.ndim != 2 or val.shape[1] != len(names):
        raise SoscopeInputError(
            f"obsm[{key!r}] of the {what} table has shape {val.shape} for {len(names)} type names."
        )
    if len(set(names)) != len(names):
        raise SoscopeInputError(f"The {what} table repeats cell-type names: {names}.")
    return val.astype(np.float64), names


def score_cell_types(
    enhanced: Any,
    truth: Any,
    *,
    abundance_key: str = "cell_type_abundance",
    fraction_key: str = "cell_type_fraction",
    cell_types: Sequence[str] | None = None,
) -> tuple[pd.DataFrame, dict]:
    """Score predicted cell-type abundances per sub-spot against the true type fractions.

    Rows are matched by ``(spot_id, subspot)`` as in :func:`soscope.evaluate.score`; types by name. Each
    sub-spot's predicted abundances (``enhanced.obsm[abundance_key]``, expected numbers of cells of each
    type) are divided by their sum, over every predicted type, to give fractions; the truth's fractions
    (``truth.obsm[fraction_key]``, from :func:`soscope.evaluate.pseudo_spots` with ``cell_type_key=``)
    are the shares of the typed cells whose centre lies in the sub-spot. Sub-spots without a typed cell
    (NaN truth rows) are skipped. A sub-spot predicted to hold no cell at all has no fractions: it gets
    equal fractions of every type (no information) and is counted in the summary.

    Parameters
    ----------
    enhanced
        Table with obs ``spot_id``, ``subspot`` and ``obsm[abundance_key]`` (e.g. ``table_soscope``
        written by ``soscope.enhance(..., reference=...)``); type names from
        ``uns["soscope"]["reference"]["cell_types"]``, ``cell_types=`` or a DataFrame's columns.
    truth
        Truth table with obs ``spot_id``, ``subspot`` and ``obsm[fraction_key]``, names in
        ``uns[fraction_key]["cell_types"]`` (or a DataFrame's columns).
    abundance_key, fraction_key
        The obsm keys of the prediction and of the truth.
    cell_types
        Names of the columns of ``obsm[abundance_key]`` when the enhanced table does not record them.

    Returns
    -------
    per_type
        One row per type present in both tables: ``pearson`` and ``spearman`` over the scored sub-spots
        between predicted and true fractions (NaN where either is constant), ``rmse`` of the fractions,
        ``true_mean`` and ``pred_mean`` (mean fractions).
    summary
        ``mean`` (``{"pearson", "spearman", "rmse"}``: means over the types, NaN ignored), ``n_subspots``
        (scored), ``n_matched`` (rows matched before skipping empty ones), ``cell_types`` (scored),
        ``only_in_truth`` and ``only_in_prediction`` (types named in one table only: not scored),
        ``n_no_abundance`` (scored sub-spots predicted to hold no cell).

    """
    pred_all, pred_names = _type_names(
        enhanced, abundance_key, ("soscope", "reference", "cell_types"), cell_types, "enhanced"
    )
    true_all, true_names = _type_names(truth, fraction_key, (fraction_key, "cell_types"), None, "truth")
    if pred_all.size and (not np.isfinite(pred_all).all() or pred_all.min() < 0):
        raise SoscopeInputError(f"obsm[{abundance_key!r}] must hold finite non-negative abundances.")
    t_keys = _keys(truth.obs, "truth")
    if t_keys.has_duplicates:
        raise SoscopeInputError("The truth table repeats (spot_id, subspot) pairs.")
    e_keys = _keys(enhanced.obs, "enhanced")
    if e_keys.has_duplicates:
        raise SoscopeInputError("The enhanced table repeats (spot_id, subspot) pairs.")
    pos = e_keys.get_indexer(t_keys)
    matched = np.flatnonzero(pos >= 0)
    rows = matched[np.isfinite(true_all[matched]).all(axis=1)]
    if len(rows) < 2:
        raise SoscopeInputError(
            f"Fewer than two sub-spots both match the enhanced table (by spot_id, subspot) and hold a typed "
            f"cell in the truth ({len(matched)} matched)."
        )
    # type names matched as they are, else as strings (as instance ids are)
    col = match_instances(pd.Index(pred_names), pd.Index(true_names))
    if not (col >= 0).any():
        raise SoscopeInputError(
            f"No cell type is named in both tables: prediction {pred_names[:8]}, truth {true_names[:8]}."
        )
    pred = pred_all[pos[rows]]
    tot = pred.sum(axis=1, keepdims=True)
    empty = tot[:, 0] <= 0
    frac = np.where(empty[:, None], 1.0 / pred.shape[1], pred / np.where(empty, 1.0, tot[:, 0])[:, None])
    scored = np.flatnonzero(col >= 0)
    p = frac[:, col[scored]]
    t = true_all[rows][:, scored]
    per_type = pd.DataFrame(
        {
            "pearson": pearson_per_feature(p, t),
            "spearman": spearman_per_feature(p, t),
            "rmse": np.sqrt(((p - t) ** 2).mean(axis=0)),
            "true_mean": t.mean(axis=0),
            "pred_mean": p.mean(axis=0),
        },
        index=pd.Index([true_names[i] for i in scored], name="cell_type"),
    )
    with np.errstate(all="ignore"):
        means = {
            m: float(np.nanmean(per_type[m])) if per_type[m].notna().any() else float("nan")
            for m in ("pearson", "spearman", "rmse")
        }
    summ = {
        "mean": means,
        "n_subspots": int(len(rows)),
        "n_matched": int(len(matched)),
        "cell_types": list(per_type.index),
        "only_in_truth": [true_names[i] for i in np.flatnonzero(col < 0)],
        "only_in_prediction": [n for j, n in enumerate(pred_names) if j not in set(col[scored].tolist())],
        "n_no_abundance": int(empty.sum()),
    }
    return per_type, summ
