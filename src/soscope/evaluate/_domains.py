"""Tissue domains (clustering scored by ARI / NMI) and known-marker contrast, at spot vs sub-spot resolution.

The published soScope is judged by biology as much as by per-gene correlation: better tissue-domain
identification and sharper known markers. Both are measured here against sub-spot truth (e.g. the
``cell_type`` column of :func:`soscope.datasets.synthetic`'s ``truth`` table), on the same footing for the
original spots and the enhanced sub-spots: a spot's cluster (or value) is given to each of its sub-spots, so
every resolution is scored on the same truth rows.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .._errors import SoscopeInputError
from ..io import layer_names
from ._score import _keys, _matrix, _resolve_features, _table

if TYPE_CHECKING:  # pragma: no cover
    from spatialdata import SpatialData

__all__ = ["cluster_truth", "domains", "markers", "DOMAIN_METHODS", "TRUTH_K_RANGE"]

logger = logging.getLogger(__name__)

#: clustering methods of :func:`domains`
DOMAIN_METHODS = ("auto", "leiden", "kmeans")
#: order of the resolutions in the results
_RESOLUTIONS = ("spot", "subspot", "truth")
#: numbers of domains :func:`cluster_truth` chooses from (by silhouette) when none is given
TRUTH_K_RANGE = (3, 8)


# --------------------------------------------------------------------------------------------- helpers
def _need(module: str, what: str) -> Any:
    """Import an optional analysis dependency, or say how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        pip = {"sklearn": "scikit-learn"}.get(module.split(".")[0], module.split(".")[0])
        raise SoscopeInputError(
            f"{what} needs {pip!r}, which is not installed: `pip install {pip}`."
        ) from err


def _has_igraph() -> bool:
    # scanpy's leiden (flavor="igraph") needs python-igraph; leidenalg alone is not enough
    return importlib.util.find_spec("igraph") is not None


def _truth_labels(t_truth, truth_domains: str | Sequence | pd.Series, truth: str) -> pd.Series:
    """Truth domain of each truth row (string labels; missing values stay NaN)."""
    if isinstance(truth_domains, str):
        if truth_domains not in t_truth.obs.columns:
            raise SoscopeInputError(
                f"Truth table {truth!r} has no obs column {truth_domains!r} (its columns: "
                f"{list(t_truth.obs.columns)}); set `truth_domains=` to the column with the domains."
            )
        labels = t_truth.obs[truth_domains]
    else:
        labels = pd.Series(np.asarray(truth_domains, dtype=object), index=t_truth.obs_names)
        if len(labels) != t_truth.n_obs:
            raise SoscopeInputError(
                f"`truth_domains` has {len(labels)} labels for the {t_truth.n_obs} rows of table {truth!r}."
            )
    out = pd.Series(labels.to_numpy(dtype=object), index=t_truth.obs_names, dtype=object)
    known = out.notna().to_numpy()
    out[known] = out[known].astype(str)  # compare labels as strings, whatever their dtype
    return out


def _spot_ids(t_spots, table: str) -> pd.Index:
    """Return the spot table's instance ids as strings (how truth and enhanced rows name their spot)."""
    attrs = t_spots.uns.get("spatialdata_attrs", {})
    key = attrs.get("instance_key")
    if key is None or key not in t_spots.obs:
        raise SoscopeInputError(f"Table {table!r} has no instance key column; parse it with TableModel.")
    ids = pd.Index(t_spots.obs[key].to_numpy()).astype(str)
    if ids.has_duplicates:
        raise SoscopeInputError(
            f"Table {table!r} repeats instance ids ({key!r}) across regions: spot ids must be unique to "
            "match sub-spots to their spot."
        )
    return ids


