"""A synthetic tissue with an H&E-like image, spot counts and the true sub-spot counts.

Design (all lengths in µm unless said otherwise)
------------------------------------------------
* **Tissue.** Cells on a jittered hexagonal lattice (~``cell_spacing`` apart after thinning), each with a
  cell type. Types have roles: *domain* types fill regions given by the argmax of smooth random fields
  (correlation length ``domain_size``) perturbed by rough fields (~25 µm) so borders are irregular at
  sub-spot scale; a *layer* type forms thin bands (20–40 µm) along level sets of a smooth field; an
  *island* type forms small clusters (~20–40 µm) in immune-rich zones; 4 % of cells take a random type.
  Cell density depends on the type (thinning of the lattice), so nuclear density carries information.
* **Profiles.** A per-type mean expression per cell (``counts_per_cell`` on average) over ``n_features``:
  a shared log-normal baseline, ``informative_fraction`` of the features have type-specific fold changes
  (``var["informative"]``), and 20 % of the features follow a smooth multiplicative gradient over the
  tissue (``var["gradient"]``, log-scale slope) on top of a mild capture-efficiency field on all features.
  Counts are overdispersed like a negative binomial with feature-wise inverse dispersion per cell
  ``var["theta"]`` (a sum of ``n`` cells: ``n * theta``; drawn as Poisson–log-normal, see ``_nb``).
* **Geometry.** ``k=7``: Visium-like circles (55 µm diameter) on a 100 µm hexagonal lattice, sub-spots
  ``"hex7"`` tiling each lattice cell. ``k=K*K``: square spots of side ``spot_size`` (default 50 µm)
  tiling a square grid, sub-spots ``"grid:K"``. Spots are stored in **pixel** units of the image with a
  ``Scale(microns_per_pixel)`` to the coordinate system ``"global"`` (µm); the image has the same
  transformation.
* **Observation model.** Cells are assigned to sub-spot polygons (their centres; point in polygon) and
  split by whether they lie in the spot's footprint. Expected counts of each part = cell-type counts @
  type profiles × gradient(sub-spot centre); the inside and outside parts are sampled independently.
  Truth sub-spot counts = inside + outside parts; a spot's counts = the sum of the inside parts of its
  sub-spots (exactly; without ``section_bias``).
* **Image.** Rendered from the cells: each pixel takes its nearest cell (a Voronoi tessellation, via a
  distance transform); the background colour, fibre-like streaks and nucleus size/colour/visibility
  follow that cell's type (two domain types look alike but for nucleus size and density), plus per-cell
  and pixel noise. The image carries sub-spot information, not a perfect type label.
* **Realistic style** (``style="realistic"``; the default ``"painted"`` is the image above). The image is
  not a colouring by type: it is rendered in stain space (Beer–Lambert with H and E stain vectors); each
  cell has an elliptic nucleus (size, aspect, orientation, chromatin texture, haematoxylin) and a
  cytoplasm whose eosin follows its type's *look*. Look-alike types (``look_alike_types``) come in pairs
  with the same look and different expression, told apart only by nucleus size and/or chromatin texture;
  stain strengths and illumination vary smoothly across the slide and between sections
  (``stain_gradient``); cells of one type differ by a continuous expression program (``expression_states``,
  not visible in the image); each spot has its own sequencing depth (``depth``, 100–3,000 counts).
  Its draws come from generators of their own, so ``style="painted"`` gives the same data as before.
* **Calibration.** With the defaults, ``synthetic(1200, 300)``, scored over the informative features, gives
  mean per-feature Pearson ≈ 0.61 (even split), 0.64 (Gaussian interpolation), 0.81 (linear image
  regression on the morphology features), 0.92 (the expected counts themselves: the noise ceiling).
* **Sections.** ``n_sections > 1``: sections ``"A", "B", ...`` each with its own tissue layout (same type
  profiles), stored as ``spots_<S>``, ``image_<S>``, ``spots_<S>_truth_subspots``, placed side by side in
  ``"global"``; one ``table`` annotates every ``spots_<S>`` (obs ``section``) and one ``truth`` table
  every ``spots_<S>_truth_subspots``. Spot ids are unique across sections. ``section_bias`` scales the
  *observed* counts of each section (library factor × per-feature log-normal factor, stochastic
  rounding), never the truth.
"""

from __future__ import annotations

import os
import string
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp
import shapely
from scipy import ndimage

from soscope._constants import SoscopeKeys

from .._errors import SoscopeInputError

__all__ = ["synthetic"]

_VISIUM_SPACING = 100.0
_VISIUM_DIAMETER = 55.0
#: amplitude of the ~25 µm field that roughens domain borders (relative to the smooth domain fields)
_ROUGH = 1.1
#: threshold of the island field (lower: more islands)
_ISLAND = 1.7


