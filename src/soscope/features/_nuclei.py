"""Nucleus detection on fluorescence (DAPI/Hoechst) and H&E images, tile by tile with Dask; per-polygon stats.

The detector is classical scikit-image, every size given in µm and converted with the image's µm per pixel:

1. the nuclear signal — a fluorescence channel (``channel=``, else chosen by name, else the first), or
   several (``channel=[...]``: z-planes or stains of the nuclei, each percentile-normalised, then their
   pixel-wise maximum — a nucleus seen in any plane is seen), or, on H&E, the haematoxylin channel of
   ``skimage.color.rgb2hed`` colour deconvolution; an image finer than needed at nucleus scale
   (``working_pixels_per_diameter``) is block-averaged by an integer factor first;
2. per-image percentile normalisation (the percentiles are taken once on the whole image, so a tile sees
   the same scale as the whole; several planes: each by its own percentiles, before their maximum);
3. seeds: maxima of the scale-normalised Laplacian of Gaussian at the nucleus radius, at least
   ``min_distance_um`` apart — the blob filter ignores smooth background glow and splits touching nuclei;
4. extent: seeded watershed of the smoothed signal inside a foreground mask (smoothed signal above a local
   Gaussian background by ``mask_threshold`` and above a fraction of the image's Otsu threshold); objects far
   smaller or larger than a nucleus are dropped.

Tiling: each tile (a dask array's chunks, or ``tile_size``) is read with a halo of at least two nucleus
diameters — more than every filter's reach — and segmented as one dask task; it keeps only the nuclei whose
centroid lies in its core, so a nucleus cut by a tile edge is counted once and the result equals the untiled
one (tested). Choices tuned on the shared CosMx and MERFISH images (the MERFISH DAPI of its two z-planes
projected with ``channel=[...]``) with one parameter set: ``benchmarks/nuclei.py``. Labels are made unique
across tiles without a second pass: a nucleus's label is derived from the pixel of its centroid.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

__all__ = [
    "NUCLEI_COLUMNS",
    "NucleusDetector",
    "match_points",
    "nuclei_per_polygon",
    "nuclear_channel",
    "segment_nuclei",
]

#: Columns of the per-nucleus table returned by :func:`segment_nuclei`.
NUCLEI_COLUMNS = (
    "label",
    "x_px",
    "y_px",
    "x_um",
    "y_um",
    "area_px",
    "area_um2",
    "eccentricity",
    "mean_intensity",
)

#: Channel names that denote a nuclear stain (case-insensitive search).
_NUCLEAR_NAME = re.compile(
    r"dapi|hoechst|nucle|\bdna\b|draq|sytox|propidium|\bhematox|\bhaemato", re.IGNORECASE
)

# the percentiles and Otsu threshold are estimated on at most this many pixels (a regular subsample)
_STAT_PIXELS = 4_000_000


@dataclass(frozen=True)
class NucleusDetector:
    """Parameters of the nucleus detector, all lengths in µm (converted with the image's µm per pixel).

    Attributes
    ----------
    nucleus_diameter_um
        Typical nucleus diameter: sets the blob scale, the halo and the area bounds.
    smoothing_um
        σ of the Gaussian that smooths the signal before the mask and the watershed; ``None``: 0.05 × diameter
        (light: stronger smoothing merges touching nuclei).
    min_distance_um
        Least distance between two seeds; ``None``: 0.5 × diameter (about a nucleus radius).
    seed_threshold
        Least scale-normalised LoG response of a seed, in units of the normalised intensity (0–1).
    background_um
        σ of the Gaussian that estimates the local background; ``None``: 0.4 × diameter (a band-pass at
        nucleus scale: it also cuts the dim seams between packed nuclei).
    mask_threshold
        A pixel is foreground when the smoothed signal exceeds the local background by this much (normalised
        intensity, 0–1) — a local threshold robust to glow and uneven illumination.
    otsu_factor
        ... and exceeds this multiple of the image's Otsu threshold (a global floor against empty background;
        low, so that dim nuclei in an image dominated by bright ones still pass — the local test does the
        separating).
    min_area_frac, max_area_frac
        Objects with area outside ``[min, max] × π (diameter / 2)²`` are dropped.
    percentiles
        Intensity percentiles mapped to 0 and 1 (per image).
    working_pixels_per_diameter
        Images finer than this many pixels per nucleus diameter are averaged by an integer factor down to
        about it before detection (the nuclei's scale needs no more; it makes fine scans several times
        faster); centroids and areas are reported in full-resolution pixels. ``None``: full resolution.
    min_pixels_per_diameter
        Fewest full-resolution pixels across a nucleus for the detector to resolve one: a coarser image
        (e.g. a Visium ``hires`` image at 2–4 µm per pixel, where a 6 µm nucleus spans 2 px) shows no nuclei
        to detect, only texture. ``segmentation="auto"`` does not detect nuclei on such an image.

    """

    nucleus_diameter_um: float = 6.0
    smoothing_um: float | None = None
    min_distance_um: float | None = None
    background_um: float | None = None
    seed_threshold: float = 0.02
    mask_threshold: float = 0.02
    otsu_factor: float = 0.3
    min_area_frac: float = 0.1
    max_area_frac: float = 6.0
    percentiles: tuple[float, float] = (1.0, 99.8)
    working_pixels_per_diameter: float | None = 24.0
    min_pixels_per_diameter: float = 3.0

    def in_pixels(self, microns_per_pixel: float) -> dict[str, float]:
        """Return the lengths (px) and areas (px²) used by the detector at ``microns_per_pixel``."""
        d = self.nucleus_diameter_um / microns_per_pixel
        smooth = (self.smoothing_um if self.smoothing_um is not None else 0.05 * self.nucleus_diameter_um) / (
            microns_per_pixel
        )
        min_dist = (
            self.min_distance_um if self.min_distance_um is not None else 0.5 * self.nucleus_diameter_um
        ) / microns_per_pixel
        nominal = math.pi * (d / 2) ** 2
        background = (
            self.background_um if self.background_um is not None else 0.4 * self.nucleus_diameter_um
        ) / (microns_per_pixel)
        return {
            "background": background,
            "diameter": d,
            "log_sigma": d / 2 / math.sqrt(2),  # the LoG responds most to a disc of radius σ√2
            "smoothing": smooth,
            "min_distance": max(min_dist, 1.0),
            "min_area": self.min_area_frac * nominal,
            "max_area": self.max_area_frac * nominal,
        }

    def resolves(self, microns_per_pixel: float) -> bool:
        """Return whether an image of ``microns_per_pixel`` has at least ``min_pixels_per_diameter``."""
        return self.nucleus_diameter_um / microns_per_pixel >= self.min_pixels_per_diameter - 1e-9

    def factor(self, microns_per_pixel: float) -> int:
        """Return the integer downsampling factor applied before detection at ``microns_per_pixel``."""
        if self.working_pixels_per_diameter is None:
            return 1
        per_diameter = self.nucleus_diameter_um / microns_per_pixel
        return max(1, int(per_diameter / self.working_pixels_per_diameter + 1e-9))

    def halo(self, microns_per_pixel: float) -> int:
        """Return the halo (px) a tile needs: two diameters, and more than every filter's reach."""
        px = self.in_pixels(microns_per_pixel)
        reach = max(4 * px["log_sigma"], 4 * px["smoothing"], 3 * px["background"]) + px["diameter"]
        f = self.factor(microns_per_pixel)
        return f * int(math.ceil(max(2 * px["diameter"], reach) / f))  # whole working pixels


