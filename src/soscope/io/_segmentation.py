"""Which segmentation gives the nuclei under each spots element: ``segmentation=`` resolved against the data.

A segmentation is what soscope counts nuclei from (see :func:`soscope.features.subspot_nuclei_features`):

* a **labels** element (a raster of nucleus or cell ids, e.g. Xenium's ``nucleus_labels``);
* a **shapes** element of nucleus or cell outlines (Xenium's ``nucleus_boundaries`` / ``cell_boundaries``,
  sopa's ``cellpose_boundaries`` / ``stardist_boundaries``, circles of cells): each polygon's centroid is a
  nucleus;
* **segment_nuclei**: nuclei detected on the spots' image by :func:`soscope.features.segment_nuclei`.

``segmentation="auto"`` looks, for each spots element, at the labels and the shapes named like cells or nuclei
that lie in the spots' coordinate system and overlap them (shapes also smaller than a spot), and takes nuclei
before cells; outlines before rasters (the same nuclei, far cheaper to read) and rasters before circles. When
exactly one candidate is best it is used; when none is there (or several tie), the nuclei are detected on the
image, and without an image there are none.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from soscope._constants import SoscopeKeys
from soscope._errors import SoscopeInputError
from soscope._transforms import affine_xy
from soscope.io._select import _cover, _extent_box, _named_alike
from soscope.io._validate import _fmt_list, coordinate_systems_of, element_type, is_soscope_output

__all__ = ["AUTO", "SEGMENT_NUCLEI", "SegmentationChoice", "find_segmentation"]

logger = logging.getLogger("soscope")

#: ``segmentation=`` value: use a segmentation element when one is unambiguous, else detect nuclei
AUTO = "auto"
#: ``segmentation=`` value (and ``SegmentationChoice.source``): detect nuclei on the spots' image
SEGMENT_NUCLEI = "segment_nuclei"

#: names of elements outlining nuclei (Xenium ``nucleus_*``, sopa's StarDist output)
_NUCLEUS_NAME = re.compile(r"nucle|stardist", re.IGNORECASE)
#: names of elements outlining cells (Xenium ``cell_*``, sopa's ``cellpose_boundaries``, Baysor, Proseg, ...)
_CELL_NAME = re.compile(r"cell|boundar|baysor|proseg|comseg|segment", re.IGNORECASE)
#: labels named like annotations of regions rather than of cells (never picked by "auto")
_REGION_NAME = re.compile(r"tissue|region|domain|annotat|patch|roi\b", re.IGNORECASE)
#: why "auto" took a candidate of each rank
_RANK_REASON = ("named like nuclei", "named like cells", "the labels element over the spots")


@dataclass(frozen=True)
class SegmentationChoice:
    """Where the nuclei under one spots element come from.

    Attributes
    ----------
    source
        ``"labels"``, ``"shapes"`` or ``"segment_nuclei"`` (detection on an image).
    element
        The labels or shapes element; for ``"segment_nuclei"`` the image.
    coordinate_system
        The coordinate system in which the element is placed on the spots.
    reason
        Why this one (shown by ``soscope info``, logged, and kept in ``uns["soscope"]["segmentation"]``).
    candidates
        The segmentation elements ``"auto"`` found for these spots (best first; empty when one was named).

    """

    source: Literal["labels", "shapes", "segment_nuclei"]
    element: str
    coordinate_system: str
    reason: str
    candidates: tuple[str, ...] = ()

    def describe(self) -> str:
        """One line for people: ``"shapes 'nucleus_boundaries' (named like nuclei)"``."""
        if self.source == SEGMENT_NUCLEI:
            return f"segment_nuclei on image '{self.element}' ({self.reason})"
        return f"{self.source} '{self.element}' ({self.reason})"


def _check_value(segmentation: Any) -> str | None:
    if segmentation is None:
        return None
    if not isinstance(segmentation, str) or not segmentation.strip():
        raise SoscopeInputError(
            f"segmentation={segmentation!r}: pass 'auto', 'segment_nuclei', the name of a labels element or "
            "of a shapes element of nucleus/cell outlines, or None (no nuclei)."
        )
    value = segmentation.strip()
    return value.lower() if value.lower() in (AUTO, SEGMENT_NUCLEI) else value


def _segmentation_elements(sdata: Any) -> list[str]:
    """Every labels element and every shapes element named like nuclei or cells (for messages)."""
    shapes = [n for n in sdata.shapes if _NUCLEUS_NAME.search(n) or _CELL_NAME.search(n)]
    return [*sdata.labels, *shapes]


def _truth_regions(sdata: Any) -> set[str]:
    out: set[str] = set()
    for t in sdata.tables.values():
        if t.uns.get(SoscopeKeys.TRUTH, False):
            region = (t.uns.get("spatialdata_attrs") or {}).get("region", [])
            out |= {region} if isinstance(region, str) else {str(r) for r in region}
    return out


def _median_area(gdf: Any, cs: str, rows: int) -> float:
    """Median area (in ``cs`` units²) of the first ``rows`` polygons or circles of a shapes element."""
    import shapely

    head = gdf.iloc[:rows]
    geoms = np.asarray(head.geometry.values, dtype=object)
    if "radius" in head.columns and (shapely.get_type_id(geoms) == 0).all():
        area = np.pi * np.asarray(head["radius"], dtype=np.float64) ** 2
    else:
        area = shapely.area(geoms)
    det = abs(np.linalg.det(affine_xy(gdf, cs)[:2, :2]))
    return float(np.median(area) * det) if len(area) else float("nan")


def _is_2d_labels(element: Any) -> bool:
    if hasattr(element, "children") and len(element.children):
        from spatialdata import get_pyramid_levels

        element = get_pyramid_levels(element, n=0)
    return tuple(getattr(element, "dims", ())) == ("y", "x")


def _check_shapes_geometry(sdata: Any, name: str) -> None:
    import shapely

    gdf = sdata.shapes[name]
    if len(gdf) == 0:
        raise SoscopeInputError(f"segmentation='{name}' is an empty shapes element: it holds no nuclei.")
    types = set(np.unique(shapely.get_type_id(np.asarray(gdf.geometry.values, dtype=object))).tolist())
    circles = types == {0} and "radius" in gdf.columns
    if not circles and not types <= {3, 6}:  # Polygon, MultiPolygon
        raise SoscopeInputError(
            f"segmentation='{name}' holds geometries of types {sorted(types)}; a segmentation needs polygons "
            "(nucleus or cell outlines) or circles (points with a `radius` column)."
        )


def _check_named(sdata: Any, name: str, spots: Sequence[str]) -> Literal["labels", "shapes"]:
    """Raise unless ``name`` is a labels or shapes element usable as a segmentation; return its type."""
    etype = element_type(sdata, name)
    candidates = _fmt_list(_segmentation_elements(sdata))
    if etype is None:
        raise SoscopeInputError(
            f"segmentation='{name}': there is no element of that name in the SpatialData. Pass a labels "
            f"element or a shapes element of nucleus/cell outlines (candidates: {candidates}), 'auto', "
            "'segment_nuclei' (detect nuclei on the image) or None."
        )
    if etype == "images":
        raise SoscopeInputError(
            f"segmentation='{name}' is an image, not a segmentation: to detect nuclei on an image pass "
            "segmentation='segment_nuclei' (the image is the spots' image; choose it with `image=`)."
        )
    if etype not in ("labels", "shapes"):
        kind = {"tables": "a table", "points": "a points element"}.get(etype, etype)
        raise SoscopeInputError(
            f"segmentation='{name}' is {kind}, not a segmentation: pass a labels element or a shapes "
            f"element of nucleus/cell outlines (candidates: {candidates}), 'auto' or None."
        )
    if name in spots:
        raise SoscopeInputError(
            f"segmentation='{name}' is the spots element itself: pass the nucleus or cell outlines "
            f"(candidates: {candidates}), 'auto' or None."
        )
    if is_soscope_output(sdata, name):
        raise SoscopeInputError(
            f"segmentation='{name}' was written by soscope (sub-spots), not a segmentation: pass the nucleus "
            f"or cell outlines (candidates: {candidates}), 'auto' or None."
        )
    if etype == "labels" and not _is_2d_labels(sdata.labels[name]):
        raise SoscopeInputError(
            f"segmentation='{name}' is not a 2-D labels element (dims y, x): project it to 2-D first."
        )
    if etype == "shapes":
        _check_shapes_geometry(sdata, name)
    return etype  # type: ignore[return-value]


def _candidates(sdata: Any, spots: str, cs: str, exclude: set[str]) -> list[tuple[int, int, str, str]]:
    """Return ``(rank, kind order, source, name)`` of the segmentations under ``spots`` in ``cs``, best first.

    Rank 0: named like nuclei; 1: like cells; 2: other labels. At equal rank: outlines (polygons), then
    labels, then circles (a cell drawn as a circle is the crudest stand-in).
    """
    import shapely

    from soscope.geometry import spot_footprints

    spots_gdf = sdata.shapes[spots]

    @functools.cache
    def spots_box() -> tuple[float, float, float, float]:
        # only when there is a candidate: the extent of a whole slide's spots takes seconds
        return _extent_box(spots_gdf, cs)

    @functools.cache
    def spot_area() -> float:
        area = float(np.median(shapely.area(spot_footprints(spots_gdf.iloc[:2000]))))
        return area * abs(np.linalg.det(affine_xy(spots_gdf, cs)[:2, :2]))

    found = []
    for name, element in sdata.labels.items():
        if name in exclude or _REGION_NAME.search(name) or cs not in coordinate_systems_of(element):
            continue
        if not _is_2d_labels(element) or _cover(spots_box(), _extent_box(element, cs)) <= 0:
            continue
        rank = 0 if _NUCLEUS_NAME.search(name) else 1 if _CELL_NAME.search(name) else 2
        found.append((rank, 1, "labels", name))
    for name, gdf in sdata.shapes.items():
        if name in exclude or len(gdf) == 0 or cs not in coordinate_systems_of(gdf):
            continue
        rank = 0 if _NUCLEUS_NAME.search(name) else 1 if _CELL_NAME.search(name) else None
        if rank is None:
            continue
        try:
            _check_shapes_geometry(sdata, name)
        except SoscopeInputError:
            continue
        # outlines smaller than a spot (not other spots, sections or annotated regions) that overlap the spots
        if not _median_area(gdf, cs, 500) < spot_area() or _cover(spots_box(), _extent_box(gdf, cs)) <= 0:
            continue
        circles = "radius" in gdf.columns and bool(
            (shapely.get_type_id(gdf.geometry.values[:500]) == 0).all()
        )
        found.append((rank, 2 if circles else 0, "shapes", name))
    return sorted(found)


def find_segmentation(
    sdata: Any, selection: Any, segmentation: str | None = AUTO
) -> dict[str, SegmentationChoice | None]:
    """Resolve ``segmentation=`` for each selected spots element.

    Parameters
    ----------
    sdata
        The SpatialData.
    selection
        The :class:`~soscope.io.Selection` of table, spots and images (from :func:`soscope.io.select`).
    segmentation
        ``"auto"`` (see the module docstring), ``"segment_nuclei"`` (detect nuclei on each spots element's
        image), the name of a labels element or of a shapes element of nucleus/cell outlines, or ``None``.

    Returns
    -------
    Spots element → its :class:`SegmentationChoice`, or ``None`` where there are no nuclei to count.

    Raises
    ------
    SoscopeInputError
        A name that is not in the SpatialData, names another kind of element (a table, an image, points,
        the spots themselves, a soscope output), or is not in the spots' coordinate system;
        ``"segment_nuclei"`` without an image.

    """
    value = _check_value(segmentation)
    spots = list(selection.spots)
    if value is None:
        return dict.fromkeys(spots)
    if value == SEGMENT_NUCLEI:
        if not selection.has_image:
            raise SoscopeInputError(
                "segmentation='segment_nuclei' detects nuclei on the spots' image, but no image is used: "
                "pass `image=` (not image=False), or name a labels/shapes segmentation, or None."
            )
        return {
            s: None
            if selection.image_of(s) is None
            else SegmentationChoice(
                SEGMENT_NUCLEI, selection.image_of(s), selection.coordinate_system_of(s), "asked for"
            )
            for s in spots
        }
    if value != AUTO:
        etype = _check_named(sdata, value, spots)
        out: dict[str, SegmentationChoice | None] = {}
        element = getattr(sdata, etype)[value]
        for s in spots:
            cs = selection.coordinate_system_of(s)
            if cs not in coordinate_systems_of(element):
                raise SoscopeInputError(
                    f"segmentation='{value}' is in the coordinate systems "
                    f"{_fmt_list(coordinate_systems_of(element))} but the spots '{s}' are used in '{cs}': "
                    "register it there (`spatialdata.transformations.set_transformation`), or pass 'auto'."
                )
            out[s] = SegmentationChoice(etype, value, cs, "named by segmentation=")
        return out

    exclude = set(spots) | _truth_regions(sdata)
    exclude |= {n for n in (*sdata.shapes, *sdata.labels) if is_soscope_output(sdata, n)}
    out = {}
    for s in spots:
        cs = selection.coordinate_system_of(s)
        found = _candidates(sdata, s, cs, exclude)
        names = tuple(name for *_, name in found)
        best = [f for f in found if f[:2] == found[0][:2]] if found else []
        if len(best) > 1:  # several alike (e.g. sections side by side): the one named like the spots
            alike = set(_named_alike(s, [name for *_, name in best]))
            best = [f for f in best if f[3] in alike]
        if len(best) == 1:
            rank, _, source, name = best[0]
            out[s] = SegmentationChoice(source, name, cs, _RANK_REASON[rank], names)  # type: ignore[arg-type]
            continue
        if best:
            logger.warning(
                "segmentation='auto': several segmentations fit the spots '%s' (%s); %s. Pass "
                "`segmentation=` one of them.",
                s,
                ", ".join(repr(n) for *_, n in best),
                "nuclei are detected on the image instead" if selection.image_of(s) else "none is used",
            )
        image = selection.image_of(s)
        if image is None:
            out[s] = None
            continue
        why = "several segmentations fit" if best else "no segmentation element over the spots"
        out[s] = SegmentationChoice(SEGMENT_NUCLEI, image, cs, why, names)
    return out
