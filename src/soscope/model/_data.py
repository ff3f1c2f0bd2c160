"""Arrays the model trains on, their normalisation, and the tensors of one chunk of spots."""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
import torch

from .._settings import settings
from ..features import SectionStandardiser
from ..geometry import SubspotLayout
from ..module import LazyColumns, ModalitySpec, SpotBatch
from ..tiling import Chunk, adjacency
from . import _evidence
from ._arrays import _row_scale, spot_density, standardised_image
from ._evidence import (
    EvidenceWeights,
    fit_footprint_ridge,
    footprint_design,
    image_term,
    kernel_matrix,
    nuclei_term,
    select_nuclei_weight,
    select_weights,
    spot_nuclei_density,
)
from ._reference import (
    SMOOTHNESS,
    CellTypeReference,
    ReferenceFit,
    fit_reference,
    reference_log_density,
    subspot_abundance,
)

logger = logging.getLogger("soscope")

_FLOOR = 0.05  # floor of the offsets' densities, as a fraction of a feature's mean density


@dataclass
class SpotData:
    """Everything about one set of spots (one or several sections) that the network needs, as arrays.

    Spot arrays have N rows in the order of the spots element(s); sub-spot arrays follow ``layout``.
    """

    counts: list[np.ndarray | sp.csr_matrix]  # per modality (N, F_m)
    modalities: list[ModalitySpec]
    feature_names: list[list[str]]
    centres: np.ndarray  # (N, 2) in the spots' intrinsic units
    sections: np.ndarray  # (N,) section labels (str)
    batches: np.ndarray  # (N,) batch labels (str): sections unless a batch_key says otherwise
    layout: SubspotLayout
    edge_index: np.ndarray  # (2, E) spot graph
    spacing: float
    image_features: np.ndarray | None = None  # (M, D) raw
    image_feature_names: list[str] = field(default_factory=list)
    # sqrt(median spot area) of the whole layout: fixes the tolerances of the sub-spot graph, which each
    # training minibatch finds among its own sub-spots (the image regulariser); None: no sub-spot graph
    subspot_size: float | None = None
    # (N, T) each spot's cell-type abundance (counts owed to each type of the model's single-cell reference,
    # soscope.model._reference); None without a reference
    cell_type_abundance: np.ndarray | None = None
    # per-section statistics of image_features, fitted once on whole sections (chunk payloads carry them)
    image_standardiser: SectionStandardiser | None = None
    # (M,) float32 nuclei whose centroid lies in each sub-spot (the raw count behind the "nuclei:count" image
    # feature; NaN in a section without segmentation); None: no segmentation (None, or none found)
    nuclei_count: np.ndarray | None = None

    @property
    def n_spots(self) -> int:
        return len(self.centres)

    def rows(self, modality: int, spots: np.ndarray) -> np.ndarray:
        """Dense float32 counts of ``spots`` for one modality (a chunk at a time: never the whole matrix)."""
        m = self.counts[modality][spots]
        return np.asarray(m.toarray() if sp.issparse(m) else m, dtype=np.float32)

    def library(self, modality: int) -> np.ndarray:
        """``(N,)`` total counts per spot of one modality."""
        return np.asarray(self.counts[modality].sum(1)).ravel().astype(np.float64)