class _Rows:
    """Truth rows matched to the enhanced table (by ``(spot_id, subspot)``) and to their parent spot.

    The same matching as :func:`soscope.evaluate.score`: rows are compared as strings / integers, and only
    truth rows present in every table are used.
    """

    def __init__(self, sdata, truth: str, table: str, key_added: str | None, require_truth: bool = True):
        self.t_spots = _table(sdata, table, "spot table")
        self.enh_name = f"{table}_{key_added}" if key_added else None
        self.t_enh = (
            _table(
                sdata,
                self.enh_name,
                f"enhanced table for key_added={key_added!r}; run soscope.enhance first or set key_added",
            )
            if self.enh_name
            else None
        )
        self.t_truth = _table(sdata, truth, "truth") if (truth is not None or require_truth) else None
        self.spot_ids = _spot_ids(self.t_spots, table)
        self.enh_keys = None
        if self.t_enh is not None:
            self.enh_keys = _keys(self.t_enh.obs, self.enh_name)
            if self.enh_keys.has_duplicates:
                raise SoscopeInputError(
                    f"The enhanced table {self.enh_name!r} repeats (spot_id, subspot) pairs."
                )
        if self.t_truth is None:
            return
        truth_keys = _keys(self.t_truth.obs, truth)
        if truth_keys.has_duplicates:
            raise SoscopeInputError(
                f"Truth table {truth!r} has repeated (spot_id, subspot) pairs: spot ids must be unique "
                "across sections to match sub-spots."
            )
        self.pos_spot = self.spot_ids.get_indexer(truth_keys.get_level_values("spot_id"))
        ok = self.pos_spot >= 0
        self.pos_enh = None
        if self.enh_keys is not None:
            self.pos_enh = self.enh_keys.get_indexer(truth_keys)
            ok &= self.pos_enh >= 0
        self.rows = np.flatnonzero(ok)
        if len(self.rows) < 2:
            raise SoscopeInputError(
                f"Fewer than two rows of the truth table {truth!r} match the spot table {table!r}"
                + (f" and the enhanced table {self.enh_name!r}" if self.enh_name else "")
                + " (by spot_id, subspot): check that they come from the same spots."
            )


def _log_normalised(x: np.ndarray, normalize: bool, target_sum: float) -> np.ndarray:
    """``log1p`` of counts scaled to ``target_sum`` per row (as scanpy's normalize_total + log1p).

    The same fixed target for spots and sub-spots, so both resolutions live on one scale although a
    sub-spot holds a fraction of a spot's counts.
    """
    if not normalize:
        return x
    total = x.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        scaled = np.where(total > 0, x / np.where(total > 0, total, 1.0) * target_sum, 0.0)
    return np.log1p(np.maximum(scaled, 0.0))


def _embed(x: np.ndarray, *, n_pcs: int, normalize: bool, target_sum: float, seed: int) -> tuple[Any, int]:
    """Normalise, ``log1p`` and PCA (scanpy) the rows of ``x``.

    Returns an AnnData holding the representation (``obsm["X_pca"]``, or ``obsm["X_rep"]``: the centred
    values when there are too few rows or features for two components) and the number of components.
    """
    import anndata as ad

    sc = _need("scanpy", "soscope.evaluate.domains")
    a = ad.AnnData(X=_log_normalised(x, normalize, target_sum).astype(np.float32))
    n_comps = int(min(n_pcs, a.n_obs - 1, a.n_vars - 1))
    if n_comps >= 2:
        sc.pp.pca(a, n_comps=n_comps, random_state=seed)
    else:  # too few features or rows for a PCA: cluster the normalised values themselves
        a.obsm["X_rep"] = a.X - a.X.mean(axis=0, keepdims=True)
    return a, n_comps


def _kmeans(rep: np.ndarray, n_domains: int, seed: int) -> np.ndarray:
    cluster = _need("sklearn.cluster", "k-means domains")
    k = int(min(n_domains, len(rep)))
    return cluster.KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(rep)


def _cluster(
    x: np.ndarray,
    *,
    method: str,
    n_domains: int,
    resolution: float,
    n_pcs: int,
    n_neighbors: int,
    normalize: bool,
    target_sum: float,
    seed: int,
) -> np.ndarray:
    """Cluster the rows of ``x``: normalise, log1p, PCA (scanpy), then k-means or leiden. Integer labels."""
    a, n_comps = _embed(x, n_pcs=n_pcs, normalize=normalize, target_sum=target_sum, seed=seed)
    rep = a.obsm["X_pca"] if n_comps >= 2 else a.obsm["X_rep"]
    if method == "kmeans":
        return _kmeans(np.asarray(rep), n_domains, seed)
    sc = _need("scanpy", "soscope.evaluate.domains")
    sc.pp.neighbors(
        a,
        n_neighbors=int(min(n_neighbors, a.n_obs - 1)),
        use_rep="X_pca" if n_comps >= 2 else "X_rep",
        # exact neighbours (scikit-learn) at every size: scanpy's default above 4,096 rows, pynndescent, is
        # approximate, and with pynndescent >= 0.6 and scipy >= 1.15 scanpy < 1.12 fails on its sparse-array
        # output ("'csr_array' object has no attribute 'getnnz'")
        transformer="sklearn",
        # Gaussian-kernel connectivities: the UMAP weights (scanpy's default) cost a 10-15 s numba compile in
        # every fresh process, and leiden needs only a weighted kNN graph (tutorial 5 does the same)
        method="gauss",
        random_state=seed,
    )
    sc.tl.leiden(a, resolution=resolution, flavor="igraph", n_iterations=2, directed=False, random_state=seed)
    return a.obs["leiden"].astype(int).to_numpy()


