"""Stain and intensity normalisation of images, fitted once per image and applied pixel by pixel.

Every normaliser here is fitted on a coarse view of the whole image (or any sample of its pixels) and then
maps each pixel on its own, so a window of the image normalises to the same values whether it is read in
one piece or tile by tile (features stay independent of the tiling).

* :class:`StainNormaliser` — H&E stain normalisation: Macenko et al. (2009) (stain vectors and
  concentrations in optical density) or Reinhard et al. (2001) (colour statistics in CIE-Lab), to a fixed
  reference or to a reference image.
* :class:`PercentileScaling` — per-channel intensity scaling between two percentiles of the image, for
  fluorescence (IF / DAPI), whose raw ranges vary with exposure and bit depth.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np

from soscope._errors import SoscopeInputError

__all__ = [
    "FLUORESCENCE_PERCENTILES",
    "MACENKO_REFERENCE",
    "REINHARD_REFERENCE",
    "STAIN_METHODS",
    "PercentileScaling",
    "StainNormaliser",
    "macenko_stains",
    "normalise_stain",
    "reinhard_statistics",
]

#: stain normalisation methods understood by :class:`StainNormaliser`
STAIN_METHODS = ("macenko", "reinhard")
#: Macenko reference: H and E stain vectors (unit optical-density columns) and their 99th-percentile
#: concentrations, the values of Macenko et al.'s reference implementation (widely used as the default)
MACENKO_REFERENCE = (
    np.array([[0.5626, 0.2159], [0.7201, 0.8012], [0.4062, 0.5581]]),
    np.array([1.9705, 1.0308]),
)
#: Reinhard reference: mean and standard deviation of (L, a, b) over the pixels of an image rendered
#: from :data:`MACENKO_REFERENCE` (concentrations of 60,000 pixels drawn by ``_reference_render(0)``), so
#: both methods aim at the same look by default
REINHARD_REFERENCE = (
    np.array([71.23, 16.68, -9.86]),
    np.array([17.23, 8.43, 7.48]),
)
#: percentiles mapped to 0 and 1 by :class:`PercentileScaling` (robust to hot pixels and empty background)
FLUORESCENCE_PERCENTILES = (1.0, 99.5)
#: optical density below which a channel counts as unstained (glass, background): Macenko's beta
_OD_BACKGROUND = 0.15
#: percentile of the stain-plane angles taken as the two extreme stain directions: Macenko's alpha
_ANGLE_PERCENTILE = 1.0
#: least intensity (of 1) before the logarithm of the optical density: one grey level of 8 bits
_MIN_INTENSITY = 1.0 / 255.0
_MIN_TISSUE = 16


def _optical_density(rgb: np.ndarray) -> np.ndarray:
    """Optical density ``-log(I)`` of ``(3, N)`` intensities in [0, 1] (floored at one 8-bit grey level)."""
    return -np.log(np.clip(rgb, _MIN_INTENSITY, 1.0))


def _pixels(rgb: np.ndarray, channel_axis: int) -> tuple[np.ndarray, tuple[int, ...]]:
    """``(3, N)`` float64 pixels of an RGB array in [0, 1], and the array's shape with channels first."""
    x = np.moveaxis(np.asarray(rgb, dtype=np.float64), channel_axis, 0)
    if x.shape[0] != 3:
        raise SoscopeInputError(
            f"stain normalisation needs an RGB image (3 channels); this one has {x.shape[0]}. Leave "
            "stain_normalise=None for fluorescence images (they are scaled by percentiles instead)."
        )
    return x.reshape(3, -1), x.shape


def _tissue(od: np.ndarray) -> np.ndarray:
    """Pixels stained in every channel (Macenko's mask: an optical density of at least beta in each)."""
    return (od >= _OD_BACKGROUND).all(axis=0)