# --------------------------------------------------------------------------------------------- fields
class _Field:
    """A smooth Gaussian random field (unit variance, correlation length ``length``) evaluated anywhere."""

    def __init__(self, rng: np.random.Generator, width: float, height: float, length: float):
        self.step = length / 3.0
        self.pad = 8
        nx = int(np.ceil(width / self.step)) + 2 * self.pad + 1
        ny = int(np.ceil(height / self.step)) + 2 * self.pad + 1
        grid = ndimage.gaussian_filter(rng.standard_normal((ny, nx)), sigma=3.0, mode="wrap")
        grid = (grid - grid.mean()) / grid.std()
        self.coef = ndimage.spline_filter(grid, order=3)

    def __call__(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        coords = np.stack([np.asarray(y) / self.step + self.pad, np.asarray(x) / self.step + self.pad])
        return ndimage.map_coordinates(self.coef, coords, order=3, mode="nearest", prefilter=False)

    def grad_norm(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        h = self.step / 10.0
        gx = (self(x + h, y) - self(x - h, y)) / (2 * h)
        gy = (self(x, y + h) - self(x, y - h)) / (2 * h)
        return np.hypot(gx, gy)


# ---------------------------------------------------------------------------------------------- roles
@dataclass(frozen=True)
class _Roles:
    n_domain: int
    layer: int | None
    island: int

    @staticmethod
    def make(n_types: int) -> _Roles:
        if n_types >= 4:
            return _Roles(n_domain=n_types - 2, layer=n_types - 2, island=n_types - 1)
        return _Roles(n_domain=n_types - 1, layer=None, island=n_types - 1)


# H&E-like archetypes: background (cytoplasm / stroma) RGB, nucleus RGB, nucleus radius µm, fibre strength,
# fraction of cells whose nucleus is in the section plane, density (lattice keep probability)
_ARCHETYPES = {
    "epithelial": ((214, 146, 196), (92, 56, 148), 3.6, 0.0, 0.95, 0.80),
    "stroma": ((236, 160, 184), (112, 64, 140), 2.6, 1.0, 0.9, 0.55),
    "pale": ((243, 212, 228), (120, 84, 160), 3.0, 0.25, 0.9, 0.45),
    "epithelial2": ((198, 136, 200), (80, 46, 150), 2.7, 0.0, 0.95, 0.95),
    "dense": ((200, 128, 186), (84, 48, 136), 3.2, 0.1, 0.95, 0.95),
    "muscle": ((226, 120, 150), (104, 60, 132), 2.4, 0.8, 0.9, 0.80),
    "immune": ((186, 116, 180), (52, 30, 112), 2.3, 0.0, 1.0, 1.00),
}
_DOMAIN_ORDER = ["epithelial", "stroma", "pale", "epithelial2", "dense"]


def _appearance(rng: np.random.Generator, roles: _Roles, n_types: int) -> dict[str, np.ndarray]:
    names = []
    for t in range(n_types):
        if t == roles.island:
            names.append("immune")
        elif roles.layer is not None and t == roles.layer:
            names.append("muscle")
        else:
            names.append(_DOMAIN_ORDER[t % len(_DOMAIN_ORDER)])
    arch = [_ARCHETYPES[n] for n in names]
    jitter = lambda scale, shape: rng.normal(0.0, scale, shape)  # noqa: E731
    return {
        "name": np.array(names),
        "bg": np.array([a[0] for a in arch], dtype=np.float32) + jitter(3.0, (n_types, 3)).astype(np.float32),
        "nuc": np.array([a[1] for a in arch], dtype=np.float32)
        + jitter(3.0, (n_types, 3)).astype(np.float32),
        "nuc_r": np.array([a[2] for a in arch]),
        "fibre": np.array([a[3] for a in arch], dtype=np.float32),
        "fibre_dir": rng.integers(0, 2, n_types),
        "visible": np.array([a[4] for a in arch]),
        "density": np.array([a[5] for a in arch]),
    }


# ---------------------------------------------------------------------------------------------- tissue
def _tissue(
    rng: np.random.Generator,
    width: float,
    height: float,
    roles: _Roles,
    look: dict[str, np.ndarray],
    *,
    cell_spacing: float,
    domain_size: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Cell centres ``(n, 2)`` (µm) and cell types ``(n,)``."""
    dens = look["density"]
    a = cell_spacing * np.sqrt(float(np.mean(dens)))  # lattice spacing before thinning
    dy = a * np.sqrt(3) / 2
    nx, ny = int(width / a) + 2, int(height / dy) + 2
    jj, ii = np.meshgrid(np.arange(nx), np.arange(ny))
    x = (jj * a + (ii % 2) * a / 2).ravel()
    y = (ii * dy).ravel()
    x = x + rng.uniform(-0.35 * a, 0.35 * a, x.shape)
    y = y + rng.uniform(-0.35 * a, 0.35 * a, y.shape)
    keep = (x >= 0) & (x < width) & (y >= 0) & (y < height)
    x, y = x[keep], y[keep]

    # domains: argmax of smooth fields, borders roughened at ~25 µm
    score = np.empty((roles.n_domain, len(x)))
    for d in range(roles.n_domain):
        smooth = _Field(rng, width, height, domain_size)
        rough = _Field(rng, width, height, 25.0)
        score[d] = smooth(x, y) + _ROUGH * rough(x, y)
    ctype = np.argmax(score, axis=0).astype(np.int16) if roles.n_domain > 1 else np.zeros(len(x), np.int16)
    # thin layers along level sets of a smooth field (signed distance ≈ (f - c) / |grad f|)
    if roles.layer is not None:
        lf = _Field(rng, width, height, 2.0 * domain_size)
        val, gn = lf(x, y), np.maximum(lf.grad_norm(x, y), 1e-6)
        half_width = (20.0 + 20.0 * (0.5 + 0.5 * np.tanh(_Field(rng, width, height, 150.0)(x, y)))) / 2
        wobble = 0.15 * _Field(rng, width, height, 60.0)(x, y)
        in_layer = np.zeros(len(x), dtype=bool)
        for c in (-1.0, 0.0, 1.0):
            in_layer |= np.abs((val + wobble - c) / gn) < half_width
        ctype[in_layer] = roles.layer
    # islands: small blobs where an immune-rich zone meets a fine field
    zone = _Field(rng, width, height, domain_size)(x, y)
    blobs = _Field(rng, width, height, 14.0)(x, y)
    ctype[blobs + 0.6 * zone > _ISLAND] = roles.island
    # scattered cells of any type
    swap = rng.random(len(x)) < 0.04
    ctype[swap] = rng.integers(0, len(dens), int(swap.sum()))
    # type-dependent density
    keep = rng.random(len(x)) < dens[ctype]
    return np.column_stack([x[keep], y[keep]]), ctype[keep]


# -------------------------------------------------------------------------------------------- profiles
def _profiles(
    rng: np.random.Generator,
    n_types: int,
    n_features: int,
    informative_fraction: float,
    counts_per_cell: float,
) -> dict[str, np.ndarray]:
    n_inf = int(round(informative_fraction * n_features))
    informative = np.zeros(n_features, dtype=bool)
    informative[rng.permutation(n_features)[:n_inf]] = True
    # markers tend to be well expressed (as in curated panels); the rest spans orders of magnitude
    base = np.exp(rng.normal(0.0, 1.3, n_features) + 1.5 * informative)
    lfc = np.zeros((n_types, n_features))
    for f in np.flatnonzero(informative):
        lfc[:, f] = rng.normal(0.0, 0.3, n_types)
        n_up = rng.integers(1, 3)
        lfc[rng.choice(n_types, n_up, replace=False), f] += rng.uniform(1.0, 2.5, n_up)
        if rng.random() < 0.3:
            lfc[rng.integers(n_types), f] -= rng.uniform(1.0, 2.0)
    type_scale = rng.uniform(0.7, 1.4, n_types)
    prof = base[None, :] * np.exp(lfc) * type_scale[:, None]
    prof *= counts_per_cell / prof.sum(axis=1).mean()
    gradient = np.where(rng.random(n_features) < 0.2, rng.normal(0.0, 0.3, n_features), 0.0)
    theta = np.exp(rng.normal(np.log(20.0), 0.7, n_features))  # per cell; a sum of n cells has n * theta
    return {"profiles": prof, "informative": informative, "gradient": gradient, "theta": theta}


# -------------------------------------------------------------------------------------------- geometry
def _spot_lattice(n_spots: int, k: int, spot_size: float | None, margin_cells: float = 1.0):
    """Spot centres (µm), shape parameters, and the tissue extent."""
    if k == 7:
        s = _VISIUM_SPACING
        ncol = max(1, int(round(np.sqrt(n_spots * np.sqrt(3) / 2))))  # rows are sqrt(3)/2 apart
        r, c = np.divmod(np.arange(n_spots), ncol)
        x = c * s + (r % 2) * s / 2
        y = r * s * np.sqrt(3) / 2
        size = _VISIUM_DIAMETER if spot_size is None else float(spot_size)
        if size >= s:
            raise SoscopeInputError(f"`spot_size` (the circle diameter) must be below the spacing {s} µm.")
        kind = "circles"
    else:
        kk = int(round(np.sqrt(k)))
        if k < 4 or kk * kk != k:
            raise SoscopeInputError(
                f"`k={k}` is not supported: use 7 (Visium circles, 'hex7') or a square K*K >= 4 "
                "(square spots, 'grid:K')."
            )
        s = 50.0 if spot_size is None else float(spot_size)
        size = s
        ncol = max(1, int(round(np.sqrt(n_spots))))
        r, c = np.divmod(np.arange(n_spots), ncol)
        x, y = c * s + s / 2, r * s + s / 2
        kind = "squares"
    m = margin_cells * s + s
    xy = np.column_stack([x + m, y + m])
    width, height = float(x.max() + 2 * m), float(y.max() + 2 * m)
    return xy, r.astype(np.int32), c.astype(np.int32), s, size, kind, width, height


def _spots_gdf(xy_px: np.ndarray, size_px: float, kind: str, index: np.ndarray, rows, cols):
    import geopandas as gpd

    if kind == "circles":
        geom = shapely.points(xy_px)
        gdf = gpd.GeoDataFrame({"radius": np.full(len(xy_px), size_px / 2)}, geometry=geom)
    else:
        h = size_px / 2
        geom = shapely.box(xy_px[:, 0] - h, xy_px[:, 1] - h, xy_px[:, 0] + h, xy_px[:, 1] + h)
        gdf = gpd.GeoDataFrame(geometry=geom)
    gdf["array_row"] = rows
    gdf["array_col"] = cols
    gdf.index = pd.Index(index, name="spot_id")
    return gdf


# ------------------------------------------------------------------------------------------------ truth
def _parallel(fn, n: int) -> None:
    """Run ``fn(0..n-1)`` on a few threads (numpy's samplers and ufuncs release the GIL)."""
    workers = min(n, os.cpu_count() or 1, 8)
    if workers <= 1:
        for i in range(n):
            fn(i)
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(fn, range(n)))


def _nb(rng: np.random.Generator, mu: np.ndarray, theta: np.ndarray, n_cells: np.ndarray) -> np.ndarray:
    """Overdispersed counts of sums of ``n_cells`` cells: Poisson with a log-normal rate factor.

    Each cell is negative binomial with inverse dispersion ``theta`` (per feature); a sum of ``n`` such
    cells has inverse dispersion ``n * theta``. The gamma mixing of the exact negative binomial is replaced
    by a log-normal factor of the same mean (1) and variance (``1 / (n * theta)``), which is several times
    faster to draw; counts have the negative binomial's mean ``mu`` and variance ``mu + mu**2 / (n theta)``.
    """
    th = theta[None, :] * np.maximum(n_cells, 1).astype(np.float32)[:, None]
    sigma2 = np.log1p(1.0 / th)
    z = rng.standard_normal(mu.shape, dtype=np.float32)
    rate = mu * np.exp(np.sqrt(sigma2) * z - 0.5 * sigma2)
    return rng.poisson(rate).astype(np.int32)


def _truth(
    rng: np.random.Generator,
    layout,
    spot_xy_px: np.ndarray,
    radius_px: float | None,
    cells_px: np.ndarray,
    ctype: np.ndarray,
    prof: dict[str, np.ndarray],
    grad_field: _Field,
    capture_field: _Field,
    mpp: float,
    chunk: int = 2048,
    states: tuple[np.ndarray, np.ndarray, float] | None = None,
    depth: np.ndarray | None = None,
):
    """Sample the sub-spots' counts from the cells in them (see the module's observation model).

    ``states``: ``(cell_state (n,), loadings (n_types, F), sigma)``: each cell's expected counts are its
    type's profile times ``exp(sigma * state * loading - sigma**2 * loading**2 / 2)`` (mean preserving).
    ``depth``: per-spot depth (expected counts of a spot of median cell content): every sub-spot's expected
    counts are scaled by its spot's ``depth / median content``.
    """
    n_types = prof["profiles"].shape[0]
    m = layout.n_subspots
    tree = shapely.STRtree(layout.geometry)
    ci, si = tree.query(shapely.points(cells_px), predicate="intersects")
    order = np.lexsort((si, ci))
    ci, si = ci[order], si[order]
    ci, first = np.unique(ci, return_index=True)  # a centre on a shared border goes to one sub-spot
    si = si[first]
    if radius_px is None:
        inside = np.ones(len(ci), dtype=bool)
    else:
        d = np.hypot(*(cells_px[ci] - spot_xy_px[layout.spot_index[si]]).T)
        inside = d <= radius_px
    t = ctype[ci].astype(np.int64)
    tc_in = np.bincount(si[inside] * n_types + t[inside], minlength=m * n_types).reshape(m, n_types)
    tc_out = np.bincount(si[~inside] * n_types + t[~inside], minlength=m * n_types).reshape(m, n_types)

    P = prof["profiles"].astype(np.float32)
    a = prof["gradient"].astype(np.float32)
    theta = prof["theta"].astype(np.float32)
    cx, cy = layout.centroid[:, 0] * mpp, layout.centroid[:, 1] * mpp  # µm
    g_sub = grad_field(cx, cy).astype(np.float32)
    cap = np.exp(0.1 * capture_field(cx, cy)).astype(np.float32)

    if depth is not None:
        # the spot's content: expected footprint counts at the profiles' scale (no gradient / states)
        content = np.bincount(layout.spot_index, tc_in @ P.sum(axis=1).astype(np.float64) * cap, len(depth))
        eff = depth / np.median(content[content > 0]) if (content > 0).any() else np.ones(len(depth))
        cap = (cap * eff[layout.spot_index]).astype(np.float32)
    if states is not None:
        state, loadings, sigma = states
        by_sub = np.argsort(si, kind="stable")  # cells grouped by sub-spot, so a chunk's cells are contiguous
        c_sub, c_cell, c_in = si[by_sub], ci[by_sub], inside[by_sub]
        expo = (sigma * state[c_cell]).astype(np.float32)
        c_type = ctype[c_cell].astype(np.int64)
        L = loadings.astype(np.float32)
        corr = np.float32(-0.5 * sigma**2) * L * L
        # bounded memory: a chunk's cells times features stay below ~8 M values
        per_sub = max(1.0, len(c_sub) / max(m, 1))
        chunk = int(max(64, min(chunk, 8e6 / (per_sub * P.shape[1]))))

    n_in, n_out = tc_in.sum(axis=1), tc_out.sum(axis=1)
    f = P.shape[1]
    x = np.empty((m, f), dtype=np.int32)
    foot = np.empty((m, f), dtype=np.int32)
    mean = np.empty((m, f), dtype=np.float32)
    mean_foot = np.empty((m, f), dtype=np.float32)
    starts = list(range(0, m, chunk))
    seeds = rng.integers(0, 2**63 - 1, size=len(starts))

    def work(i: int) -> None:  # chunks own their generator: the result does not depend on threading
        s = starts[i]
        e = min(m, s + chunk)
        crng = np.random.default_rng(seeds[i])
        factor = np.exp(g_sub[s:e, None] * a[None, :]) * cap[s:e, None]
        if states is None:
            mu_in = (tc_in[s:e].astype(np.float32) @ P) * factor
            mu_out = (tc_out[s:e].astype(np.float32) @ P) * factor
        else:
            lo, hi = np.searchsorted(c_sub, [s, e])
            tt = c_type[lo:hi]
            cell_mu = P[tt] * np.exp(expo[lo:hi, None] * L[tt] + corr[tt])  # (cells, F)
            rows, cols = c_sub[lo:hi] - s, np.arange(hi - lo)
            part_in = c_in[lo:hi].astype(np.float32)
            a_in = sp.csr_matrix((part_in, (rows, cols)), shape=(e - s, hi - lo))
            a_out = sp.csr_matrix((1.0 - part_in, (rows, cols)), shape=(e - s, hi - lo))
            mu_in = np.asarray(a_in @ cell_mu) * factor
            mu_out = np.asarray(a_out @ cell_mu) * factor
        x_in = _nb(crng, mu_in, theta, n_in[s:e])
        x_out = _nb(crng, mu_out, theta, n_out[s:e])
        foot[s:e] = x_in
        mean_foot[s:e] = mu_in
        np.add(x_in, x_out, out=x[s:e])
        np.add(mu_in, mu_out, out=mean[s:e])

    _parallel(work, len(starts))
    tc = tc_in + tc_out
    return x, foot, mean, mean_foot, tc, n_in


# ------------------------------------------------------------------------------------------------ image
def _cell_canvas(cells_px: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``(H, W)`` int32 canvas holding cell ``k + 1`` at the pixel of its centre (0 elsewhere)."""
    h, w = shape
    ix = np.clip(np.floor(cells_px[:, 0]).astype(np.int64), 0, w - 1)
    iy = np.clip(np.floor(cells_px[:, 1]).astype(np.int64), 0, h - 1)
    canvas = np.zeros((h, w), dtype=np.int32)
    canvas[iy, ix] = np.arange(1, len(cells_px) + 1, dtype=np.int32)
    return canvas


def _render(
    rng: np.random.Generator,
    cells_px: np.ndarray,
    ctype: np.ndarray,
    look: dict[str, np.ndarray],
    shape: tuple[int, int],
    mpp: float,
    stain: np.ndarray,
    band: int = 256,
) -> np.ndarray:
    """``(3, H, W)`` uint8 H&E-like image of the cells (pixel (i, j) covers [j, j+1) × [i, i+1))."""
    h, w = shape
    n = len(cells_px)
    canvas = _cell_canvas(cells_px, shape)
    dist, idx = ndimage.distance_transform_edt(canvas == 0, return_indices=True)
    nearest = canvas[idx[0], idx[1]] - 1
    del idx, canvas
    dist = dist.astype(np.float32)
    # per-cell appearance
    t = ctype.astype(np.int64)
    r_nuc = (look["nuc_r"][t] / mpp * rng.uniform(0.75, 1.25, n)).astype(np.float32)
    r_nuc[rng.random(n) >= look["visible"][t]] = -1.0  # nucleus out of the section plane
    shade = (1.0 + 0.05 * rng.standard_normal(n)).astype(np.float32)[:, None] * stain.astype(np.float32)
    bg_cell = look["bg"][t] * shade
    nuc_cell = look["nuc"][t] * (1.0 + 0.12 * rng.standard_normal(n)).astype(np.float32)[:, None]
    fibre = look["fibre"][t]
    fdir = look["fibre_dir"][t]
    # fibre-like streaks: anisotropic smoothed noise, horizontal and vertical
    noise = rng.standard_normal((h, w), dtype=np.float32)
    streak_h = ndimage.gaussian_filter(noise, sigma=(0.7, 6.0 / mpp))
    streak_v = ndimage.gaussian_filter(noise, sigma=(6.0 / mpp, 0.7))
    del noise
    streak_h /= streak_h.std() + 1e-12
    streak_v /= streak_v.std() + 1e-12
    out = np.empty((3, h, w), dtype=np.uint8)
    starts = list(range(0, h, band))
    seeds = rng.integers(0, 2**63 - 1, size=len(starts))

    def work(i: int) -> None:
        s = starts[i]
        e = min(h, s + band)
        nb = nearest[s:e]
        rgb = bg_cell[nb]  # (b, w, 3)
        st = np.where(fdir[nb] == 0, streak_h[s:e], streak_v[s:e])
        rgb += (fibre[nb] * 22.0 * np.tanh(st))[..., None]
        alpha = np.clip(r_nuc[nb] - dist[s:e] + 0.5, 0.0, 1.0)[..., None]
        rgb = rgb * (1.0 - alpha) + nuc_cell[nb] * alpha
        rgb += np.random.default_rng(seeds[i]).standard_normal(rgb.shape, dtype=np.float32) * 7.0
        out[:, s:e, :] = np.clip(rgb, 0, 255).astype(np.uint8).transpose(2, 0, 1)

    _parallel(work, len(starts))
    return out


# ------------------------------------------------------------------------------- realistic appearance
# style="realistic": the image is rendered in stain space (Beer-Lambert), not painted per type.
# Archetypes: eosin of the cytoplasm, haematoxylin of the cytoplasm, haematoxylin of the nucleus, nucleus
# radius (µm), chromatin texture amplitude (relative), chromatin grain (µm), fibre strength, fraction of
# nuclei in the section plane, density (lattice keep probability).
_STAINED = {
    "epithelial": (0.45, 0.12, 1.70, 3.4, 0.12, 0.45, 0.0, 0.95, 0.85),
    "stroma": (0.65, 0.05, 1.80, 2.6, 0.12, 0.45, 1.0, 0.90, 0.55),
    "pale": (0.25, 0.06, 1.50, 3.0, 0.12, 0.45, 0.25, 0.90, 0.45),
    "dense": (0.50, 0.14, 1.75, 3.0, 0.12, 0.45, 0.1, 0.95, 0.95),
    "muscle": (0.80, 0.05, 1.70, 2.4, 0.12, 0.45, 0.8, 0.90, 0.80),
    "immune": (0.30, 0.16, 2.30, 2.3, 0.10, 0.45, 0.0, 1.00, 1.00),
}
_STAINED_DOMAIN_ORDER = ["epithelial", "stroma", "pale", "dense"]
#: what tells the second type of a look-alike pair from the first, by pair (cycled)
_TWIN_KINDS = ("nucleus size", "chromatin texture", "nucleus size and chromatin texture")
#: Ruifrok & Johnston optical densities per unit stain (haematoxylin, eosin), RGB
_H_VEC = np.array([0.650, 0.704, 0.286])
_E_VEC = np.array([0.072, 0.990, 0.105])
#: correlation length (µm) of the per-cell expression-state fields, and their share of a state's variance
_STATE_LENGTH = 150.0
_STATE_SPATIAL = 0.5
#: share of the features that each type's expression program moves
_STATE_FEATURES = 0.3
#: correlation length (µm) of the depth field, and its share of the (probit) depth variance
_DEPTH_LENGTH = 600.0
_DEPTH_SPATIAL = 0.7


def _appearance_stained(
    rng: np.random.Generator, roles: _Roles, n_types: int, look_alike: bool
) -> dict[str, np.ndarray]:
    """Per-type stain-space appearance; look-alike pairs share all of it but nucleus size / texture."""
    names, arch = [], []
    for t in range(n_types):
        if t == roles.island:
            name, twin = "immune", None
        elif roles.layer is not None and t == roles.layer:
            name, twin = "muscle", None
        elif look_alike and not (t % 2 == 0 and t + 1 >= roles.n_domain):  # an unpaired last domain type
            pair = t // 2
            name = _STAINED_DOMAIN_ORDER[pair % len(_STAINED_DOMAIN_ORDER)]
            twin = _TWIN_KINDS[pair % len(_TWIN_KINDS)] if t % 2 == 1 else None
        else:
            name, twin = _STAINED_DOMAIN_ORDER[t % len(_STAINED_DOMAIN_ORDER)], None
        e, h_cyto, h_nuc, r, amp, grain, fibre, visible, density = _STAINED[name]
        if twin is not None and "size" in twin:
            r = r * 0.7 if r >= 3.0 else r * 1.4
        if twin is not None and "texture" in twin:
            amp, grain = 0.45, 1.1  # coarse, clumped chromatin
        names.append(name if twin is None else f"{name} (twin: {twin})")
        arch.append((e, h_cyto, h_nuc, r, amp, grain, fibre, visible, density))
    arch_a = np.array(arch, dtype=np.float64)
    # jitter per look (shared by twins): the twins' colours stay identical
    base = [n.split(" (")[0] for n in names]
    looks = sorted(set(base), key=base.index)
    jit = {n: rng.normal(0.0, 0.03, 3) for n in looks}
    stain_jit = np.array([jit[b] for b in base])
    return {
        "name": np.array(names),
        "e": np.clip(arch_a[:, 0] + stain_jit[:, 0], 0.05, None),
        "h_cyto": np.clip(arch_a[:, 1] + stain_jit[:, 1] / 3, 0.0, None),
        "h_nuc": np.clip(arch_a[:, 2] + 2 * stain_jit[:, 2], 0.3, None),
        "nuc_r": arch_a[:, 3],
        "tex_amp": arch_a[:, 4],
        "tex_grain": arch_a[:, 5],
        "fibre": arch_a[:, 6].astype(np.float32),
        "fibre_dir": np.array([rng.integers(0, 2) for _ in range(n_types)]),
        "visible": arch_a[:, 7],
        "density": arch_a[:, 8],
    }


class _Stain:
    """A section's stain: H and E vectors, slide-scale stain strengths, illumination (``stain_gradient``)."""

    def __init__(self, rng: np.random.Generator, width: float, height: float, amount: float):
        self.amount = float(amount)
        self.width, self.height = width, height
        if self.amount <= 0:
            self.h_vec, self.e_vec = _H_VEC.copy(), _E_VEC.copy()
            return
        a = self.amount

        def vec(v: np.ndarray) -> np.ndarray:
            v = np.clip(v + rng.normal(0.0, 0.2 * a, 3), 0.01, None)
            return v / np.linalg.norm(v)

        self.h_vec, self.e_vec = vec(_H_VEC), vec(_E_VEC)
        self.offset = rng.normal(0.0, a, 2)  # the section's overall H and E strengths (log)
        self.dir_thick, self.dir_light = rng.uniform(0.0, 2 * np.pi, 2)
        length = max(width, height) / 2
        self.f_h = _Field(rng, width, height, length)
        self.f_e = _Field(rng, width, height, length)

    def _ramp(self, x: np.ndarray, y: np.ndarray, angle: float) -> np.ndarray:
        """Return a linear ramp across the slide, from about -1 to 1 along ``angle``."""
        proj = (x - self.width / 2) * np.cos(angle) + (y - self.height / 2) * np.sin(angle)
        return proj / (0.5 * np.hypot(self.width, self.height))

    def at(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Return the H and E strength factors and the illumination (transmitted share) at ``x, y`` µm."""
        if self.amount <= 0:
            one = np.ones(np.shape(x), dtype=np.float32)
            return one, one, np.float32(0.97) * one
        a = self.amount
        thick = 0.8 * self._ramp(x, y, self.dir_thick)  # section thickness: both stains
        s_h = np.exp(a * (thick + 0.6 * self.f_h(x, y)) + self.offset[0])
        s_e = np.exp(a * (thick + 0.6 * self.f_e(x, y)) + self.offset[1])
        light = 0.97 * np.exp(-0.5 * a * (1.0 + self._ramp(x, y, self.dir_light)))
        return s_h.astype(np.float32), s_e.astype(np.float32), light.astype(np.float32)


def _cell_states(
    rng: np.random.Generator,
    cells_um: np.ndarray,
    ctype: np.ndarray,
    n_types: int,
    width: float,
    height: float,
) -> np.ndarray:
    """Per-cell expression state ``(n,)``, N(0, 1): a smooth per-type field plus the cell's own part."""
    z = np.empty(len(ctype))
    for t in range(n_types):
        sel = ctype == t
        field = _Field(rng, width, height, _STATE_LENGTH)
        z[sel] = field(cells_um[sel, 0], cells_um[sel, 1])
    own = rng.standard_normal(len(ctype))
    return np.sqrt(_STATE_SPATIAL) * z + np.sqrt(1.0 - _STATE_SPATIAL) * own


def _spot_depth(
    rng: np.random.Generator, xy_um: np.ndarray, width: float, height: float, low: float, high: float
) -> np.ndarray:
    """Per-spot depth in ``[low, high]``, log-uniform: a smooth field plus spot noise, through the probit."""
    from scipy.special import ndtr

    field = _Field(rng, width, height, _DEPTH_LENGTH)(xy_um[:, 0], xy_um[:, 1])
    z = np.sqrt(_DEPTH_SPATIAL) * field + np.sqrt(1.0 - _DEPTH_SPATIAL) * rng.standard_normal(len(xy_um))
    return low * (high / low) ** ndtr(z)


def _render_stained(
    rng: np.random.Generator,
    cells_px: np.ndarray,
    ctype: np.ndarray,
    look: dict[str, np.ndarray],
    shape: tuple[int, int],
    mpp: float,
    stain: _Stain,
    band: int = 256,
) -> np.ndarray:
    """``(3, H, W)`` uint8 H&E image rendered in stain space: per-cell nuclei, cytoplasm, stain fields."""
    h, w = shape
    n = len(cells_px)
    canvas = _cell_canvas(cells_px, shape)
    idx = ndimage.distance_transform_edt(canvas == 0, return_distances=False, return_indices=True)
    nearest = canvas[idx[0], idx[1]] - 1
    del idx, canvas
    # per-cell appearance: elliptic nuclei (size, aspect, orientation), stain amounts
    t = ctype.astype(np.int64)
    r_nuc = (look["nuc_r"][t] / mpp * rng.uniform(0.8, 1.2, n)).astype(np.float32)
    r_nuc[rng.random(n) >= look["visible"][t]] = -1.0  # nucleus out of the section plane
    aspect = np.sqrt(rng.uniform(1.0, 1.5, n)).astype(np.float32)
    angle = rng.uniform(0.0, np.pi, n)
    cos_a, sin_a = np.cos(angle).astype(np.float32), np.sin(angle).astype(np.float32)
    e_cell = (look["e"][t] * (1.0 + 0.08 * rng.standard_normal(n))).astype(np.float32)
    h_cyto = look["h_cyto"][t].astype(np.float32)
    h_nuc = (look["h_nuc"][t] * (1.0 + 0.10 * rng.standard_normal(n))).astype(np.float32)
    amp = look["tex_amp"][t].astype(np.float32)
    grains = np.unique(look["tex_grain"])
    grain_of = np.searchsorted(grains, look["tex_grain"])[t]
    fibre = look["fibre"][t]
    fdir = look["fibre_dir"][t]
    cx, cy = cells_px[:, 0].astype(np.float32), cells_px[:, 1].astype(np.float32)
    # chromatin texture (one unit-variance noise per grain size) and fibre-like streaks
    tex = []
    for g in grains:
        z = ndimage.gaussian_filter(rng.standard_normal((h, w), dtype=np.float32), sigma=max(g / mpp, 0.3))
        tex.append(z / (z.std() + 1e-12))
    noise = rng.standard_normal((h, w), dtype=np.float32)
    streak_h = ndimage.gaussian_filter(noise, sigma=(0.7, 6.0 / mpp))
    streak_v = ndimage.gaussian_filter(noise, sigma=(6.0 / mpp, 0.7))
    del noise
    streak_h /= streak_h.std() + 1e-12
    streak_v /= streak_v.std() + 1e-12
    h_vec, e_vec = stain.h_vec.astype(np.float32), stain.e_vec.astype(np.float32)
    rgb_all = np.empty((3, h, w), dtype=np.float32)
    starts = list(range(0, h, band))

    def work(i: int) -> None:
        s = starts[i]
        e = min(h, s + band)
        nb = nearest[s:e]
        yy = (np.arange(s, e, dtype=np.float32) + 0.5)[:, None]
        xx = (np.arange(w, dtype=np.float32) + 0.5)[None, :]
        dx, dy = xx - cx[nb], yy - cy[nb]
        u = (dx * cos_a[nb] + dy * sin_a[nb]) / aspect[nb]
        v = (-dx * sin_a[nb] + dy * cos_a[nb]) * aspect[nb]
        alpha = np.clip(r_nuc[nb] - np.sqrt(u * u + v * v) + 0.5, 0.0, 1.0)
        tx = tex[0][s:e] if len(tex) == 1 else np.choose(grain_of[nb], [z[s:e] for z in tex])
        h_amt = h_cyto[nb] + alpha * (h_nuc[nb] * np.maximum(1.0 + amp[nb] * tx, 0.0) - h_cyto[nb])
        st = np.where(fdir[nb] == 0, streak_h[s:e], streak_v[s:e])
        e_amt = e_cell[nb] * (1.0 + fibre[nb] * 0.3 * np.tanh(st)) * (1.0 - 0.6 * alpha)
        s_h, s_e, light = stain.at(np.broadcast_to(xx * mpp, nb.shape), np.broadcast_to(yy * mpp, nb.shape))
        h_amt *= s_h
        e_amt *= s_e
        for c in range(3):
            rgb_all[c, s:e] = 255.0 * light * np.exp(-(h_amt * h_vec[c] + e_amt * e_vec[c] + 0.02))

    _parallel(work, len(starts))
    for c in range(3):  # optics: a slight blur
        rgb_all[c] = ndimage.gaussian_filter(rgb_all[c], sigma=0.5)
    out = np.empty((3, h, w), dtype=np.uint8)
    seeds = rng.integers(0, 2**63 - 1, size=len(starts))

    def noise_band(i: int) -> None:  # bands own their generator: the result does not depend on threading
        s = starts[i]
        e = min(h, s + band)
        z = np.random.default_rng(seeds[i]).standard_normal((3, e - s, w), dtype=np.float32)
        out[:, s:e] = np.clip(rgb_all[:, s:e] + 4.0 * z, 0, 255).astype(np.uint8)

    _parallel(noise_band, len(starts))
    return out


_OBSERVATIONS = ("counts", "poisson", "binary", "gaussian")
_STYLES = ("painted", "realistic")
#: the realistic style's default depth range (expected counts per spot)
_DEPTH = (100.0, 3000.0)


def _as_gaussian(rng: np.random.Generator, x: np.ndarray, layout, agg: sp.csr_matrix, bias: float):
    """Continuous values (see ``observation="gaussian"``): sub-spot truth, its footprint part, spot values."""
    rel_area = layout.area / layout.area.mean()
    values = np.log1p(x / rel_area[:, None]).astype(np.float32)
    aw = (layout.area * layout.footprint_weight)[:, None]
    spot = (agg @ (aw * values)) / np.maximum(agg @ aw, 1e-12)
    spot = spot + rng.normal(0.0, 0.05, spot.shape)
    if bias > 0:
        spot = spot + rng.normal(0.0, bias) + rng.normal(0.0, bias, spot.shape[1])[None, :]
    inside = values * (layout.footprint_weight > 0)[:, None]
    return values, inside.astype(np.float32), spot


def _scale_factors(h: int, w: int, smallest: int = 256) -> list[int]:
    f, size = [], min(h, w)
    while size // 2 >= smallest and len(f) < 6:
        f.append(2)
        size //= 2
    return f


# ------------------------------------------------------------------------------------------------- main
def synthetic(
    n_spots: int = 1200,
    n_features: int = 300,
    k: int = 7,
    image: bool = True,
    seed: int = 0,
    *,
    n_types: int = 6,
    informative_fraction: float = 0.3,
    section_bias: float | None = None,
    n_sections: int = 1,
    microns_per_pixel: float = 1.5,
    spot_size: float | None = None,
    cell_spacing: float = 10.0,
    counts_per_cell: float = 400.0,
    domain_size: float = 200.0,
    observation: str = "counts",
    style: str = "painted",
    look_alike_types: bool | None = None,
    stain_gradient: float | None = None,
    expression_states: float | None = None,
    depth: tuple[float, float] | bool | None = None,
):
    """Make a synthetic spatial omics sample with an H&E-like image and the true sub-spot counts.

    Parameters
    ----------
    n_spots
        Spots per section (a near-square patch: ``~sqrt(n_spots)`` columns).
    n_features
        Number of features (``gene_0``, ``gene_1``, ...).
    k
        Sub-spots per spot: ``7`` gives Visium-like 55 µm circles on a 100 µm hexagonal lattice split by
        ``"hex7"``; ``K*K`` (4, 9, 16, 36, ...) gives square spots of side ``spot_size`` split by
        ``"grid:K"``.
    image
        Render an H&E-like RGB image (multiscale, ``uint8``).
    seed
        Seed of every random draw: the same seed gives the same object.
    n_types
        Number of cell types (>= 2). With >= 4 types: ``n_types - 2`` domain types, one thin-layer type and
        one island (immune-like) type; with fewer there is no layer type.
    informative_fraction
        Share of the features whose mean differs between cell types (``var["informative"]``).
    section_bias
        ``None`` / ``0``: none. A float ``s``: each section's observed counts are multiplied by a library
        factor ``exp(N(0, s))`` and per-feature factors ``exp(N(0, s))`` (stochastic rounding to
        integers); the truth is not biased.
    n_sections
        Number of sections (each its own tissue layout; same cell-type profiles). See Returns.
    microns_per_pixel
        Image resolution; spots are stored in these pixel units.
    spot_size
        Circle diameter (``k=7``; default 55 µm) or square side (default 50 µm), in µm.
    cell_spacing
        Mean distance between neighbouring cells (µm).
    counts_per_cell
        Mean expected counts per cell (sets the library size: a Visium spot holds ~20 cells).
    domain_size
        Correlation length (µm) of the fields that lay out the tissue domains.
    observation
        How the features are measured (the truth follows the same kind):

        * ``"counts"``: overdispersed counts (negative-binomial-like; RNA);
        * ``"poisson"``: Poisson counts (``var["theta"]`` = 1e6; e.g. proteins, fragments);
        * ``"binary"``: presence / absence (a sub-spot is 1 when it holds any count, a spot when any count
          falls in its footprint; e.g. binarised chromatin peaks: use a small ``counts_per_cell``);
        * ``"gaussian"``: continuous normalised values: each sub-spot's value is
          ``log1p(counts / relative area)`` and a spot observes the area-weighted mean of its sub-spots'
          values over its footprint, plus N(0, 0.05) noise (``section_bias`` then shifts each section's
          values by ``N(0, s)`` per feature and overall).
    style
        How realistic the sample is; it sets the defaults of the four options below.

        * ``"painted"`` (default, the data of soscope <= 0.1): the image paints each cell's Voronoi region
          with its type's colour (plus its nucleus, fibres and noise), a colouring a linear model of the
          pixels' colour reads the types from; no expression states; depth set by ``counts_per_cell``.
        * ``"realistic"``: the image is rendered in stain space (Beer-Lambert, haematoxylin and eosin):
          every cell has an elliptic nucleus whose size, chromatin texture and haematoxylin follow its
          type, and a cytoplasm whose eosin follows its type's *look*; defaults
          ``look_alike_types=True``, ``stain_gradient=0.25``, ``expression_states=0.5``,
          ``depth=(100, 3000)``.
    look_alike_types
        ``style="realistic"`` only. Pair the domain types (0 with 1, 2 with 3, ...): the two types of a
        pair have different expression profiles but the same cytoplasm colour, density, fibres and nuclear
        stain; they differ only by nucleus size (first pair), chromatin texture (second pair) or both
        (third; then cycling). ``uns["synthetic"]["cell_type_looks"]`` names each type's look. ``None``:
        as the style.
    stain_gradient
        ``style="realistic"`` only. Amount ``a`` of stain and illumination variation (``0``: none): the
        haematoxylin and eosin strengths vary as ``exp(a * (0.8 * ramp + 0.6 * field))`` across the slide
        (``ramp`` a linear ramp in a random direction from about -1 to 1, as a section thickening across
        the slide; ``field`` a smooth unit field per stain, correlation length half the slide) times a
        per-section factor ``exp(N(0, a))`` per stain; each section's stain vectors are perturbed by
        ``N(0, 0.2 a)`` per RGB component (hue), and the illumination falls by up to ``1 - exp(-a)``
        along another ramp. ``None``: as the style.
    expression_states
        Standard deviation ``s`` (log scale) of within-type expression states (``0``: none). Each type has
        a program (loadings ``N(0, 1)`` on a random 30 % of the features) and each cell a state
        ``z ~ N(0, 1)``, half of whose variance is a smooth per-type field (correlation length 150 µm) and
        half the cell's own; the cell's expected counts are its type's profile times
        ``exp(s z loading - s**2 loading**2 / 2)`` (the type's mean is kept). States do not show in the
        image. ``None``: as the style (``0`` for ``"painted"``).
    depth
        ``(low, high)``: sequencing depth per spot, the expected total counts of a spot of median cell
        content: log-uniform in ``[low, high]`` through the probit of a smooth field (correlation length
        600 µm, 70 % of the variance) plus per-spot noise, per section. A spot's expected counts (and its
        sub-spots' truth) are scaled by its depth over the section's median content, so spot totals also
        follow the cells in the footprint; ``counts_per_cell`` then has no effect. ``True``:
        ``(100, 3000)``. ``False``: none (the library size is set by ``counts_per_cell``). ``None``: as the
        style.

    Returns
    -------
    SpatialData with, for one section,

    * ``"image"``: ``(c, y, x)`` RGB ``uint8`` multiscale image (when ``image=True``);
    * ``"spots"``: circles (Point + ``radius``) or square polygons, index = ``spot_id``, columns
      ``array_row``, ``array_col``;
    * ``"table"``: AnnData annotating ``spots`` (``region`` / instance key ``spot_id``): ``X`` integer counts
      (CSR, int32); ``obs``: ``spot_id``, ``region``, ``section``, ``array_row``, ``array_col``,
      ``n_cells`` (cells in the footprint); ``obsm["spatial"]`` (pixel centres); ``var``: ``informative``,
      ``gradient``, ``theta``; ``uns["synthetic"]`` the parameters, type profiles and scheme;
    * ``"spots_truth_subspots"``: sub-spot polygons (index ``subspot_id``, columns ``spot_id``,
      ``subspot``);
    * ``"truth"``: AnnData annotating it (instance key ``subspot_id``): ``X`` true sub-spot counts (dense
      int32), ``layers["mean"]`` expected counts (float32), ``layers["footprint"]`` the part of the counts
      inside the parent's footprint and ``layers["mean_footprint"]`` its expected counts; ``obs``:
      ``spot_id``, ``subspot``, ``section``, ``n_cells``, ``cell_type`` (dominant), ``cell_type_fraction``
      (its share); ``obsm["cell_type_fractions"]``;
      ``uns["subspots"]`` (``scheme``, ``spots``, ``spacing`` in pixels).

    With ``n_sections > 1`` the elements of section ``S`` (``"A"``, ``"B"``, ...) are ``image_S``,
    ``spots_S``, ``spots_S_truth_subspots``; ``table`` and ``truth`` annotate all sections (obs
    ``section``, ``region``). All elements have a ``Scale`` (µm per pixel) to ``"global"``; sections lie
    side by side there (a ``Sequence`` with a ``Translation``).

    """
    import anndata as ad
    import geopandas as gpd
    from spatialdata import SpatialData
    from spatialdata.models import Image2DModel, ShapesModel, TableModel
    from spatialdata.transformations import Scale, Sequence, Translation

    from ..geometry import make_subspots

    if n_spots < 2:
        raise SoscopeInputError("`n_spots` must be at least 2.")
    if n_features < 1:
        raise SoscopeInputError("`n_features` must be at least 1.")
    if n_types < 2:
        raise SoscopeInputError("`n_types` must be at least 2.")
    if not 0.0 <= informative_fraction <= 1.0:
        raise SoscopeInputError("`informative_fraction` must lie in [0, 1].")
    if n_sections < 1 or n_sections > 26:
        raise SoscopeInputError("`n_sections` must be between 1 and 26.")
    if microns_per_pixel <= 0:
        raise SoscopeInputError("`microns_per_pixel` must be positive.")
    if observation not in _OBSERVATIONS:
        raise SoscopeInputError(f"`observation` must be one of {_OBSERVATIONS}, got {observation!r}.")

    if style not in _STYLES:
        raise SoscopeInputError(f"`style` must be one of {_STYLES}, got {style!r}.")
    realistic = style == "realistic"
    if not realistic and (look_alike_types or stain_gradient):
        raise SoscopeInputError("`look_alike_types` and `stain_gradient` need `style='realistic'`.")
    look_alike = bool(realistic if look_alike_types is None else look_alike_types)
    stain_amount = float((0.25 if realistic else 0.0) if stain_gradient is None else stain_gradient)
    state_sd = float((0.5 if realistic else 0.0) if expression_states is None else expression_states)
    if depth is None:
        depth_range = _DEPTH if realistic else None
    else:
        depth_range = _DEPTH if depth is True else None if depth is False else depth
    if stain_amount < 0 or state_sd < 0:
        raise SoscopeInputError("`stain_gradient` and `expression_states` must be >= 0.")
    if depth_range is not None:
        depth_range = tuple(float(d) for d in depth_range)
        if len(depth_range) != 2 or not 0 < depth_range[0] <= depth_range[1]:
            raise SoscopeInputError("`depth` must be `(low, high)` with 0 < low <= high, or False.")

    rng = np.random.default_rng(seed)
    roles = _Roles.make(n_types)
    look = _appearance(rng, roles, n_types)  # drawn in every style: the draws below stay the same
    if realistic:  # its own generator: the painted style's draws are untouched
        look = _appearance_stained(np.random.default_rng([seed, 0, 7]), roles, n_types, look_alike)
    prof = _profiles(rng, n_types, n_features, informative_fraction, counts_per_cell)
    if observation == "poisson":
        prof["theta"] = np.full_like(prof["theta"], 1e6)  # NB with infinite inverse dispersion
    if state_sd > 0:
        srng = np.random.default_rng([seed, 0, 8])
        loadings = srng.standard_normal((n_types, n_features)) * (
            srng.random((n_types, n_features)) < _STATE_FEATURES
        )
    xy_um, rows, cols, spacing, size, kind, width, height = _spot_lattice(n_spots, k, spot_size)
    scheme = "hex7" if k == 7 else f"grid:{int(round(np.sqrt(k)))}"
    mpp = float(microns_per_pixel)
    bias = float(section_bias) if section_bias else 0.0

    sections = ["A"] if n_sections == 1 else list(string.ascii_uppercase[:n_sections])
    multi = n_sections > 1
    images: dict = {}
    shapes: dict = {}
    counts_list: list = []
    obs_list: list = []
    truth_x: list = []
    truth_foot: list = []
    truth_mean_foot: list = []
    truth_mean: list = []
    truth_obs: list = []
    fracs: list = []
    regions: list[str] = []
    truth_regions: list[str] = []
    spot_offset = 0
    sub_offset = 0
    gap_um = 2 * spacing
    for si, sec in enumerate(sections):
        sec_rng = np.random.default_rng([seed, si + 1])
        # each option draws from its own generator: sec_rng's draws stay those of the painted style, and
        # switching one option off leaves the others' draws (e.g. the depth field) unchanged
        real_rng = np.random.default_rng([seed, si + 1, 7])
        cells_um, ctype = _tissue(
            sec_rng, width, height, roles, look, cell_spacing=cell_spacing, domain_size=domain_size
        )
        grad_field = _Field(sec_rng, width, height, 1500.0)
        capture_field = _Field(sec_rng, width, height, 800.0)
        states = None
        if state_sd > 0:
            state_rng = np.random.default_rng([seed, si + 1, 8])
            states = (_cell_states(state_rng, cells_um, ctype, n_types, width, height), loadings, state_sd)
        spot_depth = None
        if depth_range is not None:
            spot_depth = _spot_depth(
                np.random.default_rng([seed, si + 1, 9]), xy_um, width, height, *depth_range
            )
        cells_px = cells_um / mpp
        spot_px = xy_um / mpp
        ids = np.arange(spot_offset, spot_offset + n_spots)
        spots_name = f"spots_{sec}" if multi else "spots"
        image_name = f"image_{sec}" if multi else "image"
        truth_name = f"{spots_name}_truth_subspots"
        scale = Scale([mpp, mpp], axes=("x", "y"))
        if multi:
            tr = {"global": Sequence([scale, Translation([si * (width + gap_um), 0.0], axes=("x", "y"))])}
        else:
            tr = {"global": scale}
        gdf = _spots_gdf(spot_px, size / mpp, kind, ids, rows, cols)
        layout = make_subspots(gdf, scheme, spacing=spacing / mpp)
        x, foot, mean, mean_foot, tc, n_foot_cells_sub = _truth(
            sec_rng,
            layout,
            spot_px,
            size / mpp / 2 if kind == "circles" else None,
            cells_px,
            ctype,
            prof,
            grad_field,
            capture_field,
            mpp,
            states=states,
            depth=spot_depth,
        )
        agg = sp.csr_matrix(
            (np.ones(layout.n_subspots, dtype=np.int64), (layout.spot_index, np.arange(layout.n_subspots))),
            shape=(n_spots, layout.n_subspots),
        )
        spot_counts = np.asarray(agg @ foot.astype(np.int64))  # exact integer sums of the inside parts
        n_cells_spot = agg @ n_foot_cells_sub
        if observation == "gaussian":
            x, foot, spot_counts = _as_gaussian(sec_rng, x, layout, agg, bias)
        elif bias > 0:
            lib = np.exp(sec_rng.normal(0.0, bias))
            feat = np.exp(sec_rng.normal(0.0, bias, n_features))
            scaled = spot_counts * (lib * feat)[None, :]
            low = np.floor(scaled)
            spot_counts = (low + (sec_rng.random(scaled.shape) < (scaled - low))).astype(np.int64)
        if observation == "binary":
            x, foot, spot_counts = (x > 0).astype(np.int32), (foot > 0).astype(np.int32), spot_counts > 0
        if observation == "gaussian":
            counts_list.append(spot_counts.astype(np.float32))
        else:
            counts_list.append(sp.csr_matrix(spot_counts.astype(np.int32)))
        obs_list.append(
            pd.DataFrame(
                {
                    "spot_id": ids,
                    "region": spots_name,
                    "section": sec,
                    "array_row": rows,
                    "array_col": cols,
                    "n_cells": n_cells_spot.astype(np.int64),
                }
            )
        )
        shapes[spots_name] = ShapesModel.parse(gdf, transformations=tr)
        m = layout.n_subspots
        sub_ids = np.arange(sub_offset, sub_offset + m)
        tgdf = gpd.GeoDataFrame(
            {"spot_id": ids[layout.spot_index], "subspot": layout.subspot.astype(np.int64)},
            geometry=list(layout.geometry),
        )
        tgdf.index = pd.Index(sub_ids, name="subspot_id")
        shapes[truth_name] = ShapesModel.parse(tgdf, transformations=tr)
        ncell = tc.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            frac = np.where(ncell[:, None] > 0, tc / np.maximum(ncell, 1)[:, None], 0.0)
        dom = np.argmax(tc, axis=1)
        truth_obs.append(
            pd.DataFrame(
                {
                    "subspot_id": sub_ids,
                    "region": truth_name,
                    "spot_id": ids[layout.spot_index],
                    "subspot": layout.subspot.astype(np.int64),
                    "section": sec,
                    "n_cells": ncell.astype(np.int64),
                    "cell_type": [f"type_{i}" for i in dom],
                    "cell_type_fraction": frac[np.arange(m), dom],
                    "footprint_weight": layout.footprint_weight,
                }
            )
        )
        truth_x.append(x)
        truth_foot.append(foot)
        truth_mean.append(mean)
        truth_mean_foot.append(mean_foot)
        fracs.append(frac.astype(np.float32))
        regions.append(spots_name)
        truth_regions.append(truth_name)
        if image:
            hpx, wpx = int(np.ceil(height / mpp)), int(np.ceil(width / mpp))
            if realistic:
                sec_stain = _Stain(real_rng, width, height, stain_amount)
                arr = _render_stained(real_rng, cells_px, ctype, look, (hpx, wpx), mpp, sec_stain)
            else:
                stain = np.exp(sec_rng.normal(0.0, 0.03, 3))
                arr = _render(sec_rng, cells_px, ctype, look, (hpx, wpx), mpp, stain)
            images[image_name] = Image2DModel.parse(
                arr,
                dims=("c", "y", "x"),
                c_coords=["r", "g", "b"],
                transformations={"global": tr["global"]},
                scale_factors=_scale_factors(hpx, wpx),
                chunks=(3, 1024, 1024),
            )
        spot_offset += n_spots
        sub_offset += m

    var = pd.DataFrame(
        {"informative": prof["informative"], "gradient": prof["gradient"], "theta": prof["theta"]},
        index=pd.Index([f"gene_{i}" for i in range(n_features)]),
    )
    obs = pd.concat(obs_list, ignore_index=True)
    obs.index = pd.Index([f"spot_{i}" for i in obs["spot_id"]])
    obs["region"] = pd.Categorical(obs["region"], categories=regions)
    obs["section"] = pd.Categorical(obs["section"], categories=sections)
    params = {
        "n_spots": int(n_spots),
        "n_features": int(n_features),
        "k": int(k),
        "image": bool(image),
        "seed": int(seed),
        "n_types": int(n_types),
        "informative_fraction": float(informative_fraction),
        "section_bias": float(bias),
        "n_sections": int(n_sections),
        "microns_per_pixel": mpp,
        "spot_size_um": float(size),
        "spacing_um": float(spacing),
        "spot_kind": kind,
        "scheme": scheme,
        "cell_spacing_um": float(cell_spacing),
        "counts_per_cell": float(counts_per_cell),
        "domain_size_um": float(domain_size),
        "observation": observation,
        "style": style,
        "look_alike_types": look_alike,
        "stain_gradient": stain_amount,
        "expression_states": state_sd,
        "depth": list(depth_range) if depth_range is not None else [],  # uns keeps no None
        "sections": sections,
        "regions": regions,
        "cell_types": [f"type_{i}" for i in range(n_types)],
        "cell_type_looks": list(look["name"]),
        "type_profiles": prof["profiles"].astype(np.float32),
    }
    x_spots = np.vstack(counts_list) if observation == "gaussian" else sp.vstack(counts_list).tocsr()
    table = ad.AnnData(X=x_spots, obs=obs, var=var)
    table.obsm["spatial"] = np.vstack([xy_um / mpp] * n_sections)
    table.uns["synthetic"] = params
    table = TableModel.parse(table, region=regions, region_key="region", instance_key="spot_id")

    tobs = pd.concat(truth_obs, ignore_index=True)
    tobs.index = pd.Index([f"subspot_{i}" for i in tobs["subspot_id"]])
    tobs["region"] = pd.Categorical(tobs["region"], categories=truth_regions)
    tobs["section"] = pd.Categorical(tobs["section"], categories=sections)
    tobs["cell_type"] = pd.Categorical(tobs["cell_type"], categories=params["cell_types"])
    truth = ad.AnnData(X=np.vstack(truth_x), obs=tobs, var=var.copy())
    truth.layers["mean"] = np.vstack(truth_mean)
    truth.layers["footprint"] = np.vstack(truth_foot)
    truth.layers["mean_footprint"] = np.vstack(truth_mean_foot)
    truth.obsm["cell_type_fractions"] = np.vstack(fracs)
    truth.uns[SoscopeKeys.TRUTH] = True  # reference truth: soscope never picks it as input
    truth.uns["subspots"] = {"scheme": scheme, "spots": regions, "spacing": float(spacing / mpp)}
    truth = TableModel.parse(truth, region=truth_regions, region_key="region", instance_key="subspot_id")

    return SpatialData(images=images, shapes=shapes, tables={"table": table, "truth": truth})