# ------------------------------------------------------------------------------------------ input handling
def nuclear_channel(channel_names: Sequence[str] | None, channel: int | str | None = None) -> int:
    """Return the index of the nuclear channel.

    Parameters
    ----------
    channel_names
        Names of the image's channels, or ``None`` when unknown.
    channel
        Explicit choice: an index, or a name from ``channel_names``. ``None``: the first channel whose name
        looks nuclear (DAPI, Hoechst, nuclei, DNA, DRAQ, SYTOX, propidium), else channel 0.

    """
    if channel is not None:
        if isinstance(channel, str):
            if channel_names is None or channel not in list(channel_names):
                raise ValueError(f"channel {channel!r} not among the image's channels {channel_names}.")
            return list(channel_names).index(channel)
        return int(channel)
    if channel_names is not None:
        for i, name in enumerate(channel_names):
            if _NUCLEAR_NAME.search(str(name)):
                return i
    return 0


def _nuclear_channels(
    channel_names: Sequence[str] | None, channel: int | str | Sequence[int | str] | None
) -> list[int]:
    """Return the indices of the nuclear channel(s): one, or every entry of a list/tuple ``channel``."""
    if isinstance(channel, (list, tuple)):
        if not channel:
            raise ValueError("channel is an empty list.")
        out = [nuclear_channel(channel_names, c) for c in channel]
        if len(set(out)) < len(out):
            raise ValueError(f"channel lists a channel twice: {channel!r}.")
        return out
    return [nuclear_channel(channel_names, channel)]


def _as_cyx(image, channel_names, channel_axis):
    """Return ``(array (C, Y, X) numpy or dask, channel names or None)`` from the accepted image types."""
    names = list(channel_names) if channel_names is not None else None
    # spatialdata images: DataArray (c, y, x) or a multiscale DataTree (take full resolution)
    if hasattr(image, "children") and len(getattr(image, "children", {})):
        from spatialdata import get_pyramid_levels

        image = get_pyramid_levels(image, n=0)
    if hasattr(image, "dims") and hasattr(image, "coords") and hasattr(image, "data"):
        dims = tuple(image.dims)
        if names is None and "c" in image.coords:
            names = [str(c) for c in image.coords["c"].values]
        data = image.data
        if dims == ("y", "x"):
            return data[None], names
        order = [dims.index(d) for d in ("c", "y", "x")]
        return data.transpose(order), names
    arr = image
    if arr.ndim == 2:
        return arr[None], names
    if arr.ndim != 3:
        raise ValueError(f"expected a (Y, X) or 3-D image, got shape {arr.shape}.")
    if channel_axis is None:
        # channels last for RGB(A) arrays as read from jpg/png/tif (…, 3|4) unless the first axis is tiny
        channel_axis = -1 if arr.shape[-1] in (3, 4) and arr.shape[0] > 4 else 0
    if channel_axis in (-1, 2):
        arr = arr.transpose(2, 0, 1)
    return arr, names


def _is_brightfield(cyx, stat_stride: int) -> bool:
    """H&E looks like an RGB image whose background (the median pixel) is bright."""
    if cyx.shape[0] != 3:
        return False
    sample = np.asarray(cyx[:, ::stat_stride, ::stat_stride], dtype=np.float64)
    top = 255.0 if np.issubdtype(cyx.dtype, np.integer) else max(float(sample.max()), 1.0)
    return float(np.median(sample.mean(axis=0))) > 0.5 * top


def _rgb_top(dtype: np.dtype, sample: np.ndarray) -> float:
    """Return the value of white: an integer type's maximum; for floats 1, or the maximum above 1 (0–255)."""
    if np.issubdtype(dtype, np.integer):
        return float(np.iinfo(dtype).max)
    top = float(np.nanmax(sample)) if sample.size else 1.0
    return top if np.isfinite(top) and top > 1.0 else 1.0


def _to_unit_float(rgb: np.ndarray, top: float | None = None) -> np.ndarray:
    top = _rgb_top(rgb.dtype, np.zeros(0)) if top is None else top
    return np.clip(rgb.astype(np.float32) / np.float32(top), 0.0, 1.0)


