"""Nuclei per sub-spot from a segmentation: a labels raster, nucleus/cell outlines, or detection on the image.

:func:`subspot_nuclei_features` turns the choice that :func:`soscope.io.find_segmentation` made for one spots
element into per-sub-spot features (:data:`NUCLEI_FEATURES`): the nuclei are read as one table of centroids
in the coordinate system (with area, eccentricity and, when detected, nuclear intensity), mapped into the
spots' intrinsic coordinates and summarised per sub-spot polygon by :func:`nuclei_per_polygon`.

* **labels**: per-label pixel sums, tile by tile (exact integers, so tiles add up to the whole), give each
  label's centroid, area and eccentricity; only the window over the spots is read.
* **shapes**: each polygon's centroid, area and eccentricity from its vertices (Green's theorem on the
  exterior ring of each part); circles give their centre and πr².
* **segment_nuclei**: :func:`segment_nuclei` on the window of the image's full resolution over the spots;
  for the features, each tile's nuclei are reduced to per-sub-spot sums inside the tile's task (the
  sums and statistics of :func:`nuclei_per_polygon`), so no table of every nucleus of the slide is held
  (:func:`read_nuclei` still gives that table).

Everything is linear in the number of nuclei and sub-spots (no pairwise matrices), and the same for the same
data whatever the chunking (up to float rounding of sums over tiles, for detection).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from soscope._errors import SoscopeInputError
from soscope._transforms import affine_xy
from soscope.features._nuclei import (
    NucleusDetector,
    _detect,
    _nucleus_values,
    _polygon_stats,
    _polygon_sums,
    eccentricity,
    moment_stats,
    nuclei_per_polygon,
    pixel_sums,
    segment_nuclei,
)

if TYPE_CHECKING:  # pragma: no cover
    from soscope.geometry import SubspotLayout
    from soscope.io import SegmentationChoice

__all__ = [
    "NUCLEI_FEATURES",
    "SubspotNuclei",
    "detection_microns_per_pixel",
    "drop_unresolved_detections",
    "read_nuclei",
    "subspot_nuclei_features",
]

logger = logging.getLogger("soscope.features")

#: :func:`nuclei_per_polygon` column → the sub-spot feature's name. ``nuclei:intensity`` (mean normalised
#: nuclear stain) only comes with nuclei detected on the image; labels and outlines carry no intensity.
NUCLEI_FEATURES = {
    "n_nuclei": "nuclei:count",
    "nuclei_per_um2": "nuclei:density",
    "area_um2_mean": "nuclei:area_mean",
    "area_um2_sd": "nuclei:area_sd",
    "eccentricity_mean": "nuclei:eccentricity",
    "intensity_mean": "nuclei:intensity",
}

#: edge (px) of the tiles in which a labels raster is read
_LABELS_TILE = 4096
#: pixels read beyond the spots' window on each side (a label cut by the window edge lies outside every
#: sub-spot as long as it is smaller than this)
_LABELS_MARGIN = 256
#: polygons whose moments are computed at a time (bounded temporary memory)
_POLYGON_CHUNK = 200_000


@dataclass(frozen=True)
class SubspotNuclei:
    """Nucleus features of the sub-spots of one :class:`~soscope.geometry.SubspotLayout`.

    Attributes
    ----------
    values
        ``(M, D)`` float32 in layout order: count, density (nuclei per µm²), nuclear area mean and sd (µm²),
        mean eccentricity and (detection only) mean intensity; the statistics of a sub-spot without nuclei
        are NaN.
    names
        The ``D`` feature names (values of :data:`NUCLEI_FEATURES`).
    counts
        ``(M,)`` float32 nuclei whose centroid lies in each sub-spot; NaN (and NaN features) for a sub-spot
        whose centroid lies off the raster (labels, image) that was read: its nuclei are unknown, not 0.
    provenance
        Where the nuclei come from: ``source``, ``element``, ``coordinate_system``, ``reason``,
        ``n_nuclei`` (read over the spots' window), ``n_nuclei_in_subspots``, ``microns_per_unit`` and, for
        detection, the detector's ``parameters``.

    """

    values: np.ndarray
    names: list[str]
    counts: np.ndarray
    provenance: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------- shapes
def _polygon_moments(geoms: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, ...]:
    """``(x, y, area, eccentricity)`` of each polygon or multipolygon after ``affine`` (holes ignored)."""
    import shapely

    n = len(geoms)
    parts, part_of = shapely.get_parts(geoms, return_index=True)
    xy, ring = shapely.get_coordinates(shapely.get_exterior_ring(parts), return_index=True)
    if not len(xy):
        nan = np.full(n, np.nan)
        return nan, nan, np.zeros(n), nan
    xy = xy @ affine[:2, :2].T + affine[:2, 2]
    geom = part_of[ring]  # each vertex's geometry
    # moments about each geometry's first vertex: small numbers, no cancellation far from the origin
    first = np.zeros(n, dtype=np.int64)  # geometries without vertices keep 0: their area is 0, dropped later
    has, at = np.unique(geom, return_index=True)
    first[has] = at
    p = xy - xy[first][geom]
    same = ring[:-1] == ring[1:]  # edges of a closed ring (its last vertex repeats the first)
    r = ring[:-1][same]
    x0, y0, x1, y1 = p[:-1, 0][same], p[:-1, 1][same], p[1:, 0][same], p[1:, 1][same]
    cross = x0 * y1 - x1 * y0
    # parts may wind either way: orient each ring by the sign of its area before adding parts up
    sign = np.sign(np.bincount(r, weights=cross, minlength=len(parts)))[r]
    g = part_of[r]
    w = cross * sign
    area = np.bincount(g, weights=w, minlength=n) / 2
    sx = np.bincount(g, weights=(x0 + x1) * w, minlength=n) / 6
    sy = np.bincount(g, weights=(y0 + y1) * w, minlength=n) / 6
    sxx = np.bincount(g, weights=(x0 * x0 + x0 * x1 + x1 * x1) * w, minlength=n) / 12
    syy = np.bincount(g, weights=(y0 * y0 + y0 * y1 + y1 * y1) * w, minlength=n) / 12
    sxy = np.bincount(g, weights=(x0 * y1 + 2 * x0 * y0 + 2 * x1 * y1 + x1 * y0) * w, minlength=n) / 24
    with np.errstate(invalid="ignore", divide="ignore"):
        cx, cy = sx / area, sy / area
        vxx = np.maximum(sxx / area - cx * cx, 0.0)
        vyy = np.maximum(syy / area - cy * cy, 0.0)
        vxy = sxy / area - cx * cy
        ecc = eccentricity(vxx, vyy, vxy)
    ref = xy[first]
    return ref[:, 0] + cx, ref[:, 1] + cy, area, ecc


def _shapes_nuclei(gdf: Any, cs: str, microns_per_unit: float) -> pd.DataFrame:
    """Centroids (in ``cs``), areas (µm²) and eccentricities of the polygons or circles of ``gdf``."""
    import shapely

    affine = affine_xy(gdf, cs)
    geoms = np.asarray(gdf.geometry.values, dtype=object)
    if "radius" in gdf.columns and (shapely.get_type_id(geoms) == 0).all():
        xy = shapely.get_coordinates(geoms) @ affine[:2, :2].T + affine[:2, 2]
        area = np.pi * np.asarray(gdf["radius"], dtype=np.float64) ** 2 * abs(np.linalg.det(affine[:2, :2]))
        out = pd.DataFrame({"x": xy[:, 0], "y": xy[:, 1], "area": area, "eccentricity": 0.0})
    else:
        parts = []
        for s in range(0, len(geoms), _POLYGON_CHUNK):
            x, y, area, ecc = _polygon_moments(geoms[s : s + _POLYGON_CHUNK], affine)
            parts.append(pd.DataFrame({"x": x, "y": y, "area": np.abs(area), "eccentricity": ecc}))
        out = pd.concat(parts, ignore_index=True)
    out = out.loc[np.isfinite(out["x"]) & np.isfinite(out["y"]) & (out["area"] > 0)].reset_index(drop=True)
    out["area_um2"] = out.pop("area") * microns_per_unit**2
    return out


# ---------------------------------------------------------------------------------------------- labels
def _window(affine_px_to_cs: np.ndarray, box_cs: tuple, shape: tuple[int, int], margin: int) -> tuple:
    """``(y0, y1, x0, x1)`` pixels of a raster covering ``box_cs`` (cs x0, y0, x1, y1) plus ``margin``."""
    x0, y0, x1, y1 = box_cs
    corners = np.array([[x0, y0], [x1, y0], [x0, y1], [x1, y1]], dtype=np.float64)
    inv = np.linalg.inv(affine_px_to_cs)
    px = corners @ inv[:2, :2].T + inv[:2, 2]
    h, w = shape
    return (
        max(int(np.floor(px[:, 1].min())) - margin, 0),
        min(int(np.ceil(px[:, 1].max())) + margin, h),
        max(int(np.floor(px[:, 0].min())) - margin, 0),
        min(int(np.ceil(px[:, 0].max())) + margin, w),
    )


def _full_resolution(element: Any) -> Any:
    if hasattr(element, "children") and len(element.children):
        from spatialdata import get_pyramid_levels

        return get_pyramid_levels(element, n=0)
    return element


def _labels_nuclei(element: Any, cs: str, box_cs: tuple | None, microns_per_unit: float) -> pd.DataFrame:
    """Centroids (in ``cs``), areas (µm²) and eccentricities of the labels of a raster, tile by tile."""
    import dask.array as da
    from dask.system import CPU_COUNT

    from soscope.tiling import Remote, run_tasks

    affine = affine_xy(element, cs)
    arr = _full_resolution(element)
    data = arr.data if isinstance(arr.data, da.Array) else da.from_array(arr.data, chunks=_LABELS_TILE)
    h, w = data.shape
    y0, y1, x0, x1 = (0, h, 0, w) if box_cs is None else _window(affine, box_cs, (h, w), _LABELS_MARGIN)
    tiles = [(ty, tx) for ty in range(y0, y1, _LABELS_TILE) for tx in range(x0, x1, _LABELS_TILE)]
    parts: list[pd.DataFrame] = []

    def args(i: int) -> tuple:
        ty, tx = tiles[i]
        return data[ty : min(ty + _LABELS_TILE, y1), tx : min(tx + _LABELS_TILE, x1)], (ty, tx)

    run_tasks(
        len(tiles),
        lambda i: _labels_tile(*args(i)),
        lambda i, res: parts.append(res),
        remote=Remote(_labels_task, args),
        workers=CPU_COUNT,
        description="nuclei (labels tiles)",
    )
    sums = pd.concat(parts, ignore_index=True) if parts else pixel_sums(np.zeros((1, 1), dtype=np.int64))
    # exact integer sums: the same per label whatever the tiles and the order they finished in
    sums = sums.groupby("label", sort=True).sum().reset_index()
    stats = moment_stats(sums)
    # pixel (row i, column j) covers [j, j + 1) x [i, i + 1): its centre is (j + 0.5, i + 0.5)
    xy = np.column_stack([stats["x_px"] + 0.5, stats["y_px"] + 0.5]) @ affine[:2, :2].T + affine[:2, 2]
    pixel_area = abs(np.linalg.det(affine[:2, :2])) * microns_per_unit**2
    return pd.DataFrame(
        {
            "x": xy[:, 0],
            "y": xy[:, 1],
            "eccentricity": stats["eccentricity"].to_numpy(),
            "area_um2": stats["area_px"].to_numpy() * pixel_area,
        }
    )


def _labels_tile(window: Any, origin: tuple[int, int]) -> pd.DataFrame:
    if hasattr(window, "compute"):
        window = window.compute(scheduler="sync")  # already inside a task: no nested scheduler
    return pixel_sums(np.asarray(window), origin)


def _labels_task(_shared: Any, window: Any, origin: tuple[int, int]) -> pd.DataFrame:
    """Run the task of one labels tile on a ``dask.distributed`` worker (the runner's signature)."""
    return _labels_tile(window, origin)


# ---------------------------------------------------------------------------------------------- detection
def detection_microns_per_pixel(image: Any, cs: str, microns_per_unit: float) -> float:
    """Return the µm per full-resolution pixel of an image: the scale :func:`segment_nuclei` detects at.

    Parameters
    ----------
    image
        An image element (single- or multiscale).
    cs
        A coordinate system of the image.
    microns_per_unit
        Length in µm of one unit of ``cs``.

    Returns
    -------
    µm per pixel of the image's finest level (the square root of the pixel's area in µm²).

    """
    return float(np.sqrt(abs(np.linalg.det(affine_xy(image, cs)[:2, :2])))) * microns_per_unit


def _detection_window(
    image: Any, cs: str, box_cs: tuple | None, microns_per_unit: float, detector: NucleusDetector
) -> tuple:
    """``(array (c, y, x), affine px → cs, µm per pixel, (y0, y1, x0, x1))``: the window detection reads."""
    affine = affine_xy(image, cs)
    arr = _full_resolution(image)
    if "c" not in arr.dims:
        arr = arr.expand_dims("c")
    arr = arr.transpose("c", "y", "x")
    h, w = arr.shape[1:]
    microns_per_pixel = detection_microns_per_pixel(image, cs, microns_per_unit)
    if box_cs is None:
        window = (0, h, 0, w)
    else:
        margin = detector.halo(microns_per_pixel)  # nuclei at the window's edge see what they would whole
        window = _window(affine, box_cs, (h, w), margin)
    return arr, affine, microns_per_pixel, window


def _detected_nuclei(
    image: Any, cs: str, box_cs: tuple | None, microns_per_unit: float, detector: NucleusDetector
) -> tuple[pd.DataFrame, dict]:
    """Nuclei detected by :func:`segment_nuclei` on the window of ``image`` over ``box_cs``."""
    arr, affine, microns_per_pixel, (y0, y1, x0, x1) = _detection_window(
        image, cs, box_cs, microns_per_unit, detector
    )
    if y1 <= y0 or x1 <= x0:
        empty = pd.DataFrame(
            {c: np.zeros(0) for c in ("x", "y", "area_um2", "eccentricity", "mean_intensity")}
        )
        return empty, {}
    table = segment_nuclei(
        arr.isel(y=slice(y0, y1), x=slice(x0, x1)), microns_per_pixel=microns_per_pixel, detector=detector
    )
    xy = _px_to_cs(table, (x0, y0), affine)
    out = pd.DataFrame(
        {
            "x": xy[:, 0],
            "y": xy[:, 1],
            "area_um2": table["area_um2"].to_numpy(),
            "eccentricity": table["eccentricity"].to_numpy(),
            "mean_intensity": table["mean_intensity"].to_numpy(),
        }
    )
    return out, dict(table.attrs.get("detector", {}))


def _px_to_cs(table: pd.DataFrame, origin: tuple[int, int], affine: np.ndarray) -> np.ndarray:
    """``(N, 2)`` centroids of a :func:`segment_nuclei` table of a window at ``origin`` (x0, y0), in cs."""
    px = np.column_stack([table["x_px"] + origin[0] + 0.5, table["y_px"] + origin[1] + 0.5])
    return px @ affine[:2, :2].T + affine[:2, 2]


def _cs_to_spots(xy: np.ndarray, inv: np.ndarray) -> np.ndarray:
    """Points of the coordinate system in the spots' intrinsic coordinates (``inv``: cs → spots)."""
    return xy @ inv[:2, :2].T + inv[:2, 2]


class _TileSums:
    """Reduce one tile's detected nuclei to sums per sub-spot polygon (runs inside the tile's task).

    The sub-spots are sorted by the lower y of their bounding box once; a tile's candidates are the band
    whose boxes can reach the tile's nuclei (a binary search, then an x and y test), and shapely geometries
    are built for those only. A polygon across tiles gets sums from each; they add up.
    """

    def __init__(self, polygons: Any, origin: tuple[int, int], affine: np.ndarray, inv: np.ndarray):
        bounds = polygons.bounds()
        ok = np.flatnonzero(np.isfinite(bounds).all(axis=1))
        self.order = ok[np.argsort(bounds[ok, 1], kind="stable")]
        self.bounds = bounds[self.order]
        self.tallest = float((self.bounds[:, 3] - self.bounds[:, 1]).max()) if len(ok) else 0.0
        self.polygons, self.origin, self.affine, self.inv = polygons, origin, affine, inv

    def __call__(self, table: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, int]:
        """``(sub-spot indices, their (K, 5) sums, nuclei in the tile)``; only sub-spots with nuclei."""
        n = len(table)
        none = (np.zeros(0, dtype=np.int64), np.zeros((0, 5)), n)
        if not n or not len(self.order):
            return none
        xy = _cs_to_spots(_px_to_cs(table, self.origin, self.affine), self.inv)
        lo, hi = xy.min(axis=0), xy.max(axis=0)
        ymin = self.bounds[:, 1]
        s = np.searchsorted(ymin, lo[1] - self.tallest, side="left")
        e = np.searchsorted(ymin, hi[1], side="right")
        b = self.bounds[s:e]
        near = (b[:, 3] >= lo[1]) & (b[:, 0] <= hi[0]) & (b[:, 2] >= lo[0])
        cand = self.order[s:e][near]
        if not len(cand):
            return none
        sums = _polygon_sums(xy, _nucleus_values(table), self.polygons[cand].to_shapely())
        hit = sums[:, 0] > 0
        return cand[hit], sums[hit], n


def _detected_sums(
    image: Any,
    cs: str,
    box_cs: tuple | None,
    microns_per_unit: float,
    detector: NucleusDetector,
    polygons: Any,
    inv: np.ndarray,
) -> tuple[np.ndarray, int, dict]:
    """Per-sub-spot sums (:func:`_polygon_sums`) of the nuclei detected over ``box_cs``, tile by tile.

    The nuclei are those of :func:`_detected_nuclei` (the same detection, the same maths to the spots'
    coordinates), reduced inside each tile's task: no table of the whole slide is held. Returns
    ``(sums (M, 5), nuclei detected, the detector's record)``.
    """
    sums = np.zeros((len(polygons), 5))
    arr, affine, microns_per_pixel, (y0, y1, x0, x1) = _detection_window(
        image, cs, box_cs, microns_per_unit, detector
    )
    if y1 <= y0 or x1 <= x0:
        return sums, 0, {}
    results, record, _, _ = _detect(
        arr.isel(y=slice(y0, y1), x=slice(x0, x1)),
        microns_per_pixel=microns_per_pixel,
        detector=detector,
        reducer=_TileSums(polygons, (x0, y0), affine, inv),
    )
    n = 0
    for cand, part, count in results:
        np.add.at(sums, cand, part)
        n += count
    return sums, n, record


def _polygon_areas(polygons: Any, chunk_size: int = 100_000) -> np.ndarray:
    """Area of each polygon of a :class:`~soscope.geometry.PolygonArray` (shapely, a chunk at a time)."""
    import shapely

    out = np.zeros(len(polygons))
    for s in range(0, len(polygons), chunk_size):
        e = min(s + chunk_size, len(polygons))
        out[s:e] = shapely.area(polygons[np.arange(s, e)].to_shapely())
    return out


def _on_raster(raster: Any, cs: str, cs_to_spots: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Return whether each point (spots' intrinsic coordinates) lies on the raster's full extent."""
    import shapely

    h, w = _full_resolution(raster).shape[-2:]
    to_cs = affine_xy(raster, cs)
    corners = np.array([[0, 0], [w, 0], [w, h], [0, h]], dtype=np.float64)
    corners = corners @ to_cs[:2, :2].T + to_cs[:2, 2]
    corners = corners @ cs_to_spots[:2, :2].T + cs_to_spots[:2, 2]
    return shapely.contains_xy(shapely.Polygon(corners), xy[:, 0], xy[:, 1])


# ---------------------------------------------------------------------------------------------- entry points
def read_nuclei(
    sdata: Any,
    choice: SegmentationChoice,
    *,
    microns_per_unit: float = 1.0,
    box: tuple[float, float, float, float] | None = None,
    detector: NucleusDetector | None = None,
) -> pd.DataFrame:
    """Read the nuclei of a segmentation: one row per nucleus, centroids in the choice's coordinate system.

    Parameters
    ----------
    sdata
        The SpatialData.
    choice
        What :func:`soscope.io.find_segmentation` chose (labels, shapes, or detection on an image).
    microns_per_unit
        Length of one unit of the coordinate system in µm (for areas in µm², and the detector's sizes).
    box
        ``(x0, y0, x1, y1)`` in the coordinate system: read rasters (labels, the image) only over this window
        (plus a margin); ``None``: all of it. Outlines are read whole.
    detector
        Parameters of :func:`segment_nuclei` (default :class:`NucleusDetector`).

    Returns
    -------
    DataFrame with ``x``, ``y`` (coordinate system), ``area_um2``, ``eccentricity`` and, for detection,
    ``mean_intensity``; ``attrs["detector"]`` holds the detector's record (detection only).

    """
    if microns_per_unit <= 0 or not np.isfinite(microns_per_unit):
        raise SoscopeInputError(f"microns_per_unit must be positive, got {microns_per_unit!r}.")
    cs = choice.coordinate_system
    if choice.source == "shapes":
        return _shapes_nuclei(sdata.shapes[choice.element], cs, microns_per_unit)
    if choice.source == "labels":
        return _labels_nuclei(sdata.labels[choice.element], cs, box, microns_per_unit)
    if choice.source == "segment_nuclei":
        det = NucleusDetector() if detector is None else detector
        table, record = _detected_nuclei(sdata.images[choice.element], cs, box, microns_per_unit, det)
        table.attrs["detector"] = record or asdict(det)
        return table
    raise SoscopeInputError(f"unknown segmentation source {choice.source!r}")  # pragma: no cover


def subspot_nuclei_features(
    sdata: Any,
    choice: SegmentationChoice,
    layout: SubspotLayout,
    spots: str,
    *,
    microns_per_unit: float = 1.0,
    detector: NucleusDetector | None = None,
) -> SubspotNuclei:
    """Nucleus count, density and nuclear statistics of every sub-spot of a layout.

    A nucleus belongs to the sub-spot polygon holding its centroid (to each of several overlapping ones).

    Parameters
    ----------
    sdata
        The SpatialData.
    choice
        The segmentation of these spots (:func:`soscope.io.find_segmentation`).
    layout
        The sub-spots, in the intrinsic coordinates of ``spots`` (with their polygons).
    spots
        Name of the spots element whose transformation places ``layout`` in ``choice.coordinate_system``.
    microns_per_unit
        Length of one unit of the coordinate system in µm (areas and densities in µm; detector sizes).
    detector
        Parameters of :func:`segment_nuclei` for ``choice.source == "segment_nuclei"``.

    Returns
    -------
    :class:`SubspotNuclei`: features named ``nuclei:count``, ``nuclei:density`` (per µm²),
    ``nuclei:area_mean``, ``nuclei:area_sd`` (µm²), ``nuclei:eccentricity`` and, for detection,
    ``nuclei:intensity``; statistics are NaN in sub-spots without nuclei, everything is NaN in sub-spots
    off the raster (labels or image) that was read.

    """
    if layout.polygons is None:
        raise SoscopeInputError("the sub-spot layout carries no polygons: nuclei cannot be assigned to it")
    cs = choice.coordinate_system
    to_cs = affine_xy(sdata.shapes[spots], cs)
    bounds = layout.polygons.bounds()
    corners = np.array(
        [
            [bounds[:, 0].min(), bounds[:, 1].min()],
            [bounds[:, 2].max(), bounds[:, 1].min()],
            [bounds[:, 0].min(), bounds[:, 3].max()],
            [bounds[:, 2].max(), bounds[:, 3].max()],
        ]
    )
    corners = corners @ to_cs[:2, :2].T + to_cs[:2, 2]
    box = (corners[:, 0].min(), corners[:, 1].min(), corners[:, 0].max(), corners[:, 1].max())
    inv = np.linalg.inv(to_cs)
    unit = microns_per_unit * float(np.sqrt(abs(np.linalg.det(to_cs[:2, :2]))))  # µm per intrinsic unit
    if choice.source == "segment_nuclei":
        # detection: reduced to per-sub-spot sums inside each tile (no table of every nucleus of the slide)
        if microns_per_unit <= 0 or not np.isfinite(microns_per_unit):
            raise SoscopeInputError(f"microns_per_unit must be positive, got {microns_per_unit!r}.")
        det = NucleusDetector() if detector is None else detector
        image = sdata.images[choice.element]
        sums, n_read, record = _detected_sums(image, cs, box, microns_per_unit, det, layout.polygons, inv)
        stats = _polygon_stats(sums, _polygon_areas(layout.polygons), unit)
        record = record or asdict(det)
        has_intensity = True
    else:
        nuclei = read_nuclei(sdata, choice, microns_per_unit=microns_per_unit, box=box, detector=detector)
        # centroids into the spots' intrinsic coordinates, where the sub-spot polygons are
        xy = _cs_to_spots(nuclei[["x", "y"]].to_numpy(np.float64), inv)
        local = nuclei.drop(columns=["x", "y"]).assign(x=xy[:, 0], y=xy[:, 1])
        stats = nuclei_per_polygon(local, layout.polygons, xy_columns=("x", "y"), microns_per_unit=unit)
        n_read, record, has_intensity = len(nuclei), None, "mean_intensity" in nuclei
    columns = [c for c in NUCLEI_FEATURES if c != "intensity_mean" or has_intensity]
    values = stats[columns].to_numpy(np.float32)
    counts = stats["n_nuclei"].to_numpy(np.float32)
    if choice.source in ("labels", "segment_nuclei"):
        # off the raster nothing was seen: unknown (NaN, imputed at the mean), not "no nuclei"
        raster = sdata.labels[choice.element] if choice.source == "labels" else sdata.images[choice.element]
        off = ~_on_raster(raster, cs, inv, layout.centroid)
        values[off] = np.nan
        counts[off] = np.nan
    provenance: dict[str, Any] = {
        "source": choice.source,
        "element": choice.element,
        "coordinate_system": cs,
        "reason": choice.reason,
        "n_nuclei": int(n_read),
        "n_nuclei_in_subspots": int(np.nansum(counts)),
        "microns_per_unit": float(microns_per_unit),
    }
    if choice.source == "segment_nuclei":
        provenance["parameters"] = dict(record)
    logger.info(
        "nuclei from %s: %d read, %d in %d sub-spots",
        choice.describe(),
        n_read,
        np.nansum(counts),
        len(counts),
    )
    return SubspotNuclei(
        values=values,
        names=[NUCLEI_FEATURES[c] for c in columns],
        counts=counts,
        provenance=provenance,
    )


def drop_unresolved_detections(
    sdata: Any,
    choices: dict[str, SegmentationChoice | None],
    microns_per_unit: float,
    segmentation: str | None = "auto",
) -> dict[str, str]:
    """Drop (in place) the nucleus detections ``"auto"`` chose on images too coarse to show nuclei.

    A nucleus under :attr:`~soscope.features.NucleusDetector.min_pixels_per_diameter` pixels across is not
    resolved: detection there finds texture, not nuclei (on a Visium-like H&E at 2.8 µm per pixel, 15
    "nuclei" per 35 µm sub-spot), and it is the costliest step of a whole slide's set-up. A detection the
    user asked for (``segmentation="segment_nuclei"``) runs, with a warning.

    Parameters
    ----------
    sdata
        The SpatialData.
    choices
        What :func:`soscope.io.find_segmentation` returned (changed in place).
    microns_per_unit
        Length in µm of one unit of the coordinate systems (the platform's, as enhancing uses).
    segmentation
        The ``segmentation=`` setting the choices were made for: ``"segment_nuclei"`` keeps them.

    Returns
    -------
    Spots element → why its detection was dropped.

    """
    from soscope.io import SEGMENT_NUCLEI

    detector = NucleusDetector()
    dropped = {}
    for spots, choice in choices.items():
        if choice is None or choice.source != SEGMENT_NUCLEI:
            continue
        image = sdata.images[choice.element]
        mpp = detection_microns_per_pixel(image, choice.coordinate_system, microns_per_unit)
        if detector.resolves(mpp):
            continue
        why = (
            f"image '{choice.element}' has {mpp:.3g} µm per pixel: a {detector.nucleus_diameter_um:g} µm "
            f"nucleus spans {detector.nucleus_diameter_um / mpp:.1f} px, fewer than the "
            f"{detector.min_pixels_per_diameter:g} px the detector resolves"
        )
        if segmentation == SEGMENT_NUCLEI:
            logger.warning("segmentation='segment_nuclei', spots '%s': %s; nuclei unreliable.", spots, why)
            continue
        logger.warning(
            "segmentation='auto': no nuclei for spots '%s' (%s). Give the full-resolution image, or a "
            "segmentation with `segmentation=`.",
            spots,
            why,
        )
        choices[spots] = None
        dropped[spots] = why
    return dropped
