"""Naive super-resolution baselines: what an enhancement has to beat.

Each returns the expected counts of every sub-spot, ``(M, F)`` float32 in layout order, on the same scale
as soscope's enhanced ``X`` (density × polygon area), where a spot's *density* is its counts divided by
its footprint area ``sum_k area_k * footprint_weight_k`` (the area it measured).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.spatial import cKDTree

from .._errors import SoscopeInputError
from ..geometry import SubspotLayout, lattice_spacing

__all__ = ["even_split", "fit_footprint_ridge", "gaussian_interpolation", "image_regression", "spot_density"]


def _counts(spot_counts, layout: SubspotLayout) -> np.ndarray:
    if sp.issparse(spot_counts):
        spot_counts = spot_counts.toarray()
    x = np.asarray(spot_counts, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2 or x.shape[0] != layout.n_spots:
        raise SoscopeInputError(
            f"`spot_counts` must be (n_spots, n_features) with n_spots = {layout.n_spots} (the layout's "
            f"spots, in the same order); got shape {x.shape}."
        )
    return x


def _footprint_area(layout: SubspotLayout) -> np.ndarray:
    fa = layout.footprint_area
    if np.any(fa <= 0):
        raise SoscopeInputError(
            f"{int((fa <= 0).sum())} spot(s) have no sub-spot area inside their footprint, so their density "
            "is undefined; check the layout (footprint_weight) or drop those spots."
        )
    return fa


def spot_density(spot_counts, layout: SubspotLayout) -> np.ndarray:
    """``(N, F)`` counts per unit area of each spot's footprint (``counts / sum_k area_k * weight_k``)."""
    x = _counts(spot_counts, layout)
    return x / _footprint_area(layout)[:, None]


def even_split(spot_counts, layout: SubspotLayout) -> np.ndarray:
    """Every sub-spot gets its parent's density: ``counts / footprint_area * area_k``.

    Conserves the footprint: ``sum_k footprint_weight_k * pred_k == counts`` for every spot.
    """
    d = spot_density(spot_counts, layout)
    return (d[layout.spot_index] * layout.area[:, None]).astype(np.float32)


def gaussian_interpolation(
    spot_counts,
    spot_centres,
    layout: SubspotLayout,
    sigma: float | None = None,
    *,
    truncate: float = 3.0,
) -> np.ndarray:
    """Gaussian-kernel average of the spots' densities at each sub-spot centroid, times its area.

    Parameters
    ----------
    spot_counts
        ``(N, F)`` spot counts in layout order.
    spot_centres
        ``(N, 2)`` spot centres in the layout's coordinates.
    layout
        The sub-spots.
    sigma
        Kernel width; default ``0.45 *`` :func:`soscope.geometry.lattice_spacing` of the centres.
    truncate
        Spots farther than ``truncate * sigma`` get no weight (sparse KD-tree neighbourhoods; never a
        dense matrix). A sub-spot with no spot in reach takes its parent's density.

    Returns
    -------
    ``(M, F)`` float32 expected counts.

    """
    d = spot_density(spot_counts, layout)
    c = np.asarray(spot_centres, dtype=np.float64)
    if c.shape != (layout.n_spots, 2):
        raise SoscopeInputError(f"`spot_centres` must be ({layout.n_spots}, 2); got {c.shape}.")
    if sigma is None:
        sigma = 0.45 * lattice_spacing(c) if len(c) > 1 else 1.0
    if not sigma > 0:
        raise SoscopeInputError(f"`sigma` must be positive; got {sigma!r}.")
    pairs = cKDTree(layout.centroid).sparse_distance_matrix(
        cKDTree(c), truncate * sigma, output_type="ndarray"
    )
    w = np.exp(-0.5 * (pairs["v"] / sigma) ** 2)
    m = layout.n_subspots
    W = sp.csr_matrix((w, (pairs["i"], pairs["j"])), shape=(m, layout.n_spots))
    tot = np.asarray(W.sum(axis=1)).ravel()
    empty = tot <= 0
    if empty.any():  # nothing in reach: the parent
        rows = np.flatnonzero(empty)
        W = W + sp.csr_matrix((np.ones(len(rows)), (rows, layout.spot_index[rows])), shape=W.shape)
        tot[empty] = 1.0
    W = sp.diags(1.0 / tot) @ W
    return (np.asarray(W @ d) * layout.area[:, None]).astype(np.float32)