def _haematoxylin(cyx_block: np.ndarray, top: float | None = None) -> np.ndarray:
    """Haematoxylin density of an RGB block ``(3, Y, X)`` by colour deconvolution (higher = more stain).

    ``top``: the value of white (:func:`_rgb_top` of the whole image); default: the dtype's.
    """
    from skimage.color import rgb2hed

    rgb = np.moveaxis(_to_unit_float(np.asarray(cyx_block), top), 0, -1)
    return rgb2hed(rgb)[..., 0].astype(np.float32)


# ------------------------------------------------------------------------------------------ region moments
#: columns of :func:`pixel_sums`: pixel count and the sums of row, column, row², column², row × column
SUM_COLUMNS = ("n", "sr", "sc", "srr", "scc", "src")


def pixel_sums(labels: np.ndarray, origin: tuple[int, int] = (0, 0)) -> pd.DataFrame:
    """Per label of a block: pixel count, sums of the pixels' (global) coordinates and of their products.

    Parameters
    ----------
    labels
        ``(Y, X)`` integer labels of one block, 0 = background.
    origin
        ``(row, column)`` of the block's first pixel in the whole image.

    Returns
    -------
    DataFrame with ``label`` and :data:`SUM_COLUMNS`, int64. The sums are exact integers, so the sums of the
    blocks of an image add up to those of the whole image, whatever the blocks (see :func:`moment_stats`).

    """
    flat = np.asarray(labels).ravel()
    fg = np.flatnonzero(flat)
    if not len(fg):
        return pd.DataFrame({c: np.zeros(0, dtype=np.int64) for c in ("label", *SUM_COLUMNS)})
    ids, lab = np.unique(flat[fg], return_inverse=True)
    rr, cc = np.divmod(fg, labels.shape[1])
    # block coordinates are small, so float64 bincounts of them (and of their products) are exact integers
    sums = [
        np.bincount(lab, weights=w, minlength=len(ids)) for w in (None, rr, cc, rr * rr, cc * cc, rr * cc)
    ]
    n, sr, sc, srr, scc, src = (np.rint(v).astype(np.int64) for v in sums)
    oy, ox = int(origin[0]), int(origin[1])
    # to global coordinates, exactly: Σ(r + o) = Σr + n o, Σ(r + o)² = Σr² + 2 o Σr + n o², ...
    return pd.DataFrame(
        {
            "label": ids.astype(np.int64),
            "n": n,
            "sr": sr + n * oy,
            "sc": sc + n * ox,
            "srr": srr + 2 * oy * sr + n * oy * oy,
            "scc": scc + 2 * ox * sc + n * ox * ox,
            "src": src + ox * sr + oy * sc + n * oy * ox,
        }
    )


def moment_stats(sums: pd.DataFrame) -> pd.DataFrame:
    """Centroid, area and eccentricity of each region from its :func:`pixel_sums` (added over blocks).

    The central moments are taken about an integer reference near the centroid in exact int64 arithmetic,
    so the result depends only on the region's pixels (not on how the image was cut into blocks) and keeps
    its precision far from the origin. Eccentricity is scikit-image's: ``sqrt(1 - λ₂/λ₁)`` of the covariance
    of the pixel coordinates (0 for a single pixel).

    Returns
    -------
    DataFrame with ``label``, ``y_px``, ``x_px`` (centroid, row and column of the pixel grid), ``area_px``
    and ``eccentricity``.

    """
    n = sums["n"].to_numpy(np.int64)
    sr, sc = sums["sr"].to_numpy(np.int64), sums["sc"].to_numpy(np.int64)
    qr, qc = sr // np.maximum(n, 1), sc // np.maximum(n, 1)  # floor of the centroid
    # Σ(r - q)² = Σr² - 2 q Σr + n q² and alike: small exact integers
    drr = sums["srr"].to_numpy(np.int64) - 2 * qr * sr + n * qr * qr
    dcc = sums["scc"].to_numpy(np.int64) - 2 * qc * sc + n * qc * qc
    drc = sums["src"].to_numpy(np.int64) - qr * sc - qc * sr + n * qr * qc
    dr, dc = sr - n * qr, sc - n * qc
    nf = np.maximum(n, 1).astype(np.float64)
    mr, mc = dr / nf, dc / nf
    var_r = np.maximum(drr / nf - mr * mr, 0.0)
    var_c = np.maximum(dcc / nf - mc * mc, 0.0)
    cov = drc / nf - mr * mc
    ecc = eccentricity(var_r, var_c, cov)
    return pd.DataFrame(
        {
            "label": sums["label"].to_numpy(np.int64),
            "y_px": qr.astype(np.float64) + mr,
            "x_px": qc.astype(np.float64) + mc,
            "area_px": n.astype(np.float64),
            "eccentricity": ecc,
        }
    )


