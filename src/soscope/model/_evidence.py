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
        }

    @classmethod
    def from_dict(cls, d: dict) -> EvidenceWeights:
        """Inverse of :meth:`as_dict` (tensors or arrays accepted)."""
        arr = lambda v: np.asarray(v, dtype=np.float64)  # noqa: E731
        scores = arr(d["cv_scores"])
        return cls(
            beta=float(d["beta"]),
            alpha=float(d["alpha"]),
            alphas=arr(d["alphas"]).tolist(),
            betas=arr(d["betas"]).tolist(),
            scores=None if np.isnan(scores).all() else scores,
            n_spots=int(d.get("cv_spots", 0)),
            n_features=int(d.get("cv_features", 0)),
            reason=str(d.get("reason", "")),
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
    rng = np.random.default_rng(seed)
    if len(centres) > CV_WINDOW:
        # the spots nearest a random one: a contiguous window, so held-out spots keep their neighbours
        _, win = cKDTree(centres).query(centres[rng.integers(len(centres))], k=CV_WINDOW)
        win = np.sort(win)
        target, prior, design = target[win], prior[win], design[win]
        area, centres, sections = area[win], centres[win], sections[win]
    n = len(centres)
    if n < 2 * N_FOLDS or design.shape[1] == 0:
        out.reason = f"too few spots ({n}) for {N_FOLDS}-fold cross-validation: image weight 0"
        return out
    tot = np.asarray(abs(target).sum(0) if sp.issparse(target) else np.abs(target).sum(0)).ravel()
    cols = np.argsort(-tot, kind="stable")[:CV_FEATURES]
    cols = np.sort(cols[tot[cols] > 0])
    if len(cols) == 0:
        out.reason = "no feature with counts: image weight 0"
        return out
    y = _dense_columns(target, cols)
    p = _dense_columns(prior, cols)
    fl = None if floor is None else np.asarray(floor, dtype=np.float64)[cols]
    fold = _folds(n, N_FOLDS, rng)
    scored = np.zeros(n, dtype=bool)
    scored[rng.permutation(n)[:CV_SPOTS]] = True
    dev = np.zeros((len(alphas), len(betas), len(cols)))
    for k in range(N_FOLDS):
        train = np.flatnonzero(fold != k)
        held = np.flatnonzero((fold == k) & scored)
        if len(held) == 0 or len(train) < 2:
            continue
        kern = _leave_out_kernel(centres, sections, held, train, spacing)
        interp = np.asarray(kern @ p)
        xt = design[train]
        xm = xt.mean(0)
        xc = xt - xm
        ym = y[train].mean(0)
        evals, evecs = np.linalg.eigh(xc.T @ xc / len(train))
        proj = evecs.T @ (xc.T @ (y[train] - ym) / len(train))
        obs = y[held] * (area[held, None] if is_count else 1.0)
        for a, alpha in enumerate(alphas):
            coef = evecs @ (proj / (np.maximum(evals, 0.0) + alpha)[:, None])
            pred = ym + (design - xm) @ coef  # every spot: held-out ones and their training neighbours
            if is_count:
                lp = np.log(positive(pred, ym))
                # the image's spot-scale contrast: the held-out spot relative to the training spots around it
                # a held-out spot without training spots around it (isolated, or the last of its section)
                # has no contrast to score: 0, not the log of 0
                around = np.asarray(kern @ np.exp(lp))
                g = np.where(around > 0, lp[held] - np.log(np.maximum(around, 1e-300)), 0.0)
                base = np.log(interp + fl) + np.log(area[held])[:, None]
            else:
                g = pred[held] - np.asarray(kern @ pred)
                base = interp
            for b, beta in enumerate(betas):
                mu = np.exp(np.minimum(base + beta * g, 700.0)) if is_count else base + beta * g
                dev[a, b] += _deviance(obs, mu, is_count)
    null = dev[:, [betas.index(0.0)] if 0.0 in betas else [0], :]
    ok = null[0, 0] > 0
    rel = dev[:, :, ok] / null[:, :, ok]  # per feature, relative to the spatial prior alone
    out.n_spots, out.n_features = int(scored.sum()), int(ok.sum())
    if rel.shape[-1] == 0:
        out.reason = "no feature with held-out deviance: image weight 0"
        return out
    scores = rel.mean(-1)
    out.scores = scores
    a_best, b_best = np.unravel_index(np.argmin(scores), scores.shape)
    out.alpha = float(alphas[a_best])
    gain = rel[a_best, 0] - rel[a_best, b_best] if 0.0 in betas else np.zeros(1)
    se = gain.std(ddof=1) / np.sqrt(len(gain)) if len(gain) > 1 else np.inf
    if betas[b_best] == 0.0 or gain.mean() <= 2 * se:
        out.beta = 0.0
        out.reason = (
            f"the image does not predict held-out spots beyond their neighbours (gain {gain.mean():.4f} ± "
            f"{se:.4f} of the prior's deviance): image weight 0"
        )
        return out
    # the smallest weight within one standard error of the best: no more trust than the data support
    diff_se = (rel[a_best] - rel[a_best, b_best]).std(-1, ddof=1) / np.sqrt(rel.shape[-1])
    within = [b for b in range(len(betas)) if scores[a_best, b] <= scores[a_best, b_best] + diff_se[b]]
    b_pick = min(within, key=lambda b: betas[b]) if within else b_best
    out.beta = float(betas[b_pick])
    out.reason = (
        f"held-out deviance {scores[a_best, b_pick]:.4f} of the spatial prior's with image weight "
        f"{out.beta:g} (ridge penalty {out.alpha:g})"
    )
    return out


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
