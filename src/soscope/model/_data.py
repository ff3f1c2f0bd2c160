"""Arrays the model trains on, their normalisation, and the tensors of one chunk of spots."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
import torch

from ..geometry import SubspotLayout
from ..module import ModalitySpec, SpotBatch
from ..tiling import Chunk, adjacency

_PRIOR_EPS = 0.05  # prior floor, as a fraction of a feature's mean relative expression


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
    sub_edge_index: np.ndarray | None = None  # (2, E') sub-spot neighbour graph

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
    """Statistics fitted once on the training spots and reused unchanged on new data (saved with the model)."""

    input_mean: list[np.ndarray]  # per modality, of log1p(normalised) inputs
    input_std: list[np.ndarray]
    library_mean: list[float]  # per modality, mean library per unit footprint area
    relative_mean: list[np.ndarray]  # per modality mean relative expression (prior floor)
    image_mean: np.ndarray | None
    image_std: np.ndarray | None
    area_unit: float  # mean footprint area: sub-spot areas are expressed relative to it
    batch_codes: dict[str, int]

    @classmethod
    def fit(cls, data: SpotData, batch_labels: list[str] | None = None) -> Normaliser:
        """Fit the statistics on ``data`` (all its spots)."""
        footprint = footprint_area(data.layout)
        area_unit = float(np.mean(footprint))
        in_mean, in_std, lib_mean, rel_mean = [], [], [], []
        for mi, spec in enumerate(data.modalities):
            x = data.counts[mi]
            lib = data.library(mi)
            if spec.is_count:
                keep = lib > 0
                lib_mean.append(float(np.mean(lib[keep] / footprint[keep] * area_unit)) if keep.any() else 1.0)
                rel = np.asarray((_row_scale(x[keep], 1 / lib[keep])).mean(0)).ravel()
            else:
                lib_mean.append(1.0)
                rel = np.asarray(x.mean(0)).ravel()
            rel_mean.append(rel.astype(np.float32))
            xin = encoder_input(x, spec, lib)
            in_mean.append(xin.mean(0).astype(np.float32))
            in_std.append(np.maximum(xin.std(0), 1e-3).astype(np.float32))
        if data.image_features is not None:
            f = data.image_features
            img_mean = np.nanmean(f, 0).astype(np.float32)
            img_std = np.maximum(np.nanstd(f, 0), 1e-6).astype(np.float32)
        else:
            img_mean = img_std = None
        labels = batch_labels if batch_labels is not None else sorted(np.unique(data.batches).tolist())
        return cls(in_mean, in_std, lib_mean, rel_mean, img_mean, img_std, area_unit, {b: i for i, b in enumerate(labels)})


def _row_scale(x, factors: np.ndarray):
    if sp.issparse(x):
        return sp.diags(factors) @ x
    return np.asarray(x) * factors[:, None]


def footprint_area(layout: SubspotLayout) -> np.ndarray:
    """``(N,)`` measured area of each spot: the sum over its sub-spots of area × footprint weight."""
    return np.bincount(layout.spot_index, weights=layout.area * layout.footprint_weight, minlength=layout.n_spots)


def encoder_input(x, spec: ModalitySpec, lib: np.ndarray) -> np.ndarray:
    """Encoder input before standardisation: log1p of counts per 10,000, or the values themselves."""
    if spec.is_count:
        scaled = _row_scale(x, 1e4 / np.maximum(lib, 1.0))
        dense = scaled.toarray() if sp.issparse(scaled) else np.asarray(scaled)
        return np.log1p(dense).astype(np.float32)
    return np.asarray(x.toarray() if sp.issparse(x) else x, dtype=np.float32)


def kernel_prior(
    rel: np.ndarray, centres: np.ndarray, layout: SubspotLayout, spacing: float, floor: np.ndarray
) -> np.ndarray:
    """Log ratio, within each spot, of neighbour-interpolated relative expression at sub-spot centroids.

    A Gaussian kernel (σ = 0.45 × spacing, cut at 3σ) of the spots' relative profiles ``rel`` evaluated at
    sub-spot centroids; the log is centred per spot (footprint-area weighted), so the prior shapes the
    split only. Computed with a KD-tree: sparse, linear in the number of sub-spots.
    """
    from scipy.spatial import cKDTree

    sigma = 0.45 * spacing
    tree = cKDTree(centres)
    pairs = tree.query_ball_point(layout.centroid, r=3 * sigma)
    lens = np.fromiter((len(p) for p in pairs), dtype=np.int64, count=len(pairs))
    rows = np.repeat(np.arange(len(pairs)), lens)
    cols = np.concatenate(pairs).astype(np.int64) if len(rows) else np.zeros(0, np.int64)
    d2 = ((layout.centroid[rows] - centres[cols]) ** 2).sum(1)
    k = sp.csr_matrix((np.exp(-0.5 * d2 / sigma**2), (rows, cols)), shape=(len(pairs), len(centres)))
    norm = np.asarray(k.sum(1)).ravel()
    interp = np.asarray(k @ rel) / np.maximum(norm, 1e-12)[:, None]
    logp = np.log(interp + floor[None, :])
    aw = layout.area * layout.footprint_weight
    spot_mean = np.zeros((layout.n_spots, rel.shape[1]))
    np.add.at(spot_mean, layout.spot_index, logp * aw[:, None])
    spot_mean /= np.maximum(np.bincount(layout.spot_index, weights=aw, minlength=layout.n_spots), 1e-12)[:, None]
    return (logp - spot_mean[layout.spot_index]).astype(np.float32)


def make_batch(
    data: SpotData,
    chunk: Chunk,
    norm: Normaliser,
    *,
    loss_spots: np.ndarray | None = None,
    use_prior: bool = True,
    adj=None,
) -> SpotBatch:
    """Tensors of one chunk: its spots (core + halo), their sub-spots, local graphs and the loss mask.

    ``loss_spots`` is a boolean ``(N,)`` mask of spots allowed in the loss (training spots); only core spots
    of the chunk count, so each spot's likelihood counts once per epoch.
    """
    nodes = chunk.nodes
    n = len(nodes)
    adj = adjacency(data.edge_index, data.n_spots) if adj is None else adj
    local = adj[nodes][:, nodes].tocoo()
    edge_index = torch.as_tensor(np.vstack([local.row, local.col]), dtype=torch.long)
    sub = data.layout.subset(nodes)
    rows = data.layout.rows_of(nodes)
    xs, libs, ins, priors = [], [], [], []
    fp = footprint_area(sub)
    for mi, spec in enumerate(data.modalities):
        x = data.rows(mi, nodes)
        lib = x.sum(1).astype(np.float64)
        xs.append(torch.as_tensor(x))
        xin = (encoder_input(x, spec, lib) - norm.input_mean[mi]) / norm.input_std[mi]
        ins.append(xin)
        if spec.is_count:
            # log library per unit footprint, relative to the training mean; empty spots get a tiny one
            per_area = np.maximum(lib, 0.5) / np.maximum(fp, 1e-12) * norm.area_unit
            libs.append(torch.as_tensor(np.log(per_area / norm.library_mean[mi]), dtype=torch.float32))
            if use_prior:
                rel = x / np.maximum(lib, 1.0)[:, None]
                priors.append(torch.as_tensor(kernel_prior(rel, data.centres[nodes], sub, data.spacing, _PRIOR_EPS * norm.relative_mean[mi] + 1e-8)))
            else:
                priors.append(None)
        else:
            libs.append(torch.zeros(n))
            priors.append(None)
    img = None
    if data.image_features is not None and norm.image_mean is not None:
        f = (data.image_features[rows] - norm.image_mean) / norm.image_std
        img = torch.as_tensor(np.nan_to_num(f, nan=0.0).clip(-8, 8), dtype=torch.float32)
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
    if data.sub_edge_index is not None and img is not None:
        sub_edges, sim = _local_sub_edges(data.sub_edge_index, rows, img)
    return SpotBatch(
        x=xs,
        x_in=torch.as_tensor(np.concatenate(ins, axis=1), dtype=torch.float32),
        log_lib=libs,
        edge_index=edge_index,
        batch=torch.as_tensor(batch_codes),
        sub_spot=torch.as_tensor(sub.spot_index),
        sub_area=torch.as_tensor(sub.area / norm.area_unit, dtype=torch.float32),
        sub_weight=torch.as_tensor(sub.footprint_weight, dtype=torch.float32),
        sub_image=img,
        sub_prior=priors if use_prior else None,
        loss_mask=torch.as_tensor(core_mask),
        sub_edges=sub_edges,
        sub_edge_sim=sim,
    )


def _local_sub_edges(sub_edge_index: np.ndarray, rows: np.ndarray, img: torch.Tensor):
    """Sub-spot edges with both ends in ``rows`` (sorted), re-indexed, with image similarity weights."""
    a, b = sub_edge_index
    ia = np.searchsorted(rows, a)
    ib = np.searchsorted(rows, b)
    ok = (ia < len(rows)) & (ib < len(rows))
    ok[ok] &= (rows[ia[ok]] == a[ok]) & (rows[ib[ok]] == b[ok])
    edges = torch.as_tensor(np.vstack([ia[ok], ib[ok]]), dtype=torch.long)
    if edges.shape[1] == 0:
        return edges, torch.zeros(0)
    d2 = ((img[edges[0]] - img[edges[1]]) ** 2).mean(-1)
    sim = torch.exp(-d2 / d2.median().clamp_min(1e-6))
    return edges, sim