def macenko_stains(rgb: np.ndarray, channel_axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Estimate the H and E stain vectors and their 99th-percentile concentrations (Macenko et al. 2009).

    The optical densities of the tissue pixels are projected on the plane of their two leading principal
    directions; the directions at the 1st and 99th percentiles of the angle in that plane are the two
    stains (haematoxylin: the one absorbing more red).

    Parameters
    ----------
    rgb
        RGB intensities in [0, 1], any shape with 3 channels on ``channel_axis``.
    channel_axis
        Axis of the channels.

    Returns
    -------
    stains
        ``(3, 2)`` unit optical-density vectors, columns H then E.
    max_concentration
        ``(2,)`` 99th percentile of each stain's concentration over all pixels.

    Raises
    ------
    SoscopeInputError
        If fewer than 16 pixels are stained (an empty or blank image).

    """
    pix, _ = _pixels(rgb, channel_axis)
    od_all = _optical_density(pix)
    od = od_all[:, _tissue(od_all)]
    if od.shape[1] < _MIN_TISSUE:
        raise SoscopeInputError(
            f"Macenko stain normalisation found only {od.shape[1]} stained pixels (optical density ≥ "
            f"{_OD_BACKGROUND} in every channel): the image looks blank. Use stain_normalise=None or "
            "'reinhard'."
        )
    _, vecs = np.linalg.eigh(np.cov(od))
    plane = vecs[:, [2, 1]]  # the two leading directions (eigh sorts eigenvalues in ascending order)
    # the leading direction points into positive optical densities, so the angles lie in (-pi/2, pi/2)
    # and their percentiles never wrap around
    if plane[:, 0].sum() < 0:
        plane[:, 0] *= -1
    t = plane.T @ od
    angle = np.arctan2(t[1], t[0])
    lo, hi = np.percentile(angle, [_ANGLE_PERCENTILE, 100.0 - _ANGLE_PERCENTILE])
    v1 = plane @ np.array([np.cos(lo), np.sin(lo)])
    v2 = plane @ np.array([np.cos(hi), np.sin(hi)])
    stains = np.stack([v1, v2] if v1[0] > v2[0] else [v2, v1], axis=1)
    stains *= np.sign(stains.sum(axis=0, keepdims=True))  # optical densities are positive
    stains /= np.linalg.norm(stains, axis=0, keepdims=True)
    # concentrations over every pixel, as the reference implementation (its constants were fitted so)
    conc = np.linalg.pinv(stains) @ od_all
    return stains, np.percentile(conc, 99, axis=1)


def reinhard_statistics(rgb: np.ndarray, channel_axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of (L, a, b) over all pixels (Reinhard et al. 2001).

    All pixels, glass included, as in the original method: any affine change of (L, a, b) (brightness,
    contrast, colour cast) is then undone exactly, whereas a tissue mask would itself move with the change.
    Fit it on views of the slides that show tissue and glass in similar shares.

    Parameters
    ----------
    rgb
        RGB intensities in [0, 1], any shape with 3 channels on ``channel_axis``.
    channel_axis
        Axis of the channels.

    Returns
    -------
    ``(mean, std)``, each ``(3,)`` (L, a, b).

    """
    from skimage.color import rgb2lab

    pix, _ = _pixels(rgb, channel_axis)
    lab = rgb2lab(np.clip(pix.T, 0.0, 1.0))
    return lab.mean(axis=0), np.maximum(lab.std(axis=0), 1e-6)


@dataclass(frozen=True)
class StainNormaliser:
    """H&E stain normalisation of one image, fitted once and applied pixel by pixel.

    Build it with :meth:`fit`; call it on RGB intensities in [0, 1].

    Attributes
    ----------
    method
        ``"macenko"`` or ``"reinhard"``.
    source
        The image's parameters: Macenko ``(stains (3, 2), max_concentration (2,))``; Reinhard
        ``(mean (3,), std (3,))`` of (L, a, b).
    target
        The reference's parameters, of the same form.

    """

    method: Literal["macenko", "reinhard"]
    source: tuple[np.ndarray, np.ndarray]
    target: tuple[np.ndarray, np.ndarray]

    @classmethod
    def fit(
        cls,
        rgb: np.ndarray,
        method: str = "macenko",
        *,
        reference: np.ndarray | None = None,
        channel_axis: int = 0,
    ) -> StainNormaliser:
        """Fit the normalisation of an image from a sample of its pixels (e.g. a coarse view).

        Parameters
        ----------
        rgb
            RGB intensities in [0, 1] of the image (or of a coarse view of it).
        method
            ``"macenko"`` or ``"reinhard"``.
        reference
            An RGB reference image (same layout as ``rgb``) whose look to reproduce; default
            :data:`MACENKO_REFERENCE` or :data:`REINHARD_REFERENCE`.
        channel_axis
            Axis of the channels of ``rgb`` and ``reference``.

        Returns
        -------
        The fitted normaliser.

        """
        if method not in STAIN_METHODS:
            raise SoscopeInputError(
                f"stain_normalise={method!r} is unknown; use one of {list(STAIN_METHODS)} or None."
            )
        estimate = macenko_stains if method == "macenko" else reinhard_statistics
        default = MACENKO_REFERENCE if method == "macenko" else REINHARD_REFERENCE
        target = default if reference is None else estimate(reference, channel_axis)
        return cls(method, estimate(rgb, channel_axis), target)  # type: ignore[arg-type]

    def __call__(self, rgb: np.ndarray, channel_axis: int = 0) -> np.ndarray:
        """Normalise RGB intensities in [0, 1] (any shape with 3 channels on ``channel_axis``), float32."""
        pix, shape = _pixels(rgb, channel_axis)
        if self.method == "macenko":
            stains, max_c = self.source
            ref_stains, ref_max = self.target
            conc = np.linalg.pinv(stains) @ _optical_density(pix)
            conc *= (ref_max / np.maximum(max_c, 1e-6))[:, None]
            out = np.exp(-(ref_stains @ conc))
        else:
            from skimage.color import lab2rgb, rgb2lab

            mean, std = self.source
            ref_mean, ref_std = self.target
            lab = (rgb2lab(np.clip(pix.T, 0.0, 1.0)) - mean) * (ref_std / std) + ref_mean
            with warnings.catch_warnings():  # out-of-gamut colours are clipped, which is what we want
                warnings.simplefilter("ignore", UserWarning)
                out = lab2rgb(lab).T
        out = np.clip(out, 0.0, 1.0).astype(np.float32)
        return np.moveaxis(out.reshape(shape), 0, channel_axis)


def normalise_stain(
    rgb: np.ndarray,
    method: str = "macenko",
    *,
    reference: np.ndarray | None = None,
    channel_axis: int = -1,
) -> np.ndarray:
    """Stain-normalise an H&E image (fitted on the image itself): see :class:`StainNormaliser`.

    Parameters
    ----------
    rgb
        RGB image in [0, 1] (floats) or ``uint8``.
    method
        ``"macenko"`` or ``"reinhard"``.
    reference
        Optional reference RGB image (same dtype convention and channel axis).
    channel_axis
        Axis of the channels (default last, ``(H, W, 3)``).

    Returns
    -------
    The normalised image, float32 in [0, 1], same shape.

    """

    def unit(a: np.ndarray) -> np.ndarray:
        a = np.asarray(a)
        return a / 255.0 if np.issubdtype(a.dtype, np.integer) else a

    ref = None if reference is None else unit(reference)
    norm = StainNormaliser.fit(unit(rgb), method, reference=ref, channel_axis=channel_axis)
    return norm(unit(rgb), channel_axis=channel_axis)


@dataclass(frozen=True)
class PercentileScaling:
    """Per-channel intensity scaling of one image: its ``lo`` percentile to 0, its ``hi`` one to 1.

    Attributes
    ----------
    lo, hi
        ``(C,)`` raw values mapped to 0 and 1 (values outside are clipped).
    percentiles
        The percentiles they were taken at.

    """

    lo: np.ndarray
    hi: np.ndarray
    percentiles: tuple[float, float] = FLUORESCENCE_PERCENTILES

    @classmethod
    def fit(
        cls, sample: np.ndarray, percentiles: tuple[float, float] = FLUORESCENCE_PERCENTILES
    ) -> PercentileScaling:
        """Take the percentiles of each channel of ``sample`` ``(C, ...)`` (raw values, NaN ignored)."""
        p_lo, p_hi = (float(p) for p in percentiles)
        if not 0.0 <= p_lo < p_hi <= 100.0:
            raise SoscopeInputError(f"percentiles={percentiles!r} must satisfy 0 <= low < high <= 100.")
        x = np.asarray(sample, dtype=np.float64).reshape(np.shape(sample)[0], -1)
        lo = np.zeros(len(x))
        hi = np.ones(len(x))
        for c, row in enumerate(x):
            row = row[np.isfinite(row)]
            if row.size:
                lo[c], hi[c] = np.percentile(row, [p_lo, p_hi])
        # a constant channel: everything maps to 0 rather than dividing by zero
        hi = np.where(hi > lo, hi, lo + 1.0)
        return cls(lo, hi, (p_lo, p_hi))

    def __call__(self, window: np.ndarray) -> np.ndarray:
        """Scale a raw ``(C, ...)`` window to float32 in [0, 1]."""
        x = np.asarray(window).astype(np.float32)
        shape = (-1,) + (1,) * (x.ndim - 1)
        lo = self.lo.astype(np.float32).reshape(shape)
        span = (self.hi - self.lo).astype(np.float32).reshape(shape)
        x -= lo
        x /= span
        return np.clip(x, 0.0, 1.0, out=x)


def _reference_render(seed: int, n: int = 60_000) -> np.ndarray:
    """``(3, n)`` RGB pixels in [0, 1] rendered from :data:`MACENKO_REFERENCE` (Beer-Lambert).

    A third pure haematoxylin, a third pure eosin, a third mixed, concentrations scaled so that each stain's
    99th percentile is the reference's: used to derive :data:`REINHARD_REFERENCE` and in the tests.
    """
    rng = np.random.default_rng(seed)
    stains, max_c = MACENKO_REFERENCE
    conc = rng.gamma(2.0, 1.0, size=(2, n))
    k = n // 3
    conc[1, :k] = 0.0  # pure H
    conc[0, k : 2 * k] = 0.0  # pure E
    conc *= (max_c / np.percentile(conc, 99, axis=1))[:, None]
    return np.clip(np.exp(-(stains @ conc)), 0.0, 1.0)
