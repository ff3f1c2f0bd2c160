"""Image features per sub-spot: level choice, Dask tiling, extractors."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from soscope._constants import SoscopeKeys
from soscope._errors import SoscopeInputError
from soscope.features._foundation import FoundationModel, ImagePreparation, foundation_tile
from soscope.features._morphology import (
    TEXTURE_MARGIN,
    MorphologySpec,
    fit_spec,
    morphology_tile,
    normalise_window,
)
from soscope.features._stain import PercentileScaling, StainNormaliser
from soscope.features._transform import (
    ImageLevel,
    _element,
    apply_affine,
    image_microns_per_pixel,
    level_array,
    spots_to_image_pixels,
)
from soscope.tiling import Remote, run_tasks

if TYPE_CHECKING:  # pragma: no cover
    from spatialdata import SpatialData

    from soscope.geometry import SubspotLayout

__all__ = ["SubspotFeatures", "choose_level", "precomputed_features", "subspot_image_features"]

logger = logging.getLogger("soscope.features")

#: sub-spots per block when computing polygon bounds (bounded temporary memory)
_BOUNDS_BLOCK = 1 << 20

#: Default minimum size (pixels across, ``sqrt(median area)``) of a sub-spot at the level that is read.
MIN_PIXELS_ACROSS = 12.0
_SAMPLE_MAX_SIDE = 2048
_SAMPLE_WINDOWS = 16
_SAMPLE_WINDOW = 128
_RGB_NAMES = ({"r", "g", "b"}, {"red", "green", "blue"})
#: what may follow ``"morphology:"``: the image normalisation applied before the statistics
MORPHOLOGY_NORMALISATIONS = ("macenko", "reinhard", "percentile")

Extractor = str | Callable[[np.ndarray], np.ndarray] | Any


@dataclass(frozen=True)
class SubspotFeatures:
    """Image features of the sub-spots of a :class:`~soscope.geometry.SubspotLayout`.

    Behaves like its ``values`` array for :func:`numpy.asarray`, ``len`` and ``.shape``.

    Attributes
    ----------
    values
        ``(M, D)`` float32, one row per sub-spot in layout order; rows of sub-spots outside the image (or
        covering no pixel) are NaN: the caller imputes them.
    names
        ``D`` feature names.
    level
        Name of the image level that was read (``"scale0"`` ...), ``""`` for precomputed features.
    pixels_across
        Median sub-spot size (``sqrt(area)``) in pixels of that level.
    n_missing
        Number of all-NaN rows.
    extractor
        ``"morphology"`` (or ``"morphology:<normalisation>"``), ``"callable"``, ``"torch"``,
        ``"foundation"`` or ``"obsm:<table>:<key>"``.
    provenance
        Plain values saying how the features were made from this image (level, µm per pixel, patch size,
        normalisation ...), for ``uns``; a foundation model's own are ``fitted.provenance()``.
    fitted
        For a :class:`~soscope.features.FoundationModel`: the extractor with its PCA fitted (on these
        sub-spots when it was not fitted before): pass it to apply the same projection to other images.

    """

    values: np.ndarray
    names: list[str]
    level: str = ""
    pixels_across: float = float("nan")
    n_missing: int = 0
    extractor: str = "morphology"
    spec: MorphologySpec | None = field(default=None, repr=False)
    provenance: dict[str, Any] = field(default_factory=dict, repr=False)
    fitted: Any = field(default=None, repr=False)

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        return self.values if dtype is None else self.values.astype(dtype)

    def __len__(self) -> int:
        return len(self.values)

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape ``(M, D)`` of ``values``."""
        return self.values.shape


