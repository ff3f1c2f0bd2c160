"""Coordinate plumbing between a spots element and an image element (pyramid levels, affines)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from soscope._errors import SoscopeInputError

if TYPE_CHECKING:  # pragma: no cover
    import xarray as xr
    from spatialdata import SpatialData

__all__ = [
    "ImageLevel",
    "apply_affine",
    "image_levels",
    "image_microns_per_pixel",
    "level_array",
    "spots_to_image_pixels",
]

#: Visium (v1, v2, CytAssist): centre-to-centre distance of the spots' hexagonal lattice, µm
VISIUM_SPACING_UM = 100.0
#: Visium: spot diameter / lattice spacing (55 / 100), with the tolerance soscope.io.detect_platform uses
_VISIUM_RATIO = (0.40, 0.70)
#: spatialdata-io readers whose coordinate system is the full-resolution image's pixels (not µm)
_PIXEL_FRAME_READERS = ("visium", "visium_hd")
_BIN_UM = re.compile(r"(\d{3})um")


@dataclass(frozen=True)
class ImageLevel:
    """One resolution level of an image element.

    Attributes
    ----------
    name
        ``"scale0"``, ``"scale1"``, ... for a multiscale image; ``"scale0"`` for a single-scale one.
    index
        Position of the level in the pyramid (0 = full resolution).
    shape
        ``(height, width)`` in pixels of this level.
    downscale
        ``(fy, fx)``: size of one pixel of this level in full-resolution (``scale0``) pixels, i.e.
        ``scale0_shape / shape``. A continuous ``scale0`` pixel coordinate ``u`` (pixel ``i`` spans
        ``[i, i + 1)``) becomes ``u / f`` at this level.

    """

    name: str
    index: int
    shape: tuple[int, int]
    downscale: tuple[float, float]


def _is_datatree(image: Any) -> bool:
    import xarray as xr

    return isinstance(image, xr.DataTree)


def _tree_level_names(image: Any) -> list[str]:
    # in the order spatialdata's get_pyramid_levels walks them (its level n is names[n])
    return [str(k) for k in image.children]


def level_array(image: xr.DataArray | Any, level: str | int = 0) -> xr.DataArray:
    """Return the ``(c, y, x)`` DataArray of one level of a single- or multiscale image element.

    Parameters
    ----------
    image
        A spatialdata image element: a ``DataArray`` or a multiscale ``DataTree``.
    level
        Level name (``"scale1"``) or index. A single-scale image has only level ``0`` / ``"scale0"``.

    Returns
    -------
    The lazily backed DataArray, with dims ordered ``("c", "y", "x")``.

    """
    if _is_datatree(image):
        from spatialdata import get_pyramid_levels

        names = _tree_level_names(image)
        index = int(level) if isinstance(level, int | np.integer) else None
        if index is None and str(level) in names:
            index = names.index(str(level))
        if index is None or not 0 <= index < len(names):
            raise SoscopeInputError(
                f"image has no level {level!r}; its levels are {names}. Set `target_resolution`."
            )
        arr = get_pyramid_levels(image, n=index)
    else:
        if level not in (0, "scale0"):
            raise SoscopeInputError(
                f"image is single-scale (one level, 'scale0'); level {level!r} does not exist. "
                "Set `target_resolution=None` or 0."
            )
        arr = image
    if "c" not in arr.dims:
        arr = arr.expand_dims("c")
    return arr.transpose("c", "y", "x")


def image_levels(image: xr.DataArray | Any) -> list[ImageLevel]:
    """Resolution levels of an image element, finest first.

    Parameters
    ----------
    image
        A spatialdata image element (``DataArray`` or multiscale ``DataTree``).

    Returns
    -------
    One :class:`ImageLevel` per level.

    """
    if _is_datatree(image):
        names = _tree_level_names(image)
    else:
        names = ["scale0"]
    shapes = [tuple(int(s) for s in level_array(image, n).shape[1:]) for n in names]
    h0, w0 = shapes[0]
    return [
        ImageLevel(name=n, index=i, shape=(h, w), downscale=(h0 / h, w0 / w))
        for i, (n, (h, w)) in enumerate(zip(names, shapes, strict=True))
    ]


def _transformation_to(element: Any, element_name: str, kind: str, coordinate_system: str) -> np.ndarray:
    from spatialdata.transformations import get_transformation

    systems = get_transformation(element, get_all=True)
    if coordinate_system not in systems:
        raise SoscopeInputError(
            f"the {kind} element {element_name!r} has no transformation to the coordinate system "
            f"{coordinate_system!r}; it has {sorted(systems)}. Set `coordinate_system` to one that both the "
            "spots and the image have."
        )
    t = systems[coordinate_system]
    return np.asarray(t.to_affine_matrix(input_axes=("x", "y"), output_axes=("x", "y")), dtype=np.float64)


def _element(sdata: SpatialData | None, element: Any, kind: str) -> tuple[Any, str]:
    if isinstance(element, str):
        if sdata is None:
            raise SoscopeInputError(
                f"the {kind} was given by name ({element!r}) but no SpatialData was passed."
            )
        try:
            return sdata[element], element
        except KeyError:
            raise SoscopeInputError(
                f"no element named {element!r} in the SpatialData (for the {kind}); set it to one of "
                f"{sorted(k for _, k, _ in sdata.gen_elements())}."
            ) from None
    return element, f"<{type(element).__name__}>"


def spots_to_image_pixels(
    sdata: SpatialData | None,
    spots_element_name: str | Any,
    image_element_name: str | Any,
    coordinate_system: str,
) -> tuple[np.ndarray, list[ImageLevel]]:
    """Affine from the spots' intrinsic coordinates to the image's full-resolution pixel coordinates.

    The map is ``inverse(image -> cs) @ (spots -> cs)``, both read with
    :func:`spatialdata.transformations.get_transformation`. Pixel coordinates are spatialdata's: pixel
    ``(row i, column j)`` of ``scale0`` covers ``[j, j + 1) x [i, i + 1)`` (its centre is ``j + 0.5``).

    Parameters
    ----------
    sdata
        The SpatialData holding both elements (may be ``None`` when elements are passed directly).
    spots_element_name
        Name of the shapes element whose geometry the sub-spots share (or the element itself).
    image_element_name
        Name of the image element (or the element itself: ``DataArray`` or ``DataTree``).
    coordinate_system
        A coordinate system that both elements have a transformation to.

    Returns
    -------
    affine
        ``(3, 3)`` float64 matrix acting on homogeneous ``(x, y, 1)`` columns.
    levels
        The image's resolution levels (:class:`ImageLevel`), finest first; divide ``scale0`` pixel
        coordinates by ``level.downscale`` (``(fy, fx)``) to reach level pixels.

    Raises
    ------
    SoscopeInputError
        If either element lacks ``coordinate_system`` (the message lists the systems each has), or the
        image's transformation is not invertible.

    """
    spots, spots_name = _element(sdata, spots_element_name, "spots")
    image, image_name = _element(sdata, image_element_name, "image")
    missing = []
    from spatialdata.transformations import get_transformation

    for el, name, kind in ((spots, spots_name, "spots"), (image, image_name, "image")):
        systems = get_transformation(el, get_all=True)
        if coordinate_system not in systems:
            missing.append(f"the {kind} element {name!r} has {sorted(systems)}")
    if missing:
        raise SoscopeInputError(
            f"coordinate system {coordinate_system!r} is missing: " + "; ".join(missing) + ". Set "
            "`coordinate_system` to one that both the spots and the image have."
        )
    t_spots = _transformation_to(spots, spots_name, "spots", coordinate_system)
    t_image = _transformation_to(image, image_name, "image", coordinate_system)
    if abs(np.linalg.det(t_image[:2, :2])) < 1e-300:
        raise SoscopeInputError(
            f"the transformation of image {image_name!r} to {coordinate_system!r} is not invertible."
        )
    affine = np.linalg.solve(t_image, t_spots)
    return affine, image_levels(image)


def apply_affine(affine: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Apply a ``(3, 3)`` affine to ``(n, 2)`` points (x, y)."""
    xy = np.asarray(xy, dtype=np.float64)
    return xy @ affine[:2, :2].T + affine[:2, 2]