def _resolve_method(method: str) -> str:
    if method not in DOMAIN_METHODS:
        raise SoscopeInputError(f"Unknown `method={method!r}`; choose from {list(DOMAIN_METHODS)}.")
    if method == "kmeans":
        return method
    if _has_igraph():
        return "leiden"
    if method == "leiden":
        raise SoscopeInputError(
            "Leiden clustering needs python-igraph (scanpy's flavor='igraph'): `pip install igraph`, or pass "
            "method='kmeans' with `n_domains=`."
        )
    logger.warning(
        "python-igraph is not installed, so leiden clustering is unavailable: domains fall back to k-means "
        "(method='kmeans'). Install it with `pip install igraph` for leiden."
    )
    return "kmeans"


def _labels(codes: np.ndarray, index: pd.Index) -> pd.Series:
    return pd.Series(pd.Categorical(codes.astype(int)), index=index, name="domain")


# ---------------------------------------------------------------------------------------------- domains
def domains(
    sdata: SpatialData,
    *,
    truth: str | None = "truth",
    truth_domains: str | Sequence | pd.Series = "cell_type",
    table: str = "table",
    key_added: str = "soscope",
    method: str = "auto",
    n_domains: int | None = None,
    resolution: float = 1.0,
    features: Sequence[str] | str | None = None,
    layer: str | None = None,
    n_pcs: int = 15,
    n_neighbors: int = 15,
    normalize: bool = True,
    target_sum: float = 1e4,
    seed: int = 0,
) -> tuple[pd.DataFrame, dict[str, pd.Series]]:
    """Cluster the enhanced sub-spots and the original spots into domains; score both against the truth.

    Each table is normalised to ``target_sum`` counts per row and ``log1p``-transformed, reduced by PCA
    (scanpy), then clustered by k-means or leiden. Both are scored against the truth domains at sub-spot
    resolution: each spot's cluster is given to each of its sub-spots.

    Parameters
    ----------
    sdata
        Holds the spot table ``table``, the enhanced table ``f"{table}_{key_added}"`` written by
        :func:`soscope.enhance`, and (for scores) the truth table.
    truth
        Truth table: one row per sub-spot with obs ``spot_id`` and ``subspot`` (e.g. from
        :func:`soscope.datasets.synthetic`); ``None`` clusters without scoring (scores are NaN).
    truth_domains
        The truth domains: an obs column of ``truth`` (default ``"cell_type"``: the dominant cell type of
        each sub-spot) or one label per truth row. Rows with a missing label are not scored.
    table
        The spot table (counts in ``X`` or ``layer``).
    key_added
        Suffix of the enhanced table.
    method
        ``"kmeans"`` (deterministic given ``seed``; needs ``n_domains``), ``"leiden"`` (scanpy, needs
        python-igraph) or ``"auto"``: leiden when python-igraph is installed, else k-means (with a logged
        warning).
    n_domains
        Clusters for k-means; default: the number of truth domains (required when ``truth=None``).
    resolution
        Leiden resolution.
    features
        Features to cluster on: ``None`` (all shared by the spot and enhanced tables), a list of names,
        or a boolean ``var`` column (e.g. ``"informative"``).
    layer
        Layer of ``table`` with the spot counts (default ``X``). The enhanced table uses ``X``.
    n_pcs, n_neighbors
        Principal components; neighbours of the leiden graph.
    normalize
        Scale rows to ``target_sum`` and ``log1p`` (counts). ``False`` for values already normalised
        (e.g. a Gaussian likelihood's table).
    target_sum
        Counts per row after normalisation, the same for spots and sub-spots.
    seed
        Seed of PCA, k-means and leiden.

    Returns
    -------
    scores
        Indexed by resolution (``"spot"``, ``"subspot"``); columns ``ari`` and ``nmi`` (scikit-learn's
        adjusted Rand index and normalised mutual information against the truth, over the truth rows
        matched in every table), ``n_clusters``, ``n_truth_domains``, ``n_scored`` (matched truth rows)
        and ``method`` (the one used).
    labels
        ``{"spot": ..., "subspot": ...}``: categorical cluster labels indexed like the spot table's and the
        enhanced table's ``obs_names`` (spots absent from the enhanced table are not clustered).

    Notes
    -----
    Cluster numbers are arbitrary; ARI and NMI do not depend on them. Spot ids must be unique across
    sections (as :func:`soscope.datasets.synthetic` makes them).

    """
    metrics = _need("sklearn.metrics", "soscope.evaluate.domains")
    used = _resolve_method(method)
    rows = _Rows(sdata, truth, table, key_added, require_truth=False)
    t_spots, t_enh = rows.t_spots, rows.t_enh
    if t_enh is None:
        raise SoscopeInputError(
            "`key_added` names no enhanced table: domains clusters the enhanced sub-spots."
        )
    if layer is not None and layer not in t_spots.layers:
        raise SoscopeInputError(f"Table {table!r} has no layer {layer!r}; layers: {layer_names(t_spots)}.")
    feats = _resolve_features(features, [t_spots, t_enh], [table, rows.enh_name])

    truth_lab = None
    if rows.t_truth is not None:
        truth_lab = _truth_labels(rows.t_truth, truth_domains, truth).to_numpy()
        scored = rows.rows[pd.notna(truth_lab[rows.rows])]
        if len(scored) < 2:
            raise SoscopeInputError(
                f"Fewer than two matched truth rows have a domain label ({truth_domains!r})."
            )
        n_truth = int(pd.Series(truth_lab[scored]).nunique())
    if used == "kmeans" and n_domains is None:
        if truth_lab is None:
            raise SoscopeInputError("method='kmeans' without a truth table needs `n_domains=`.")
        n_domains = n_truth
    if n_domains is not None and int(n_domains) < 2:
        raise SoscopeInputError(f"`n_domains` must be at least 2, got {n_domains}.")

    # spots: only those that were enhanced, so both resolutions cover the same tissue
    spot_rows = np.flatnonzero(rows.spot_ids.isin(rows.enh_keys.get_level_values("spot_id")))
    if len(spot_rows) < 3:
        raise SoscopeInputError(
            f"Fewer than three spots of table {table!r} appear in the enhanced table {rows.enh_name!r}."
        )
    kw = dict(
        method=used,
        n_domains=int(n_domains) if n_domains is not None else 0,
        resolution=float(resolution),
        n_pcs=int(n_pcs),
        n_neighbors=int(n_neighbors),
        normalize=normalize,
        target_sum=float(target_sum),
        seed=int(seed),
    )
    x_spots = _matrix(t_spots, layer, t_spots.var_names.get_indexer(feats))[spot_rows]
    x_enh = _matrix(t_enh, None, t_enh.var_names.get_indexer(feats))
    spot_codes = np.full(t_spots.n_obs, -1)
    spot_codes[spot_rows] = _cluster(x_spots, **kw)
    enh_codes = _cluster(x_enh, **kw)
    spot_series = _labels(spot_codes[spot_rows], t_spots.obs_names[spot_rows])
    labels = {"spot": spot_series, "subspot": _labels(enh_codes, t_enh.obs_names)}

    records = {}
    positions = {"spot": None, "subspot": None}
    if truth_lab is not None:
        positions = {"spot": rows.pos_spot, "subspot": rows.pos_enh}
    for res, codes in (("spot", spot_codes), ("subspot", enh_codes)):
        rec = {"ari": np.nan, "nmi": np.nan, "n_clusters": int(len(np.unique(codes[codes >= 0])))}
        if truth_lab is not None:
            pred = codes[positions[res][scored]]
            true = truth_lab[scored].astype(str)
            rec["ari"] = float(metrics.adjusted_rand_score(true, pred))
            rec["nmi"] = float(metrics.normalized_mutual_info_score(true, pred))
        rec.update(
            {
                "n_truth_domains": n_truth if truth_lab is not None else 0,
                "n_scored": int(len(scored)) if truth_lab is not None else 0,
                "method": used,
            }
        )
        records[res] = rec
    scores = pd.DataFrame.from_dict(records, orient="index")
    scores.index.name = "resolution"
    return scores, labels