# ----------------------------------------------------------------------------------------------- levels
def choose_level(
    levels: list[ImageLevel],
    subspot_size0: float,
    *,
    target_resolution: int | str | None = None,
    min_pixels: float = MIN_PIXELS_ACROSS,
) -> int:
    """Index of the pyramid level to read.

    Parameters
    ----------
    levels
        The image's levels, finest first.
    subspot_size0
        Typical sub-spot size in full-resolution pixels (``sqrt`` of the median area).
    target_resolution
        Force a level: its index or its name (``"scale1"``). ``None`` picks the coarsest level on which a
        sub-spot still spans at least ``min_pixels`` pixels (``scale0`` when none does).
    min_pixels
        Minimum sub-spot size in pixels for the automatic choice.

    Returns
    -------
    The level index.

    """
    names = [lv.name for lv in levels]
    if target_resolution is not None:
        if isinstance(target_resolution, str):
            if target_resolution not in names:
                raise SoscopeInputError(
                    f"target_resolution={target_resolution!r} is not a level of the image; its levels are "
                    f"{names}."
                )
            return names.index(target_resolution)
        k = int(target_resolution)
        if not 0 <= k < len(levels):
            raise SoscopeInputError(
                f"target_resolution={target_resolution!r} is out of range; the image has levels "
                f"0..{len(levels) - 1} ({names})."
            )
        return k
    best = 0
    if np.isfinite(subspot_size0):
        for lv in levels:
            if subspot_size0 / np.sqrt(lv.downscale[0] * lv.downscale[1]) >= min_pixels:
                best = lv.index
    return best


def _channel_names(arr: Any) -> tuple[str, ...]:
    if "c" in arr.coords:
        vals = list(arr.coords["c"].values)
    else:
        vals = list(range(arr.shape[0]))
    out = []
    for v in vals:
        if isinstance(v, int | np.integer):
            out.append(f"ch{int(v)}")
        else:
            out.append(str(v))
    return tuple(out)


def _image_kind(arr: Any, image_kind: str) -> Literal["rgb", "fluorescence"]:
    if image_kind in ("rgb", "fluorescence"):
        if image_kind == "rgb" and arr.shape[0] != 3:
            raise SoscopeInputError(f"image_kind='rgb' needs 3 channels; the image has {arr.shape[0]}.")
        return image_kind  # type: ignore[return-value]
    if image_kind != "auto":
        raise SoscopeInputError(f"image_kind={image_kind!r}; use 'auto', 'rgb' or 'fluorescence'.")
    if arr.shape[0] != 3:
        return "fluorescence"
    raw = [str(v).lower() for v in arr.coords["c"].values] if "c" in arr.coords else []
    if np.dtype(arr.dtype) == np.uint8 or set(raw) in _RGB_NAMES or raw == ["0", "1", "2"] or not raw:
        return "rgb"
    return "fluorescence"


def _coarse_sample(image: Any, levels: list[ImageLevel]) -> np.ndarray:
    """Read a raw ``(C, h, w)`` coarse view of the whole image (bounded size), once."""
    import dask

    small = [lv for lv in levels if max(lv.shape) <= _SAMPLE_MAX_SIDE]
    if small:
        return np.asarray(level_array(image, small[0].index).values)
    lv = levels[-1]
    arr = level_array(image, lv.index)
    h, w = lv.shape
    win = _SAMPLE_WINDOW
    ys = np.linspace(0, max(h - win, 0), _SAMPLE_WINDOWS).astype(int)
    xs = np.linspace(0, max(w - win, 0), _SAMPLE_WINDOWS).astype(int)
    parts = [arr.isel(y=slice(y, y + win), x=slice(x, x + win)).data for y in ys for x in xs]
    got = dask.compute(*parts)
    return np.concatenate([np.asarray(g).reshape(g.shape[0], -1) for g in got], axis=1)[:, None, :]


def _intensity_scale(dtype: np.dtype, sample: np.ndarray | None) -> float:
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.bool_):
        return 1.0
    if np.issubdtype(dtype, np.integer):
        return float(np.iinfo(dtype).max)
    if sample is None:
        return 1.0
    m = float(np.nanmax(sample)) if sample.size else 1.0
    return m if np.isfinite(m) and m > 1.0 else 1.0


# ---------------------------------------------------------------------------------------- extractors
def _is_torch_module(obj: Any) -> bool:
    import sys

    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.nn.Module)