# ------------------------------------------------------------------------------------------ detection core
def _seed_peaks(blob: np.ndarray, min_distance: int, threshold: float, mask: np.ndarray) -> np.ndarray:
    """Return the seeds: scikit-image's ``peak_local_max`` with its spacing step vectorised.

    ``peak_local_max(blob, min_distance, threshold_abs=threshold, exclude_border=False, labels=mask)``:
    the same peaks in the same order (tested against scikit-image): local maxima over a
    ``(2 min_distance + 1)²`` window inside the mask's bounding box (pixels outside the mask at the lowest
    value), above ``threshold``, highest first; then, greedily from the highest, a peak closer than
    ``min_distance`` (Chebyshev) to a kept one is dropped. scikit-image runs that last step with one distance
    computation per peak in Python, which took most of the detector's time.
    """
    from scipy import ndimage as ndi
    from scipy.spatial import cKDTree

    if not mask.any():
        return np.zeros((0, 2), dtype=np.int64)
    roi = ndi.find_objects(mask.astype(np.int64))[0]
    inside = mask[roi]
    img = blob[roi].copy()
    img[~inside] = (
        np.finfo(img.dtype).min if np.issubdtype(img.dtype, np.floating) else np.iinfo(img.dtype).min
    )
    size = 2 * min_distance + 1
    if img.size == 1:
        peak = img > threshold
    else:
        peak = img == ndi.maximum_filter(img, footprint=np.ones((size, size), dtype=bool), mode="nearest")
        if np.all(peak[inside]):  # a flat image has no peaks but its isolated mask pixels
            peak[:] = False
            peak[np.logical_xor(inside, ndi.binary_opening(inside))] = True
        peak &= img > threshold
    rows, cols = np.nonzero(peak)
    order = np.argsort(-img[rows, cols], kind="stable")
    coord = np.column_stack([rows, cols])[order]
    if min_distance > 1 and len(coord) > 1:
        # pairs closer than min_distance (integer coordinates: Chebyshev distance <= min_distance - 1)
        pairs = cKDTree(coord).query_pairs(r=min_distance - 0.5, p=np.inf, output_type="ndarray")
        if len(pairs):
            a = np.concatenate([pairs[:, 0], pairs[:, 1]])
            b = np.concatenate([pairs[:, 1], pairs[:, 0]])
            srt = np.argsort(a, kind="stable")
            a, b = a[srt], b[srt]
            starts = np.searchsorted(a, np.arange(len(coord) + 1))
            dropped = np.zeros(len(coord), dtype=bool)
            for i in np.unique(a):  # only peaks with a close neighbour can drop or be dropped
                if not dropped[i]:
                    dropped[b[starts[i] : starts[i + 1]]] = True
            coord = coord[~dropped]
    return coord + np.array([roi[0].start, roi[1].start])


def _segment_block(
    signal: np.ndarray,
    lo: float,
    hi: float,
    otsu: float,
    px: dict[str, float],
    origin: tuple[int, int] = (0, 0),
) -> tuple[np.ndarray, pd.DataFrame]:
    """Segment one (padded) block of raw nuclear signal; return local labels and their properties.

    Centroids are in the coordinates of the whole image (``origin``: the block's first pixel there), from
    exact integer moments: a nucleus seen whole by two blocks gets the same centroid in both.
    """
    from scipy import ndimage as ndi
    from skimage.segmentation import watershed

    norm = np.clip((signal.astype(np.float32) - lo) / max(hi - lo, 1e-12), 0.0, 1.0)
    smooth = ndi.gaussian_filter(norm, px["smoothing"], mode="reflect")
    # scale-normalised LoG: a bright disc of radius ≈ σ√2 gives a positive peak ~ its contrast
    sigma = px["log_sigma"]
    blob = -(sigma**2) * ndi.gaussian_laplace(norm, sigma, mode="reflect")
    # foreground: brighter than the local background (a Gaussian at nucleus scale, which removes glow and
    # uneven illumination and leaves the dim gaps between touching nuclei out) and above a global floor
    background = ndi.gaussian_filter(norm, px["background"], mode="reflect", truncate=3.0)
    mask = (smooth - background > px["mask_threshold"]) & (smooth > otsu)
    min_dist = max(int(round(px["min_distance"])), 1)
    peaks = _seed_peaks(blob, min_dist, px["seed_threshold"], mask)
    markers = np.zeros(norm.shape, dtype=np.int32)
    if len(peaks):
        markers[peaks[:, 0], peaks[:, 1]] = np.arange(1, len(peaks) + 1, dtype=np.int32)
    labels = watershed(-smooth, markers, mask=mask) if len(peaks) else markers
    # region properties from bincounts (scikit-image's regionprops measures region by region in Python,
    # which took most of the detector's time on images with many small nuclei)
    stats = moment_stats(pixel_sums(labels, origin))
    flat = labels.ravel()
    intensity = np.bincount(flat, weights=norm.ravel(), minlength=int(flat.max()) + 1)
    table = pd.DataFrame(
        {
            "local": stats["label"].to_numpy(),
            "y_px": stats["y_px"].to_numpy(),
            "x_px": stats["x_px"].to_numpy(),
            "area_px": stats["area_px"].to_numpy(),
            "eccentricity": stats["eccentricity"].to_numpy(),
            "mean_intensity": intensity[stats["label"].to_numpy()]
            / np.maximum(stats["area_px"].to_numpy(), 1),
        }
    )
    ok = (table["area_px"] >= px["min_area"]) & (table["area_px"] <= px["max_area"])
    return labels, table.loc[ok].reset_index(drop=True)