@dataclass
class Normaliser:
    """Statistics fitted once on the training spots, reused unchanged on new data (saved with the model)."""

    input_mean: list[np.ndarray]  # per modality, of log1p(normalised) inputs
    input_std: list[np.ndarray]
    density_mean: list[np.ndarray]  # per modality mean density per area unit (floors of the offsets)
    image_mean: np.ndarray | None
    image_std: np.ndarray | None
    area_unit: float  # mean footprint area: sub-spot areas are expressed relative to it
    batch_codes: dict[str, int]
    # per modality (x_mean, y_mean, beta): closed-form ridge of spot density on image features
    image_ridge: list | None = None
    # per modality the weight of the image term in the offsets, chosen by cross-validation over spots
    # together with the ridge penalty (see soscope.model._evidence); None without an image (or legacy)
    evidence: list[EvidenceWeights] | None = None
    # "weighted" (spatial prior + weighted image evidence) or "legacy" (the image ridge alone, floored); see
    # soscope.model._evidence.OFFSETS
    offsets: str = "weighted"
    # per modality None or (source modalities, mean, components, beta): a sparse count modality's neighbour
    # densities predicted from a deeper modality of the same spots (cross-omics reference)
    cross_reference: list | None = None
    # per modality (batches, F) float32, rows in batch-code order: what brings a batch's spot densities to the
    # common scale (factors for counts, shifts for values) before the spatial prior interpolates them, so
    # the offsets carry no capture bias and the network's per-batch bias learns it (then removed from the
    # outputs). None: one batch, nothing to bring together. New batches get their rows at calibration.
    batch_scale: list[np.ndarray] | None = None
    # the single-cell reference: type profiles, platform effect and the weight of its type-aware densities
    # in the offsets (soscope.model._reference); None without a reference
    reference: ReferenceFit | None = None

    @classmethod
    def fit(
        cls,
        data: SpotData,
        batch_labels: list[str] | None = None,
        offsets: str | None = None,
        reference: CellTypeReference | None = None,
        reference_smoothness: float = SMOOTHNESS,
        nuclei_prior: bool = False,
    ) -> Normaliser:
        """Fit the statistics on ``data`` (all its spots).

        ``offsets``: ``"weighted"`` or ``"legacy"`` (see :data:`soscope.model._evidence.OFFSETS`, the
        default). ``reference``: a single-cell reference; its deconvolution of ``data``'s spots is stored in
        ``data.cell_type_abundance`` (see :func:`soscope.model._reference.fit_reference`). ``nuclei_prior``:
        whether a count modality's offsets may gain the nucleus term (its weight still chosen by
        cross-validation, see :func:`soscope.model._evidence.select_nuclei_weight`).
        """
        footprint = data.layout.footprint_area
        area_unit = float(np.mean(footprint))
        in_mean, in_std, dens_mean = [], [], []
        for mi, spec in enumerate(data.modalities):
            x = data.counts[mi]
            lib = data.library(mi)
            if spec.is_count:
                dens = np.asarray(_row_scale(x, area_unit / footprint).mean(0)).ravel()
            else:
                dens = np.asarray(x.mean(0)).ravel()
            dens_mean.append(dens.astype(np.float32))
            mean, std = _encoder_input_moments(x, spec, lib)
            in_mean.append(mean.astype(np.float32))
            in_std.append(np.maximum(std, 1e-3).astype(np.float32))
        if data.image_features is not None:
            f = data.image_features
            img_mean = np.nanmean(f, 0).astype(np.float32)
            img_std = np.maximum(np.nanstd(f, 0), 1e-6).astype(np.float32)
        else:
            img_mean = img_std = None
        labels = batch_labels if batch_labels is not None else sorted(np.unique(data.batches).tolist())
        norm = cls(
            in_mean, in_std, dens_mean, img_mean, img_std, area_unit, {b: i for i, b in enumerate(labels)}
        )
        norm.offsets = _evidence.OFFSETS if offsets is None else offsets
        if norm.offsets not in ("weighted", "legacy"):
            raise ValueError(f"image_evidence must be 'weighted' or 'legacy', not {norm.offsets!r}")
        if len(labels) > 1:
            norm.batch_scale = batch_scale_rows(data, norm, labels)
        if norm.offsets == "legacy":
            if reference is not None:
                raise ValueError("a single-cell reference needs image_evidence='weighted' (the default)")
            if data.image_features is not None:
                norm.image_ridge = _fit_image_ridge(data, norm, _evidence.LEGACY_ALPHA)
            else:
                norm.cross_reference = _fit_cross_reference(data, norm)
            return norm
        # the spatial prior is the same with or without an image (an image weighted 0 changes nothing)
        norm.cross_reference = _fit_cross_reference(data, norm)
        if data.image_features is not None:
            norm.image_ridge, norm.evidence = _fit_image_evidence(data, norm, nuclei_prior=nuclei_prior)
        if reference is not None:
            norm.reference, data.cell_type_abundance = fit_reference(
                data, norm, reference, smoothness=reference_smoothness
            )
        return norm

    @property
    def image_weights(self) -> list[float]:
        """Per modality the weight of the image term in the offsets (all 0 without an image)."""
        if self.evidence is None:
            return [0.0] * len(self.input_mean)
        return [float(e.beta) for e in self.evidence]

    @property
    def nuclei_weights(self) -> list[float]:
        """Per modality the weight of the nucleus term in the offsets (all 0 without a segmentation)."""
        if self.evidence is None:
            return [0.0] * len(self.input_mean)
        return [float(e.gamma) for e in self.evidence]

    @property
    def image_informative(self) -> bool:
        """Whether the image or its nuclei predict held-out spots for at least one modality (a weight > 0)."""
        if self.offsets == "legacy":
            return self.image_ridge is not None
        return any(b > 0 for b in self.image_weights) or any(g > 0 for g in self.nuclei_weights)

    def standardise_image(self, features: np.ndarray) -> np.ndarray:
        """Standardised image features, missing values at the mean, clipped to ±8."""
        f = (features - self.image_mean) / self.image_std
        return np.nan_to_num(f, nan=0.0).clip(-8, 8).astype(np.float32)