def _run_extractor(extractor: Any, patches: np.ndarray, batch_size: int) -> np.ndarray:
    """Apply a callable ``(B, H, W, C) -> (B, D)`` or a torch module ``(B, C, H, W) -> (B, D)`` in batches."""
    outs = []
    if _is_torch_module(extractor):
        import torch

        params = list(extractor.parameters())
        device = params[0].device if params else torch.device("cpu")
        was_training = extractor.training
        extractor.eval()
        try:
            with torch.no_grad():
                for i in range(0, len(patches), batch_size):
                    x = torch.from_numpy(
                        np.ascontiguousarray(patches[i : i + batch_size].transpose(0, 3, 1, 2))
                    )
                    y = extractor(x.to(device))
                    outs.append(y.detach().float().cpu().numpy().reshape(len(x), -1))
        finally:
            extractor.train(was_training)
    else:
        for i in range(0, len(patches), batch_size):
            b = patches[i : i + batch_size]
            y = np.asarray(extractor(b), dtype=np.float32)
            if y.ndim == 0 or y.shape[0] != len(b):
                raise SoscopeInputError(
                    f"the feature extractor returned shape {y.shape} for {len(b)} patches; it must return "
                    "(B, D) for input (B, H, W, C)."
                )
            outs.append(y.reshape(len(b), -1))
    return np.concatenate(outs, axis=0).astype(np.float32)


def _patch_tile(
    window: np.ndarray,
    window_origin: tuple[int, int],
    corners: np.ndarray,
    image_shape: tuple[int, int],
    patch_size: int,
    scale: float,
    extractor: Any,
    batch_size: int,
) -> np.ndarray:
    """Cut fixed-size patches (edge-replicated at the image border) and run the extractor."""
    from soscope.features._morphology import normalise_window

    y0, x0 = window_origin
    h, w = image_shape
    off = np.arange(patch_size)
    rows = np.clip(corners[:, 0, None] + off, 0, h - 1) - y0  # (B, ps)
    cols = np.clip(corners[:, 1, None] + off, 0, w - 1) - x0
    win = normalise_window(window, scale)  # (C, h, w)
    patches = win[:, rows[:, :, None], cols[:, None, :]]  # (C, B, ps, ps)
    patches = np.ascontiguousarray(patches.transpose(1, 2, 3, 0))
    return _run_extractor(extractor, patches, batch_size)


def prepared_morphology_tile(
    window: np.ndarray,
    window_origin: tuple[int, int],
    polygons: Any,
    spec: MorphologySpec,
    prep: ImagePreparation,
) -> np.ndarray:
    """:func:`~soscope.features._morphology.morphology_tile` of a window normalised by ``prep`` first."""
    return morphology_tile(prep(window), window_origin, polygons, spec)


def _parse_morphology(extractor: str) -> str | None:
    """Return the normalisation of ``"morphology:<normalisation>"`` (None for plain ``"morphology"``)."""
    if extractor == "morphology":
        return None
    norm = extractor.split(":", 1)[1]
    if norm not in MORPHOLOGY_NORMALISATIONS:
        raise SoscopeInputError(
            f"image_features={extractor!r}: the normalisation after 'morphology:' must be one of "
            f"{list(MORPHOLOGY_NORMALISATIONS)}."
        )
    return norm


def _preparation(
    sample: np.ndarray,
    kind: Literal["rgb", "fluorescence"],
    scale: float,
    channels: tuple[int, ...],
    *,
    stain: str | None,
    percentile: bool,
    to_rgb: bool,
) -> ImagePreparation:
    """Fit an image's :class:`ImagePreparation` on its coarse raw ``sample``."""
    if stain is not None and kind != "rgb":
        raise SoscopeInputError(
            f"stain normalisation ({stain!r}) applies to H&E (RGB) images; this image is fluorescence "
            f"({sample.shape[0]} channels). Leave it out: fluorescence is scaled by percentiles."
        )
    sub = sample[list(channels)] if channels != tuple(range(sample.shape[0])) else sample
    scaling = PercentileScaling.fit(sub) if percentile else None
    normaliser = None
    if stain is not None:
        unit = scaling(sub) if scaling is not None else normalise_window(sub, scale)
        normaliser = StainNormaliser.fit(unit, stain)
    return ImagePreparation(kind, float(scale), channels, scaling, normaliser, to_rgb)


def _fm_channels(fm: FoundationModel, names: tuple[str, ...], kind: str) -> tuple[int, ...]:
    """Return the indices of the channels a foundation model sees (given by index or name)."""
    if fm.channels is None:
        if kind == "rgb" or len(names) <= 3:
            return tuple(range(len(names)))
        raise SoscopeInputError(
            f"the image has {len(names)} channels {list(names)}; a foundation model takes at most 3: choose "
            "them with FoundationModel(channels=[...]) (indices or names)."
        )
    if kind == "rgb":
        raise SoscopeInputError(
            "channels= is for fluorescence images; this image is RGB (H&E). Leave channels out, or set "
            "image_kind='fluorescence'."
        )
    out = []
    for ch in fm.channels:
        if isinstance(ch, int | np.integer) and 0 <= int(ch) < len(names):
            out.append(int(ch))
        elif str(ch) in names:
            out.append(names.index(str(ch)))
        else:
            raise SoscopeInputError(
                f"channel {ch!r} of FoundationModel(channels=...) is not in the image; its channels are "
                f"{list(names)} (indices 0..{len(names) - 1})."
            )
    return tuple(out)


