"""Per-feature scores of predicted sub-spot profiles against the truth.

Every function takes ``pred`` and ``truth`` as ``(M, F)`` arrays (sub-spots × features; dense or scipy
sparse) with rows already matched, and returns one value per feature, ``(F,)`` float64. A feature that is
constant in ``pred`` or in ``truth`` has no correlation or structure to score: it gets NaN.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.ndimage import uniform_filter
from scipy.spatial import cKDTree
from scipy.stats import rankdata

from .._errors import SoscopeInputError

__all__ = [
    "pearson_per_feature",
    "spearman_per_feature",
    "rmse_normalised",
    "ssim_maps",
    "summary",
]


def dense_2d(x, name: str, rows: str = "sub-spots") -> np.ndarray:
    """Return ``x`` (dense or sparse; a vector is one feature) as a float64 ``(rows, features)`` array."""
    if sp.issparse(x):
        x = x.toarray()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2:
        raise SoscopeInputError(f"`{name}` must be a 2-d array ({rows} × features); got shape {x.shape}.")
    return x


def _pair(pred, truth) -> tuple[np.ndarray, np.ndarray]:
    p, t = dense_2d(pred, "pred"), dense_2d(truth, "truth")
    if p.shape != t.shape:
        raise SoscopeInputError(
            f"`pred` {p.shape} and `truth` {t.shape} differ in shape; match their rows (sub-spots) and "
            "columns (features) first."
        )
    if p.shape[0] < 2:
        raise SoscopeInputError("At least two sub-spots are needed to score features.")
    return p, t


def _corr_columns(p: np.ndarray, t: np.ndarray) -> np.ndarray:
    pc = p - p.mean(axis=0)
    tc = t - t.mean(axis=0)
    num = np.einsum("ij,ij->j", pc, tc)
    sp_ = np.sqrt(np.einsum("ij,ij->j", pc, pc))
    st = np.sqrt(np.einsum("ij,ij->j", tc, tc))
    # a column is constant when its spread is negligible relative to its magnitude
    scale_p = np.abs(p).max(axis=0) * np.sqrt(p.shape[0])
    scale_t = np.abs(t).max(axis=0) * np.sqrt(t.shape[0])
    const = (sp_ <= 1e-12 * np.maximum(scale_p, 1e-300)) | (st <= 1e-12 * np.maximum(scale_t, 1e-300))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = num / (sp_ * st)
    r = np.clip(r, -1.0, 1.0)
    r[const] = np.nan
    return r


def pearson_per_feature(pred, truth) -> np.ndarray:
    """Pearson correlation between predicted and true sub-spot values, per feature.

    Parameters
    ----------
    pred, truth
        ``(M, F)`` arrays (dense or sparse), rows matched.

    Returns
    -------
    ``(F,)`` correlations; NaN where either column is constant.

    """
    p, t = _pair(pred, truth)
    return _corr_columns(p, t)


def spearman_per_feature(pred, truth) -> np.ndarray:
    """Spearman rank correlation per feature (Pearson on average ranks, ties shared); NaN for constants."""
    p, t = _pair(pred, truth)
    const = (np.ptp(p, axis=0) == 0) | (np.ptp(t, axis=0) == 0)
    r = _corr_columns(rankdata(p, axis=0), rankdata(t, axis=0))
    r[const] = np.nan
    return r


def _normalise_rows(x: np.ndarray, target_sum: float) -> np.ndarray:
    tot = x.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(tot > 0, x * (target_sum / tot), 0.0)
    return np.log1p(np.clip(out, 0.0, None))


def rmse_normalised(pred, truth, *, method: str = "log1p", target_sum: float | None = None) -> np.ndarray:
    """Root mean squared error per feature on normalised values.

    Parameters
    ----------
    pred, truth
        ``(M, F)`` arrays of counts (or expected counts), rows matched.
    method
        ``"log1p"`` (default): each sub-spot (row) of ``pred`` and of ``truth`` is scaled to the same total
        ``target_sum`` and ``log1p`` is applied, so the score ignores a global scale difference and
        weighs relative composition (like the normalisation of scanpy's ``normalize_total`` + ``log1p``).
        ``"zscore"``: each feature (column) is z-scored in ``pred`` and in ``truth`` separately
        (then ``rmse = sqrt(2 (1 - pearson))``; NaN for constant features).
    target_sum
        Row total for ``"log1p"``; default the median row total of ``truth`` (over rows with counts).

    Returns
    -------
    ``(F,)`` RMSE values (lower is better).

    """
    p, t = _pair(pred, truth)
    if method == "log1p":
        if target_sum is None:
            tot = t.sum(axis=1)
            target_sum = float(np.median(tot[tot > 0])) if np.any(tot > 0) else 1.0
        pn, tn = _normalise_rows(p, target_sum), _normalise_rows(t, target_sum)
        return np.sqrt(np.mean((pn - tn) ** 2, axis=0))
    if method == "zscore":
        sp_, st = p.std(axis=0), t.std(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            pz = (p - p.mean(axis=0)) / sp_
            tz = (t - t.mean(axis=0)) / st
        out = np.sqrt(np.mean((pz - tz) ** 2, axis=0))
        out[(sp_ == 0) | (st == 0)] = np.nan
        return out
    raise SoscopeInputError(f"Unknown `method={method!r}` for rmse_normalised; use 'log1p' or 'zscore'.")


def _raster_index(centroids: np.ndarray, grid_size: float | None, max_pixels: int, min_side: int):
    """Regular grid over the centroids: nearest-centroid index per pixel and the mask of covered pixels."""
    c = np.asarray(centroids, dtype=np.float64)
    if c.ndim != 2 or c.shape[1] != 2:
        raise SoscopeInputError(f"`centroids` must be (M, 2) x, y coordinates; got shape {c.shape}.")
    tree = cKDTree(c)
    d, _ = tree.query(c, k=2)
    nn = float(np.median(d[:, 1])) if len(c) > 1 else 1.0
    if nn <= 0:
        nn = 1.0
    if grid_size is None:
        grid_size = nn / 2.0
    lo, hi = c.min(axis=0) - nn / 2, c.max(axis=0) + nn / 2
    short = float(min(hi - lo))
    if short / grid_size < min_side:  # the SSIM window must fit
        grid_size = short / min_side
    n_x = int(np.ceil((hi[0] - lo[0]) / grid_size)) + 1
    n_y = int(np.ceil((hi[1] - lo[1]) / grid_size)) + 1
    if n_x * n_y > max_pixels:
        f = np.sqrt(n_x * n_y / max_pixels)
        grid_size *= f
        n_x = int(np.ceil((hi[0] - lo[0]) / grid_size)) + 1
        n_y = int(np.ceil((hi[1] - lo[1]) / grid_size)) + 1
    xs = lo[0] + (np.arange(n_x) + 0.5) * grid_size
    ys = lo[1] + (np.arange(n_y) + 0.5) * grid_size
    gx, gy = np.meshgrid(xs, ys)
    dist, idx = tree.query(np.column_stack([gx.ravel(), gy.ravel()]))
    mask = (dist <= nn).reshape(n_y, n_x)
    return idx.reshape(n_y, n_x), mask


def _ssim_stack(a: np.ndarray, b: np.ndarray, win_size: int, data_range: float) -> np.ndarray:
    """SSIM maps of (H, W, C) stacks: formula and defaults of ``skimage.metrics.structural_similarity``."""
    size = (win_size, win_size, 1)
    np_ = win_size**2
    cov_norm = np_ / (np_ - 1.0)
    ux, uy = uniform_filter(a, size=size), uniform_filter(b, size=size)
    uxx, uyy, uxy = (
        uniform_filter(a * a, size=size),
        uniform_filter(b * b, size=size),
        uniform_filter(a * b, size=size),
    )
    vx, vy, vxy = cov_norm * (uxx - ux * ux), cov_norm * (uyy - uy * uy), cov_norm * (uxy - ux * uy)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    return ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))


def ssim_maps(
    pred,
    truth,
    centroids,
    grid_size: float | None = None,
    *,
    win_size: int = 7,
    max_pixels: int = 250_000,
    chunk: int = 64,
) -> np.ndarray:
    """Structural similarity (SSIM) of predicted and true sub-spot maps, per feature.

    Each feature's sub-spot values are rasterised on a regular grid (every pixel takes the value of the
    nearest sub-spot centroid), each map is min-max scaled to [0, 1], and SSIM is computed with the formula
    and defaults of :func:`skimage.metrics.structural_similarity` (7×7 uniform window, sample covariance,
    ``data_range=1``), vectorised over features. The score is the mean of the SSIM map over pixels within
    one centroid spacing of a centroid (pixels outside the tissue do not count).

    Parameters
    ----------
    pred, truth
        ``(M, F)`` arrays, rows matched.
    centroids
        ``(M, 2)`` sub-spot centres (x, y), any unit.
    grid_size
        Pixel size of the grid in the centroids' unit; default half the median nearest-neighbour distance
        between centroids (enlarged if the grid would exceed ``max_pixels``).
    win_size
        SSIM window (odd).
    max_pixels
        Upper bound on the grid's pixel count.
    chunk
        Most features rasterised at once (fewer on large grids; memory ~ ``10 × pixels × chunk × 8`` bytes).

    Returns
    -------
    ``(F,)`` SSIM in [-1, 1]; 1 for identical maps; NaN where either map is constant.

    """
    p, t = _pair(pred, truth)
    c = np.asarray(centroids, dtype=np.float64)
    if len(c) != p.shape[0]:
        raise SoscopeInputError(f"`centroids` has {len(c)} rows but `pred` has {p.shape[0]} sub-spots.")
    idx, mask = _raster_index(c, grid_size, max_pixels, win_size)
    n_mask = max(int(mask.sum()), 1)
    chunk = max(1, min(chunk, 2_000_000 // idx.size))  # ~10 float64 stacks of pixels x chunk in memory
    out = np.full(p.shape[1], np.nan)
    for s in range(0, p.shape[1], chunk):
        pc, tc = p[:, s : s + chunk], t[:, s : s + chunk]
        lo_p, rng_p = pc.min(axis=0), np.ptp(pc, axis=0)
        lo_t, rng_t = tc.min(axis=0), np.ptp(tc, axis=0)
        ok = (rng_p > 0) & (rng_t > 0)
        if not ok.any():
            continue
        with np.errstate(invalid="ignore", divide="ignore"):
            pn = np.where(ok, (pc - lo_p) / rng_p, 0.0)
            tn = np.where(ok, (tc - lo_t) / rng_t, 0.0)
        a, b = pn[idx], tn[idx]  # (H, W, C)
        s_map = _ssim_stack(a, b, win_size, 1.0)
        val = (s_map * mask[:, :, None]).sum(axis=(0, 1)) / n_mask
        val[~ok] = np.nan
        out[s : s + chunk] = val
    return out


def summary(
    per_feature: pd.DataFrame,
    *,
    reference: str = "soscope",
    higher_is_better: Mapping[str, bool] | None = None,
) -> dict:
    """Summarise a per-feature score table.

    Parameters
    ----------
    per_feature
        A DataFrame with columns named ``"<metric>"`` (one method) or ``"<metric>_<method>"`` (several
        methods, as :func:`soscope.evaluate.score` returns), one row per feature.
    reference
        The method compared with every other one (the share of features where it does better).
    higher_is_better
        Metric → direction; default ``pearson``, ``spearman``, ``ssim`` higher, ``rmse`` lower.

    Returns
    -------
    ``{"n_features": F, "mean": {method: {metric: mean}}, "median": {...},
    "beats": {other_method: {metric: share}}}`` (NaN features ignored; a share counts the features
    where both methods have a value). With single-method columns the method is ``"value"``.

    """
    direction = {"pearson": True, "spearman": True, "ssim": True, "rmse": False}
    if higher_is_better:
        direction.update(higher_is_better)
    table: dict[str, dict[str, str]] = {}
    for col in per_feature.columns:
        col = str(col)
        metric, _, method = col.partition("_")
        if metric not in direction:
            continue
        table.setdefault(method or "value", {})[metric] = col
    out: dict = {"n_features": int(len(per_feature)), "mean": {}, "median": {}, "beats": {}}
    for method, cols in table.items():
        out["mean"][method] = {
            m: float(np.nanmean(per_feature[c].to_numpy(float)))
            if np.isfinite(per_feature[c].to_numpy(float)).any()
            else float("nan")
            for m, c in cols.items()
        }
        out["median"][method] = {
            m: float(np.nanmedian(per_feature[c].to_numpy(float)))
            if np.isfinite(per_feature[c].to_numpy(float)).any()
            else float("nan")
            for m, c in cols.items()
        }
    if reference in table:
        for method, cols in table.items():
            if method == reference:
                continue
            shares = {}
            for m, c in cols.items():
                if m not in table[reference]:
                    continue
                a = per_feature[table[reference][m]].to_numpy(float)
                b = per_feature[c].to_numpy(float)
                both = np.isfinite(a) & np.isfinite(b)
                if not both.any():
                    shares[m] = float("nan")
                    continue
                better = a[both] > b[both] if direction[m] else a[both] < b[both]
                shares[m] = float(better.mean())
            out["beats"][method] = shares
    return out