def batch_scale_rows(data: SpotData, norm: Normaliser, labels: list[str]) -> list[np.ndarray]:
    """Per modality ``(len(labels), F)``: what brings each batch's spot values to the normaliser's scale.

    Counts: ``density_mean / batch mean density`` per feature (1 where the batch has none of a feature);
    values: ``mean - batch mean``. The batch means are taken over the spots of ``data`` in each batch.
    """
    batches = np.asarray(data.batches)
    out = []
    for mi, spec in enumerate(data.modalities):
        x = data.counts[mi]
        y = spot_density(x, data.layout, norm.area_unit) if spec.is_count else x
        rows = np.zeros((len(labels), x.shape[1]), dtype=np.float64)
        for j, label in enumerate(labels):
            member = batches == label
            mean_b = np.asarray(y[member].mean(0)).ravel() if member.any() else norm.density_mean[mi]
            if spec.is_count:
                rows[j] = np.where(mean_b > 0, norm.density_mean[mi] / np.maximum(mean_b, 1e-30), 1.0)
            else:
                rows[j] = norm.density_mean[mi] - mean_b
        out.append(rows.astype(np.float32))
    return out


def _batch_scale_of(
    norm: Normaliser, mi: int, batches: np.ndarray, pick, is_count: bool
) -> np.ndarray | None:
    """``(n, F)`` rows of :attr:`Normaliser.batch_scale` for spots of ``batches`` (None: nothing to apply).

    A batch the normaliser does not know (not calibrated) is left as it is.
    """
    if norm.batch_scale is None:
        return None
    table = pick(norm.batch_scale[mi])
    codes = np.array([norm.batch_codes.get(b, -1) for b in np.asarray(batches)], dtype=np.int64)
    known = (codes >= 0) & (codes < table.shape[0])
    neutral = 1.0 if is_count else 0.0
    return np.where(known[:, None], table[np.maximum(codes, 0)], neutral)


def _fit_image_ridge(data: SpotData, norm: Normaliser, alpha: float) -> list:
    """Per modality the closed-form ridge of spot density on image features, with a fixed penalty."""
    z = standardised_image(data, norm)
    ridges = []
    for mi, spec in enumerate(data.modalities):
        x = data.counts[mi]
        y = spot_density(x, data.layout, norm.area_unit) if spec.is_count else x
        y = y if sp.issparse(y) else np.asarray(y, dtype=np.float64)  # sparse stays sparse
        y = _to_common_scale(y, data.batches, spec)
        ridges.append(
            tuple(a.astype(np.float32) for a in fit_footprint_ridge(y, z, data.layout, alpha=alpha))
        )
    return ridges


