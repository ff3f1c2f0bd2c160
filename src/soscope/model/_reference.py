"""A paired single-cell reference guiding the split: spot deconvolution and type-aware sub-spot offsets.

A reference gives each cell type's expression profile ``P_tg`` (rows sum to 1). Each spot's counts of the
features it shares with the reference are modelled as ``x_ig ~ Poisson(sum_t W_it P_tg rho_g)``: ``W_it``
the counts spot ``i`` owes to type ``t`` (its type abundance) and ``rho_g`` a per-feature platform effect
(as RCTD and cell2location), with a smoothness prior tying ``W`` of neighbouring spots. :func:`deconvolve`
fits it by multiplicative updates (the Poisson/KL non-negative factorisation with ``P`` fixed, plus the
graph-regularised term of Cai et al. 2011), sparse-aware and linear in spots.

Inside a spot, type ``t`` is placed where the interpolation of the neighbouring spots' type densities (and
the image's evidence on types, weighted by cross-validation as for features) says it lies; a sub-spot's
type abundance is ``n_kt = W_it * a_k d_kt / sum_j w_j a_j d_jt`` and its expected counts of a shared
feature ``sum_t n_kt P_tg rho_g``. These reference-based densities join the per-feature spatial prior in the
sub-spot offsets with a weight ``lambda`` chosen, like the image's, by K-fold cross-validation over spots
(each held-out spot predicted from its training neighbours): a reference that does not predict held-out
spots better than the features' own interpolation gets ``lambda = 0`` and changes nothing.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .._errors import SoscopeInputError
from ..geometry import SubspotLayout
from . import _evidence
from ._arrays import spot_density, standardised_image
from ._evidence import EvidenceWeights, fit_footprint_ridge, footprint_design, image_term, kernel_matrix

logger = logging.getLogger("soscope")

#: fewest features the reference must share with the data
MIN_SHARED_FEATURES = 50
#: default strength of the spatial smoothness prior of the deconvolution: each neighbouring spot's type mix
#: weighs like this many counts of evidence (so it matters on shallow spots and fades on deep ones)
SMOOTHNESS = 10.0
#: candidate weights of the reference-based densities in the sub-spot offsets
LAMBDAS = (0.0, 0.25, 0.5, 0.75, 1.0)
#: at most this many shared features (those with most counts) enter the deconvolution's iterations
DECONVOLUTION_FEATURES = 2000
#: multiplicative-update iterations of the deconvolution (the platform effect is refitted every 10)
N_ITER = 200
#: the platform effect is kept within these factors of its geometric mean
PLATFORM_RANGE = (1e-2, 1e2)
#: non-zero entries of the counts handled at once by the sparse updates (bounds their temporaries)
_NNZ_BLOCK = 2_000_000


# ------------------------------------------------------------------------------------------ the reference
@dataclass
class CellTypeReference:
    """Per-type expression profiles: ``profiles[t]`` sums to 1 over ``feature_names``.

    ``counts_per_cell[t]`` is the mean total of a row of type ``t`` (a cell's counts, or a per-type
    profile's total): it turns abundances in counts into abundances in cells. None (models saved before
    it was kept): every type counts alike.
    """

    cell_types: list[str]
    feature_names: list[str]
    profiles: np.ndarray  # (T, G) float64
    n_cells: np.ndarray  # (T,) rows of the given reference per type
    counts_per_cell: np.ndarray | None = None  # (T,) mean row total per type

    @classmethod
    def from_anndata(cls, ref: Any, cell_type_key: str, *, name: str = "reference") -> CellTypeReference:
        """Profiles from an AnnData of single cells or of per-type profiles (rows grouped by type).

        Each type's rows are summed and normalised to sum 1 (raw counts or normalised values alike).

        Raises
        ------
        SoscopeInputError
            ``cell_type_key`` missing or with fewer than 2 types, negative or non-finite values, a type
            whose profile is all zero.

        """
        import anndata as ad

        if not isinstance(ref, ad.AnnData):
            raise SoscopeInputError(
                f"reference= must be an AnnData of single cells or per-type profiles (or the name of a table "
                f"in the SpatialData), not {type(ref).__name__}"
            )
        if cell_type_key not in ref.obs.columns:
            raise SoscopeInputError(
                f"the {name} has no obs column {cell_type_key!r} (cell_type_key); its obs columns: "
                f"{list(ref.obs.columns)[:20]}. Pass cell_type_key= naming the column with the cell types."
            )
        labels = ref.obs[cell_type_key]
        if labels.isna().any():
            raise SoscopeInputError(
                f"{int(labels.isna().sum())} rows of the {name} have no {cell_type_key!r}; drop or label them"
            )
        labels = labels.astype(str).to_numpy()
        types, codes = np.unique(labels, return_inverse=True)
        if len(types) < 2:
            raise SoscopeInputError(
                f"obs[{cell_type_key!r}] of the {name} holds {len(types)} cell type(s) ({list(types)}); a "
                "reference needs at least 2 types to say which ones a spot holds"
            )
        x = ref.X
        values = x.data if sp.issparse(x) else np.asarray(x)
        if not np.all(np.isfinite(values)):
            raise SoscopeInputError(
                f"the {name} holds NaN or infinite values; give raw counts or normalised non-negative values"
            )
        if values.size and values.min() < 0:
            raise SoscopeInputError(
                f"the {name} holds negative values (minimum {values.min():g}); give raw counts or "
                "normalised non-negative values (not log-scaled z-scores)"
            )
        names = pd.Index(ref.var_names.astype(str))
        if names.has_duplicates:
            raise SoscopeInputError(
                f"the {name} has repeated feature names, e.g. "
                f"{names[names.duplicated()].unique()[:5].tolist()}; make var_names unique "
                "(adata.var_names_make_unique())"
            )
        group = sp.csr_matrix(
            (np.ones(len(codes)), (codes, np.arange(len(codes)))), shape=(len(types), len(codes))
        )
        # a sparse X stays sparse: the product is types x features, small
        sums = (group @ x).toarray() if sp.issparse(x) else group @ np.asarray(x, dtype=np.float64)
        sums = np.asarray(sums, dtype=np.float64)
        totals = sums.sum(1)
        if np.any(totals <= 0):
            raise SoscopeInputError(
                f"cell type(s) {types[totals <= 0].tolist()} of the {name} have no counts; drop them"
            )
        n_cells = np.bincount(codes, minlength=len(types)).astype(np.int64)
        return cls(
            cell_types=types.tolist(),
            feature_names=names.tolist(),
            profiles=sums / totals[:, None],
            n_cells=n_cells,
            counts_per_cell=totals / n_cells,
        )

    @property
    def n_types(self) -> int:
        return len(self.cell_types)

    def cells_scale(self) -> np.ndarray:
        """``(T,)`` mean counts per cell of each type (ones when not known)."""
        if self.counts_per_cell is None:
            return np.ones(self.n_types)
        return np.asarray(self.counts_per_cell, dtype=np.float64)


def resolve_reference(reference: Any, sdata: Any, cell_type_key: str) -> CellTypeReference | None:
    """Return the reference from an AnnData, a table name of ``sdata``, an ``.h5ad`` path, or None."""
    if reference is None or isinstance(reference, CellTypeReference):
        return reference
    if isinstance(reference, str):
        if sdata is not None and reference in getattr(sdata, "tables", {}):
            return CellTypeReference.from_anndata(
                sdata.tables[reference], cell_type_key, name=f"reference table {reference!r}"
            )
        if reference.endswith(".h5ad"):
            from pathlib import Path

            import anndata as ad

            if not Path(reference).exists():
                raise SoscopeInputError(f"reference file {reference} does not exist")
            return CellTypeReference.from_anndata(ad.read_h5ad(reference), cell_type_key, name=reference)
        tables = sorted(getattr(sdata, "tables", {})) if sdata is not None else []
        raise SoscopeInputError(
            f"reference={reference!r} is neither a table of the SpatialData (tables: {tables}) nor an .h5ad "
            "file; pass an AnnData, a table name or a path"
        )
    return CellTypeReference.from_anndata(reference, cell_type_key)


def describe_reference(reference: Any) -> str | None:
    """Return a short text for the model's settings: a table name or path as given, or the shape."""
    if reference is None or isinstance(reference, str):
        return reference
    if isinstance(reference, CellTypeReference):
        return f"profiles: {reference.n_types} types x {len(reference.feature_names)} features"
    shape = getattr(reference, "shape", None)
    return f"AnnData: {shape[0]} rows x {shape[1]} features" if shape else type(reference).__name__


