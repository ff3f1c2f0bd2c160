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
from ..model import fit_footprint_ridge, footprint_design, positive

# the ridge belongs to the model (its image evidence); the baselines reuse it (evaluate depends on model)
from ._metrics import dense_2d

__all__ = [
    "count_oracle",
    "expected_counts_oracle",
    "even_split",
    "fit_footprint_ridge",
    "footprint_design",
    "gaussian_interpolation",
    "image_regression",
    "image_ridge_split",
    "interpolation_split",
    "spot_density",
]


def _counts(spot_counts, layout: SubspotLayout) -> np.ndarray:
    x = dense_2d(spot_counts, "spot_counts", rows="spots")
    if x.shape[0] != layout.n_spots:
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
    return (
        _interpolated_density(spot_counts, spot_centres, layout, sigma, truncate) * layout.area[:, None]
    ).astype(np.float32)


def _interpolated_density(spot_counts, spot_centres, layout: SubspotLayout, sigma, truncate) -> np.ndarray:
    """``(M, F)`` Gaussian-kernel average of the spots' densities at each sub-spot centroid."""
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
    return np.asarray(W @ d)


def _standardised(subspot_features, layout: SubspotLayout) -> np.ndarray:
    """Image features with NaN at the column means, standardised (constant columns left at 0)."""
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
    return (z - z.mean(axis=0)) / np.where(sd > 0, sd, 1.0)


def _split_observed(counts: np.ndarray, density: np.ndarray, layout: SubspotLayout) -> np.ndarray:
    """Sub-spot counts ``area_k * density_k * c_i`` with ``c_i`` such that each footprint holds its counts.

    Inside the footprint the observed counts are split in proportion to ``w_k * area_k * density_k`` (as
    soscope's enhanced output, given its offsets); the part of a polygon outside the footprint gets the
    same scale. A spot whose densities are all 0 for a feature is split evenly.
    """
    aw = (layout.area * layout.footprint_weight)[:, None]
    part = aw * density
    total = np.zeros(counts.shape)
    np.add.at(total, layout.spot_index, part)
    zero = total[layout.spot_index] <= 0
    dens = np.where(zero, 1.0, density)
    total_even = np.zeros(counts.shape)
    np.add.at(total_even, layout.spot_index, aw * np.ones_like(density))
    denom = np.where(zero, total_even[layout.spot_index], total[layout.spot_index])
    scale = counts[layout.spot_index] / np.maximum(denom, 1e-300)
    return (layout.area[:, None] * dens * scale).astype(np.float32)


def interpolation_split(
    spot_counts,
    spot_centres,
    layout: SubspotLayout,
    sigma: float | None = None,
    *,
    truncate: float = 3.0,
) -> np.ndarray:
    """Each spot's observed counts split in proportion to the Gaussian interpolation of spot densities.

    The closed-form core of soscope without an image: sub-spot ``k`` of spot ``i`` gets
    ``x_i * w_k a_k D_k / sum_j w_j a_j D_j`` inside the footprint (``D`` the interpolated density, ``a`` the
    area, ``w`` the footprint weight); the footprint's counts are conserved.

    Parameters
    ----------
    spot_counts, spot_centres, layout, sigma, truncate
        As :func:`gaussian_interpolation`.

    Returns
    -------
    ``(M, F)`` float32 expected counts.

    """
    counts = _counts(spot_counts, layout)
    dens = _interpolated_density(counts, spot_centres, layout, sigma, truncate)
    return _split_observed(counts, dens, layout)


def count_oracle(spot_counts, subspot_cells, layout: SubspotLayout) -> np.ndarray:
    """ORACLE (uses the truth): each spot's observed counts split in proportion to its sub-spots' true cells.

    Not a method one can run on real data: ``subspot_cells`` is the true number of cells whose centre lies
    in each sub-spot polygon (e.g. ``obs["n_cells"]`` of the truth table of
    :func:`soscope.evaluate.pseudo_spots` or :func:`soscope.datasets.synthetic`). It shows how far knowing
    where the cells are takes a split of the observed counts — a ceiling for cell-count-driven methods
    (e.g. nuclei from the image), not for soscope in general.

    Sub-spot ``k`` of spot ``i`` gets ``x_i * n_k / sum_j w_j n_j`` (``n`` the cells, ``w`` the footprint
    weight; as :func:`interpolation_split` with the density ``n_k / a_k``); the footprint's counts are
    conserved. A spot with no cell inside its footprint is split evenly (:func:`even_split`).

    Parameters
    ----------
    spot_counts
        ``(N, F)`` spot counts in layout order.
    subspot_cells
        ``(M,)`` non-negative number of cells per sub-spot, in layout order.
    layout
        The sub-spots.

    Returns
    -------
    ``(M, F)`` float32 expected counts.

    """
    counts = _counts(spot_counts, layout)
    n = np.asarray(subspot_cells, dtype=np.float64).ravel()
    if n.shape != (layout.n_subspots,):
        raise SoscopeInputError(
            f"`subspot_cells` must hold one number per sub-spot ({layout.n_subspots}); got shape "
            f"{np.shape(subspot_cells)}."
        )
    if not np.all(np.isfinite(n)) or np.any(n < 0):
        raise SoscopeInputError("`subspot_cells` must be finite and non-negative (cell counts).")
    dens = np.divide(n, layout.area, out=np.zeros_like(n), where=layout.area > 0)
    return _split_observed(
        counts, np.broadcast_to(dens[:, None], (layout.n_subspots, counts.shape[1])), layout
    )