def _tile_task(
    block: np.ndarray,
    origin: tuple[int, int],
    core: tuple[int, int, int, int],
    width: int,
    stats: tuple[float, float, float],
    px: dict[str, float],
    he: bool,
    want_labels: bool,
    factor: int,
    planes: tuple[tuple[float, float], ...] | None = None,
    rgb_top: float | None = None,
):
    """Segment a padded tile; keep the nuclei whose centroid lies in its core; give them global labels.

    ``planes``: the (low, high) percentiles of each plane of a ``(K, Y, X)`` block of several nuclear
    channels, whose normalised maximum is the signal (``stats`` then refer to that 0–1 projection).
    ``rgb_top``: the value of white of an H&E image (the same for every tile).
    """
    if he:
        signal = _haematoxylin(block, rgb_top)
    elif planes is not None:
        signal = _project(np.asarray(block), planes)
    else:
        signal = np.asarray(block)
    lo, hi, otsu = stats
    shape = signal.shape
    if factor > 1:
        # block means over factor x factor pixels (the block starts on the working grid: equal in every tile);
        # a partial cell at the image's far edge is filled by edge values
        ph, pw = -shape[0] % factor, -shape[1] % factor
        sig = np.pad(signal.astype(np.float32), ((0, ph), (0, pw)), mode="edge")
        sig = sig.reshape(sig.shape[0] // factor, factor, sig.shape[1] // factor, factor).mean(axis=(1, 3))
        # the block starts on the working grid (origin a multiple of the factor, see segment_nuclei)
        labels, table = _segment_block(sig, lo, hi, otsu, px, (origin[0] // factor, origin[1] // factor))
        # back to full-resolution pixels: working pixel k covers [k f, (k + 1) f)
        table["y_px"] = (table["y_px"] + 0.5) * factor - 0.5
        table["x_px"] = (table["x_px"] + 0.5) * factor - 0.5
        table["area_px"] *= factor**2
        labels = np.repeat(np.repeat(labels, factor, axis=0), factor, axis=1)[: shape[0], : shape[1]]
    else:
        labels, table = _segment_block(signal, lo, hi, otsu, px, origin)
    oy, ox = origin
    # a label is the (1-based) flat index of the centroid's pixel: equal in every tile that sees the nucleus
    cy = np.floor(table["y_px"].to_numpy()).astype(np.int64)
    cx = np.floor(table["x_px"].to_numpy()).astype(np.int64)
    table["label"] = cy * width + cx + 1
    y0, y1, x0, x1 = core
    own = (cy >= y0) & (cy < y1) & (cx >= x0) & (cx < x1)
    core_labels = None
    if want_labels:
        lut = np.zeros(int(labels.max()) + 1, dtype=np.int64)
        lut[table["local"].to_numpy()] = table["label"].to_numpy()
        core_labels = lut[labels[y0 - oy : y1 - oy, x0 - ox : x1 - ox]]
    return table.loc[own].drop(columns="local").reset_index(drop=True), core_labels


def _with_units(table: pd.DataFrame, microns_per_pixel: float) -> pd.DataFrame:
    """Add the µm columns ``x_um``, ``y_um`` and ``area_um2`` of a per-nucleus table (element-wise)."""
    table["x_um"] = table["x_px"] * microns_per_pixel
    table["y_um"] = table["y_px"] * microns_per_pixel
    table["area_um2"] = table["area_px"] * microns_per_pixel**2
    return table


def _reduced_tile_task(reducer, microns_per_pixel: float, *args):
    """Run :func:`_tile_task` and return ``reducer`` of its nuclei (not the table: bounded memory)."""
    table, _ = _tile_task(*args)
    return reducer(_with_units(table, microns_per_pixel))


def _percentile_range(sample: np.ndarray, percentiles: tuple[float, float]) -> tuple[float, float]:
    """Return the intensities mapped to 0 and 1 (a flat image gets a range of 1)."""
    lo, hi = np.percentile(sample, percentiles)
    return float(lo), float(hi if hi > lo else lo + 1.0)


def _project(planes_block: np.ndarray, ranges: Sequence[tuple[float, float]]) -> np.ndarray:
    """Pixel-wise maximum of the planes ``(K, Y, X)``, each first normalised to 0–1 by its ``(lo, hi)``."""
    out = None
    for plane, (lo, hi) in zip(planes_block, ranges, strict=True):
        norm = np.clip((plane.astype(np.float32) - lo) / (hi - lo), 0.0, 1.0)
        out = norm if out is None else np.maximum(out, norm)
    return out


def _otsu_floor(norm: np.ndarray, otsu_factor: float) -> float:
    """``otsu_factor`` × the Otsu threshold of a normalised (0–1) sample (0.5 for a flat one)."""
    from skimage.filters import threshold_otsu

    otsu = float(threshold_otsu(norm)) if norm.max() > norm.min() else 0.5
    return otsu_factor * otsu


def _image_stats(signal_sample: np.ndarray, percentiles: tuple[float, float], otsu_factor: float):
    """Percentiles and the Otsu floor (on the normalised scale) from a subsample of the nuclear signal."""
    lo, hi = _percentile_range(signal_sample, percentiles)
    norm = np.clip((signal_sample - lo) / (hi - lo), 0.0, 1.0)
    return lo, hi, _otsu_floor(norm, otsu_factor)


def segment_nuclei(
    image,
    *,
    microns_per_pixel: float,
    channel: int | str | Sequence[int | str] | None = None,
    channel_names: Sequence[str] | None = None,
    channel_axis: int | None = None,
    stain: str = "auto",
    nucleus_diameter_um: float = 6.0,
    detector: NucleusDetector | None = None,
    tile_size: int | None = None,
    return_labels: bool = False,
):
    """Detect nuclei; return a per-nucleus table (and optionally a labels image).

    Parameters
    ----------
    image
        A numpy or dask array — ``(Y, X)``, ``(C, Y, X)`` or ``(Y, X, C)`` (RGB(A) arrays as read from files:
        channels last when the last axis has 3 or 4 entries) — or a spatialdata image (``DataArray`` with dims
        ``c, y, x``, channel names from its ``c`` coordinate; a multiscale ``DataTree``: its full resolution).
    microns_per_pixel
        Pixel size in µm: every size of the detector is given in µm and converted with it.
    channel
        Nuclear channel (index or name) of a fluorescence image; ``None``: by name (DAPI, Hoechst…), else 0.
        A list or tuple of several (e.g. the DAPI of several z-planes, ``["dapi_z0", "dapi_z1"]`` or
        ``[0, 1]``): each is normalised by its own percentiles (``detector.percentiles``) and nuclei are
        detected on their pixel-wise maximum, so a nucleus in focus in any plane is found once (the
        normalised projection is not rescaled again; its Otsu floor is its own).
    channel_names
        Names of the channels when ``image`` carries none.
    channel_axis
        Axis of the channels of a 3-D numpy/dask array (``0`` or ``-1``); ``None``: guessed (see ``image``).
    stain
        ``"fluorescence"``, ``"he"`` (haematoxylin by colour deconvolution of an RGB image) or ``"auto"``
        (H&E when the image is 3-channel RGB with a bright background and no nuclear channel name).
    nucleus_diameter_um
        Typical nucleus diameter (µm); ignored when ``detector`` is given.
    detector
        Full parameter set; default ``NucleusDetector(nucleus_diameter_um=nucleus_diameter_um)``.
    tile_size
        Tile edge (px) for tile-by-tile processing; ``None``: a dask array's own chunks (at least the halo),
        a numpy array in one piece.
    return_labels
        Also return a labels image (``(Y, X)`` int64, 0 = background; a dask array when the input is tiled):
        label ``k`` is the nucleus whose centroid lies in the pixel of flat index ``k - 1``.

    Returns
    -------
    DataFrame with :data:`NUCLEI_COLUMNS` — ``label``; centroid ``x_px, y_px`` (column, row of the
    full-resolution image) and ``x_um, y_um`` (the same times ``microns_per_pixel``; add the image's origin
    to place them in a coordinate system); ``area_px``, ``area_um2``; ``eccentricity``; ``mean_intensity``
    (of the normalised nuclear signal, 0–1) — sorted by row then column; with ``return_labels``,
    ``(table, labels)``.
    ``table.attrs["detector"]`` records the parameters, the stain and the channel used (a list when
    several were projected).

    """
    import dask.array as da

    if microns_per_pixel <= 0:
        raise ValueError("microns_per_pixel must be positive.")
    results, record, ychunks, xchunks = _detect(
        image,
        microns_per_pixel=microns_per_pixel,
        channel=channel,
        channel_names=channel_names,
        channel_axis=channel_axis,
        stain=stain,
        nucleus_diameter_um=nucleus_diameter_um,
        detector=detector,
        tile_size=tile_size,
        return_labels=return_labels,
    )
    table = pd.concat([t for t, _ in results], ignore_index=True) if results else pd.DataFrame()
    if table.empty:
        table = pd.DataFrame({c: pd.Series(dtype=float) for c in NUCLEI_COLUMNS})
    table = _with_units(table, microns_per_pixel)
    table = table.sort_values(["y_px", "x_px"], kind="stable").reset_index(drop=True)
    table = table[list(NUCLEI_COLUMNS)]
    table["label"] = table["label"].astype(np.int64)
    table.attrs["detector"] = record
    if not return_labels:
        return table
    rows = []
    for i in range(len(ychunks)):
        rows.append([results[i * len(xchunks) + j][1] for j in range(len(xchunks))])
    labels = np.block(rows) if len(results) == 1 else da.block([[da.from_array(b) for b in r] for r in rows])
    return table, labels


def _detect(
    image,
    *,
    microns_per_pixel: float,
    channel=None,
    channel_names=None,
    channel_axis=None,
    stain: str = "auto",
    nucleus_diameter_um: float = 6.0,
    detector: NucleusDetector | None = None,
    tile_size: int | None = None,
    return_labels: bool = False,
    reducer=None,
):
    """Run the detection of :func:`segment_nuclei` tile by tile; return each tile's result and the record.

    Returns ``(results, record, ychunks, xchunks)``: one result per tile in row-major tile order — the
    ``(table, core labels)`` of :func:`_tile_task`, or, with ``reducer``, ``reducer(table)`` computed inside
    the tile's task on the tile's own nuclei (with the µm columns of :func:`_with_units`), so that no table of
    the whole image is ever held. The normalisation is estimated once on the whole image either way, so the
    nuclei are the same.
    """
    import dask
    import dask.array as da

    if microns_per_pixel <= 0:
        raise ValueError("microns_per_pixel must be positive.")
    det = detector if detector is not None else NucleusDetector(nucleus_diameter_um=nucleus_diameter_um)
    cyx, names = _as_cyx(image, channel_names, channel_axis)
    _, h, w = cyx.shape
    stride = max(1, int(math.ceil(math.sqrt(h * w / _STAT_PIXELS))))

    if stain not in ("auto", "fluorescence", "he"):
        raise ValueError(f"stain must be 'auto', 'fluorescence' or 'he', got {stain!r}.")
    named_nuclear = names is not None and any(_NUCLEAR_NAME.search(str(n)) for n in names)
    he = stain == "he" or (
        stain == "auto" and channel is None and not named_nuclear and _is_brightfield(cyx, stride)
    )
    planes: tuple[tuple[float, float], ...] | None = None
    rgb_top = None
    if he:
        if cyx.shape[0] < 3:
            raise ValueError("stain='he' needs an RGB image (3 channels).")
        if isinstance(channel, (list, tuple)):
            raise ValueError("stain='he' takes no list of channels.")
        src = cyx[:3]
        rgb_sample = np.asarray(src[:, ::stride, ::stride])
        # a float image in 0–255 rather than 0–1 (as the morphology features accept it): white is its maximum
        rgb_top = _rgb_top(src.dtype, rgb_sample)
        sample = _haematoxylin(rgb_sample, rgb_top)
        chosen = None
        stats = _image_stats(sample, det.percentiles, det.otsu_factor)
    else:
        chosen = _nuclear_channels(names, channel)
        for c in chosen:
            if not 0 <= c < cyx.shape[0]:
                raise ValueError(f"channel {c} out of range for an image with {cyx.shape[0]} channels.")
        if len(chosen) == 1:
            src = cyx[chosen[0]]
            sample = np.asarray(src[::stride, ::stride], dtype=np.float32)
            stats = _image_stats(sample, det.percentiles, det.otsu_factor)
        else:
            # several nuclear planes: each normalised by its own percentiles, then their maximum (0–1)
            src = cyx[chosen]
            samples = np.asarray(src[:, ::stride, ::stride], dtype=np.float32)
            planes = tuple(_percentile_range(p, det.percentiles) for p in samples)
            stats = (0.0, 1.0, _otsu_floor(_project(samples, planes), det.otsu_factor))
    factor = det.factor(microns_per_pixel)
    px = det.in_pixels(microns_per_pixel * factor) | {
        "seed_threshold": det.seed_threshold,
        "mask_threshold": det.mask_threshold,
    }
    halo = det.halo(microns_per_pixel)

    # the tile grid: a dask array's chunks (rechunked to at least the halo) or tile_size, else one tile
    if tile_size is not None:
        tile = max(int(tile_size), halo)
        ychunks, xchunks = _even_chunks(h, tile), _even_chunks(w, tile)
    elif isinstance(src, da.Array):
        ychunks = _merge_small(src.chunks[-2], halo)
        xchunks = _merge_small(src.chunks[-1], halo)
    else:
        ychunks, xchunks = (h,), (w,)
    # tile edges on the working grid (multiples of the downsampling factor), so tiles agree with the whole
    yst = _snap(np.concatenate([[0], np.cumsum(ychunks)]), factor, h)
    xst = _snap(np.concatenate([[0], np.cumsum(xchunks)]), factor, w)
    ychunks, xchunks = tuple(np.diff(yst)), tuple(np.diff(xst))

    tasks = []
    for i in range(len(ychunks)):
        for j in range(len(xchunks)):
            y0, y1, x0, x1 = yst[i], yst[i + 1], xst[j], xst[j + 1]
            py0, py1, px0, px1 = max(y0 - halo, 0), min(y1 + halo, h), max(x0 - halo, 0), min(x1 + halo, w)
            block = src[..., py0:py1, px0:px1]  # a dask slice is computed by the task, one tile at a time
            args = (
                block,
                (py0, px0),
                (y0, y1, x0, x1),
                w,
                stats,
                px,
                he,
                return_labels,
                factor,
                planes,
                rgb_top,
            )
            if reducer is None:
                tasks.append(dask.delayed(_tile_task)(*args))
            else:
                tasks.append(dask.delayed(_reduced_tile_task)(reducer, microns_per_pixel, *args))
    results = dask.compute(*tasks) if len(tasks) > 1 else [_compute_one(tasks[0])]
    record = asdict(det) | {
        "microns_per_pixel": float(microns_per_pixel),
        "stain": "he" if he else "fluorescence",
        "channel": _channel_record(chosen, names),
        "halo_px": halo,
        "tiles": len(tasks),
        "downsampling": factor,
    }
    return list(results), record, ychunks, xchunks


def _channel_record(chosen: list[int] | None, names: list[str] | None):
    """Return the channel(s) used, by name when known: one value, or a list for several planes."""
    if chosen is None:
        return None
    used = [names[c] if names is not None else int(c) for c in chosen]
    return used[0] if len(used) == 1 else used


def _compute_one(task):
    import dask

    return dask.compute(task, scheduler="sync")[0]


def _snap(edges: np.ndarray, factor: int, n: int) -> np.ndarray:
    """Round inner tile edges to multiples of ``factor``; keep 0 and ``n``; drop empty tiles."""
    inner = np.round(edges[1:-1] / factor).astype(int) * factor
    out = np.unique(np.concatenate([[0], inner[(inner > 0) & (inner < n)], [n]]))
    return out.astype(int)


def _even_chunks(n: int, size: int) -> tuple[int, ...]:
    k = max(1, n // size)
    base, extra = divmod(n, k)
    return tuple(base + (1 if i < extra else 0) for i in range(k))


def _merge_small(chunks: Sequence[int], least: int) -> tuple[int, ...]:
    """Merge consecutive chunks until each is at least ``least`` long (a tile must be wider than its halo)."""
    out: list[int] = []
    for c in chunks:
        if out and out[-1] < least:
            out[-1] += int(c)
        else:
            out.append(int(c))
    if len(out) > 1 and out[-1] < least:
        out[-2] += out.pop()
    return tuple(out)


# ------------------------------------------------------------------------------------------ evaluation helper
def match_points(a: np.ndarray, b: np.ndarray, max_distance: float) -> tuple[np.ndarray, np.ndarray]:
    """Match two point sets one-to-one, minimising the total distance, pairs within ``max_distance`` only.

    Parameters
    ----------
    a, b
        ``(N, 2)`` and ``(M, 2)`` coordinates in the same unit as ``max_distance``.
    max_distance
        Largest distance of a matched pair.

    Returns
    -------
    ``(ia, ib)``: indices of the matched pairs (Hungarian assignment over the pairs within ``max_distance``).

    """
    from scipy.optimize import linear_sum_assignment
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    a = np.asarray(a, dtype=np.float64).reshape(-1, 2)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 2)
    if len(a) == 0 or len(b) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    pairs = cKDTree(a).sparse_distance_matrix(cKDTree(b), max_distance, output_type="coo_matrix")
    if pairs.nnz == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    # solve each connected group of candidate pairs separately: small dense problems, linear overall
    n = len(a) + len(b)
    graph = coo_matrix((np.ones(pairs.nnz), (pairs.row, pairs.col + len(a))), shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    ia_all, ib_all = [], []
    order = np.argsort(comp[pairs.row], kind="stable")
    rows, cols, dist = pairs.row[order], pairs.col[order], pairs.data[order]
    groups = np.split(np.arange(len(rows)), np.flatnonzero(np.diff(comp[rows])) + 1)
    for g in groups:
        ra, inv_a = np.unique(rows[g], return_inverse=True)
        rb, inv_b = np.unique(cols[g], return_inverse=True)
        cost = np.full((len(ra), len(rb)), max_distance * 1e3 + 1.0)
        cost[inv_a, inv_b] = dist[g]
        sa, sb = linear_sum_assignment(cost)
        ok = cost[sa, sb] <= max_distance
        ia_all.append(ra[sa[ok]])
        ib_all.append(rb[sb[ok]])
    return np.concatenate(ia_all).astype(np.int64), np.concatenate(ib_all).astype(np.int64)


# ------------------------------------------------------------------------------------------ per polygon
def nuclei_per_polygon(
    nuclei: pd.DataFrame,
    polygons,
    *,
    xy_columns: tuple[str, str] = ("x_um", "y_um"),
    microns_per_unit: float = 1.0,
    chunk_size: int = 100_000,
) -> pd.DataFrame:
    """Summarise the nuclei whose centroid lies inside each polygon.

    Parameters
    ----------
    nuclei
        Table from :func:`segment_nuclei` (columns ``xy_columns``, ``area_um2``, ``eccentricity``,
        ``mean_intensity``; missing optional columns give NaN statistics).
    polygons
        A :class:`~soscope.geometry.PolygonArray`, an array/list of shapely polygons, or a GeoSeries /
        GeoDataFrame — in the same coordinate frame as ``xy_columns``.
    xy_columns
        Centroid columns to use (e.g. ``("x_px", "y_px")`` for polygons in pixels).
    microns_per_unit
        Length of one unit of the polygons' frame in µm (for the density per µm²).
    chunk_size
        Polygons processed at a time (shapely objects are built for one chunk only: memory stays bounded).

    Returns
    -------
    DataFrame, one row per polygon in order: ``n_nuclei``, ``nuclei_per_um2``, ``area_um2_mean``,
    ``area_um2_sd`` (population sd), ``eccentricity_mean``, ``intensity_mean`` — means are NaN for a polygon
    without nuclei; a centroid inside several overlapping polygons counts in each.

    """
    import shapely

    from soscope.geometry import PolygonArray

    if isinstance(polygons, PolygonArray):
        n_poly = len(polygons)

        def chunk(s: int, e: int):
            return polygons[np.arange(s, e)].to_shapely()
    else:
        geoms = np.asarray(getattr(polygons, "geometry", polygons), dtype=object)
        n_poly = len(geoms)

        def chunk(s: int, e: int):
            return geoms[s:e]

    xy = nuclei[list(xy_columns)].to_numpy(dtype=np.float64)
    values = _nucleus_values(nuclei)
    tree = shapely.STRtree(shapely.points(xy)) if len(xy) else None

    sums = np.zeros((n_poly, 5))
    poly_area = np.zeros(n_poly)
    for s in range(0, n_poly, chunk_size):
        e = min(s + chunk_size, n_poly)
        geo = chunk(s, e)
        poly_area[s:e] = shapely.area(geo)
        sums[s:e] = _polygon_sums(xy, values, geo, tree=tree)
    return _polygon_stats(sums, poly_area, microns_per_unit)


def _nucleus_values(nuclei: pd.DataFrame) -> np.ndarray:
    """``(N, 3)`` area (µm²), eccentricity and mean intensity of each nucleus (NaN for a missing column)."""
    nan = np.full(len(nuclei), np.nan)
    cols = ("area_um2", "eccentricity", "mean_intensity")
    return np.column_stack([nuclei[c].to_numpy(dtype=np.float64) if c in nuclei else nan for c in cols])


def _polygon_sums(xy: np.ndarray, values: np.ndarray, geoms: np.ndarray, *, tree=None) -> np.ndarray:
    """Return sums over the nuclei whose centroid lies inside each polygon (one term per polygon, nucleus).

    Parameters
    ----------
    xy
        ``(N, 2)`` centroids, in the polygons' frame.
    values
        ``(N, 3)`` area, eccentricity and intensity of each nucleus (:func:`_nucleus_values`).
    geoms
        ``(P,)`` shapely polygons.
    tree
        A ``shapely.STRtree`` of the points ``xy`` (built when not given; ``None`` with no nuclei).

    Returns
    -------
    ``(P, 5)`` float64: count, Σarea, Σarea², Σeccentricity, Σintensity. Sums over disjoint sets of nuclei
    (e.g. the nuclei of different tiles) add up to the sums over their union.

    """
    import shapely

    out = np.zeros((len(geoms), 5))
    if not len(xy) or not len(geoms):
        return out
    if tree is None:
        tree = shapely.STRtree(shapely.points(xy))
    ip, inuc = tree.query(geoms, predicate="contains")  # (polygon, point) pairs: linear in polygons
    area, ecc, inten = values[inuc, 0], values[inuc, 1], values[inuc, 2]
    for k, vals in enumerate((np.ones(len(inuc)), area, area**2, ecc, inten)):
        out[:, k] = np.bincount(ip, weights=vals, minlength=len(geoms))
    return out


def _polygon_stats(sums: np.ndarray, poly_area: np.ndarray, microns_per_unit: float = 1.0) -> pd.DataFrame:
    """Return the columns of :func:`nuclei_per_polygon` from :func:`_polygon_sums` and the polygons' areas."""
    n = sums[:, 0]
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_area = sums[:, 1] / n
        var_area = np.maximum(sums[:, 2] / n - mean_area**2, 0.0)
        out = pd.DataFrame(
            {
                "n_nuclei": n.astype(np.int64),
                "nuclei_per_um2": np.where(poly_area > 0, n / (poly_area * microns_per_unit**2), np.nan),
                "area_um2_mean": mean_area,
                "area_um2_sd": np.sqrt(var_area),
                "eccentricity_mean": sums[:, 3] / n,
                "intensity_mean": sums[:, 4] / n,
            }
        )
    return out


def eccentricity(var_x: np.ndarray, var_y: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """Eccentricity of the ellipse with these second central moments (0: a circle; 0 where degenerate)."""
    half_sum, half_diff = (var_x + var_y) / 2, np.sqrt(((var_x - var_y) / 2) ** 2 + cov**2)
    big, small = half_sum + half_diff, np.maximum(half_sum - half_diff, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(big > 0, np.sqrt(np.clip(1.0 - small / big, 0.0, 1.0)), 0.0)