def _fit_image_evidence(
    data: SpotData, norm: Normaliser, *, nuclei_prior: bool = False
) -> tuple[list, list[EvidenceWeights]]:
    """Per modality the closed-form image ridge and the weight of its term in the offsets.

    The ridge penalty and the weight are chosen together by cross-validation over spots (see
    :func:`soscope.model._evidence.select_weights`); the ridge is then refitted on every spot. With a
    segmentation and ``nuclei_prior``, a count modality's nucleus term is weighted by the same
    cross-validation (see :func:`soscope.model._evidence.select_nuclei_weight`).
    """
    z = standardised_image(data, norm)
    nuclei = None
    has_nuclei = data.nuclei_count is not None and np.isfinite(data.nuclei_count).any()
    if has_nuclei and nuclei_prior:
        nuclei = spot_nuclei_density(data.nuclei_count, data.layout, norm.area_unit)
    design = footprint_design(z, data.layout)
    area = data.layout.footprint_area / norm.area_unit
    every = np.arange(data.n_spots)
    ridges, weights = [], []
    for mi, spec in enumerate(data.modalities):
        x = data.counts[mi]
        y = spot_density(x, data.layout, norm.area_unit) if spec.is_count else x
        y = y if sp.issparse(y) else np.asarray(y, dtype=np.float64)  # sparse stays sparse
        y = _to_common_scale(y, data.batches, spec)
        floor = None
        prior = y
        if spec.is_count:
            floor = _FLOOR * norm.density_mean[mi] + 1e-8
            reference = None if norm.cross_reference is None else norm.cross_reference[mi]
            if reference is not None:  # the prior interpolates densities predicted from a deeper modality
                prior = np.maximum(reference_density(data, every, data.layout, norm, reference), floor)
        w = select_weights(
            y, prior, design, area, data.centres, np.asarray(data.sections), data.spacing, floor,
            is_count=spec.is_count,
        )  # fmt: skip
        logger.info("image evidence for modality %r: %s", spec.name, w.reason)
        if spec.is_count and nuclei is not None:
            select_nuclei_weight(
                w,
                y,
                prior,
                design,
                area,
                data.centres,
                np.asarray(data.sections),
                data.spacing,
                floor,
                nuclei,
            )
            logger.info("nucleus evidence for modality %r: %s", spec.name, w.nuclei_reason)
        elif nuclei is not None:
            w.nuclei_reason = "values (not counts): no nucleus term"
        elif has_nuclei:
            w.nuclei_reason = "nucleus term off (nuclei_prior=False, the default): nucleus weight 0"
        ridge = fit_footprint_ridge(y, z, data.layout, alpha=w.alpha)
        ridges.append(tuple(a.astype(np.float32) for a in ridge))
        weights.append(w)
    return ridges, weights


#: a modality is a reference for another when it has at least this many times its counts per spot
_REFERENCE_DEPTH = 4.0
#: principal components of the reference modality's log densities used to predict the sparse one
_REFERENCE_COMPONENTS = 8


def _log_density(
    data: SpotData, sources, nodes: np.ndarray, layout: SubspotLayout, area_unit: float
) -> np.ndarray:
    parts = [spot_density(data.rows(int(j), nodes), layout, area_unit) for j in sources]
    return np.log1p(
        np.hstack([np.asarray(p.toarray() if sp.issparse(p) else p, dtype=np.float32) for p in parts])
    )


def _fit_cross_reference(data: SpotData, norm: Normaliser) -> list | None:
    """Fit, for each count modality much sparser than another, a ridge predicting its spot densities.

    The ridge predicts from the deeper modality's leading log-density components (fitted once, in closed
    form). The offsets of the sparse modality then interpolate these predicted neighbour densities instead
    of its own noisy ones, so the deeper modality's spatial pattern shapes how the sparse one splits (the
    cross-omics reference: e.g. antibody tags for the RNA of spatial-CITE-seq).
    """
    counts = [i for i, spec in enumerate(data.modalities) if spec.is_count and spec.likelihood != "bernoulli"]
    if len(counts) < 2 or data.n_spots < 3 * _REFERENCE_COMPONENTS:
        return None
    depth = {i: float(np.asarray(data.counts[i].sum())) / data.n_spots for i in counts}
    every = np.arange(data.n_spots)
    out: list = [None] * len(data.modalities)
    for m in counts:
        sources = [j for j in counts if j != m and depth[j] >= _REFERENCE_DEPTH * max(depth[m], 1e-12)]
        if not sources:
            continue
        lp = _log_density(data, sources, every, data.layout, norm.area_unit)
        mean = lp.mean(0)
        _, _, vt = np.linalg.svd(lp - mean, full_matrices=False)
        comp = vt[: min(_REFERENCE_COMPONENTS, vt.shape[0])].astype(np.float32)
        design = np.hstack([(lp - mean) @ comp.T, np.ones((data.n_spots, 1), np.float32)]).astype(np.float64)
        y = spot_density(data.counts[m], data.layout, norm.area_unit)
        y = np.asarray(y.toarray() if sp.issparse(y) else y, dtype=np.float64)
        beta = np.linalg.solve(design.T @ design + 1e-3 * np.eye(design.shape[1]), design.T @ y)
        out[m] = (np.asarray(sources, dtype=np.int64), mean.astype(np.float32), comp, beta.astype(np.float32))
        logger.info(
            "no image: modality %r borrows the spatial pattern of %s (cross-omics reference, %d components)",
            data.modalities[m].name, [data.modalities[j].name for j in sources], comp.shape[0],
        )  # fmt: skip
    return out if any(r is not None for r in out) else None


