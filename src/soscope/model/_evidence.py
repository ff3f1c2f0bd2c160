"""Image evidence combined with the spatial prior, each weighted by how well it predicts held-out spots.

A count modality's fixed sub-spot log-density offset is::

    o_k = log(interp_k + floor) + beta_m * (log ridge_k - log interp_k[ridge])

``interp_k`` is the Gaussian-kernel interpolation of neighbouring spots' densities at sub-spot ``k`` (the
spatial prior). ``ridge_k`` is the density that a closed-form ridge of spot densities on footprint-averaged
image features predicts from the sub-spot's own features (made positive by a smooth function, never a hard
floor), and ``interp_k[ridge]`` the same interpolation applied to the ridge's spot-level predictions: their
ratio is what the image says beyond the smooth spatial prior, so the image's large-scale trend is not counted
twice. Inside a footprint the spot's counts are split in proportion to ``a * w * exp(o + h)``, and
``beta = 0`` gives exactly the offsets of the model without an image.

``beta`` and the ridge penalty are chosen per modality by K-fold cross-validation over spots: each held-out
spot's counts are predicted from the interpolation of the training spots around it, times the same image
term at spot scale (the ridge fitted on the training folds, at the held-out spot relative to its
interpolation over the same training spots), scored by Poisson deviance (squared error for Gaussian
values). An image that does not predict held-out spots beyond their neighbours gets ``beta = 0``.

With a segmentation (``SpotData.nuclei_count``), a count modality's offset also gets the nuclei::

    o_k += gamma_m * (log(n_k + a_m) - log(interp_k[n + a_m]))

``n_k`` is the density of nuclei in sub-spot ``k`` (nuclei per area unit, as the densities of counts), and
``interp_k[n + a_m]`` the same interpolation applied to the spots' nucleus densities (footprint-weighted,
plus ``a_m``): again only what the nuclei say beyond the smooth prior. ``a_m`` (a pseudo-density, a
multiple of the mean nucleus density) and ``gamma_m`` are chosen by the same cross-validation, after
``beta`` and the ridge penalty and with the image term at their values: the held-out spot's nucleus
density relative to the training spots around it predicts its counts, or ``gamma = 0`` and nothing changes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
from scipy.spatial import cKDTree

from .._settings import settings
from ..geometry import SubspotLayout

logger = logging.getLogger("soscope")

#: candidate ridge penalties (on standardised features, relative to the number of spots)
ALPHAS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)
#: candidate image weights
BETAS = (0.0, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0, 1.25, 1.5)
#: cross-validation folds over spots
N_FOLDS = 5
#: the smooth positive clip of the ridge's density: ``s * softplus(p / s)``, ``s = SMOOTH * mean density``
SMOOTH = 0.25
#: at most this many features (those with most counts) and held-out spots enter the cross-validation
CV_FEATURES = 256
CV_SPOTS = 5000
#: on larger data the cross-validation runs in a window of this many spots (contiguous: the spatial prior
#: needs every neighbour of a held-out spot), which bounds its memory and time on whole slides
CV_WINDOW = 20000
#: kernel width of the spatial prior, in units of the lattice spacing (cut at 3 sigma)
KERNEL_SIGMA = 0.45
#: how the offsets use an image when ``Normaliser.fit`` is not told (``SoScope(image_evidence=...)`` tells
#: it): ``"weighted"`` (the spatial prior plus the image evidence weighted by cross-validation, this module)
#: or ``"legacy"`` (the image ridge alone, penalty 1e-4, negative densities floored at 5 % of the mean, as
#: soscope <= 0.1.0). Saved with each model.
OFFSETS = "weighted"
#: the legacy ridge penalty
LEGACY_ALPHA = 1e-4
#: candidate pseudo-densities ``a`` of the nucleus term, as multiples of the mean nucleus density: with
#: 2-4 nuclei in a Visium sub-spot, from a quarter of a nucleus (trust an empty sub-spot to be nearly
#: empty) to the mean itself (halve the contrast between empty and average sub-spots: missed nuclei)
NUCLEI_OFFSETS = (0.25, 0.5, 1.0)
#: candidate nucleus weights (1: counts in proportion to nuclei, as the count oracle splits them)
GAMMAS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5)


@dataclass
class EvidenceWeights:
    """Chosen weights of one modality's image evidence, and the cross-validation that chose them.

    ``scores[a, b]`` is the mean over features of the held-out deviance (squared error for Gaussian
    values) with ``alphas[a]`` and ``betas[b]``, relative to the spatial prior alone (``betas = 0``): below 1
    the image helps. ``beta = 0`` when the image does not predict held-out spots better than their neighbours.
    """

    beta: float = 0.0
    alpha: float = 1e-2
    alphas: list[float] = field(default_factory=lambda: list(ALPHAS))
    betas: list[float] = field(default_factory=lambda: list(BETAS))
    scores: np.ndarray | None = None  # (len(alphas), len(betas))
    n_spots: int = 0
    n_features: int = 0
    reason: str = ""
    # the nucleus term: weight gamma, pseudo-density a (nuclei per area unit) = a_rel * nuclei_density
    gamma: float = 0.0
    nuclei_offset: float = 0.0
    nuclei_density: float = 0.0  # mean nucleus density of the spots (nuclei per area unit); 0: no nuclei
    nuclei_offsets: list[float] = field(default_factory=lambda: list(NUCLEI_OFFSETS))  # candidate a_rel
    gammas: list[float] = field(default_factory=lambda: list(GAMMAS))
    nuclei_scores: np.ndarray | None = None  # (len(nuclei_offsets), len(gammas)), relative to gamma = 0
    nuclei_reason: str = "no segmentation"

    def as_dict(self) -> dict:
        """Plain values for ``uns`` and model files."""
        return {
            "beta": float(self.beta),
            "alpha": float(self.alpha),
            "alphas": np.asarray(self.alphas, dtype=np.float64),
            "betas": np.asarray(self.betas, dtype=np.float64),
            "cv_scores": np.full((len(self.alphas), len(self.betas)), np.nan)
            if self.scores is None
            else np.asarray(self.scores, dtype=np.float64),
            "cv_spots": int(self.n_spots),
            "cv_features": int(self.n_features),
            "reason": self.reason,
            "gamma": float(self.gamma),
            "nuclei_offset": float(self.nuclei_offset),
            "nuclei_density": float(self.nuclei_density),
            "nuclei_offsets": np.asarray(self.nuclei_offsets, dtype=np.float64),
            "gammas": np.asarray(self.gammas, dtype=np.float64),
            "nuclei_cv_scores": np.full((len(self.nuclei_offsets), len(self.gammas)), np.nan)
            if self.nuclei_scores is None
            else np.asarray(self.nuclei_scores, dtype=np.float64),
            "nuclei_reason": self.nuclei_reason,
        }

    @classmethod
    def from_dict(cls, d: dict) -> EvidenceWeights:
        """Inverse of :meth:`as_dict` (tensors or arrays accepted; files without the nucleus term too)."""
        arr = lambda v: np.asarray(v, dtype=np.float64)  # noqa: E731
        scores = arr(d["cv_scores"])
        nuclei_scores = arr(d.get("nuclei_cv_scores", np.nan))
        return cls(
            beta=float(d["beta"]),
            alpha=float(d["alpha"]),
            alphas=arr(d["alphas"]).tolist(),
            betas=arr(d["betas"]).tolist(),
            scores=None if np.isnan(scores).all() else scores,
            n_spots=int(d.get("cv_spots", 0)),
            n_features=int(d.get("cv_features", 0)),
            reason=str(d.get("reason", "")),
            gamma=float(d.get("gamma", 0.0)),
            nuclei_offset=float(d.get("nuclei_offset", 0.0)),
            nuclei_density=float(d.get("nuclei_density", 0.0)),
            nuclei_offsets=arr(d.get("nuclei_offsets", NUCLEI_OFFSETS)).tolist(),
            gammas=arr(d.get("gammas", GAMMAS)).tolist(),
            nuclei_scores=None if np.isnan(nuclei_scores).all() else nuclei_scores,
            nuclei_reason=str(d.get("nuclei_reason", "no segmentation")),
        )


# ---------------------------------------------------------------------------------------- ridge (closed form)
def footprint_design(subspot_features: np.ndarray, layout: SubspotLayout) -> np.ndarray:
    """``(N, D)`` footprint-area-weighted mean of each spot's sub-spot features: what a spot's image shows."""
    z = np.asarray(subspot_features, dtype=np.float64)
    wa = layout.area * layout.footprint_weight
    agg = sp.csr_matrix(
        (wa, (layout.spot_index, np.arange(layout.n_subspots))), shape=(layout.n_spots, len(wa))
    )
    return np.asarray(agg @ z) / np.maximum(layout.footprint_area, 1e-300)[:, None]


#: columns of a dense target multiplied at once by the ridge (bounds its float64 temporaries)
_RIDGE_COLUMNS = 256


def _ridge_from_design(x: np.ndarray, y, alpha: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    xm = x.mean(axis=0)
    xc = x - xm
    n = len(x)
    if sp.issparse(y):
        # xc's columns sum to 0, so xc.T @ (Y - ym) == xc.T @ Y: no need to centre (densify) a sparse Y
        ym = np.asarray(y.mean(axis=0), dtype=np.float64).ravel()
        xty = np.asarray((y.T @ xc).T, dtype=np.float64)
    else:
        # the same identity on a dense Y, a block of columns at a time in float64: neither a centred nor a
        # float64 copy of a whole-transcriptome Y (200,000 spots x 2,000 features: 3.2 GB each)
        y = np.asarray(y)
        ym = y.mean(axis=0, dtype=np.float64)
        xty = np.empty((x.shape[1], y.shape[1]))
        for start in range(0, y.shape[1], _RIDGE_COLUMNS):
            cols = slice(start, start + _RIDGE_COLUMNS)
            xty[:, cols] = xc.T @ np.asarray(y[:, cols], dtype=np.float64)
    gram = xc.T @ xc / n + alpha * np.eye(x.shape[1])
    beta = np.linalg.solve(gram, xty / n)
    return xm, ym, beta


def fit_footprint_ridge(
    spot_density, subspot_features: np.ndarray, layout: SubspotLayout, *, alpha: float = 1e-4
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
    return _ridge_from_design(footprint_design(subspot_features, layout), spot_density, alpha)


def positive(pred: np.ndarray, mean_density: np.ndarray) -> np.ndarray:
    """Make a ridge's density positive smoothly: ``s * softplus(pred / s)`` with ``s = SMOOTH * mean``.

    Equal to ``pred`` (within 2 %) above the feature's mean density, and decaying smoothly to 0 below 0
    instead of a hard floor (whose kink turns noise around 0 into fixed large contrasts).
    """
    s = SMOOTH * np.maximum(np.asarray(mean_density, dtype=np.float64), 1e-12)
    return s * np.logaddexp(0.0, pred / s)


def image_term(
    z: np.ndarray,
    ridge,
    layout: SubspotLayout,
    kernel: sp.csr_matrix,
    mean_density: np.ndarray | None,
) -> np.ndarray:
    """``(M, F)`` the image's evidence at each sub-spot beyond the spatial prior (see the module docstring).

    The ridge's log density at the sub-spot minus the log of the same interpolation that makes the spatial
    prior, applied to the ridge's own spot-level predictions: what the image says about the sub-spot that
    the smooth interpolation of spots would not (without it, the image's large-scale trend would be
    counted twice, once in the prior and once in the image). Gaussian values: the same without logs.

    Parameters
    ----------
    z
        ``(M, D)`` standardised image features of the sub-spots of ``layout``.
    ridge
        ``(x_mean, y_mean, beta)`` of :func:`fit_footprint_ridge`.
    layout
        The sub-spots (all sub-spots of its spots).
    kernel
        ``(M, N)`` :func:`kernel_matrix` from the sub-spot centroids to the spot centres.
    mean_density
        ``(F,)`` mean spot density (scale of :func:`positive`); None for Gaussian values.

    """
    xm, ym, beta = (np.asarray(a, dtype=np.float64) for a in ridge)
    pred_sub = ym[None, :] + (np.asarray(z, dtype=np.float64) - xm) @ beta
    pred_spot = ym[None, :] + (footprint_design(z, layout) - xm) @ beta
    if mean_density is None:
        return pred_sub - np.asarray(kernel @ pred_spot)
    smooth = np.asarray(kernel @ positive(pred_spot, mean_density))
    return np.log(positive(pred_sub, mean_density)) - np.log(np.maximum(smooth, 1e-300))


# ----------------------------------------------------------------------------------------- spatial prior
def kernel_matrix(centres: np.ndarray, points: np.ndarray, spacing: float) -> sp.csr_matrix:
    """Row-normalised Gaussian kernel (σ = 0.45 × spacing, cut at 3σ) from ``points`` to spot ``centres``.

    Sparse (KD-tree radius query), linear in the number of points; a point with no spot in reach takes its
    nearest spot.
    """
    sigma = KERNEL_SIGMA * spacing
    tree = cKDTree(centres)
    pairs = tree.query_ball_point(points, r=3 * sigma)
    lens = np.fromiter((len(p) for p in pairs), dtype=np.int64, count=len(pairs))
    if (lens == 0).any():
        _, nearest = tree.query(points[lens == 0])
        for i, j in zip(np.flatnonzero(lens == 0), np.atleast_1d(nearest), strict=True):
            pairs[i] = [int(j)]
        lens = np.fromiter((len(p) for p in pairs), dtype=np.int64, count=len(pairs))
    rows = np.repeat(np.arange(len(pairs)), lens)
    cols = np.concatenate(pairs).astype(np.int64)
    d2 = ((points[rows] - centres[cols]) ** 2).sum(1)
    k = sp.csr_matrix((np.exp(-0.5 * d2 / sigma**2), (rows, cols)), shape=(len(pairs), len(centres)))
    return sp.diags(1.0 / np.maximum(np.asarray(k.sum(1)).ravel(), 1e-300)) @ k


# --------------------------------------------------------------------------------------- cross-validation
def _folds(n: int, n_folds: int, rng: np.random.Generator) -> np.ndarray:
    fold = np.empty(n, dtype=np.int64)
    fold[rng.permutation(n)] = np.arange(n) % n_folds
    return fold


def _leave_out_kernel(centres, sections, held, train, spacing) -> sp.csr_matrix:
    """Kernel from the held-out spots to the training spots of the same section (global positions)."""
    rows, cols, vals = [], [], []
    for s in np.unique(sections[held]):
        h = held[sections[held] == s]
        t = train[sections[train] == s]
        if len(t) == 0:  # a section wholly held out: its spots borrow from every training spot
            t = train
        k = kernel_matrix(centres[t], centres[h], spacing).tocoo()
        rows.append(np.searchsorted(held, h)[k.row])
        cols.append(t[k.col])
        vals.append(k.data)
    return sp.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(len(held), len(centres))
    )


def _deviance(y: np.ndarray, mu: np.ndarray, is_count: bool) -> np.ndarray:
    """Per-feature summed Poisson deviance of ``y`` given ``mu`` (squared error for Gaussian values)."""
    if not is_count:
        return ((y - mu) ** 2).sum(0)
    mu = np.maximum(mu, 1e-12)
    term = np.where(y > 0, y * np.log(np.maximum(y, 1e-300) / mu), 0.0)
    return 2.0 * (term - (y - mu)).sum(0)


def _dense_columns(m, cols: np.ndarray) -> np.ndarray:
    """Return ``m[:, cols]`` in float64, a sparse ``m`` densified a block of rows at a time.

    Blocks of ``soscope.settings.dense_block_rows`` rows: a sparse table is never densified whole.
    """
    out = np.empty((m.shape[0], len(cols)))
    step = settings.dense_block_rows
    for start in range(0, m.shape[0], step):
        part = m[start : start + step][:, cols]
        out[start : start + step] = part.toarray() if sp.issparse(part) else part
    return out


@dataclass
class _CV:
    """The spots, features and folds one cross-validation scores (shared by the image and nucleus weights)."""

    y: np.ndarray  # (n, F') target densities of the scored features
    p: np.ndarray  # (n, F') densities the spatial prior interpolates
    design: np.ndarray
    area: np.ndarray
    centres: np.ndarray
    sections: np.ndarray
    floor: np.ndarray | None
    fold: np.ndarray
    scored: np.ndarray
    window: np.ndarray | None  # spot rows of the window, or None: every spot
    n_cols: int


def _cv_setup(target, prior, design, area, centres, sections, floor, seed: int) -> _CV | str:
    """Window, scored features, folds and held-out subset of a cross-validation; a reason when it can't run.

    Deterministic for a seed: the image and the nucleus weights are scored on the same folds.
    """
    rng = np.random.default_rng(seed)
    win = None
    if len(centres) > CV_WINDOW:
        # the spots nearest a random one: a contiguous window, so held-out spots keep their neighbours
        _, win = cKDTree(centres).query(centres[rng.integers(len(centres))], k=CV_WINDOW)
        win = np.sort(win)
        target, prior, design = target[win], prior[win], design[win]
        area, centres, sections = area[win], centres[win], sections[win]
    n = len(centres)
    if n < 2 * N_FOLDS or design.shape[1] == 0:
        return f"too few spots ({n}) for {N_FOLDS}-fold cross-validation"
    tot = np.asarray(abs(target).sum(0) if sp.issparse(target) else np.abs(target).sum(0)).ravel()
    cols = np.argsort(-tot, kind="stable")[:CV_FEATURES]
    cols = np.sort(cols[tot[cols] > 0])
    if len(cols) == 0:
        return "no feature with counts"
    fold = _folds(n, N_FOLDS, rng)
    scored = np.zeros(n, dtype=bool)
    scored[rng.permutation(n)[:CV_SPOTS]] = True
    return _CV(
        y=_dense_columns(target, cols),
        p=_dense_columns(prior, cols),
        design=design,
        area=area,
        centres=centres,
        sections=sections,
        floor=None if floor is None else np.asarray(floor, dtype=np.float64)[cols],
        fold=fold,
        scored=scored,
        window=win,
        n_cols=len(cols),
    )


def _cv_folds(cv: _CV, spacing: float, is_count: bool):
    """Per fold ``(held, kern, base, obs, contrast)``: what every weight's held-out deviance needs.

    ``kern`` maps the held-out spots to the training spots around them, ``base`` is the spatial prior's
    log expected counts (values for Gaussian data), ``obs`` the held-out observations and ``contrast(alpha)``
    the image's spot-scale contrast with ridge penalty ``alpha`` (the held-out spot relative to the
    training spots around it).
    """
    y, design, area = cv.y, cv.design, cv.area
    for k in range(N_FOLDS):
        train = np.flatnonzero(cv.fold != k)
        held = np.flatnonzero((cv.fold == k) & cv.scored)
        if len(held) == 0 or len(train) < 2:
            continue
        kern = _leave_out_kernel(cv.centres, cv.sections, held, train, spacing)
        interp = np.asarray(kern @ cv.p)
        xt = design[train]
        xm = xt.mean(0)
        xc = xt - xm
        ym = y[train].mean(0)
        evals, evecs = np.linalg.eigh(xc.T @ xc / len(train))
        proj = evecs.T @ (xc.T @ (y[train] - ym) / len(train))
        obs = y[held] * (area[held, None] if is_count else 1.0)
        if is_count:
            base = np.log(interp + cv.floor) + np.log(area[held])[:, None]
        else:
            base = interp

        def contrast(alpha, held=held, kern=kern, xm=xm, ym=ym, evals=evals, evecs=evecs, proj=proj):
            coef = evecs @ (proj / (np.maximum(evals, 0.0) + alpha)[:, None])
            pred = ym + (design - xm) @ coef  # every spot: held-out ones and their training neighbours
            if not is_count:
                return pred[held] - np.asarray(kern @ pred)
            lp = np.log(positive(pred, ym))
            # a held-out spot without training spots around it (isolated, or the last of its section) has
            # no contrast to score: 0, not the log of 0
            around = np.asarray(kern @ np.exp(lp))
            return np.where(around > 0, lp[held] - np.log(np.maximum(around, 1e-300)), 0.0)

        yield held, kern, base, obs, contrast


def _choose(
    dev: np.ndarray, weights: list[float]
) -> tuple[np.ndarray, np.ndarray, int, int, float, float, bool]:
    """Pick a row (a penalty, a pseudo-density) and a weight from held-out deviances ``(rows, weights, F)``.

    Returns ``(rel, scores, row, column, gain, se, supported)``: per-feature deviances relative to weight 0,
    their means, the best row, the picked column, the mean gain of the best weight over weight 0 in that row
    and its standard error over features. The weight is the smallest within one standard error of the best,
    and the weight 0 (``supported`` False) when the best does not beat weight 0 by two standard errors.
    """
    zero = weights.index(0.0) if 0.0 in weights else 0
    null = dev[:, [zero], :]
    ok = null[0, 0] > 0
    rel = dev[:, :, ok] / null[:, :, ok]  # per feature, relative to the weight 0
    if rel.shape[-1] == 0:
        return rel, np.full(dev.shape[:2], np.nan), 0, zero, 0.0, np.inf, False
    scores = rel.mean(-1)
    a_best, b_best = np.unravel_index(np.argmin(scores), scores.shape)
    gain = rel[a_best, zero] - rel[a_best, b_best] if 0.0 in weights else np.zeros(1)
    se = gain.std(ddof=1) / np.sqrt(len(gain)) if len(gain) > 1 else np.inf
    if weights[b_best] == 0.0 or gain.mean() <= 2 * se:
        return rel, scores, int(a_best), zero, float(gain.mean()), float(se), False
    # the smallest weight within one standard error of the best: no more trust than the data support
    diff_se = (rel[a_best] - rel[a_best, b_best]).std(-1, ddof=1) / np.sqrt(rel.shape[-1])
    within = [b for b in range(len(weights)) if scores[a_best, b] <= scores[a_best, b_best] + diff_se[b]]
    b_pick = min(within, key=lambda b: weights[b]) if within else b_best
    return rel, scores, int(a_best), int(b_pick), float(gain.mean()), float(se), True


def select_weights(
    target,
    prior,
    design: np.ndarray,
    area: np.ndarray,
    centres: np.ndarray,
    sections: np.ndarray,
    spacing: float,
    floor: np.ndarray | None,
    *,
    is_count: bool,
    seed: int = 0,
    alphas=ALPHAS,
    betas=BETAS,
) -> EvidenceWeights:
    """Choose the ridge penalty and the image weight of one modality by K-fold CV over spots.

    Parameters
    ----------
    target
        ``(N, F)`` spot densities (per area unit) the ridge is fitted to and scored on (dense or sparse).
    prior
        ``(N, F)`` densities the spatial prior interpolates (``target`` itself, or densities predicted from a
        reference modality).
    design
        ``(N, D)`` footprint-averaged standardised image features.
    area
        ``(N,)`` footprint areas in area units: expected counts are ``area * density``.
    centres, sections, spacing
        Spot positions, section labels and lattice spacing (the prior never crosses sections).
    floor
        ``(F,)`` added to the interpolated density before its log (counts), as the offsets do; None for
        Gaussian values.
    is_count
        Poisson deviance on counts (``area * density``) or squared error on values.
    seed
        Seed of the fold assignment (and of the held-out subset on large data).
    alphas, betas
        Candidate ridge penalties and image weights (``betas`` should include 0).

    Returns
    -------
    The chosen weights with the CV scores. ``beta`` is the smallest weight whose score is within one
    standard error (over features) of the best, and 0 when the best is not better than the prior alone
    by two standard errors.

    """
    alphas, betas = list(alphas), list(betas)
    out = EvidenceWeights(alphas=alphas, betas=betas)
    cv = _cv_setup(target, prior, design, area, centres, sections, floor, seed)
    if isinstance(cv, str):
        out.reason = f"{cv}: image weight 0"
        return out
    dev = np.zeros((len(alphas), len(betas), cv.n_cols))
    for _, _, base, obs, contrast in _cv_folds(cv, spacing, is_count):
        for a, alpha in enumerate(alphas):
            g = contrast(alpha)
            for b, beta in enumerate(betas):
                mu = np.exp(np.minimum(base + beta * g, 700.0)) if is_count else base + beta * g
                dev[a, b] += _deviance(obs, mu, is_count)
    rel, scores, a_best, b_pick, gain, se, supported = _choose(dev, betas)
    out.n_spots, out.n_features = int(cv.scored.sum()), int(rel.shape[-1])
    if rel.shape[-1] == 0:
        out.reason = "no feature with held-out deviance: image weight 0"
        return out
    out.scores = scores
    out.alpha = float(alphas[a_best])
    if not supported:
        out.beta = 0.0
        out.reason = (
            f"the image does not predict held-out spots beyond their neighbours (gain {gain:.4f} ± "
            f"{se:.4f} of the prior's deviance): image weight 0"
        )
        return out
    out.beta = float(betas[b_pick])
    out.reason = (
        f"held-out deviance {scores[a_best, b_pick]:.4f} of the spatial prior's with image weight "
        f"{out.beta:g} (ridge penalty {out.alpha:g})"
    )
    return out


def nuclei_contrast(nd_held: np.ndarray, nd: np.ndarray, kern: sp.csr_matrix, a: float) -> np.ndarray:
    """``(n,)`` log(nucleus density + a) of the held-out spots relative to the spots around them.

    ``nd``: every spot's nucleus density (NaN where no segmentation); a spot whose own density or whose
    neighbours' is unknown gets 0 (no evidence), not NaN.
    """
    around = np.asarray(kern @ (nd + a)).ravel()
    c = np.log(nd_held + a) - np.log(np.maximum(around, 1e-300))
    return np.where(np.isfinite(c) & (around > 0), c, 0.0)


def select_nuclei_weight(
    weights: EvidenceWeights,
    target,
    prior,
    design: np.ndarray,
    area: np.ndarray,
    centres: np.ndarray,
    sections: np.ndarray,
    spacing: float,
    floor: np.ndarray,
    nuclei: np.ndarray,
    *,
    seed: int = 0,
    offsets=NUCLEI_OFFSETS,
    gammas=GAMMAS,
) -> EvidenceWeights:
    """Choose the nucleus term's pseudo-density ``a`` and weight ``gamma`` of a count modality (in place).

    The same folds, held-out spots and scores as :func:`select_weights` (same arguments and seed), with the
    image term at the chosen ``beta`` and ridge penalty: each held-out spot's log expected counts are the
    spatial prior plus the image term plus ``gamma * (log(n + a) - log(interp[n + a]))``, ``n`` its nucleus
    density and ``interp`` the interpolation over the training spots around it. Deviance relative to
    ``gamma = 0`` (``nuclei_scores``); ``gamma`` is picked by the rule of :func:`select_weights` (the
    smallest within one standard error of the best, 0 unless the best beats 0 by two standard errors).

    Parameters
    ----------
    weights
        The modality's image weights from :func:`select_weights`; its nucleus fields are set.
    target, prior, design, area, centres, sections, spacing, floor
        As for :func:`select_weights` (counts only).
    nuclei
        ``(N,)`` nucleus density of each spot (footprint-weighted nuclei per area unit; NaN where no
        segmentation).
    seed
        The seed given to :func:`select_weights`.
    offsets, gammas
        Candidate pseudo-densities (multiples of the mean nucleus density) and weights (with 0).

    Returns
    -------
    ``weights``, with ``gamma``, ``nuclei_offset`` (``a`` in nuclei per area unit), ``nuclei_density``,
    ``nuclei_scores`` and ``nuclei_reason`` set.

    """
    offsets, gammas = list(offsets), list(gammas)
    w = weights
    w.nuclei_offsets, w.gammas, w.gamma, w.nuclei_scores = offsets, gammas, 0.0, None
    nuclei = np.asarray(nuclei, dtype=np.float64)
    known = np.isfinite(nuclei)
    w.nuclei_density = float(nuclei[known].mean()) if known.any() else 0.0
    w.nuclei_offset = offsets[0] * w.nuclei_density
    if w.nuclei_density <= 0:
        w.nuclei_reason = "no nuclei found: nucleus weight 0"
        return w
    cv = _cv_setup(target, prior, design, area, centres, sections, floor, seed)
    if isinstance(cv, str):
        w.nuclei_reason = f"{cv}: nucleus weight 0"
        return w
    nd = nuclei if cv.window is None else nuclei[cv.window]
    alpha = w.alpha if w.alpha in w.alphas else w.alphas[0]
    dev = np.zeros((len(offsets), len(gammas), cv.n_cols))
    for held, kern, base, obs, contrast in _cv_folds(cv, spacing, True):
        if w.beta > 0:  # the image term as the offsets will have it
            base = base + w.beta * contrast(alpha)
        for i, rel_a in enumerate(offsets):
            c = nuclei_contrast(nd[held], nd, kern, rel_a * w.nuclei_density)[:, None]
            for j, gamma in enumerate(gammas):
                dev[i, j] += _deviance(obs, np.exp(np.minimum(base + gamma * c, 700.0)), True)
    rel, scores, i_best, j_pick, gain, se, supported = _choose(dev, gammas)
    if rel.shape[-1] == 0:
        w.nuclei_reason = "no feature with held-out deviance: nucleus weight 0"
        return w
    w.nuclei_scores = scores
    w.nuclei_offset = float(offsets[i_best] * w.nuclei_density)
    if not supported:
        w.nuclei_reason = (
            f"the nuclei do not predict held-out spots beyond their neighbours and the image (gain "
            f"{gain:.4f} ± {se:.4f} of the deviance without them): nucleus weight 0"
        )
        return w
    w.gamma = float(gammas[j_pick])
    w.nuclei_reason = (
        f"held-out deviance {scores[i_best, j_pick]:.4f} of that without the nuclei with nucleus weight "
        f"{w.gamma:g} (pseudo-density {offsets[i_best]:g} x the mean nucleus density)"
    )
    return w


def nuclei_term(
    count: np.ndarray, layout: SubspotLayout, kernel: sp.csr_matrix, area_unit: float, a: float
) -> np.ndarray:
    """``(M,)`` the nuclei's evidence at each sub-spot beyond the spatial prior: ``log(n + a) - log(interp)``.

    ``n`` is the sub-spot's nucleus density (``count`` per area unit), ``interp`` the kernel interpolation
    of the spots' footprint-weighted nucleus densities plus ``a`` (:func:`spot_nuclei_density`); 0 where a
    count is missing (NaN: a section without segmentation).
    """
    count = np.asarray(count, dtype=np.float64)
    nd = count * area_unit / np.maximum(layout.area, 1e-300)
    around = np.asarray(kernel @ (spot_nuclei_density(count, layout, area_unit) + a)).ravel()
    t = np.log(nd + a) - np.log(np.maximum(around, 1e-300))
    return np.where(np.isfinite(t) & (around > 0), t, 0.0)


def spot_nuclei_density(count: np.ndarray, layout: SubspotLayout, area_unit: float) -> np.ndarray:
    """``(N,)`` each spot's nuclei per area unit: its sub-spots' counts weighted by their footprint share.

    The spot's expected nuclei are ``sum_k w_k n_k`` as its expected counts are, over the footprint area
    (NaN when a sub-spot's count is missing).
    """
    nuclei = np.bincount(
        layout.spot_index,
        weights=layout.footprint_weight * np.asarray(count, dtype=np.float64),
        minlength=layout.n_spots,
    )
    return nuclei * area_unit / np.maximum(layout.footprint_area, 1e-300)


# ------------------------------------------------------------------------------------------- persistence
def evidence_to_payload(evidence: list[EvidenceWeights] | None) -> list[dict] | None:
    """Per modality the weights as tensors, numbers and strings (a model file read with ``weights_only``)."""
    import torch

    if evidence is None:
        return None
    return [
        {k: torch.as_tensor(v) if isinstance(v, np.ndarray) else v for k, v in e.as_dict().items()}
        for e in evidence
    ]


def evidence_from_payload(payload: list[dict] | None) -> list[EvidenceWeights] | None:
    """Inverse of :func:`evidence_to_payload` (``None`` for model files written before the weights)."""
    if payload is None:
        return None
    return [
        EvidenceWeights.from_dict({k: np.asarray(v) if hasattr(v, "numpy") else v for k, v in d.items()})
        for d in payload
    ]


def evidence_uns(evidence: list[EvidenceWeights] | None, names: list[str]) -> dict:
    """Return ``uns["soscope"]["image_evidence"]``: per modality image weight, ridge penalty, CV scores."""
    if evidence is None:
        return {}
    return {name: e.as_dict() for name, e in zip(names, evidence, strict=True)}