# ------------------------------------------------------------------------------------------ deconvolution
def _fitted_at_nonzeros(c: sp.csr_matrix, w: np.ndarray, h: np.ndarray) -> sp.csr_matrix:
    """``c / (w @ h)`` at the non-zeros of ``c`` (a sparse ratio), in blocks of non-zeros."""
    coo = c.tocoo()
    ratio = np.empty(coo.nnz)
    for start in range(0, coo.nnz, _NNZ_BLOCK):
        r, k = coo.row[start : start + _NNZ_BLOCK], coo.col[start : start + _NNZ_BLOCK]
        fitted = np.einsum("nt,tn->n", w[r], h[:, k])
        ratio[start : start + _NNZ_BLOCK] = coo.data[start : start + _NNZ_BLOCK] / np.maximum(fitted, 1e-12)
    return sp.csr_matrix((ratio, (coo.row, coo.col)), shape=c.shape)


def deconvolve(
    counts,
    profiles: np.ndarray,
    adjacency: sp.spmatrix | None = None,
    *,
    smoothness: float = SMOOTHNESS,
    platform: np.ndarray | None = None,
    n_iter: int = N_ITER,
) -> tuple[np.ndarray, np.ndarray]:
    """Type abundances of each spot under ``x_ig ~ Poisson(sum_t W_it P_tg rho_g)`` with a smoothness prior.

    Parameters
    ----------
    counts
        ``(N, G)`` spot counts of the shared features (dense or scipy sparse; sparse stays sparse).
    profiles
        ``(T, G)`` type profiles, rows summing to 1 (over every reference feature; a subset is fine).
    adjacency
        ``(N, N)`` symmetric spot graph; None: no smoothness.
    smoothness
        Weight of the prior ``smoothness / (2 mean(W)^2) * sum_edges ||W_i - W_j||^2``: each neighbouring
        spot's abundances weigh like ``smoothness`` counts of evidence (0: no smoothing).
    platform
        ``(G,)`` fixed platform effect (a trained model applied to new spots); None: fitted here, normalised
        to geometric mean 1.
    n_iter
        Multiplicative-update iterations.

    Returns
    -------
    ``(W (N, T), rho (G,))``: ``W_it`` in counts, up to the platform effect's scale (``W @ (P * rho)`` sums to
    about each spot's counts of these features).

    """
    c = counts.tocsr().astype(np.float64) if sp.issparse(counts) else np.asarray(counts, dtype=np.float64)
    p = np.asarray(profiles, dtype=np.float64)
    n, g = c.shape
    fixed = platform is not None
    rho = np.ones(g) if platform is None else np.asarray(platform, dtype=np.float64)
    col_sums = np.asarray(c.sum(0)).ravel()
    lib = np.asarray(c.sum(1)).ravel()
    w = np.repeat(np.maximum(lib, 1e-3)[:, None] / p.shape[0], p.shape[0], axis=1)
    adj = None if adjacency is None or smoothness <= 0 else sp.csr_matrix(adjacency, dtype=np.float64)
    deg = None if adj is None else np.asarray(adj.sum(1)).ravel()
    for it in range(n_iter):
        h = p * rho
        if sp.issparse(c):
            num = np.asarray(_fitted_at_nonzeros(c, w, h) @ h.T)
        else:
            num = (c / np.maximum(w @ h, 1e-12)) @ h.T
        den = np.broadcast_to(h.sum(1)[None, :], w.shape)
        if adj is not None:
            # a neighbour weighs like `smoothness` counts of evidence: against the Poisson information of
            # W (about 1 / W per count), lambda = smoothness / W^2 — strong on shallow spots, light on deep
            lam = smoothness / max(float(w.mean()) ** 2, 1e-12)
            num = num + lam * (adj @ w)
            den = den + lam * deg[:, None] * w
        w = w * num / np.maximum(den, 1e-12)
        if not fixed and it % 10 == 9:
            rho = _platform(col_sums, w, p, rho)
    return w, rho