def reference_density(
    data: SpotData, nodes: np.ndarray, layout: SubspotLayout, norm: Normaliser, reference, cols=None
) -> np.ndarray:
    """Spot densities of a sparse modality predicted from its reference modality (see the fit above).

    ``cols``: only these feature columns of the sparse modality (a slice or index array; None: all).
    """
    sources, mean, comp, beta = reference
    lp = _log_density(data, sources, nodes, layout, norm.area_unit)
    design = np.hstack([(lp - mean) @ comp.T, np.ones((len(nodes), 1), np.float32)])
    return design @ (beta if cols is None else beta[:, cols])


def _to_common_scale(y, batches: np.ndarray, spec: ModalitySpec):
    """Spot values with each batch's per-feature mean brought to the mean over all spots.

    Sections with different capture bias would otherwise blur the image model fitted on them together;
    the batch bias itself is learned by the network (``batch_bias``).
    """
    labels, codes = np.unique(np.asarray(batches), return_inverse=True)
    if len(labels) < 2:
        return y
    overall = np.asarray(y.mean(0)).ravel()
    factors = np.empty((len(labels), y.shape[1]))
    for b in range(len(labels)):
        mean_b = np.asarray(y[codes == b].mean(0)).ravel()
        factors[b] = overall / np.maximum(mean_b, 1e-12) if spec.is_count else overall - mean_b
    if spec.is_count:
        if sp.issparse(y):
            y = y.tocsr(copy=True).astype(np.float64)
            y.data *= factors[codes[np.repeat(np.arange(y.shape[0]), np.diff(y.indptr))], y.indices]
            return y
        return y * factors[codes]
    return (y.toarray() if sp.issparse(y) else y) + factors[codes]


def encoder_input(x, spec: ModalitySpec, lib: np.ndarray) -> np.ndarray:
    """Return the encoder input before standardisation, float32.

    Count modalities: log1p of counts per 10,000 plus the log library size; Gaussian ones: the values.
    Computed ``soscope.settings.feature_block_size`` columns at a time into the one float32 result (the
    float64 intermediates are those of a block: a whole-transcriptome chunk would otherwise hold several
    float64 copies of spots × features); each column's values are those of the whole computation.
    Always a new array (never a view of ``x``).
    """
    if not spec.is_count:  # a new array: callers standardise it in place
        return np.array(x.toarray() if sp.issparse(x) else x, dtype=np.float32)
    n, n_features = x.shape
    out = np.empty((n, n_features + 1), dtype=np.float32)
    for cols in _column_blocks(n_features):
        out[:, cols] = _log_scaled(x[:, cols], lib)
    out[:, n_features] = np.log1p(lib)
    return out


def _column_blocks(n_features: int) -> list[slice]:
    """Slices of ``soscope.settings.feature_block_size`` columns covering ``n_features``."""
    block = settings.feature_block_size
    return [slice(a, min(a + block, n_features)) for a in range(0, n_features, block)]


def _log_scaled(x, lib: np.ndarray) -> np.ndarray:
    """``log1p`` of counts per 10,000 (float64) of some columns of a count matrix (dense or sparse)."""
    scaled = _row_scale(x, 1e4 / np.maximum(lib, 1.0))
    return np.log1p(scaled.toarray() if sp.issparse(scaled) else np.asarray(scaled))