def _visium_microns_per_unit(spots: Any, t_spots: np.ndarray) -> float | None:
    """µm per coordinate-system unit from a Visium lattice (55 µm circles, 100 µm apart), else None."""
    from soscope.geometry import ORDER_MIN, lattice_orientation, lattice_spacing, spot_centres

    if "radius" not in getattr(spots, "columns", ()) or len(spots) < 7:
        return None
    xy = spot_centres(spots)
    spacing = lattice_spacing(xy)
    if not np.isfinite(spacing) or spacing <= 0:
        return None
    order = lattice_orientation(xy, spacing)
    ratio = 2.0 * float(np.median(np.asarray(spots["radius"], dtype=float))) / spacing
    if order["psi6"] < ORDER_MIN or order["psi6"] <= order["psi4"]:
        return None
    if not _VISIUM_RATIO[0] <= ratio <= _VISIUM_RATIO[1]:
        return None
    return VISIUM_SPACING_UM / (spacing * float(np.sqrt(abs(np.linalg.det(t_spots[:2, :2])))))


def _bin_microns_per_unit(spots: Any, spots_name: str, t_spots: np.ndarray) -> float | None:
    """µm per unit from Visium HD bins named like ``..._square_016um`` (side of the squares), else None."""
    found = _BIN_UM.search(spots_name)
    if found is None or "radius" in getattr(spots, "columns", ()) or len(spots) == 0:
        return None
    side = float(np.sqrt(np.median(np.asarray(spots.geometry.area, dtype=float))))
    side *= float(np.sqrt(abs(np.linalg.det(t_spots[:2, :2]))))
    return float(found.group(1)) / side if side > 0 else None