def _platform(
    col_sums: np.ndarray, w: np.ndarray, p: np.ndarray, rho: np.ndarray | None = None
) -> np.ndarray:
    """Return the per-feature platform effect given the abundances (damped when ``rho`` is given)."""
    fitted = w.sum(0) @ p  # sum over spots of sum_t W_it P_tg
    ratio = np.maximum(col_sums, 1e-3) / np.maximum(fitted, 1e-12)
    new = ratio if rho is None else np.sqrt(ratio * rho)  # damped: geometric mean of old and new
    new = np.where(col_sums > 0, new, 1.0 if rho is None else rho)
    new = new / np.exp(np.log(np.maximum(new, 1e-300)).mean())
    return np.clip(new, *PLATFORM_RANGE)


# ------------------------------------------------------------------------------------------ fitted state
@dataclass
class ReferenceFit:
    """What a model keeps of its reference (saved with it; a new section needs no reference again)."""

    reference: CellTypeReference
    modality: int  # the modality the reference describes
    data_columns: np.ndarray  # (G_s,) columns of that modality's features shared with the reference
    reference_columns: np.ndarray  # (G_s,) the same features' columns in the reference
    platform: np.ndarray  # (G_s,) per-feature platform effect
    smoothness: float = SMOOTHNESS
    weight: float = 0.0  # lambda: the reference densities' weight in the offsets
    lambdas: list[float] = field(default_factory=lambda: list(LAMBDAS))
    cv_scores: np.ndarray | None = None  # held-out deviance per lambda relative to lambda = 0
    type_evidence: EvidenceWeights | None = None  # the image's weight on the type densities
    type_ridge: tuple | None = None  # (x_mean, y_mean, beta) ridge of type densities on image features
    type_density_mean: np.ndarray | None = None  # (T,) mean type density per area unit
    reason: str = ""

    @property
    def profiles(self) -> np.ndarray:
        """``(T, G_s)`` shared columns of the profiles times the platform effect."""
        return self.reference.profiles[:, self.reference_columns] * self.platform[None, :]

    def as_uns(self) -> dict:
        """``uns["soscope"]["reference"]``: types, features, weights and their cross-validation."""
        return {
            "cell_types": np.asarray(self.reference.cell_types, dtype=object),
            "n_cells": np.asarray(self.reference.n_cells),
            "n_shared_features": int(len(self.data_columns)),
            "smoothness": float(self.smoothness),
            "weight": float(self.weight),
            "lambdas": np.asarray(self.lambdas, dtype=np.float64),
            "cv_scores": np.full(len(self.lambdas), np.nan)
            if self.cv_scores is None
            else np.asarray(self.cv_scores, dtype=np.float64),
            "image_weight_on_types": 0.0 if self.type_evidence is None else float(self.type_evidence.beta),
            "reason": self.reason,
        }

    def to_payload(self) -> dict:
        """Tensors, numbers and strings only (model files are read with ``weights_only=True``)."""
        import json

        import torch

        t = torch.as_tensor
        return {
            "cell_types": json.dumps(self.reference.cell_types),
            "feature_names": json.dumps(self.reference.feature_names),
            "profiles": t(self.reference.profiles),
            "n_cells": t(self.reference.n_cells),
            "counts_per_cell": t(self.reference.cells_scale()),
            "modality": int(self.modality),
            "data_columns": t(self.data_columns),
            "reference_columns": t(self.reference_columns),
            "platform": t(self.platform),
            "smoothness": float(self.smoothness),
            "weight": float(self.weight),
            "lambdas": t(np.asarray(self.lambdas, dtype=np.float64)),
            "cv_scores": None if self.cv_scores is None else t(self.cv_scores),
            "type_evidence": _evidence.evidence_to_payload(
                None if self.type_evidence is None else [self.type_evidence]
            ),
            "type_ridge": None if self.type_ridge is None else [t(a) for a in self.type_ridge],
            "type_density_mean": None if self.type_density_mean is None else t(self.type_density_mean),
            "reason": self.reason,
        }

    @classmethod
    def from_payload(cls, d: dict | None) -> ReferenceFit | None:
        """Inverse of :meth:`to_payload` (None for models without a reference)."""
        import json

        if d is None:
            return None
        arr = lambda v: None if v is None else np.asarray(v)  # noqa: E731
        ev = _evidence.evidence_from_payload(d.get("type_evidence"))
        return cls(
            reference=CellTypeReference(
                cell_types=json.loads(d["cell_types"]),
                feature_names=json.loads(d["feature_names"]),
                profiles=arr(d["profiles"]).astype(np.float64),
                n_cells=arr(d["n_cells"]),
                counts_per_cell=arr(d.get("counts_per_cell")),
            ),
            modality=int(d["modality"]),
            data_columns=arr(d["data_columns"]).astype(np.int64),
            reference_columns=arr(d["reference_columns"]).astype(np.int64),
            platform=arr(d["platform"]).astype(np.float64),
            smoothness=float(d["smoothness"]),
            weight=float(d["weight"]),
            lambdas=arr(d["lambdas"]).tolist(),
            cv_scores=arr(d.get("cv_scores")),
            type_evidence=None if ev is None else ev[0],
            type_ridge=None if d.get("type_ridge") is None else tuple(arr(a) for a in d["type_ridge"]),
            type_density_mean=arr(d.get("type_density_mean")),
            reason=str(d.get("reason", "")),
        )