def _foundation_level(
    levels: list[ImageLevel], mpp0: float, fm: FoundationModel, target_resolution: int | str | None
) -> int:
    """Return the coarsest level whose pixels are no larger than the model's input pixels."""
    if target_resolution is not None:
        return choose_level(levels, float("nan"), target_resolution=target_resolution)
    want = fm.tile_um / fm.input_size
    best = 0
    for lv in levels:
        if mpp0 * np.sqrt(lv.downscale[0] * lv.downscale[1]) <= want * (1 + 1e-6):
            best = lv.index
    return best


def run_tile(_shared: Any, function: Callable, args: tuple) -> np.ndarray:
    """Read a tile's window (a lazy Dask array, read here in this thread) and run ``function`` on it.

    The task of :func:`subspot_image_features` for one tile, locally or on a ``dask.distributed`` worker;
    ``_shared`` is the runner's broadcast slot, unused here.
    """
    window = args[0]
    if hasattr(window, "compute"):
        window = window.compute(scheduler="sync")  # already inside a task: no nested scheduler
    return function(np.asarray(window), *args[1:])


# ------------------------------------------------------------------------------------------- main entry
def subspot_image_features(
    sdata: SpatialData | None,
    image: str | Any,
    layout: SubspotLayout,
    spots: str | Any,
    *,
    coordinate_system: str,
    extractor: Extractor = "morphology",
    target_resolution: int | str | None = None,
    tile_size: int = 2048,
    min_pixels: float = MIN_PIXELS_ACROSS,
    patch_size: int = 32,
    batch_size: int = 256,
    image_kind: Literal["auto", "rgb", "fluorescence"] = "auto",
    progress: bool = False,
) -> SubspotFeatures:
    """Image features of every sub-spot, computed tile by tile with Dask.

    The sub-spot polygons (in the spots' intrinsic coordinates) are mapped to the image's pixels with
    :func:`spots_to_image_pixels`, a pyramid level is chosen, and the image is read one window per
    tile (only tiles holding sub-spots; one task each, run by :func:`soscope.tiling.run_tasks`, so a
    ``dask.distributed`` client is used when one is active). Each sub-spot belongs to the tile holding
    its centroid, and its tile's window covers its whole bounding box plus the texture filters' margin,
    so the result does not depend on ``tile_size``.

    Parameters
    ----------
    sdata
        The SpatialData holding the elements (may be ``None`` when elements are passed, not names).
    image
        Image element name, or the element (single-scale ``DataArray`` or multiscale ``DataTree``).
    layout
        The sub-spots (:class:`~soscope.geometry.SubspotLayout`), in the intrinsic coordinates of ``spots``.
    spots
        Name of the spots shapes element (or the element) whose transformations place ``layout``.
    coordinate_system
        A coordinate system shared by ``spots`` and ``image``.
    extractor
        ``"morphology"`` (default; colour, stain and texture statistics over each sub-spot's polygon, see
        :func:`soscope.features.morphology_feature_names`), optionally normalising the image first:
        ``"morphology:macenko"`` / ``"morphology:reinhard"`` (H&E stain normalisation, see
        :class:`~soscope.features.StainNormaliser`) or ``"morphology:percentile"`` (each channel scaled
        between its 1st and 99.5th percentiles, for fluorescence); a
        :class:`~soscope.features.FoundationModel` (patches of a fixed size in µm, embedded by a pretrained
        network, reduced by PCA); a callable mapping patches ``(B, H, W, C)`` float32 in [0, 1] to
        ``(B, D)``; a ``torch.nn.Module`` mapping ``(B, C, H, W)`` float tensors to ``(B, D)``; or
        ``"obsm:<table>:<key>"`` for precomputed features (see :func:`precomputed_features`). Callables and
        modules see ``patch_size`` × ``patch_size`` patches centred on the sub-spot centroids,
        edge-replicated at the image border.
    target_resolution
        Pyramid level to read, as index or name (``"scale1"``). ``None``: the coarsest level on which a
        sub-spot spans at least ``min_pixels`` pixels (``sqrt`` of the median area); for a
        :class:`~soscope.features.FoundationModel`, the coarsest level whose pixels are no larger than
        the model's input pixels (``tile_um / input_size``).
    tile_size
        Tile edge in pixels of the chosen level. Memory per task ≈ a ``(tile_size + margins)²`` window.
    min_pixels
        Minimum sub-spot size in pixels for the automatic level choice.
    patch_size
        Patch edge (pixels of the chosen level) for callable / torch extractors.
    batch_size
        Patches per extractor call (a :class:`~soscope.features.FoundationModel` uses its own).
    image_kind
        ``"auto"``: ``"rgb"`` (H&E-like) when the image has 3 channels and is ``uint8`` or has channels
        named r/g/b (or unnamed), else ``"fluorescence"``.
    progress
        Show a progress bar over the image tiles.

    Returns
    -------
    :class:`SubspotFeatures`: ``values`` ``(M, D)`` float32 in layout order and ``names``. Sub-spots
    outside the image or covering no pixel centre (callables: whose centroid is outside the image) get
    NaN rows, counted in ``n_missing`` and logged as a warning. A
    :class:`~soscope.features.FoundationModel` whose PCA is not fitted yet is fitted on these sub-spots;
    the fitted one is ``fitted``.

    Notes
    -----
    Intensities are normalised to [0, 1] by dtype (integers: divided by the dtype's maximum; floats: by
    the maximum of a coarse view of the image when it exceeds 1), or per image by the normalisation
    asked for. Every normalisation is fitted once on a coarse view of the whole image and applied pixel
    by pixel, so the features do not depend on ``tile_size``.

    """
    from dask.system import CPU_COUNT  # the cores this process may use (affinity, cgroups)

    if isinstance(extractor, str) and extractor.startswith("obsm:"):
        parts = extractor.split(":")
        if len(parts) != 3 or not all(parts[1:]):
            raise SoscopeInputError(
                f"extractor={extractor!r}; precomputed features are named 'obsm:<table>:<key>'."
            )
        return precomputed_features(sdata, parts[1], parts[2], layout, spots)
    if isinstance(extractor, str) and not (extractor == "morphology" or extractor.startswith("morphology:")):
        raise SoscopeInputError(
            f"extractor={extractor!r} is unknown; use 'morphology' (or 'morphology:<normalisation>' with "
            f"one of {list(MORPHOLOGY_NORMALISATIONS)}), 'obsm:<table>:<key>', a FoundationModel, a "
            "callable (B, H, W, C) -> (B, D) or a torch.nn.Module."
        )
    normalisation = _parse_morphology(extractor) if isinstance(extractor, str) else None
    if int(tile_size) < 1 or int(patch_size) < 1 or int(batch_size) < 1:
        raise SoscopeInputError("tile_size, patch_size and batch_size must be positive integers.")
    tile_size, patch_size, batch_size = int(tile_size), int(patch_size), int(batch_size)
    foundation = isinstance(extractor, FoundationModel)
    provenance: dict[str, Any] = {}

    image_el, _ = _element(sdata, image, "image")
    affine, levels = spots_to_image_pixels(sdata, spots, image, coordinate_system)
    det = abs(np.linalg.det(affine[:2, :2]))
    area = np.asarray(layout.area, dtype=np.float64)
    ok_area = area[np.isfinite(area) & (area > 0)]
    size0 = float(np.sqrt(np.median(ok_area) * det)) if ok_area.size else float("nan")
    if foundation:
        fm: FoundationModel = extractor
        fm.check_components()  # a probe forward pass: a bad n_components fails before any tile is read
        mpp0, mpp_source = image_microns_per_pixel(
            sdata, spots, image, coordinate_system, microns_per_unit=fm.microns_per_unit
        )
        k = _foundation_level(levels, mpp0, fm, target_resolution)
    else:
        k = choose_level(levels, size0, target_resolution=target_resolution, min_pixels=min_pixels)
    lv = levels[k]
    fy, fx = lv.downscale
    to_level = np.diag([1.0 / fx, 1.0 / fy, 1.0]) @ affine
    pixels_across = size0 / float(np.sqrt(fx * fy))
    if pixels_across < 4 and not foundation:
        logger.warning(
            "sub-spots span only %.1f pixels at image level %s: image features will be coarse.",
            pixels_across,
            lv.name,
        )

    arr = level_array(image_el, k)
    h, w = lv.shape
    centroids = apply_affine(to_level, np.asarray(layout.centroid, dtype=np.float64).reshape(-1, 2))
    m = layout.n_subspots

    morphology = isinstance(extractor, str)
    floating = not (np.issubdtype(np.dtype(arr.dtype), np.integer) or np.dtype(arr.dtype) == bool)
    need_sample = morphology or floating or foundation
    sample = _coarse_sample(image_el, levels) if need_sample else None
    scale = _intensity_scale(arr.dtype, sample)
    prep: ImagePreparation | None = None
    fitted = None

    if morphology:
        kind = _image_kind(arr, image_kind)
        if normalisation is None:
            spec = fit_spec(sample, kind, _channel_names(arr), scale)
        else:
            # the image is normalised first (fitted on the coarse view, pixel by pixel), then measured
            prep = _preparation(
                sample, kind, scale, tuple(range(arr.shape[0])),
                stain=normalisation if normalisation in ("macenko", "reinhard") else None,
                percentile=normalisation == "percentile", to_rgb=False,
            )  # fmt: skip
            spec = fit_spec(prep(sample), kind, _channel_names(arr), 1.0)
            provenance.update(prep.describe())
        provenance["normalisation"] = str(normalisation)
        names = spec.names
        # vertex arrays, not shapely objects: each tile's task builds the shapely polygons of its sub-spots;
        # which overlap the image is found a block of rows at a time (no copy of all the vertices)
        inside = np.concatenate(
            [
                _overlaps(layout.polygons[a : a + _BOUNDS_BLOCK].transform(to_level).bounds(), h, w)
                for a in range(0, m, _BOUNDS_BLOCK)
            ]
            or [np.zeros(0, dtype=bool)]
        )
        extractor_name = "morphology" if normalisation is None else f"morphology:{normalisation}"
    else:
        spec = None
        if foundation:
            kind = _image_kind(arr, fm.image_kind)
            channels = _fm_channels(fm, _channel_names(arr), kind)
            prep = _preparation(
                sample, kind, scale, channels, stain=fm.stain_normalise, percentile=kind == "fluorescence",
                to_rgb=True,
            )  # fmt: skip
            lv_mpp = mpp0 * float(np.sqrt(fx * fy))
            tile_px = fm.tile_um / lv_mpp
            if tile_px < 1:
                raise SoscopeInputError(
                    f"tile_um={fm.tile_um:g} µm is smaller than one pixel of image level {lv.name} "
                    f"({lv_mpp:.3g} µm per pixel): nothing to show the model. Raise tile_um to at least "
                    f"{lv_mpp:.3g} µm (a few sub-spots' widths is typical)."
                )
            patch_size = max(1, int(round(tile_px)))
            batch_size = fm.batch_size
            names = [f"fm_{i}" for i in range(fm.embedding_dim)] if fm.needs_fit else fm.feature_names
            provenance.update(
                image_um_per_pixel=mpp0, um_per_pixel_source=mpp_source, level_um_per_pixel=lv_mpp,
                tile_px=patch_size, **prep.describe(),
            )  # fmt: skip
            extractor_name = "foundation"
        else:
            probe = _run_extractor(
                extractor, np.zeros((1, patch_size, patch_size, arr.shape[0]), np.float32), 1
            )
            names = [f"emb_{i}" for i in range(probe.shape[1])]
            extractor_name = "torch" if _is_torch_module(extractor) else "callable"
        with np.errstate(invalid="ignore"):
            inside = (
                np.isfinite(centroids).all(axis=1)
                & (centroids[:, 0] >= 0)
                & (centroids[:, 0] < w)
                & (centroids[:, 1] >= 0)
                & (centroids[:, 1] < h)
            )
        corners = np.floor(centroids[:, ::-1] - patch_size / 2 + 0.5)  # (row, col) of the patch corner
        corners = np.where(np.isfinite(corners), corners, 0).astype(np.int64)

    out = np.full((m, len(names)), np.nan, dtype=np.float32)
    members = np.flatnonzero(inside)
    if members.size:
        ntx = -(-w // tile_size)
        nty = -(-h // tile_size)
        cxy = np.nan_to_num(centroids[members], nan=0.0)
        tx = np.clip(np.floor(cxy[:, 0] / tile_size), 0, ntx - 1).astype(np.int64)
        ty = np.clip(np.floor(cxy[:, 1] / tile_size), 0, nty - 1).astype(np.int64)
        tile = ty * ntx + tx
        order = np.argsort(tile, kind="stable")
        members, tile = members[order], tile[order]
        splits = np.flatnonzero(np.diff(tile)) + 1
        groups = np.split(members, splits)

        def tile_args(gi: int) -> tuple:
            """Arguments of tile ``gi``'s feature function; the first, the image window, is still lazy."""
            idx = groups[gi]
            if morphology:
                polys = layout.polygons[idx].transform(to_level)
                b = polys.bounds()
                y0 = max(int(np.floor(b[:, 1].min())) - TEXTURE_MARGIN, 0)
                y1 = min(int(np.ceil(b[:, 3].max())) + TEXTURE_MARGIN, h)
                x0 = max(int(np.floor(b[:, 0].min())) - TEXTURE_MARGIN, 0)
                x1 = min(int(np.ceil(b[:, 2].max())) + TEXTURE_MARGIN, w)
                win = arr.isel(y=slice(y0, y1), x=slice(x0, x1)).data
                return (win, (y0, x0), polys, spec) + (() if prep is None else (prep,))
            c = corners[idx]
            y0 = max(int(c[:, 0].min()), 0)
            y1 = min(int(c[:, 0].max()) + patch_size, h)
            x0 = max(int(c[:, 1].min()), 0)
            x1 = min(int(c[:, 1].max()) + patch_size, w)
            win = arr.isel(y=slice(y0, y1), x=slice(x0, x1)).data
            if foundation:
                return win, (y0, x0), c, (h, w), patch_size, prep, fm
            return win, (y0, x0), c, (h, w), patch_size, scale, extractor, batch_size

        if morphology:
            function = morphology_tile if prep is None else prepared_morphology_tile
        else:
            function = foundation_tile if foundation else _patch_tile

        def sink(gi: int, res: Any) -> None:
            idx = groups[gi]
            res = np.asarray(res, dtype=np.float32)
            if res.shape != (len(idx), len(names)):
                raise SoscopeInputError(
                    f"the feature extractor returned {res.shape[1:]} features per patch here but "
                    f"{len(names)} on a probe patch; it must return a fixed number D."
                )
            out[idx] = res

        # one task per tile with soscope's runner: each task reads only its own window, and a bounded number
        # of tasks is in flight, so memory stays a few windows whatever the image size; on a dask.distributed
        # client (given by the settings or active) the windows are read by the workers
        run_tasks(
            len(groups),
            lambda gi: run_tile(None, function, tile_args(gi)),
            sink,
            remote=Remote(run_tile, lambda gi: (function, tile_args(gi))),
            workers=CPU_COUNT,
            progress=progress,
            description="image features (tiles)",
        )
    if foundation:
        # the PCA is fitted on these sub-spots' raw embeddings unless it was fitted before (training data)
        fitted = fm.fitted(out) if fm.needs_fit else fm
        if fm.needs_fit:
            out = fitted.reduce(out)
            names = fitted.feature_names
    n_missing = int(np.isnan(out).all(axis=1).sum()) if out.shape[1] else int((~inside).sum())
    if n_missing:
        logger.warning(
            "%d of %d sub-spots lie outside image level %s or cover no pixel; their image features are NaN.",
            n_missing,
            m,
            lv.name,
        )
    provenance.update(level=lv.name, pixels_across=pixels_across, n_missing=n_missing)
    return SubspotFeatures(
        values=out,
        names=list(names),
        level=lv.name,
        pixels_across=pixels_across,
        n_missing=n_missing,
        extractor=extractor_name,
        spec=spec,
        provenance=provenance,
        fitted=fitted,
    )


def _overlaps(bounds: np.ndarray, h: int, w: int) -> np.ndarray:
    """Which boxes ``(xmin, ymin, xmax, ymax)`` (pixels) overlap an ``h`` × ``w`` image (NaN: no)."""
    with np.errstate(invalid="ignore"):
        return (
            np.isfinite(bounds).all(axis=1)
            & (bounds[:, 2] > 0)
            & (bounds[:, 0] < w)
            & (bounds[:, 3] > 0)
            & (bounds[:, 1] < h)
        )


# ----------------------------------------------------------------------------------------- precomputed
def precomputed_features(
    sdata: SpatialData,
    table_name: str,
    key: str,
    layout: SubspotLayout,
    spots: str | Any,
) -> SubspotFeatures:
    """Features already stored in a table's ``obsm``, aligned to the sub-spots of ``layout``.

    Two layouts of the table are understood:

    * one row per **sub-spot**: ``obs`` has columns ``spot_id`` (the parent spot's instance id, i.e. the
      spots element's index) and ``subspot``; rows are matched on both;
    * one row per **spot** (a table annotating ``spots``): rows are matched on the table's instance key
      (restricted to the region ``spots`` when the table annotates several), and every sub-spot gets its
      parent's row.

    Parameters
    ----------
    sdata
        The SpatialData.
    table_name
        Name of the table.
    key
        Key in ``table.obsm``.
    layout
        The sub-spots.
    spots
        Name of the spots element (or the element) whose row order ``layout.spot_index`` refers to.

    Returns
    -------
    :class:`SubspotFeatures` (NaN rows where no match).

    """
    import pandas as pd

    if sdata is None or table_name not in sdata.tables:
        have = sorted(sdata.tables) if sdata is not None else []
        raise SoscopeInputError(f"no table {table_name!r} for precomputed features; tables: {have}.")
    table = sdata.tables[table_name]
    if key not in table.obsm:
        raise SoscopeInputError(
            f"table {table_name!r} has no obsm[{key!r}]; its obsm keys are {sorted(table.obsm.keys())}."
        )
    mat = table.obsm[key]
    if isinstance(mat, pd.DataFrame):
        names = [str(c) for c in mat.columns]
        mat = mat.to_numpy()
    else:
        mat = np.asarray(mat.toarray() if hasattr(mat, "toarray") else mat)
        names = [f"{key}_{i}" for i in range(mat.shape[1])]
    mat = mat.astype(np.float32).reshape(len(mat), -1)
    spots_el, spots_name = _element(sdata, spots, "spots")
    spot_ids = np.asarray(spots_el.index)[np.asarray(layout.spot_index)]
    obs = table.obs
    if {SoscopeKeys.SPOT_ID, SoscopeKeys.SUBSPOT} <= set(obs.columns):
        index = pd.MultiIndex.from_arrays(
            [obs[SoscopeKeys.SPOT_ID].to_numpy(), obs[SoscopeKeys.SUBSPOT].astype(np.int64).to_numpy()]
        )
        query = pd.MultiIndex.from_arrays([spot_ids, np.asarray(layout.subspot, dtype=np.int64)])
        rows = index.get_indexer(query) if index.is_unique else None
    else:
        attrs = table.uns.get("spatialdata_attrs", {})
        instance_key = attrs.get("instance_key")
        if instance_key is None or instance_key not in obs.columns:
            raise SoscopeInputError(
                f"table {table_name!r} has neither obs columns 'spot_id' and 'subspot' nor an instance key; "
                "cannot align its obsm rows to sub-spots."
            )
        keep = np.ones(len(obs), dtype=bool)
        region_key = attrs.get("region_key")
        if region_key in obs.columns and isinstance(spots, str):
            keep = (obs[region_key].astype(str) == spots).to_numpy()
        ids = pd.Index(obs[instance_key].to_numpy()[keep])
        rows = ids.get_indexer(spot_ids) if ids.is_unique else None
        if rows is not None:
            rows = np.where(rows >= 0, np.flatnonzero(keep)[np.maximum(rows, 0)], -1)
    if rows is None:
        raise SoscopeInputError(
            f"table {table_name!r} has duplicated ids; cannot align obsm[{key!r}] to sub-spots."
        )
    out = np.full((len(spot_ids), mat.shape[1]), np.nan, dtype=np.float32)
    hit = rows >= 0
    out[hit] = mat[rows[hit]]
    n_missing = int((~hit).sum())
    if n_missing:
        logger.warning(
            "%d of %d sub-spots have no row in table %r; their features are NaN.",
            n_missing,
            len(out),
            table_name,
        )
    return SubspotFeatures(
        values=out, names=names, level="", n_missing=n_missing, extractor=f"obsm:{table_name}:{key}"
    )