def _loo_alpha(x: np.ndarray, y: np.ndarray, alphas) -> float:
    """Return the ridge penalty with the smallest leave-one-spot-out error (closed form, features scaled)."""
    xm = x.mean(0)
    xc = x - xm
    n = len(x)
    yc = y - y.mean(0)
    scale = np.where(yc.std(0) > 0, yc.std(0), 1.0)
    yc = yc / scale
    best, best_err = alphas[0], np.inf
    for alpha in alphas:
        inv = np.linalg.inv(xc.T @ xc / n + alpha * np.eye(x.shape[1]))
        resid = yc - xc @ (inv @ (xc.T @ yc / n))
        h = np.einsum("ij,jk,ik->i", xc, inv, xc) / n + 1.0 / n  # leverage, intercept included
        err = float(((resid / np.maximum(1.0 - h, 1e-6)[:, None]) ** 2).mean())
        if err < best_err:
            best, best_err = alpha, err
    return float(best)


def image_ridge_split(
    spot_counts,
    subspot_features,
    layout: SubspotLayout,
    *,
    alpha: float | None = None,
) -> np.ndarray:
    """Each spot's observed counts split in proportion to an image ridge's predicted sub-spot densities.

    The ridge of spot densities on footprint-averaged image features (:func:`fit_footprint_ridge`) is
    predicted at each sub-spot, made positive smoothly (:func:`soscope.model._evidence.positive`) and the
    spot's counts are split in proportion to ``w_k a_k`` times it, as in :func:`interpolation_split`.

    Parameters
    ----------
    spot_counts, subspot_features, layout
        As :func:`image_regression`.
    alpha
        Ridge penalty; default chosen among ``1e-4 ... 10`` by closed-form leave-one-spot-out error.

    Returns
    -------
    ``(M, F)`` float32 expected counts.

    """
    counts = _counts(spot_counts, layout)
    d = spot_density(counts, layout)
    z = _standardised(subspot_features, layout)
    if alpha is None:
        alpha = _loo_alpha(footprint_design(z, layout), d, (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0))
    xm, ym, beta = fit_footprint_ridge(d, z, layout, alpha=alpha)
    dens = positive(ym[None, :] + (z - xm) @ beta, ym)
    return _split_observed(counts, dens, layout)


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
    z = _standardised(subspot_features, layout)
    if quadratic:
        iu = np.triu_indices(z.shape[1])
        z = np.hstack([z, z[:, iu[0]] * z[:, iu[1]]])
        sd = z.std(axis=0)
        z = (z - z.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
    xm, ym, beta = fit_footprint_ridge(d, z, layout, alpha=alpha)
    dens = ym[None, :] + (z - xm) @ beta
    return (np.clip(dens, 0.0, None) * layout.area[:, None]).astype(np.float32)


def expected_counts_oracle(
    spot_counts, subspot_means, layout: SubspotLayout, footprint_means=None
) -> np.ndarray:
    r"""ORACLE (uses the truth): each sub-spot's expected counts given its spot's counts and the true means.

    Only simulated data has it: ``subspot_means`` are the expected counts the data were drawn from (e.g.
    ``layers["mean"]`` of the truth table of :func:`soscope.datasets.synthetic`), and ``footprint_means``
    the part of them inside the parent spot's footprint (``layers["mean_footprint"]``; default: ``w_k m_k``,
    the polygon's footprint share ``w`` of its mean). With ``f`` the footprint means, sub-spot ``k`` of
    spot ``i`` gets

    .. math::

        (m_{kg} - f_{kg}) + x_{ig} \, \frac{f_{kg}}{\sum_j f_{jg}}

    — the posterior mean of independent Poisson parts given their footprint's sum: the observed counts
    split in proportion to the true footprint means, and the unobserved outside part at its mean (as
    soscope's enhanced output, :func:`soscope.module._outputs.condition_counts`). It is the best
    prediction from the spot counts (it maximises the expected Pearson correlation) when the counts are
    Poisson around the means, and close to it for mildly over-dispersed ones. A feature with no footprint
    mean in a spot has its counts split evenly over the footprint.

    Parameters
    ----------
    spot_counts
        ``(N, F)`` spot counts in layout order.
    subspot_means
        ``(M, F)`` non-negative true expected counts per sub-spot polygon, in layout order, features as
        ``spot_counts``.
    layout
        The sub-spots.
    footprint_means
        ``(M, F)`` the part of ``subspot_means`` inside the footprint (``0 <= f <= m``); None: ``w m``.

    Returns
    -------
    ``(M, F)`` float32 expected counts.

    """
    counts = _counts(spot_counts, layout)
    shape = (layout.n_subspots, counts.shape[1])

    def dense(a, name: str) -> np.ndarray:
        a = np.asarray(a.toarray() if sp.issparse(a) else a, dtype=np.float64)
        if a.shape != shape:
            raise SoscopeInputError(f"`{name}` must be (sub-spots, features) = {shape}; got shape {a.shape}.")
        if not np.all(np.isfinite(a)) or np.any(a < 0):
            raise SoscopeInputError(f"`{name}` must be finite and non-negative (expected counts).")
        return a

    means = dense(subspot_means, "subspot_means")
    if footprint_means is None:
        inside = means * layout.footprint_weight[:, None]
    else:
        inside = np.minimum(dense(footprint_means, "footprint_means"), means)
    total = np.zeros(counts.shape)
    np.add.at(total, layout.spot_index, inside)
    even = np.repeat((layout.area * layout.footprint_weight)[:, None], counts.shape[1], axis=1)
    even_total = np.zeros(counts.shape)
    np.add.at(even_total, layout.spot_index, even)
    zero = total[layout.spot_index] <= 0
    share = np.where(
        zero,
        even / np.maximum(even_total[layout.spot_index], 1e-300),
        inside / np.maximum(total[layout.spot_index], 1e-300),
    )
    return (means - inside + counts[layout.spot_index] * share).astype(np.float32)