def shared_columns(reference: CellTypeReference, data) -> tuple[int, np.ndarray, np.ndarray]:
    """Return the count modality the reference describes and the shared columns (data, reference).

    Raises a clear error when no count modality shares :data:`MIN_SHARED_FEATURES` features by name; warns
    with the number of the modality's features the reference lacks (they keep the reference-free model).
    """
    ref_pos = {n: i for i, n in enumerate(reference.feature_names)}
    best = None
    for mi, spec in enumerate(data.modalities):
        if not spec.is_count or spec.likelihood == "bernoulli":
            continue
        names = data.feature_names[mi]
        cols = np.array([k for k, n in enumerate(names) if n in ref_pos], dtype=np.int64)
        if best is None or len(cols) > len(best[1]):
            best = (mi, cols)
    if best is None or len(best[1]) < MIN_SHARED_FEATURES:
        shared = 0 if best is None else len(best[1])
        data_names = [n for names in data.feature_names for n in names[:5]]
        raise SoscopeInputError(
            f"the reference shares {shared} features with the data's count features (at least "
            f"{MIN_SHARED_FEATURES} needed; names are matched exactly, case-sensitive). Reference features "
            f"e.g. {reference.feature_names[:5]}, data features e.g. {data_names[:5]}: use the same gene "
            "identifiers in both (symbols or ids)"
        )
    mi, cols = best
    names = data.feature_names[mi]
    missing = len(names) - len(cols)
    if missing:
        warnings.warn(
            f"{missing} of {len(names)} features of modality {data.modalities[mi].name!r} are not in the "
            f"reference (e.g. {[n for n in names if n not in ref_pos][:5]}); they are enhanced without it",
            UserWarning,
            stacklevel=3,
        )
    return mi, cols, np.array([ref_pos[names[k]] for k in cols], dtype=np.int64)