# ----------------------------------------------------------------------------------------- truth domains
def cluster_truth(
    sdata: SpatialData,
    truth: str = "truth",
    *,
    n_domains: int | None = None,
    k_range: tuple[int, int] = TRUTH_K_RANGE,
    features: Sequence[str] | str | None = None,
    min_counts: float = 1.0,
    n_pcs: int = 15,
    normalize: bool = True,
    target_sum: float = 1e4,
    seed: int = 0,
) -> pd.Series:
    """Truth domains from the true sub-spot profiles themselves, for data without annotated domains.

    Real high-resolution data (MERFISH, VeraFISH pseudo-spots) carries no cell-type or region annotation
    per sub-spot, so :func:`domains` and :func:`markers` have no domains to score against. This defines
    them reproducibly from the truth: each truth row is normalised to ``target_sum`` counts and
    ``log1p``-transformed, reduced by PCA (scanpy, seeded) and clustered by seeded k-means. The number of
    domains is ``n_domains`` or, by a fixed rule, the ``k`` in ``k_range`` (inclusive) with the highest
    silhouette (Euclidean, in PCA space; ties go to the smaller ``k``).

    Parameters
    ----------
    sdata
        Holds the truth table (one row per sub-spot, e.g. from :func:`soscope.evaluate.pseudo_spots`).
    truth
        Name of the truth table.
    n_domains
        Number of domains; ``None`` chooses it by silhouette over ``k_range``.
    k_range
        Smallest and largest number of domains tried when ``n_domains`` is ``None``.
    features
        Features to cluster on: ``None`` (all), a list of names or a boolean ``var`` column.
    min_counts
        Rows with fewer total counts (over ``features``) get no domain (NaN): an empty sub-spot has no
        profile to assign, and :func:`domains` / :func:`markers` leave such rows unscored.
    n_pcs
        Principal components.
    normalize, target_sum
        Scale rows to ``target_sum`` and ``log1p`` (``False`` for values already normalised).
    seed
        Seed of PCA, k-means and the silhouette's subsample.

    Returns
    -------
    Domain labels (strings ``"0"``, ``"1"``, ...; NaN for rows under ``min_counts``) indexed like the truth
    table's ``obs_names``, named ``"truth_domain"``. ``attrs["silhouette"]`` holds ``{k: silhouette}`` for
    every ``k`` tried (empty when ``n_domains`` is given) and ``attrs["n_domains"]`` the number used. Pass
    it as ``truth_domains=`` to :func:`domains` and :func:`markers`.

    Examples
    --------
    >>> labels = soscope.evaluate.cluster_truth(sdata)
    >>> scores, _ = soscope.evaluate.domains(sdata, truth_domains=labels, method="kmeans")

    """
    metrics = _need("sklearn.metrics", "soscope.evaluate.cluster_truth")
    t_truth = _table(sdata, truth, "truth")
    feats = _resolve_features(features, [t_truth], [truth])
    x = _matrix(t_truth, None, t_truth.var_names.get_indexer(feats))
    ok = np.flatnonzero(x.sum(axis=1) >= min_counts)
    lo, hi = (int(k) for k in k_range)
    if n_domains is not None and int(n_domains) < 2:
        raise SoscopeInputError(f"`n_domains` must be at least 2, got {n_domains}.")
    if n_domains is None and not 2 <= lo <= hi:
        raise SoscopeInputError(f"`k_range` must be (low, high) with 2 <= low <= high, got {k_range}.")
    need = int(n_domains) if n_domains is not None else hi
    if len(ok) <= need:
        raise SoscopeInputError(
            f"Only {len(ok)} rows of the truth table {truth!r} have at least {min_counts:g} counts: too few "
            f"for {need} domains."
        )
    a, n_comps = _embed(x[ok], n_pcs=int(n_pcs), normalize=normalize, target_sum=float(target_sum), seed=seed)
    rep = np.asarray(a.obsm["X_pca"] if n_comps >= 2 else a.obsm["X_rep"])
    silhouette: dict[int, float] = {}
    if n_domains is None:
        # a fixed subsample keeps the silhouette (quadratic in rows) cheap and reproducible
        sample = int(min(len(rep), 3000))
        best = None
        for k in range(lo, hi + 1):
            codes = _kmeans(rep, k, seed)
            silhouette[k] = float(metrics.silhouette_score(rep, codes, sample_size=sample, random_state=seed))
            if best is None or silhouette[k] > silhouette[best[0]]:
                best = (k, codes)
        assert best is not None
        k, codes = best
    else:
        k = int(n_domains)
        codes = _kmeans(rep, k, seed)
    labels = np.full(t_truth.n_obs, np.nan, dtype=object)
    labels[ok] = codes.astype(int).astype(str)
    out = pd.Series(labels, index=t_truth.obs_names, name="truth_domain", dtype=object)
    out.attrs["silhouette"] = silhouette
    out.attrs["n_domains"] = int(k)
    return out