def footprint_design(subspot_features: np.ndarray, layout: SubspotLayout) -> np.ndarray:
    """``(N, D)`` footprint-area-weighted mean of each spot's sub-spot features: what a spot's image shows."""
    z = np.asarray(subspot_features, dtype=np.float64)
    wa = layout.area * layout.footprint_weight
    agg = sp.csr_matrix(
        (wa, (layout.spot_index, np.arange(layout.n_subspots))), shape=(layout.n_spots, len(wa))
    )
    return np.asarray(agg @ z) / _footprint_area(layout)[:, None]


def fit_footprint_ridge(
    spot_density: np.ndarray, subspot_features: np.ndarray, layout: SubspotLayout, *, alpha: float = 1e-4
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ridge of spot densities on the footprint-weighted mean of their sub-spots' features (closed form).

    A linear model fitted this way applies unchanged to single sub-spots: the footprint-weighted sum of
    the sub-spot predictions is the spot prediction. Returns ``(x_mean (D,), y_mean (F,), beta (D, F))``;
    predict with ``y_mean + (z - x_mean) @ beta``.

    Parameters
    ----------
    spot_density
        ``(N, F)`` per-area spot values, dense or scipy sparse (never densified).
    subspot_features
        ``(M, D)`` standardised features without NaN, in layout order.
    layout
        The sub-spots.
    alpha
        Ridge penalty on standardised features, relative to the number of spots.

    """
    x = footprint_design(subspot_features, layout)
    xm = x.mean(axis=0)
    xc = x - xm
    n = len(x)
    if sp.issparse(spot_density):
        # xc's columns sum to 0, so xc.T @ (Y - ym) == xc.T @ Y: no need to centre (densify) a sparse Y
        ym = np.asarray(spot_density.mean(axis=0), dtype=np.float64).ravel()
        xty = np.asarray((spot_density.T @ xc).T, dtype=np.float64)
    else:
        spot_density = np.asarray(spot_density, dtype=np.float64)
        ym = spot_density.mean(axis=0)
        xty = xc.T @ (spot_density - ym)
    gram = xc.T @ xc / n + alpha * np.eye(x.shape[1])
    beta = np.linalg.solve(gram, xty / n)
    return xm, ym, beta


def image_regression(
    spot_counts,
    subspot_features,
    layout: SubspotLayout,
    *,
    alpha: float = 1e-4,
    quadratic: bool = False,
) -> np.ndarray:
    """Per-feature ridge regression of spot density on image features, predicted at the sub-spots.

    The spot-level design is the footprint-weighted mean of its sub-spots' (standardised) image
    features, ``sum_k w_k a_k z_k / sum_k w_k a_k`` (``w`` footprint weight, ``a`` area), so a linear
    model fitted on spots applies unchanged to sub-spots: the footprint-weighted sum of the sub-spot
    predictions is the spot prediction. All features are fitted at once (closed form), with an intercept.

    Parameters
    ----------
    spot_counts
        ``(N, F)`` spot counts in layout order.
    subspot_features
        ``(M, D)`` image features per sub-spot in layout order (NaN rows are set to the feature means).
    layout
        The sub-spots.
    alpha
        Ridge penalty on standardised features, relative to the number of spots.
    quadratic
        Add squares and pairwise products of the standardised features (after the weighted mean, i.e. a
        sub-spot-level quadratic model is not exactly consistent with the spot fit).

    Returns
    -------
    ``(M, F)`` float32 expected counts (densities clipped at 0, times area).

    """
    d = spot_density(spot_counts, layout)
    z = np.asarray(subspot_features, dtype=np.float64)
    if z.ndim != 2 or z.shape[0] != layout.n_subspots:
        raise SoscopeInputError(
            f"`subspot_features` must be (n_subspots, D) with n_subspots = {layout.n_subspots}; "
            f"got {z.shape}."
        )
    col_mean = np.nanmean(z, axis=0) if np.isfinite(z).any() else np.zeros(z.shape[1])
    col_mean = np.where(np.isfinite(col_mean), col_mean, 0.0)
    z = np.where(np.isfinite(z), z, col_mean[None, :])
    sd = z.std(axis=0)
    z = (z - z.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
    if quadratic:
        iu = np.triu_indices(z.shape[1])
        z = np.hstack([z, z[:, iu[0]] * z[:, iu[1]]])
        sd = z.std(axis=0)
        z = (z - z.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
    xm, ym, beta = fit_footprint_ridge(d, z, layout, alpha=alpha)
    dens = ym[None, :] + (z - xm) @ beta
    return (np.clip(dens, 0.0, None) * layout.area[:, None]).astype(np.float32)