def _counts_of(data, modality: int, cols: np.ndarray):
    """Return the counts of modality ``modality`` at columns ``cols`` (sparse stays sparse)."""
    x = data.counts[modality][:, cols]
    return x.tocsr() if sp.issparse(x) else np.asarray(x, dtype=np.float64)


def _deconvolution_columns(x) -> np.ndarray:
    """Return the shared features with most counts, at most :data:`DECONVOLUTION_FEATURES`."""
    tot = np.asarray(x.sum(0)).ravel()
    order = np.argsort(-tot, kind="stable")[:DECONVOLUTION_FEATURES]
    return np.sort(order[tot[order] > 0])


def spot_abundance(data, fit: ReferenceFit) -> np.ndarray:
    """``(N, T)`` type abundances of ``data``'s spots with the fitted platform effect (new sections)."""
    from ..tiling import adjacency

    x = _counts_of(data, fit.modality, fit.data_columns)
    use = _deconvolution_columns(x)
    w, _ = deconvolve(
        x[:, use], fit.profiles[:, use], adjacency(data.edge_index, data.n_spots),
        smoothness=fit.smoothness, platform=np.ones(len(use)),
    )  # fmt: skip
    return w


def fit_reference(
    data, norm, reference: CellTypeReference, *, smoothness: float = SMOOTHNESS, seed: int = 0
) -> tuple[ReferenceFit, np.ndarray]:
    """Deconvolve the training spots, fit the platform effect and choose the reference's weight.

    Returns the fit and the ``(N, T)`` spot abundances.
    """
    from ..tiling import adjacency

    mi, data_cols, ref_cols = shared_columns(reference, data)
    x = _counts_of(data, mi, data_cols)
    use = _deconvolution_columns(x)
    w, _ = deconvolve(
        x[:, use], reference.profiles[:, ref_cols[use]], adjacency(data.edge_index, data.n_spots),
        smoothness=smoothness,
    )  # fmt: skip
    # the platform effect of every shared feature given the abundances (closed form)
    platform = _platform(np.asarray(x.sum(0)).ravel(), w, reference.profiles[:, ref_cols])
    fit = ReferenceFit(reference, mi, data_cols, ref_cols, platform, smoothness=smoothness)
    area = data.layout.footprint_area / norm.area_unit
    dens_t = w / area[:, None]
    fit.type_density_mean = dens_t.mean(0)
    if data.image_features is not None and norm.image_mean is not None:
        z = standardised_image(data, norm)
        floor_t = _evidence_floor(fit.type_density_mean)
        ev = _evidence.select_weights(
            dens_t, dens_t, footprint_design(z, data.layout), area, data.centres,
            np.asarray(data.sections), data.spacing, floor_t, is_count=True, seed=seed,
        )  # fmt: skip
        fit.type_evidence = ev
        fit.type_ridge = tuple(fit_footprint_ridge(dens_t, z, data.layout, alpha=ev.alpha))
        logger.info("reference: image evidence on cell types: %s", ev.reason)
    _choose_weight(fit, data, norm, w, seed=seed)
    logger.info("reference: %s", fit.reason)
    return fit, w