def _encoder_input_moments(x, spec: ModalitySpec, lib: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-column mean and (population) std of :func:`encoder_input`, a block of rows at a time.

    A sparse matrix is never densified whole: only ``soscope.settings.dense_block_rows`` rows at once,
    ``soscope.settings.feature_block_size`` columns at a time (the last block holds the library column).
    """
    n, n_features = x.shape
    width = n_features + (1 if spec.is_count else 0)
    total, sq = np.zeros(width), np.zeros(width)
    block = settings.dense_block_rows
    blocks = _column_blocks(n_features)
    for start in range(0, n, block):
        rows = slice(start, start + block)
        xr = x[rows]
        for cols in blocks:
            part = xr[:, cols]
            if spec.is_count:  # float32 as encoder_input gives it, then float64 sums
                blk = _log_scaled(part, lib[rows])
                if cols.stop == n_features:
                    blk = np.hstack([blk, np.log1p(lib[rows])[:, None]])
                    cols = slice(cols.start, width)
                blk = blk.astype(np.float32).astype(np.float64)
            else:
                blk = np.asarray(part.toarray() if sp.issparse(part) else part, dtype=np.float32).astype(
                    np.float64
                )
            # numpy's sum order depends on the block's shape: one block of all columns sums exactly as
            # the whole encoder input would
            total[cols] += blk.sum(0)
            sq[cols] += (blk**2).sum(0)
    mean = total / max(n, 1)
    return mean, np.sqrt(np.maximum(sq / max(n, 1) - mean**2, 0.0))


def n_encoder_inputs(modalities: list[ModalitySpec]) -> int:
    """Width of the encoder input: every feature, plus one library column per count modality."""
    return sum(m.n_features + (1 if m.is_count else 0) for m in modalities)


def kernel_interpolate(
    values: np.ndarray, centres: np.ndarray, points: np.ndarray, spacing: float
) -> np.ndarray:
    """Gaussian-kernel interpolation (σ = 0.45 × spacing, cut at 3σ) of spot ``values`` at ``points``.

    Sparse (KD-tree radius query), linear in the number of points; a point with no spot in reach takes
    its nearest spot's values.
    """
    return np.asarray(kernel_matrix(centres, points, spacing) @ values)


def make_batch(
    data: SpotData,
    chunk: Chunk,
    norm: Normaliser,
    *,
    loss_spots: np.ndarray | None = None,
    use_image_offset: bool = True,
    adj=None,
    feature_block_size: int | None = None,
) -> SpotBatch:
    """Tensors of one chunk: its spots (core + halo), their sub-spots, local graphs and the loss mask.

    ``loss_spots`` is a boolean ``(N,)`` mask of spots allowed in the loss (training spots); only core spots
    of the chunk count, so each spot's likelihood counts once per epoch. The sub-spot offsets of a
    modality with more than ``feature_block_size`` features (default ``soscope.settings.feature_block_size``)
    are a :class:`~soscope.module.LazyColumns`, computed for the columns asked for (the same values).
    """
    nodes = chunk.nodes
    n = len(nodes)
    adj = adjacency(data.edge_index, data.n_spots) if adj is None else adj
    local = adj[nodes][:, nodes].tocoo()
    edge_index = torch.as_tensor(np.vstack([local.row, local.col]), dtype=torch.long)
    sub = data.layout.subset(nodes)
    rows = data.layout.rows_of(nodes)
    img = None
    # a model without the image (use_image=False, or an image weighted 0 everywhere: see Normaliser.evidence)
    # gets neither its features nor the sub-spot graph of the image regulariser, so it equals the no-image run
    if use_image_offset and data.image_features is not None and norm.image_mean is not None:
        img = standardised_image(data, norm, rows)
    xs, ins, offsets = [], [], []
    # one kernel from the sub-spots to the chunk's spots: the spatial prior and the image term share it
    kernel = kernel_matrix(data.centres[nodes], sub.centroid, data.spacing)
    block = settings.feature_block_size if feature_block_size is None else feature_block_size
    for mi, spec in enumerate(data.modalities):
        x = data.rows(mi, nodes)
        lib = x.sum(1).astype(np.float64)
        xs.append(torch.as_tensor(x))
        standardised = encoder_input(x, spec, lib)
        standardised -= norm.input_mean[mi]  # in place: spots × features, float32
        standardised /= norm.input_std[mi]
        ins.append(standardised)
        parts = (data, norm, mi, x, sub, nodes, kernel, img)
        if spec.n_features <= block:
            offsets.append(torch.as_tensor(subspot_offset(*parts)))
        else:  # sub-spots × every feature would be the batch's largest array: columns on demand
            offsets.append(
                LazyColumns(functools.partial(subspot_offset, *parts), (sub.n_subspots, spec.n_features))
            )
    img = None if img is None else torch.as_tensor(img)
    core_mask = np.zeros(n, dtype=bool)
    core_mask[chunk.core_in_nodes] = True
    if loss_spots is not None:
        core_mask &= loss_spots[nodes]
    nonempty = np.ones(n, dtype=bool)
    for mi, spec in enumerate(data.modalities):
        if spec.is_count:
            nonempty &= xs[mi].sum(1).numpy() > 0
    core_mask &= nonempty
    batch_codes = np.array([norm.batch_codes.get(b, 0) for b in data.batches[nodes]], dtype=np.int64)
    sub_edges = sim = None
    if data.subspot_size is not None and img is not None and sub.polygons is not None:
        sub_edges, sim = _sub_edges(sub, img, data.subspot_size)
    return SpotBatch(
        x=xs,
        x_in=torch.as_tensor(ins[0] if len(ins) == 1 else np.concatenate(ins, axis=1), dtype=torch.float32),
        edge_index=edge_index,
        batch=torch.as_tensor(batch_codes),
        sub_spot=torch.as_tensor(sub.spot_index),
        sub_area=torch.as_tensor(sub.area / norm.area_unit, dtype=torch.float32),
        sub_weight=torch.as_tensor(sub.footprint_weight, dtype=torch.float32),
        sub_image=img,
        sub_offset=offsets,
        loss_mask=torch.as_tensor(core_mask),
        sub_edges=sub_edges,
        sub_edge_sim=sim,
    )


def subspot_offset(
    data: SpotData,
    norm: Normaliser,
    mi: int,
    x: np.ndarray,
    sub: SubspotLayout,
    nodes: np.ndarray,
    kernel,
    img: np.ndarray | None,
    cols: slice | np.ndarray | None = None,
) -> np.ndarray:
    """Return the fixed offsets ``(m, len(cols))`` of modality ``mi`` at the sub-spots of a chunk, float32.

    Each column depends on its feature alone (the spatial prior interpolates that feature's spot
    densities; the image term applies that feature's ridge coefficients; the nucleus term of a count
    modality is the same for every column), so ``cols`` (None: all) gives the same values as the same
    columns of all offsets, up to the float rounding of dense products.

    Parameters
    ----------
    data, norm
        The spots and the fitted normaliser.
    mi
        The modality.
    x
        ``(n, F)`` dense counts of the chunk's spots ``nodes``.
    sub
        The sub-spots of ``nodes``.
    nodes
        The chunk's spots (rows of ``data``).
    kernel
        :func:`kernel_matrix` from ``sub``'s centroids to the spots' centres.
    img
        ``(m, D)`` standardised image features of ``sub``, or None (no image term).
    cols
        Feature columns: a slice, an index array, or None for all.

    """
    spec = data.modalities[mi]
    pick = (lambda a: a) if cols is None else (lambda a: np.asarray(a)[..., cols])  # noqa: E731
    legacy = norm.offsets == "legacy" and img is not None and norm.image_ridge is not None
    if legacy:  # soscope <= 0.1.0: the image ridge alone, negative densities floored
        xm, ym, coef = norm.image_ridge[mi]
        pred = pick(ym)[None, :] + (img - xm) @ pick(coef)
        offset = (
            np.log(np.maximum(pred, _FLOOR * pick(norm.density_mean[mi])[None, :] + 1e-8))
            if spec.is_count
            else pred
        )
    elif spec.is_count:
        floor = _FLOOR * pick(norm.density_mean[mi]) + 1e-8
        reference = None if norm.cross_reference is None else norm.cross_reference[mi]
        if reference is None:
            dens = spot_density(pick(x), sub, norm.area_unit)
        else:  # a sparse modality: its densities as predicted from a deeper one
            dens = np.maximum(reference_density(data, nodes, sub, norm, reference, cols), floor)
        scale = _batch_scale_of(norm, mi, data.batches[nodes], pick, True)
        if scale is not None:  # on the common scale: each batch's capture bias is the network's to learn
            dens = dens * scale
        # the spatial prior: interpolation of neighbouring spots' densities
        offset = np.log(np.asarray(kernel @ dens) + floor)
        ref = norm.reference
        if ref is not None and ref.modality == mi and ref.weight > 0 and data.cell_type_abundance is not None:
            # joined by the single-cell reference's type-aware densities, weighted by cross-validation
            offset = _with_reference(offset, data, norm, nodes, sub, kernel, img, cols, scale)
    else:
        scale = _batch_scale_of(norm, mi, data.batches[nodes], pick, False)
        offset = np.asarray(kernel @ (pick(x) if scale is None else pick(x) + scale))
    beta = norm.image_weights[mi]
    if not legacy and img is not None and norm.image_ridge is not None and beta > 0:
        # the image evidence beyond the spatial prior, weighted by how well it predicted held-out spots
        xm, ym, coef = norm.image_ridge[mi]
        ridge = norm.image_ridge[mi] if cols is None else (xm, pick(ym), pick(coef))
        mean_density = np.asarray(ridge[1], dtype=np.float64) if spec.is_count else None
        offset = offset + beta * image_term(img, ridge, sub, kernel, mean_density)
    ev = None if norm.evidence is None else norm.evidence[mi]
    if not legacy and img is not None and spec.is_count and ev is not None and ev.gamma > 0:
        if data.nuclei_count is not None:
            # the nuclei beyond the spatial prior, weighted by how well they predicted held-out spots; the
            # same term for every feature column
            count = data.nuclei_count[data.layout.rows_of(nodes)]
            term = nuclei_term(count, sub, kernel, norm.area_unit, ev.nuclei_offset)
            offset = offset + ev.gamma * term[:, None]
    return np.asarray(offset, dtype=np.float32)


def _with_reference(
    offset: np.ndarray,
    data: SpotData,
    norm: Normaliser,
    nodes: np.ndarray,
    sub: SubspotLayout,
    kernel,
    img: np.ndarray | None,
    cols,
    scale: np.ndarray | None,
) -> np.ndarray:
    """``offset`` with its columns shared with the reference mixed with the reference's log densities.

    ``(1 - lambda) * spatial prior + lambda * log(sum_t n_kt P_tg rho_g / a_k)`` on the batches' common
    scale; columns the reference lacks keep the spatial prior alone.
    """
    ref = norm.reference
    n_features = data.modalities[ref.modality].n_features
    shared_pos = np.full(n_features, -1, dtype=np.int64)
    shared_pos[ref.data_columns] = np.arange(len(ref.data_columns))
    picked = shared_pos if cols is None else shared_pos[cols]
    mask = picked >= 0
    if not mask.any():
        return offset
    n_kt = subspot_abundance(
        ref, data.cell_type_abundance[nodes], sub, data.centres[nodes], data.spacing, norm.area_unit,
        img=img, kernel=kernel,
    )  # fmt: skip
    log_ref = reference_log_density(ref, n_kt, sub, norm.area_unit, picked[mask])
    if scale is not None:
        log_ref = log_ref + np.log(np.maximum(scale[sub.spot_index][:, mask], 1e-30))
    out = np.array(offset, dtype=np.float64)
    out[:, mask] = (1.0 - ref.weight) * out[:, mask] + ref.weight * log_ref
    return out


def _sub_edges(sub: SubspotLayout, img: torch.Tensor, size: float):
    """Edges between the chunk's sub-spots that share a boundary, with image similarity weights.

    The edges are those of :func:`soscope.geometry.subspot_graph` on the whole layout with both ends in the
    chunk (the tolerances derive from the whole layout's spot ``size``), found on the chunk's polygons
    alone: memory and time per minibatch do not grow with the slide.
    """
    from ..geometry import subspot_graph

    edges = torch.as_tensor(subspot_graph(sub, size=size), dtype=torch.long)
    if edges.shape[1] == 0:
        return edges, torch.zeros(0)
    d2 = ((img[edges[0]] - img[edges[1]]) ** 2).mean(-1)
    sim = torch.exp(-d2 / d2.median().clamp_min(1e-6))
    return edges, sim
