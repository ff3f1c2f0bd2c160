"""Hand-made morphology features of sub-spot image regions (no downloaded weights).

Everything here works on one *window* of the image (a numpy array already read) and is deterministic
and local: a sub-spot's features depend only on pixels within :data:`TEXTURE_MARGIN` of its bounding
box, so tiled and untiled computations agree exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import shapely

__all__ = [
    "MorphologySpec",
    "TEXTURE_MARGIN",
    "morphology_feature_names",
    "morphology_tile",
    "background_threshold",
    "normalise_window",
    "rgb_to_hed",
    "subspot_pixels",
]

#: Luminance weights (ITU-R 709, as :func:`skimage.color.rgb2gray`) used for the grey image of RGB inputs.
GREY_WEIGHTS = np.array([0.2125, 0.7154, 0.0721], dtype=np.float32)
#: Sigmas (level pixels) of the difference of Gaussians used as the local-variance (texture) filter.
DOG_SIGMAS = (1.0, 2.0)
_TRUNCATE = 4.0
#: Grey level above which the bright Otsu class of an RGB image is taken for empty slide (background).
BACKGROUND_GREY = 0.8
#: Median ``max(RGB) - min(RGB)`` below which that bright class counts as unstained (background).
BACKGROUND_SATURATION = 0.1
#: Pixels around a sub-spot's bounding box that the texture filters read (Gaussian radius + 1).
TEXTURE_MARGIN = int(_TRUNCATE * max(DOG_SIGMAS) + 0.5) + 2

# Pixel centres are tested at (i + 0.5 + dx, j + 0.5 + dy): the tiny offsets give a half-open rule on
# edges shared by two sub-spots (a centre lying exactly on a shared edge goes to exactly one of them).
_CENTRE_DX = 1.234567e-6
_CENTRE_DY = 2.345678e-6
_MAX_CANDIDATES = 4_000_000
_STATS_PIXELS = 500_000


@dataclass(frozen=True)
class MorphologySpec:
    """What the morphology extractor computes for one image; fixed once per image (tile independent).

    Attributes
    ----------
    kind
        ``"rgb"`` (H&E-like brightfield) or ``"fluorescence"`` (IF / DAPI / any other channel count).
    channel_names
        One name per channel (``("R", "G", "B")`` for RGB).
    scale
        Raw values are divided by this to reach [0, 1] (the dtype's maximum for integers).
    thresholds
        ``rgb``: ``(tissue_grey_threshold, haematoxylin_threshold)``: a pixel is tissue when its grey
        value is below the first, and a nucleus pixel when it is tissue and its haematoxylin is above the
        second. Both are computed once on a coarse view of the whole image: the first by
        :func:`background_threshold` (``+inf`` when there is no background), the second by Otsu over
        the tissue pixels.
        ``fluorescence``: one Otsu threshold per channel for the high-intensity fraction.

    """

    kind: Literal["rgb", "fluorescence"]
    channel_names: tuple[str, ...]
    scale: float
    thresholds: tuple[float, ...]

    @property
    def names(self) -> list[str]:
        """Output feature names, in column order."""
        return morphology_feature_names(self.kind, self.channel_names)


def morphology_feature_names(kind: str, channel_names: tuple[str, ...] | list[str]) -> list[str]:
    """Names of the morphology features for an image kind and its channels.

    Parameters
    ----------
    kind
        ``"rgb"`` or ``"fluorescence"``.
    channel_names
        Channel names (ignored for ``"rgb"``, which uses R, G, B).

    Returns
    -------
    Feature names in column order.

    """
    if kind == "rgb":
        ch = ("R", "G", "B")
        return (
            [f"mean_{c}" for c in ch]
            + [f"std_{c}" for c in ch]
            + [f"hed_{s}_mean" for s in "HED"]
            + [f"hed_{s}_std" for s in "HED"]
            + ["nuclei_frac", "tissue_frac", "grad_mean", "dog_energy"]
        )
    ch = tuple(channel_names)
    return (
        [f"mean_{c}" for c in ch]
        + [f"std_{c}" for c in ch]
        + [f"high_frac_{c}" for c in ch]
        + ["grad_mean", "dog_energy"]
    )


def normalise_window(window: np.ndarray, scale: float) -> np.ndarray:
    """Raw pixels → float32 in [0, 1] (divided by ``scale``; clipped unless integer-typed)."""
    raw = np.asarray(window)
    out = raw.astype(np.float32)
    if scale != 1.0:
        out *= np.float32(1.0 / scale)
    if not np.issubdtype(raw.dtype, np.integer):
        np.clip(out, 0.0, 1.0, out=out)
    return out


def rgb_to_hed(rgb: np.ndarray, channel_axis: int = -1) -> np.ndarray:
    """Colour deconvolution of RGB in [0, 1] into haematoxylin, eosin, DAB (same channel axis).

    Same result as :func:`skimage.color.rgb2hed` (Ruifrok & Johnston stain vectors), computed in float32
    channel by channel (several times faster on long pixel lists).
    """
    from skimage.color import hed_from_rgb

    x = np.moveaxis(np.asarray(rgb, dtype=np.float32), channel_axis, 0)
    od = np.log(np.maximum(x, np.float32(1e-6))) * np.float32(1.0 / np.log(1e-6))
    m = hed_from_rgb.astype(np.float32)
    out = np.empty(od.shape, dtype=np.float32)
    for k in range(3):
        out[k] = od[0] * m[0, k] + od[1] * m[1, k] + od[2] * m[2, k]
    np.maximum(out, 0.0, out=out)
    return np.moveaxis(out, 0, channel_axis)


def _grey(raw: np.ndarray, spec: MorphologySpec) -> np.ndarray:
    """Grey image (2-D float32 in [0, 1]) for texture: luminance for RGB, else channel 0."""
    if spec.kind == "rgb":
        w = GREY_WEIGHTS / np.float32(spec.scale)
        grey = raw[0].astype(np.float32) * w[0]
        grey += raw[1].astype(np.float32) * w[1]
        grey += raw[2].astype(np.float32) * w[2]
        if not np.issubdtype(raw.dtype, np.integer):
            np.clip(grey, 0.0, 1.0, out=grey)
        return grey
    return normalise_window(raw[0], spec.scale)


def subspot_pixels(
    polygons: np.ndarray,
    window_origin: tuple[int, int],
    window_shape: tuple[int, int],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rasterise polygons (in level pixel coordinates) onto a window: the pixels whose centre is inside.

    Vectorised: candidate pixel centres are generated from every polygon's bounding box and tested in
    one :func:`shapely.contains_xy` call per batch. Overlapping polygons may share pixels.

    Parameters
    ----------
    polygons
        ``(n,)`` shapely geometries in the level's pixel coordinates (pixel ``j`` spans ``[j, j + 1)``).
    window_origin
        ``(y0, x0)``: level pixel of the window's top-left corner.
    window_shape
        ``(h, w)`` of the window.

    Returns
    -------
    labels
        ``(P,)`` int64 polygon position (0..n-1) of each covered pixel, non-decreasing.
    flat
        ``(P,)`` int64 flat index into the ``(h, w)`` window.
    counts
        ``(n,)`` int64 number of pixels per polygon.

    """
    y0, x0 = window_origin
    h, w = window_shape
    n = len(polygons)
    if n == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    b = shapely.bounds(polygons)  # (n, 4) minx, miny, maxx, maxy; NaN for empty/None
    valid = np.isfinite(b).all(axis=1)
    b = np.where(valid[:, None], b, 0.0)
    c0 = np.clip(np.ceil(b[:, 0] - 0.5), x0, x0 + w).astype(np.int64)
    c1 = np.clip(np.floor(b[:, 2] - 0.5) + 1, x0, x0 + w).astype(np.int64)  # exclusive
    r0 = np.clip(np.ceil(b[:, 1] - 0.5), y0, y0 + h).astype(np.int64)
    r1 = np.clip(np.floor(b[:, 3] - 0.5) + 1, y0, y0 + h).astype(np.int64)
    nx = np.maximum(c1 - c0, 0) * valid
    ny = np.maximum(r1 - r0, 0) * valid
    ncand = nx * ny
    shapely.prepare(polygons[valid])

    labels_out: list[np.ndarray] = []
    flat_out: list[np.ndarray] = []
    cum = np.cumsum(ncand)
    start = 0
    while start < n:
        # group polygons so that each batch tests at most ~_MAX_CANDIDATES points
        base = cum[start - 1] if start > 0 else 0
        stop = int(np.searchsorted(cum, base + _MAX_CANDIDATES, side="right"))
        stop = max(stop, start + 1)
        sl = slice(start, stop)
        k = ncand[sl]
        total = int(k.sum())
        if total:
            lab = np.repeat(np.arange(start, stop, dtype=np.int64), k)
            first = np.concatenate([[0], np.cumsum(k)[:-1]])
            local = np.arange(total, dtype=np.int64) - np.repeat(first, k)
            dy, dx = np.divmod(local, nx[lab])
            ix = c0[lab] + dx
            iy = r0[lab] + dy
            inside = shapely.contains_xy(polygons[lab], ix + (0.5 + _CENTRE_DX), iy + (0.5 + _CENTRE_DY))
            lab = lab[inside]
            labels_out.append(lab)
            flat_out.append((iy[inside] - y0) * w + (ix[inside] - x0))
        start = stop
    labels = np.concatenate(labels_out) if labels_out else np.zeros(0, dtype=np.int64)
    flat = np.concatenate(flat_out) if flat_out else np.zeros(0, dtype=np.int64)
    counts = np.bincount(labels, minlength=n).astype(np.int64)
    return labels, flat, counts


def _texture(grey: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gradient magnitude (Sobel, per-pixel units) and squared difference of Gaussians of a 2-D image."""
    from scipy import ndimage as ndi

    gx = ndi.sobel(grey, axis=1, mode="reflect") / np.float32(8.0)
    gy = ndi.sobel(grey, axis=0, mode="reflect") / np.float32(8.0)
    grad = np.sqrt(gx * gx + gy * gy)
    s1, s2 = DOG_SIGMAS
    dog = ndi.gaussian_filter(grey, s1, mode="reflect", truncate=_TRUNCATE) - ndi.gaussian_filter(
        grey, s2, mode="reflect", truncate=_TRUNCATE
    )
    return grad, dog * dog


def _segment_means(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Per-polygon means of ``values`` ``(F, P)`` whose columns are grouped by polygon (``counts`` each).

    Columns come from :func:`subspot_pixels`, whose labels are non-decreasing, so a segmented sum
    (:func:`numpy.add.reduceat` along the contiguous axis: the same sequential sums as a ``bincount`` per
    row, in one pass) gives every statistic. Returns ``(n, F)``; NaN for empty polygons.
    """
    n = len(counts)
    out = np.full((n, values.shape[0]), np.nan, dtype=np.float64)
    nz = counts > 0
    if not nz.any():
        return out
    starts = (np.cumsum(counts) - counts)[nz]
    sums = np.add.reduceat(values, starts, axis=1)  # (F, n_nonempty)
    out[nz] = (sums / counts[nz]).T
    return out


def _std(mean: np.ndarray, mean_sq: np.ndarray) -> np.ndarray:
    return np.sqrt(np.maximum(mean_sq - mean * mean, 0.0))


def morphology_tile(
    window: np.ndarray,
    window_origin: tuple[int, int],
    polygons: np.ndarray,
    spec: MorphologySpec,
) -> np.ndarray:
    """Morphology features of the sub-spots of one tile.

    Parameters
    ----------
    window
        ``(C, h, w)`` raw pixels of the level, covering every polygon's bounding box plus
        :data:`TEXTURE_MARGIN` (clipped to the image).
    window_origin
        ``(y0, x0)`` level pixel of ``window[:, 0, 0]``.
    polygons
        ``(n,)`` shapely polygons, or a :class:`~soscope.geometry.PolygonArray`, in level pixel coordinates.
    spec
        The image's :class:`MorphologySpec`.

    Returns
    -------
    ``(n, D)`` float32 features (``D = len(spec.names)``); NaN rows for polygons covering no pixel centre.

    """
    if hasattr(polygons, "to_shapely"):
        polygons = polygons.to_shapely()
    raw = np.asarray(window)
    c, h, w = raw.shape
    grey_img = _grey(raw, spec)
    grad, dog2 = _texture(grey_img)
    n = len(polygons)
    out = np.empty((n, len(spec.names)), dtype=np.float32)
    # bounded memory: polygons go through in groups of about _STATS_PIXELS candidate pixels
    b = shapely.bounds(polygons)
    area = np.nan_to_num((b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1), nan=0.0)
    group = np.floor(np.cumsum(area) / _STATS_PIXELS).astype(np.int64)
    bounds_idx = np.concatenate([[0], np.flatnonzero(np.diff(group)) + 1, [n]])
    for a, z in zip(bounds_idx[:-1], bounds_idx[1:], strict=True):
        if z > a:
            out[a:z] = _morphology_stats(raw, grey_img, grad, dog2, window_origin, polygons[a:z], spec)
    return out


def _morphology_stats(
    raw: np.ndarray,
    grey_img: np.ndarray,
    grad: np.ndarray,
    dog2: np.ndarray,
    window_origin: tuple[int, int],
    polygons: np.ndarray,
    spec: MorphologySpec,
) -> np.ndarray:
    c, h, w = raw.shape
    _, flat, counts = subspot_pixels(polygons, window_origin, (h, w))
    p = len(flat)
    pix = normalise_window(raw.reshape(c, -1)[:, flat], spec.scale)  # (C, P)
    rgb = spec.kind == "rgb"
    nf = 16 if rgb else 3 * c + 2
    v = np.empty((nf, p), dtype=np.float64)  # one row per per-pixel quantity
    v[0:c] = pix
    v[c : 2 * c] = v[0:c] * v[0:c]
    if rgb:
        hed = rgb_to_hed(pix, channel_axis=0)  # (3, P)
        v[6:9] = hed
        v[9:12] = v[6:9] * v[6:9]
        tissue = grey_img.reshape(-1)[flat] < spec.thresholds[0]
        v[12] = tissue & (hed[0] > spec.thresholds[1])  # nuclei
        v[13] = tissue
    else:
        v[2 * c : 3 * c] = pix > np.asarray(spec.thresholds, dtype=np.float32)[:, None]
    v[nf - 2] = grad.reshape(-1)[flat]
    v[nf - 1] = dog2.reshape(-1)[flat]
    means = _segment_means(v, counts)
    if rgb:
        # rows: RGB (3), RGB² (3), HED (3), HED² (3), nuclei, tissue, grad, dog²
        parts = [means[:, 0:3], _std(means[:, 0:3], means[:, 3:6]), means[:, 6:9]]
        parts += [_std(means[:, 6:9], means[:, 9:12]), means[:, 12:16]]
    else:
        parts = [means[:, :c], _std(means[:, :c], means[:, c : 2 * c]), means[:, 2 * c :]]
    out = np.concatenate(parts, axis=1)
    out[counts == 0] = np.nan
    return out.astype(np.float32)


def otsu(values: np.ndarray) -> float:
    """Otsu threshold of a 1-D sample; the maximum when the sample is constant or empty."""
    from skimage.filters import threshold_otsu

    values = np.asarray(values, dtype=np.float64).ravel()
    values = values[np.isfinite(values)]
    if values.size == 0:
        return float("inf")
    if values.min() == values.max():
        return float(values.max())
    return float(threshold_otsu(values, nbins=256))


def background_threshold(grey: np.ndarray, saturation: np.ndarray) -> float:
    """Grey level above which RGB pixels are empty slide; ``+inf`` when the image shows no background.

    A 3-class Otsu split of the grey values (nuclei / cytoplasm / brightest); the brightest class is
    background when it is bright (mean grey > :data:`BACKGROUND_GREY`) and unsaturated (median
    ``max(RGB) - min(RGB)`` < :data:`BACKGROUND_SATURATION`); otherwise everything is tissue.

    Parameters
    ----------
    grey
        ``(P,)`` grey values in [0, 1].
    saturation
        ``(P,)`` ``max(RGB) - min(RGB)`` in [0, 1].

    Returns
    -------
    The threshold (tissue is ``grey < threshold``).

    """
    from skimage.filters import threshold_multiotsu

    grey = np.asarray(grey, dtype=np.float64)
    if grey.size == 0 or grey.min() == grey.max():
        return float("inf")
    try:
        t = float(threshold_multiotsu(grey, classes=3, nbins=256)[-1])
    except ValueError:  # fewer than 3 distinct levels
        t = otsu(grey)
    top = grey > t
    if not top.any() or top.all():
        return float("inf")
    if grey[top].mean() > BACKGROUND_GREY and np.median(saturation[top]) < BACKGROUND_SATURATION:
        return t
    return float("inf")


def fit_spec(
    sample: np.ndarray, kind: Literal["rgb", "fluorescence"], channel_names: tuple[str, ...], scale: float
) -> MorphologySpec:
    """Compute the image-wide thresholds from a coarse ``(C, h, w)`` raw sample of the image.

    Parameters
    ----------
    sample
        Raw pixels of a coarse view of the whole image.
    kind
        ``"rgb"`` or ``"fluorescence"``.
    channel_names
        One name per channel.
    scale
        Divisor bringing raw values into [0, 1].

    Returns
    -------
    The :class:`MorphologySpec`.

    """
    img = normalise_window(sample, scale)
    c = img.shape[0]
    if kind == "rgb":
        pix = img.reshape(c, -1).T
        grey = pix @ GREY_WEIGHTS
        t_tissue = background_threshold(grey, pix.max(axis=1) - pix.min(axis=1))
        tissue = grey < t_tissue
        h = rgb_to_hed(pix)[:, 0]
        thresholds: tuple[float, ...] = (t_tissue, otsu(h[tissue]))
        return MorphologySpec("rgb", ("R", "G", "B"), float(scale), thresholds)
    thresholds = tuple(otsu(img[i]) for i in range(c))
    return MorphologySpec("fluorescence", tuple(channel_names), float(scale), thresholds)