def _evidence_floor(mean_density: np.ndarray) -> np.ndarray:
    # the same floor as the features' spatial prior (soscope.model._data._FLOOR)
    return 0.05 * np.asarray(mean_density, dtype=np.float64) + 1e-8


#: super-spots (a spot and its graph neighbours) scored by the split validation
SPLIT_CV_GROUPS = 2000
#: smallest relative gain in split deviance for the reference to enter the offsets: gains of a few per mille
#: were "significant" over hundreds of features yet split sub-spots worse (the MERFISH mini's cells)
MIN_SPLIT_GAIN = 0.01


def _choose_weight(fit: ReferenceFit, data, norm, w: np.ndarray, *, seed: int) -> None:
    """Choose the reference densities' weight by split validation one scale up (:func:`split_deviance`)."""
    lambdas = list(fit.lambdas)
    dev = split_deviance(fit, data, norm, w, lambdas, seed=seed)
    if dev is None:
        fit.reason = "too few spots with neighbours for the split validation: reference weight 0"
        return
    ok = dev[0] > 0
    if not ok.any():
        fit.reason = "no feature with held-out counts: reference weight 0"
        return
    rel = dev[:, ok] / dev[0, ok]
    scores = rel.mean(1)
    fit.cv_scores = scores
    best = int(np.argmin(scores))
    gain = rel[0] - rel[best]
    se = gain.std(ddof=1) / np.sqrt(len(gain)) if len(gain) > 1 else np.inf
    if best == 0 or gain.mean() <= max(2 * se, MIN_SPLIT_GAIN):
        fit.weight = 0.0
        fit.reason = (
            f"the reference does not split held-out groups of spots better than the features' own prior and "
            f"image (gain {gain.mean():.4f} ± {se:.4f}): reference weight 0; its type abundances are still "
            "reported"
        )
        return
    diff_se = (rel - rel[best]).std(1, ddof=1) / np.sqrt(rel.shape[1])
    within = [j for j in range(len(lambdas)) if j > 0 and scores[j] <= scores[best] + diff_se[j]]
    pick = min(within, key=lambda j: lambdas[j]) if within else best
    fit.weight = float(lambdas[pick])
    fit.reason = (
        f"split deviance of held-out groups of spots {scores[pick]:.4f} of the features' own prior's with "
        f"reference weight {fit.weight:g}"
    )