def image_microns_per_pixel(
    sdata: SpatialData | None,
    spots_element_name: str | Any,
    image_element_name: str | Any,
    coordinate_system: str,
    *,
    microns_per_unit: float | None = None,
) -> tuple[float, str]:
    """Size in µm of one full-resolution (``scale0``) pixel of the image, and how it was found.

    The pixel's size in coordinate-system units comes from the image's transformation; the coordinate
    system's unit in µm, in this order:

    1. ``microns_per_unit`` when given;
    2. Visium spots (circles on a hexagonal lattice, diameter / spacing 0.40–0.70): the lattice spacing is
       100 µm;
    3. Visium HD bins read by spatialdata-io (a spots element named ``..._016um``): the bins' side;
    4. an image whose transformation scales its pixels (not the identity), outside data that
       spatialdata-io's ``visium`` / ``visium_hd`` readers wrote in image pixels: the coordinate system is in
       µm (the convention of the imaging platforms' readers, of :func:`soscope.io.read_dbit` and of
       :func:`soscope.datasets.synthetic`).

    Parameters
    ----------
    sdata
        The SpatialData (may be ``None`` when elements are passed, not names).
    spots_element_name, image_element_name
        The spots shapes element and the image element (names or elements).
    coordinate_system
        A coordinate system both have.
    microns_per_unit
        µm per unit of ``coordinate_system``, when known.

    Returns
    -------
    ``(microns_per_pixel, source)``; ``source`` says which rule gave it.

    Raises
    ------
    SoscopeInputError
        If no rule applies (e.g. the coordinate system is the image's own pixel grid), naming the fix.

    """
    spots, spots_name = _element(sdata, spots_element_name, "spots")
    image, image_name = _element(sdata, image_element_name, "image")
    t_image = _transformation_to(image, image_name, "image", coordinate_system)
    t_spots = _transformation_to(spots, spots_name, "spots", coordinate_system)
    pixel_units = float(np.sqrt(abs(np.linalg.det(t_image[:2, :2]))))  # one scale0 pixel, in cs units
    if microns_per_unit is not None:
        mpu = float(microns_per_unit)
        if not np.isfinite(mpu) or mpu <= 0:
            raise SoscopeInputError(f"microns_per_unit={microns_per_unit!r} must be a positive number (µm).")
        return mpu * pixel_units, f"microns_per_unit={mpu:g}"
    mpu = _visium_microns_per_unit(spots, t_spots)
    if mpu is not None:
        return mpu * pixel_units, f"Visium lattice: spots {VISIUM_SPACING_UM:g} µm apart"
    mpu = _bin_microns_per_unit(spots, spots_name, t_spots)
    if mpu is not None:
        return mpu * pixel_units, f"Visium HD bins of {spots_name!r}"
    attrs = getattr(sdata, "attrs", None) or {}
    reader = str(attrs.get("spatialdata_io_reader", "") or "")
    identity = np.allclose(t_image[:2, :2], np.eye(2), rtol=0.0, atol=1e-12)
    if not identity and reader not in _PIXEL_FRAME_READERS:
        return pixel_units, f"coordinate system {coordinate_system!r} taken to be in µm"
    raise SoscopeInputError(
        f"cannot tell the µm per pixel of image {image_name!r}: its coordinate system "
        f"{coordinate_system!r} is "
        + ("the image's own pixel grid" if identity else f"in image pixels (read by {reader!r})")
        + " and the spots are no Visium lattice. Pass the coordinate system's unit, e.g. "
        "FoundationModel(..., microns_per_unit=0.2125) for a coordinate system in pixels of 0.2125 µm, or "
        "microns_per_unit=1 when it is in µm."
    )