# ---------------------------------------------------------------------------------------------- markers
def _auroc(y: np.ndarray, v: np.ndarray) -> float:
    """Area under the ROC curve of ``v`` separating ``y`` (Mann–Whitney, ties count half)."""
    from scipy.stats import rankdata

    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    r = rankdata(v)
    return float((r[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _log2fc(mean_in: float, mean_out: float) -> float:
    # scanpy's rank_genes_groups convention: log2 ratio of the mean normalised values (undone log1p)
    return float(np.log2((np.expm1(mean_in) + 1e-9) / (np.expm1(mean_out) + 1e-9)))


def _marker_table(
    markers: Any, truth_values: np.ndarray, labels: np.ndarray, feats: list[str], n_per_domain: int
):
    """``[(marker, domain)]`` from a dict, a list (domain: where the truth is highest) or None (top truth)."""
    domains_ = sorted(pd.unique(labels))
    means = pd.DataFrame(
        {d: truth_values[labels == d].mean(axis=0) for d in domains_}, index=pd.Index(feats)
    )  # features x domains, mean log-normalised truth
    if markers is None:
        pairs = []
        for d in domains_:
            rest = truth_values[labels != d].mean(axis=0)
            lfc = np.array([_log2fc(a, b) for a, b in zip(means[d].to_numpy(), rest, strict=True)])
            top = np.argsort(-lfc, kind="stable")[: int(n_per_domain)]
            pairs += [(feats[i], d) for i in top]
        return pairs
    if isinstance(markers, Mapping):
        pairs = []
        for d, genes in markers.items():
            if str(d) not in domains_:
                raise SoscopeInputError(f"Marker domain {d!r} is not a truth domain; domains: {domains_}.")
            for g in [genes] if isinstance(genes, str) else list(genes):
                pairs.append((str(g), str(d)))
    elif isinstance(markers, str | Sequence):
        genes = [markers] if isinstance(markers, str) else [str(g) for g in markers]
        missing = [g for g in genes if g not in means.index]
        if missing:
            raise SoscopeInputError(f"Markers not in every table: {missing[:10]}.")
        pairs = [(g, str(means.loc[g].idxmax())) for g in genes]
    else:
        raise SoscopeInputError(
            "`markers` must be None, a list of feature names, or a dict {domain: feature(s)}; got "
            f"{type(markers).__name__}."
        )
    missing = [g for g, _ in pairs if g not in means.index]
    if missing:
        raise SoscopeInputError(f"Markers not in every table: {missing[:10]}.")
    return pairs


def markers(
    sdata: SpatialData,
    markers: Mapping[str, str | Sequence[str]] | Sequence[str] | None = None,
    *,
    truth: str = "truth",
    truth_domains: str | Sequence | pd.Series = "cell_type",
    table: str = "table",
    key_added: str | None = "soscope",
    layer: str | None = None,
    n_per_domain: int = 1,
    features: Sequence[str] | str | None = None,
    normalize: bool = True,
    target_sum: float = 1e4,
) -> pd.DataFrame:
    """Contrast of known markers between truth domains, at spot, sub-spot and true resolution.

    For each marker and its domain: the log2 fold change of its normalised expression in the domain over
    the rest, and the AUROC with which its value separates the domain's sub-spots from the others. All
    resolutions are scored on the same truth sub-spots: ``"spot"`` gives each sub-spot its spot's value,
    ``"subspot"`` uses the enhanced table and ``"truth"`` the true sub-spot counts (the ceiling).

    Parameters
    ----------
    sdata
        Holds the spot table, the enhanced table ``f"{table}_{key_added}"`` and the truth table.
    markers
        ``{domain: feature or [features]}``; a list of features (each assigned to the truth domain where
        its true mean is highest); or ``None``: the ``n_per_domain`` features with the highest true log2
        fold change for each domain.
    truth, truth_domains
        Truth table and its domains (an obs column, default ``"cell_type"``, or one label per row).
    table, key_added, layer
        Spot table (counts in ``X`` or ``layer``) and the suffix of the enhanced table (``None``: spots and
        truth only).
    n_per_domain
        Markers per domain when ``markers=None``.
    features
        Candidate markers when ``markers=None``: ``None`` (every feature shared by the tables), a list of
        names or a boolean ``var`` column. Excluding sparse features (e.g. control probes) keeps rare ones,
        whose fold change is large by chance, from being picked.
    normalize, target_sum
        Scale each row to ``target_sum`` counts (its counts over every feature shared by the tables, at
        every resolution) and ``log1p`` (``False`` for values already normalised).

    Returns
    -------
    Tidy DataFrame, one row per (marker, domain, resolution): columns ``marker``, ``domain``,
    ``resolution`` (``"spot"``, ``"subspot"``, ``"truth"``), ``log2fc`` (as scanpy's
    ``rank_genes_groups``: log2 ratio of the mean normalised values), ``auroc``, ``mean_in`` and
    ``mean_out`` (mean ``log1p`` normalised value in the domain and elsewhere), ``n_in``, ``n_out``.

    """
    rows = _Rows(sdata, truth, table, key_added, require_truth=True)
    t_spots, t_truth, t_enh = rows.t_spots, rows.t_truth, rows.t_enh
    if layer is not None and layer not in t_spots.layers:
        raise SoscopeInputError(f"Table {table!r} has no layer {layer!r}; layers: {layer_names(t_spots)}.")
    tabs = [t_spots, t_truth] + ([t_enh] if t_enh is not None else [])
    names = [table, truth] + ([rows.enh_name] if t_enh is not None else [])
    shared = _resolve_features(None, tabs, names)
    feats = _resolve_features(features, tabs, names) if markers is None else shared

    lab = _truth_labels(t_truth, truth_domains, truth).to_numpy()
    keep = rows.rows[pd.notna(lab[rows.rows])]
    if len(keep) < 2:
        raise SoscopeInputError(f"Fewer than two matched truth rows have a domain label ({truth_domains!r}).")
    lab = lab[keep].astype(str)
    if len(np.unique(lab)) < 2:
        raise SoscopeInputError("The matched truth rows hold a single domain: nothing to contrast.")

    def values(adata, layer_, pos, cols):
        # normalise each truth-matched row by its library size over every shared feature (the same
        # features at every resolution, whichever markers are scored), then take the columns `cols`
        x = _matrix(adata, layer_, adata.var_names.get_indexer(shared))[pos]
        if not normalize:
            return x[:, pd.Index(shared).get_indexer(cols)]
        total = x.sum(axis=1, keepdims=True)
        part = x[:, pd.Index(shared).get_indexer(cols)]
        with np.errstate(invalid="ignore", divide="ignore"):
            scaled = np.where(total > 0, part / np.where(total > 0, total, 1.0) * target_sum, 0.0)
        return np.log1p(np.maximum(scaled, 0.0))

    # pick markers on the truth (all features, so `None` can rank them); then score only those
    truth_all = values(t_truth, None, keep, feats)
    pairs = _marker_table(markers, truth_all, lab, feats, n_per_domain)
    genes = list(dict.fromkeys(g for g, _ in pairs))
    col = {g: i for i, g in enumerate(genes)}
    res_values = {
        "spot": values(t_spots, layer, rows.pos_spot[keep], genes),
        "truth": truth_all[:, [feats.index(g) for g in genes]],
    }
    if t_enh is not None:
        res_values["subspot"] = values(t_enh, None, rows.pos_enh[keep], genes)
    out = []
    for g, d in pairs:
        y = lab == d
        for res in _RESOLUTIONS:
            if res not in res_values:
                continue
            v = res_values[res][:, col[g]]
            m_in, m_out = float(v[y].mean()), float(v[~y].mean())
            out.append(
                {
                    "marker": g,
                    "domain": d,
                    "resolution": res,
                    "log2fc": _log2fc(m_in, m_out) if normalize else m_in - m_out,
                    "auroc": _auroc(y, v),
                    "mean_in": m_in,
                    "mean_out": m_out,
                    "n_in": int(y.sum()),
                    "n_out": int((~y).sum()),
                }
            )
    return pd.DataFrame(out)