def split_deviance(
    fit: ReferenceFit, data, norm, w: np.ndarray, lambdas: list[float], *, seed: int = 0
) -> np.ndarray | None:
    """``(len(lambdas), F)`` deviance of splitting held-out groups of spots with each reference weight.

    The split the model makes inside a spot, validated one scale up where the truth is measured: a spot
    and its graph neighbours form a *group* whose summed counts are split among its members in proportion
    to ``area * exp(prior)``, the prior of each member made without the group's own counts — the
    interpolation of the spots around the group, plus the image's weighted evidence (as the offsets), mixed
    with weight ``lambda`` with the reference's densities (the group's type abundances ``sum W``, each type
    placed by the same interpolation of type densities and the image's evidence on types). Scored by the
    multinomial deviance of the members' observed counts, on the features with most counts. ``None`` when
    fewer than 10 spots have neighbours.
    """
    from ..tiling import adjacency

    rng = np.random.default_rng(seed)
    adj = adjacency(data.edge_index, data.n_spots).tocsr()
    degree = np.diff(adj.indptr)
    centres_ok = np.flatnonzero(degree >= 2)
    if len(centres_ok) < 10:
        return None
    groups = np.sort(rng.permutation(centres_ok)[:SPLIT_CV_GROUPS])
    # (group, member) pairs: the centre and its neighbours
    members = [np.concatenate([[g], adj.indices[adj.indptr[g] : adj.indptr[g + 1]]]) for g in groups]
    pair_group = np.repeat(np.arange(len(groups)), [len(m) for m in members])
    pair_spot = np.concatenate(members)
    n = data.n_spots
    # each member's kernel to the spots outside its group (renormalised)
    k = kernel_matrix(data.centres, data.centres[pair_spot], data.spacing).tocoo()
    inside = np.isin(pair_group[k.row] * n + k.col, pair_group * n + pair_spot)
    keep = ~inside
    kern = sp.csr_matrix((k.data[keep], (k.row[keep], k.col[keep])), shape=k.shape)
    has = np.asarray(kern.sum(1)).ravel() > 0
    kern = sp.diags(1.0 / np.where(has, np.asarray(kern.sum(1)).ravel(), 1.0)) @ kern

    mi = fit.modality
    x = _counts_of(data, mi, fit.data_columns)
    tot = np.asarray(x.sum(0)).ravel()
    cols = np.argsort(-tot, kind="stable")[: _evidence.CV_FEATURES]
    cols = np.sort(cols[tot[cols] > 0])
    area = data.layout.footprint_area / norm.area_unit
    y = _evidence._dense_columns(spot_density(x, data.layout, norm.area_unit), cols)
    counts = _evidence._dense_columns(x, cols)
    floor = _evidence_floor(y.mean(0))
    log_genes = np.log(np.asarray(kern @ y) + floor)
    image_genes = 0.0
    # the image's weighted evidence on the features, as the offsets add it after the spatial prior
    beta = norm.image_weights[mi]
    design = None
    if data.image_features is not None and norm.image_mean is not None:
        design = footprint_design(standardised_image(data, norm), data.layout)
    if design is not None and beta > 0 and norm.image_ridge is not None:
        xm, ym, coef = (np.asarray(a, dtype=np.float64) for a in norm.image_ridge[mi])
        feature_cols = fit.data_columns[cols]
        pred = ym[feature_cols] + (design - xm) @ coef[:, feature_cols]
        pos = _evidence.positive(pred, ym[feature_cols])
        image_genes = beta * (np.log(pos[pair_spot]) - np.log(np.maximum(np.asarray(kern @ pos), 1e-300)))
    # the reference: the group's type abundances placed among its members
    dens_t = w / area[:, None]
    log_d = np.log(np.asarray(kern @ dens_t) + _evidence_floor(dens_t.mean(0)))
    ev = fit.type_evidence
    if design is not None and ev is not None and ev.beta > 0 and fit.type_ridge is not None:
        xm, ym, coef = (np.asarray(a, dtype=np.float64) for a in fit.type_ridge)
        pos = _evidence.positive(ym + (design - xm) @ coef, ym)
        log_d += ev.beta * (np.log(pos[pair_spot]) - np.log(np.maximum(np.asarray(kern @ pos), 1e-300)))
    d = area[pair_spot, None] * np.exp(log_d - log_d.max(0, keepdims=True))
    group_d = np.zeros((len(groups), d.shape[1]))
    np.add.at(group_d, pair_group, d)
    group_w = np.zeros((len(groups), w.shape[1]))
    np.add.at(group_w, pair_group, w[pair_spot])
    n_jt = group_w[pair_group] * d / np.maximum(group_d[pair_group], 1e-300)
    log_ref = np.log(n_jt @ fit.profiles[:, cols] / area[pair_spot, None] + floor)

    obs = counts[pair_spot]
    group_x = np.zeros((len(groups), len(cols)))
    np.add.at(group_x, pair_group, obs)
    dev = np.zeros((len(lambdas), len(cols)))
    for j, lam in enumerate(lambdas):
        # as the offsets: the spatial priors mixed, then the features' image evidence added
        logit = np.log(area[pair_spot])[:, None] + (1 - lam) * log_genes + lam * log_ref + image_genes
        top = np.full((len(groups), len(cols)), -np.inf)
        np.maximum.at(top, pair_group, logit)
        e = np.exp(logit - top[pair_group])  # stable within each group
        total = np.zeros((len(groups), len(cols)))
        np.add.at(total, pair_group, e)
        share = e / np.maximum(total[pair_group], 1e-300)
        # multinomial deviance of the members' counts given the group's total
        expected = np.maximum(group_x[pair_group] * share, 1e-300)
        dev[j] = 2.0 * np.where(obs > 0, obs * np.log(np.maximum(obs, 1e-300) / expected), 0.0).sum(0)
    return dev


# ------------------------------------------------------------------------------------ sub-spot type split
def subspot_abundance(
    fit: ReferenceFit,
    abundance: np.ndarray,
    sub: SubspotLayout,
    centres: np.ndarray,
    spacing: float,
    area_unit: float,
    img: np.ndarray | None = None,
    kernel: sp.csr_matrix | None = None,
) -> np.ndarray:
    """``(m, T)`` each sub-spot's type abundance (in counts): its spot's, placed by neighbours and image.

    Parameters
    ----------
    fit
        The fitted reference.
    abundance
        ``(n, T)`` type abundances of the spots of ``sub`` (``sub.spot_index`` indexes them).
    sub
        The sub-spots.
    centres, spacing
        The spots' centres (rows of ``abundance``) and lattice spacing.
    area_unit
        The normaliser's area unit.
    img
        ``(m, D)`` standardised image features of ``sub`` (None: no image term).
    kernel
        :func:`~soscope.model._evidence.kernel_matrix` from ``sub``'s centroids to ``centres`` (computed
        when None).

    """
    kern = kernel_matrix(centres, sub.centroid, spacing) if kernel is None else kernel
    area = sub.footprint_area / area_unit
    dens = abundance / np.maximum(area, 1e-12)[:, None]
    floor = _evidence_floor(fit.type_density_mean if fit.type_density_mean is not None else dens.mean(0))
    log_d = np.log(np.asarray(kern @ dens) + floor)
    ev = fit.type_evidence
    if img is not None and ev is not None and ev.beta > 0 and fit.type_ridge is not None:
        log_d = log_d + ev.beta * image_term(img, fit.type_ridge, sub, kern, fit.type_ridge[1])
    d = np.exp(log_d - log_d.max(0, keepdims=True))  # per type: only ratios between sub-spots matter
    part = (sub.area * sub.footprint_weight)[:, None] * d
    total = np.zeros((sub.n_spots, d.shape[1]))
    np.add.at(total, sub.spot_index, part)
    share = sub.area[:, None] * d / np.maximum(total[sub.spot_index], 1e-300)
    return abundance[sub.spot_index] * share


#: least-squares multiplicative updates of each sub-spot's cells of each type (products of T x T only)
TYPE_FIT_ITER = 500


def cells_from_counts(y, fit: ReferenceFit, init: np.ndarray | None = None, n_iter: int = TYPE_FIT_ITER):
    """``(m, T)`` cells of each type whose expected counts best match ``y`` (non-negative least squares).

    Each type's expected counts per cell are its profile times the platform effect times its counts per
    cell (:meth:`CellTypeReference.cells_scale`), so the result counts cells (up to the capture factor
    shared by every spot). Least squares, not the Poisson deviance: with references of a few hundred cells
    the profiles of weakly expressed features are noisy, and least squares lets the well-measured
    features decide (measured on the MERFISH mini's cross-fitted references at 15 µm sub-spots, deconvolving
    soscope's enhanced counts: per-type Pearson 0.581 with least squares, 0.515 with the Poisson deviance).

    Parameters
    ----------
    y
        ``(m, G_s)`` expected counts of the shared features (columns ``fit.data_columns``).
    fit
        The fitted reference.
    init
        ``(m, T)`` starting cells (e.g. the spot's cells placed by neighbours and image); None: even.
    n_iter
        Multiplicative updates (Lee & Seung's, which keep every entry non-negative).

    """
    h = fit.profiles * fit.reference.cells_scale()[:, None]  # (T, G_s) expected counts per cell
    yh = np.asarray(y, dtype=np.float64) @ h.T
    hh = h @ h.T
    if init is None:
        w = np.repeat(np.asarray(y, dtype=np.float64).sum(1, keepdims=True), h.shape[0], axis=1)
        w /= max(float(h.sum(1).mean()), 1e-30) * h.shape[0]
    else:
        w = np.array(init, dtype=np.float64)
    # an entry at 0 stays 0 under multiplicative updates: start every type slightly above it
    w = np.maximum(w, 1e-3 * np.maximum(w.sum(1, keepdims=True), 1e-12) / h.shape[0])
    for _ in range(n_iter):
        w *= yh / np.maximum(w @ hh, 1e-30)
    return w


def reference_log_density(
    fit: ReferenceFit, n_kt: np.ndarray, sub: SubspotLayout, area_unit: float, cols: np.ndarray
) -> np.ndarray:
    """``(m, len(cols))`` log expected counts per area unit of shared columns ``cols`` (indices of them)."""
    mu = n_kt @ fit.profiles[:, cols]
    floor = _evidence_floor(mu.mean(0) / max(float(np.mean(sub.area / area_unit)), 1e-12))
    return np.log(mu / np.maximum(sub.area / area_unit, 1e-12)[:, None] + floor)
