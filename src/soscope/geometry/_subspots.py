"""Splitting spots into sub-spots: hexagonal lattice cells (hex7, rings:N), square grids, or given cells.

Everything is vectorised over spots with shapely 2 / numpy; Python loops run only over the K sub-spot
positions of a template (or the K*K grid positions).

Conventions
-----------
* Circles are Point geometries with a ``radius`` column (spatialdata's convention); anything else must
  be Polygon (or MultiPolygon) geometry. Coordinates are the spots' intrinsic ones.
* The *lattice cell* of a spot is the Voronoi cell of an ideal lattice around its centre: on a hexagonal
  lattice a regular hexagon with inradius ``spacing / 2`` whose flat sides face the 6 neighbours (area
  ``sqrt(3) / 2 * spacing**2``); on a square lattice a square of side ``spacing`` whose sides face the 4
  neighbours. The lattice orientation is estimated once per call from the directions between
  neighbouring centres (the phase of the 6-fold, resp. 4-fold, bond-orientational order parameter), so
  rotated slides and pixel coordinates work; with no clear order the cell is axis aligned.
* The *footprint* of a spot is what it measured: the circle for circles, the polygon itself otherwise.
  Footprint weights of generated parts against circles are exact (analytic disc & polygon area, in
  numpy); ``"cells"`` layouts and polygon spots use shapely intersections, circles there being 128-gons
  scaled to the circle's exact area (:func:`spot_footprints`).
"""

from __future__ import annotations

import re
from collections.abc import Collection

import geopandas as gpd
import numpy as np
import shapely
from scipy.spatial import cKDTree

from soscope._errors import SoscopeInputError
from soscope.geometry._graph import lattice_spacing
from soscope.geometry._layout import SubspotLayout
from soscope.geometry._polygons import PolygonArray

__all__ = ["make_subspots", "parse_subspot_scheme", "spot_centres", "spot_footprints"]

#: quarter-circle segments of a circle polygon: 4 * 32 = 128 segments per circle
_CIRCLE_QUAD_SEGS = 32
_MAX_GRID = 16
_MAX_RINGS = 6
#: neighbours are searched within this multiple of the spacing when estimating the lattice orientation
_NEIGHBOUR_SLACK = 1.25
#: order-parameter magnitude above which a lattice orientation is trusted / a lattice counts as hexagonal
ORDER_MIN = 0.5
#: Visium: 55 um spots on a 100 um lattice; used only to guess the spacing of a single circle
_VISIUM_SPACING_PER_DIAMETER = 100.0 / 55.0

_VALID = (
    f'"auto", "hex7", "rings:N" (N = 1..{_MAX_RINGS}), "grid:K" (K = 1..{_MAX_GRID}), '
    '"cells" / "cells:<name>" (with `cells=`), or the name of a shapes element holding cells'
)


# --------------------------------------------------------------------------------------------- inputs
def spot_kind(spots: gpd.GeoDataFrame, what: str = "spots") -> str:
    """``"circles"`` or ``"polygons"``; raises on anything else."""
    if not isinstance(spots, gpd.GeoDataFrame | gpd.GeoSeries):
        raise SoscopeInputError(f"`{what}` must be a geopandas GeoDataFrame; got {type(spots).__name__}.")
    if len(spots) == 0:
        raise SoscopeInputError(f"`{what}` is empty: there is nothing to split.")
    geoms = np.asarray(spots.geometry.values, dtype=object)
    missing = shapely.is_missing(geoms) | shapely.is_empty(geoms)
    if missing.any():
        raise SoscopeInputError(
            f"`{what}` has {int(missing.sum())} missing or empty geometries (index e.g. "
            f"{list(spots.index[missing][:5])}); drop those rows first (`gdf = gdf[~gdf.is_empty]`)."
        )
    types = set(np.unique(shapely.get_type_id(geoms)).tolist())
    if types == {0}:  # Point
        if not isinstance(spots, gpd.GeoDataFrame) or "radius" not in spots.columns:
            raise SoscopeInputError(
                f"`{what}` are points without a `radius` column; spatialdata circles need one "
                "(e.g. `gdf['radius'] = 27.5`)."
            )
        r = np.asarray(spots["radius"], dtype=np.float64)
        bad = ~(np.isfinite(r) & (r > 0))
        if bad.any():
            raise SoscopeInputError(
                f"`{what}['radius']` must be positive and finite, but {int(bad.sum())} of {len(r)} are not "
                f"(index e.g. {list(spots.index[bad][:5])}): fix the radii or drop those rows first."
            )
        return "circles"
    if types <= {3, 6}:  # Polygon, MultiPolygon
        area = shapely.area(geoms)
        invalid = ~shapely.is_valid(geoms)  # e.g. a bow-tie: signed areas cancel, its repaired form has area
        area[invalid] = shapely.area(shapely.make_valid(geoms[invalid]))
        flat = ~(np.isfinite(area) & (area > 0))
        if flat.any():
            raise SoscopeInputError(
                f"{int(flat.sum())} of {len(geoms)} polygons of `{what}` have no area (degenerate: index "
                f"e.g. {list(spots.index[flat][:5])}), so they cannot be split; drop or fix them first "
                "(`gdf = gdf[gdf.area > 0]`)."
            )
        return "polygons"
    names = sorted(shapely.GeometryType(t).name for t in types)
    raise SoscopeInputError(
        f"`{what}` mixes or uses unsupported geometry types {names}; use circles (Point + `radius`) or "
        "polygons."
    )


def spot_centres(spots: gpd.GeoDataFrame) -> np.ndarray:
    """``(N, 2)`` float64 spot centres: the points of circles, the centroids of polygons."""
    spot_kind(spots)
    xy = shapely.get_coordinates(shapely.centroid(np.asarray(spots.geometry.values, dtype=object)))
    if not np.isfinite(xy).all():
        raise SoscopeInputError("Spot coordinates contain NaN or infinite values; drop those spots.")
    return xy


def _circle_polygons(xy: np.ndarray, radius: np.ndarray) -> np.ndarray:
    """Circles as 128-gons scaled so that each polygon's area is exactly ``pi * r**2``.

    Scaling (instead of inscribing) keeps total overlap areas unbiased, so footprint weights of parts
    that tile a cell sum to the circle's true area.
    """
    n_seg = 4 * _CIRCLE_QUAD_SEGS
    scale = np.sqrt(2.0 * np.pi / (n_seg * np.sin(2.0 * np.pi / n_seg)))
    return shapely.buffer(
        shapely.points(xy), np.asarray(radius, dtype=np.float64) * scale, quad_segs=_CIRCLE_QUAD_SEGS
    )


def spot_footprints(spots: gpd.GeoDataFrame) -> np.ndarray:
    """``(N,)`` object array of polygons: the area each spot measured.

    Circles become 128-gons with the circle's exact area; polygons are returned as they are (invalid
    ones repaired with ``buffer(0)``).
    """
    kind = spot_kind(spots)
    geoms = np.asarray(spots.geometry.values, dtype=object)
    if kind == "circles":
        return _circle_polygons(shapely.get_coordinates(geoms), np.asarray(spots["radius"], dtype=np.float64))
    return _repair(geoms)


def _repair(geoms: np.ndarray) -> np.ndarray:
    geoms = np.array(geoms, dtype=object)
    bad = ~shapely.is_valid(geoms)
    if bad.any():
        geoms[bad] = shapely.buffer(geoms[bad], 0)
    return geoms


# -------------------------------------------------------------------------------------------- lattice
def lattice_orientation(xy: np.ndarray, spacing: float) -> dict[str, float]:
    """Phases and magnitudes of the 6- and 4-fold bond-orientational order of neighbouring centres.

    ``theta6`` is the direction of one hexagonal-lattice neighbour (mod 60 deg), ``theta4`` that of a
    square-lattice neighbour (mod 90 deg); ``psi6`` / ``psi4`` in [0, 1] say how well they fit.
    """
    out = {"theta6": 0.0, "psi6": 0.0, "theta4": 0.0, "psi4": 0.0}
    if len(xy) < 2:
        return out
    sample = xy if len(xy) <= 20000 else xy[np.linspace(0, len(xy) - 1, 20000).astype(np.int64)]
    kk = min(7, len(xy))
    dist, nbr = cKDTree(xy).query(sample, k=kk, distance_upper_bound=_NEIGHBOUR_SLACK * spacing)
    dist, nbr = dist.reshape(len(sample), kk), nbr.reshape(len(sample), kk)
    ok = np.isfinite(dist) & (dist > 0)
    if not ok.any():
        return out
    d = xy[nbr[ok]] - np.repeat(sample, kk, axis=0).reshape(len(sample), kk, 2)[ok]
    ang = np.arctan2(d[:, 1], d[:, 0])
    for fold in (6, 4):
        z = np.exp(1j * fold * ang).mean()
        out[f"theta{fold}"] = float(np.angle(z) / fold)
        out[f"psi{fold}"] = float(abs(z))
    return out


def _is_hex(order: dict[str, float]) -> bool:
    return order["psi6"] >= ORDER_MIN and order["psi6"] > order["psi4"]


def _resolve_spacing(spots: gpd.GeoDataFrame, kind: str, xy: np.ndarray, spacing: float | None) -> float:
    if spacing is not None:
        if not (np.isfinite(spacing) and spacing > 0):
            raise SoscopeInputError(f"`spacing` must be a positive number; got {spacing!r}.")
        return float(spacing)
    if len(xy) >= 2:
        return lattice_spacing(xy)
    # a single spot: no neighbours to measure; guess from its own size (documented in make_subspots)
    if kind == "circles":
        return float(2.0 * np.asarray(spots["radius"], dtype=np.float64)[0] * _VISIUM_SPACING_PER_DIAMETER)
    return float(np.sqrt(shapely.area(np.asarray(spots.geometry.values, dtype=object))[0]))


def _hex_templates(n_rings: int, spacing: float, theta: float) -> list[np.ndarray]:
    """Return closed rings (local coordinates) of the ``1 + 3 N (N + 1)`` equal parts of a hex cell.

    Concentric hexagons with circumradii ``R_j = R * sqrt((1 + 3 j (j+1)) / (1 + 3 N (N+1)))`` bound the
    centre (j = 0) and rings j = 1..N. Ring j is cut along the 6 vertex rays into trapezoids, one facing
    each neighbour, and each trapezoid into j pieces by joining equally spaced points of its inner and
    outer sides; these pieces all have the same area, so every part has area ``cell / (1 + 3 N (N+1))``.
    Order: centre, then ring by ring, counter-clockwise, starting with the piece(s) facing the neighbour
    at angle ``theta``.
    """
    n_parts = 1 + 3 * n_rings * (n_rings + 1)
    big_r = spacing / np.sqrt(3.0)  # circumradius of the cell (inradius spacing / 2)
    # vertex m sits between the neighbour directions theta + 60 (m-1) and theta + 60 m
    phi = theta - np.pi / 6 + np.pi / 3 * np.arange(6)
    unit = np.stack([np.cos(phi), np.sin(phi)], axis=1)
    unit = np.vstack([unit, unit[:1]])  # (7, 2): vertex 6 is vertex 0, bit for bit
    radii = big_r * np.sqrt((1 + 3 * np.arange(n_rings + 1) * (np.arange(n_rings + 1) + 1)) / n_parts)
    parts = [np.vstack([radii[0] * unit[:6], radii[0] * unit[:1]])]
    for j in range(1, n_rings + 1):
        inner, outer = radii[j - 1] * unit, radii[j] * unit
        for m in range(6):
            # (1 - t) a + t b reproduces the end points exactly, so neighbouring pieces share vertices
            t = np.arange(j + 1)[:, None] / j
            a = (1 - t) * inner[m] + t * inner[m + 1]
            b = (1 - t) * outer[m] + t * outer[m + 1]
            for p in range(j):
                parts.append(np.stack([a[p], b[p], b[p + 1], a[p + 1], a[p]]))  # counter-clockwise
    return parts


def _hex_cell_template(spacing: float, theta: float) -> np.ndarray:
    return _hex_templates(0, spacing, theta)[0]


def _square_cell_corners(xy: np.ndarray, spacing: float, theta: float) -> np.ndarray:
    """``(N, 4, 2)`` counter-clockwise corners of the square lattice cells (sides facing neighbours)."""
    h = spacing / 2.0
    local = np.array([[-h, -h], [h, -h], [h, h], [-h, h]])
    c, s = np.cos(theta), np.sin(theta)
    local = local @ np.array([[c, s], [-s, c]])  # rotate by theta
    return xy[:, None, :] + local[None]


def _ring_stats(rings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Area and centroid of closed rings ``(..., nv, 2)`` (shoelace; any orientation)."""
    x, y = rings[..., :-1, 0], rings[..., :-1, 1]
    xn, yn = rings[..., 1:, 0], rings[..., 1:, 1]
    cross = x * yn - xn * y
    signed = 0.5 * cross.sum(-1)
    cx = ((x + xn) * cross).sum(-1) / (6.0 * signed)
    cy = ((y + yn) * cross).sum(-1) / (6.0 * signed)
    return np.abs(signed), np.stack([cx, cy], axis=-1)


def _circle_overlap(rings: np.ndarray, radius: np.ndarray) -> np.ndarray:
    """Exact area of ``polygon & disc`` for closed rings ``(N, nv, 2)`` relative to the discs' centres.

    Sum over edges of the signed area of disc & triangle(centre, p, q): the edge is split where it
    crosses the circle; pieces inside contribute a triangle, pieces outside a circular sector.
    """
    p, q = rings[:, :-1], rings[:, 1:]
    r2 = (np.asarray(radius, dtype=np.float64) ** 2).reshape(-1, 1)
    d = q - p
    a = (d * d).sum(-1)
    b = 2.0 * (p * d).sum(-1)
    c = (p * p).sum(-1) - r2
    disc = b * b - 4.0 * a * c
    hit = (disc > 0) & (a > 0)
    root = np.sqrt(np.where(hit, disc, 0.0))
    den = np.where(hit, 2.0 * a, 1.0)
    # no crossing: t1 = t2 = 0, so the whole edge is one sector (it lies outside the circle)
    t1 = np.where(hit, np.clip((-b - root) / den, 0.0, 1.0), 0.0)[..., None]
    t2 = np.where(hit, np.clip((-b + root) / den, 0.0, 1.0), 0.0)[..., None]
    u, v = p + t1 * d, p + t2 * d

    def cross(s: np.ndarray, t: np.ndarray) -> np.ndarray:
        return s[..., 0] * t[..., 1] - s[..., 1] * t[..., 0]

    def sector(s: np.ndarray, t: np.ndarray) -> np.ndarray:
        return 0.5 * r2 * np.arctan2(cross(s, t), (s * t).sum(-1))

    signed = sector(p, u) + 0.5 * cross(u, v) + sector(v, q)
    return np.abs(signed.sum(-1))


def _parts_layout(
    xy: np.ndarray,
    parts: list[tuple[np.ndarray, np.ndarray]],
    scheme: str,
    *,
    radius: np.ndarray | None = None,
    footprints: np.ndarray | None = None,
) -> SubspotLayout:
    """Layout from K generated parts per spot, each ``(absolute rings (N, nv, 2) or None, local rings)``.

    Absolute rings ``None``: the spot centre plus the local rings. Local rings are relative to the spot
    centre (``(1, nv, 2)`` when shared by all spots): areas,
    centroids and circle overlaps come from them in numpy, exactly and without cancellation in large
    pixel coordinates. Weights: exact circle overlap with ``radius``, shapely intersection with polygon
    ``footprints``, or 1 when neither is given (parts that tile their own spot).
    """
    n, k = len(xy), len(parts)
    if all(ring is None for ring, _ in parts):
        polygons = PolygonArray.from_rings([local for _, local in parts], origin=xy)
    else:
        polygons = PolygonArray.from_rings([ring for ring, _ in parts])
    area = np.empty((n, k))
    centroid = np.empty((n, k, 2))
    weight = np.ones((n, k))
    for col, (_, local) in enumerate(parts):
        a, c = _ring_stats(local)
        area[:, col], centroid[:, col] = a, xy + c
        if radius is not None and len(local) == 1:  # parts shared by all spots: once per distinct radius
            radii, which = np.unique(radius, return_inverse=True)
            overlap = _circle_overlap(np.broadcast_to(local, (len(radii), *local.shape[1:])), radii)
            weight[:, col] = overlap[which.ravel()] / a
        elif radius is not None:
            weight[:, col] = _circle_overlap(np.broadcast_to(local, (n, *local.shape[1:])), radius) / a
    spot_index = np.repeat(np.arange(n, dtype=np.int64), k)
    area, weight = area.ravel(), weight.ravel()
    if footprints is not None:
        weight = shapely.area(shapely.intersection(polygons.to_shapely(), footprints[spot_index])) / area
    return SubspotLayout(
        polygons=polygons,
        spot_index=spot_index,
        subspot=np.tile(np.arange(k, dtype=np.int32), n),
        offsets=np.arange(n + 1, dtype=np.int64) * k,
        area=area,
        footprint_weight=np.clip(weight, 0.0, 1.0),
        centroid=centroid.reshape(-1, 2),
        scheme=scheme,
    )


# ----------------------------------------------------------------------------------------------- grid
def _quad_corners(geoms: np.ndarray) -> np.ndarray:
    """``(N, 4, 2)`` corners of quadrilateral spots, counter-clockwise, starting at the min ``x + y`` one.

    Polygons with more vertices are accepted when they are rectangles (e.g. extra collinear vertices):
    their minimum rotated rectangle is used.
    """
    n = len(geoms)
    ext = shapely.get_exterior_ring(geoms)  # None for MultiPolygons
    ncoord = shapely.get_num_coordinates(ext)
    need = ncoord != 5
    if need.any():
        env = shapely.oriented_envelope(geoms[need])
        rect = np.isclose(shapely.area(env), shapely.area(geoms[need]), rtol=1e-6, atol=0)
        if not rect.all():
            raise SoscopeInputError(
                f"{int((~rect).sum())} spot polygon(s) are not quadrilaterals, so 'grid:K' cannot split "
                'them; use subspots="hex7" / "rings:N" (lattice cells around the centroids) or "cells".'
            )
        ext[need] = shapely.get_exterior_ring(env)
    xy = shapely.get_coordinates(ext).reshape(n, 5, 2)[:, :4].copy()
    x, y = xy[..., 0], xy[..., 1]
    signed = 0.5 * (x * np.roll(y, -1, axis=1) - np.roll(x, -1, axis=1) * y).sum(axis=1)
    xy[signed < 0] = xy[signed < 0, ::-1]
    e = np.roll(xy, -1, axis=1) - xy
    cross = e[..., 0] * np.roll(e[..., 1], -1, axis=1) - e[..., 1] * np.roll(e[..., 0], -1, axis=1)
    if not (cross > 0).all():
        raise SoscopeInputError(
            "Some spot polygons are degenerate or non-convex quadrilaterals; 'grid:K' needs convex "
            'squares/rectangles (or use subspots="hex7" / "rings:N" / "cells").'
        )
    start = np.argmin(xy.sum(axis=2), axis=1)
    idx = (start[:, None] + np.arange(4)[None]) % 4
    return np.take_along_axis(xy, idx[..., None], axis=1)


def _grid_parts(corners: np.ndarray, xy: np.ndarray, k: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each quadrilateral ``(N, 4, 2)`` split bilinearly into k x k parts (absolute, local rings).

    Sub-spot ``b * k + a`` has column ``a`` along corner 0 -> 1 and row ``b`` along corner 0 -> 3; for
    axis-aligned squares that is row-major with x fastest. Parallelograms give k*k equal parts. The
    absolute rings are interpolated from the absolute corners, so the corners (and the points shared
    by neighbouring spots) are reproduced bit for bit.
    """
    local = corners - xy[:, None, :]
    out = []
    for b in range(k):
        for a in range(k):
            uv = [(a / k, b / k), ((a + 1) / k, b / k), ((a + 1) / k, (b + 1) / k), (a / k, (b + 1) / k)]
            w = np.array([[(1 - u) * (1 - v), u * (1 - v), u * v, (1 - u) * v] for u, v in uv + uv[:1]])
            out.append((np.einsum("pc,ncd->npd", w, corners), np.einsum("pc,ncd->npd", w, local)))
    return out


# -------------------------------------------------------------------------------------------- schemes
def parse_subspot_scheme(
    scheme: str, spots: gpd.GeoDataFrame | None = None, *, elements: Collection[str] = ()
) -> str:
    """Validate a sub-spot scheme and return its canonical form.

    Parameters
    ----------
    scheme
        ``"auto"``, ``"hex7"``, ``"rings:N"``, ``"grid:K"``, ``"cells"`` / ``"cells:<name>"``, or a name
        in ``elements`` (case-insensitive and whitespace-tolerant except for element names).
    spots
        Needed to resolve ``"auto"``: circles on a hexagonal lattice -> ``"hex7"``; circles on any other
        arrangement (square lattice such as DBiT-like pixels, irregular slide-seq-like beads) ->
        ``"grid:2"``; quadrilateral polygons -> ``"grid:3"``; other polygons on a hexagonal lattice ->
        ``"hex7"``.
    elements
        Names of shapes elements that may hold cells: such a name resolves to ``"cells:<name>"``.

    Returns
    -------
    str
        ``"hex7"``, ``"rings:N"``, ``"grid:K"``, ``"cells"`` or ``"cells:<name>"``.

    Raises
    ------
    SoscopeInputError
        For anything else; the message lists the valid choices.

    """
    if not isinstance(scheme, str):
        raise SoscopeInputError(f"`subspots` must be a string, one of {_VALID}; got {scheme!r}.")
    if scheme in elements:
        return f"cells:{scheme}"
    if scheme.strip().lower().startswith("cells:") and scheme.strip()[6:].strip():
        return "cells:" + scheme.strip()[6:].strip()
    s = re.sub(r"\s+", "", scheme.lower())
    if s in ("hex7", "cells"):
        return s
    if s == "rings:1":
        return "hex7"  # identical construction; one canonical name
    match = re.fullmatch(r"(grid|rings):(\d+)", s)
    if match:
        name, value = match.group(1), int(match.group(2))
        hi, lo = (_MAX_GRID, 1) if name == "grid" else (_MAX_RINGS, 1)
        if not lo <= value <= hi:
            raise SoscopeInputError(
                f"`subspots={scheme!r}`: {name} needs {lo} <= value <= {hi}; valid: {_VALID}."
            )
        return f"{name}:{value}"
    if s == "auto":
        if spots is None:
            raise SoscopeInputError('`subspots="auto"` needs the spots to choose; pass `spots`.')
        kind = spot_kind(spots)
        xy = spot_centres(spots)
        if kind == "polygons":
            try:
                _quad_corners(_repair(np.asarray(spots.geometry.values, dtype=object)))
                return "grid:3"
            except SoscopeInputError:
                pass
        hexagonal = len(xy) < 2 or _is_hex(lattice_orientation(xy, _resolve_spacing(spots, kind, xy, None)))
        if kind == "circles":
            return "hex7" if hexagonal else "grid:2"
        if hexagonal:
            return "hex7"
        raise SoscopeInputError(
            'subspots="auto" cannot split polygons that are neither quadrilaterals nor on a hexagonal '
            f"lattice; choose one of {_VALID}."
        )
    raise SoscopeInputError(f"Unknown sub-spot scheme {scheme!r}; valid: {_VALID}.")


def _cells_layout(
    geoms: np.ndarray,
    spot_index: np.ndarray,
    n_spots: int,
    footprints: np.ndarray,
    scheme: str,
    source_index: np.ndarray,
) -> SubspotLayout:
    """Ragged layout of given polygons sorted by parent; areas, centroids and weights via shapely."""
    spot_index = np.asarray(spot_index, dtype=np.int64)
    counts = np.bincount(spot_index, minlength=n_spots)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    subspot = (np.arange(len(spot_index)) - offsets[spot_index]).astype(np.int32)
    area = shapely.area(geoms).astype(np.float64)
    inside = shapely.area(shapely.intersection(geoms, footprints[spot_index]))
    weight = np.clip(np.where(area > 0, inside / np.where(area > 0, area, 1.0), 0.0), 0.0, 1.0)
    centroid = shapely.get_coordinates(shapely.centroid(geoms)).reshape(len(geoms), 2)
    return SubspotLayout(
        polygons=PolygonArray.from_shapely(geoms),
        spot_index=spot_index,
        subspot=subspot,
        offsets=offsets,
        area=area,
        footprint_weight=weight.astype(np.float64),
        centroid=centroid.astype(np.float64),
        scheme=scheme,
        source_index=np.asarray(source_index, dtype=np.int64),
    )


def _lattice_cells(xy: np.ndarray, spacing: float, order: dict[str, float]) -> np.ndarray:
    """``(N,)`` lattice-cell polygons: hexagons on a hexagonal lattice, squares otherwise."""
    if _is_hex(order):
        return shapely.polygons(xy[:, None, :] + _hex_cell_template(spacing, order["theta6"])[None])
    theta = order["theta4"] if order["psi4"] >= ORDER_MIN else 0.0
    corners = _square_cell_corners(xy, spacing, theta)
    return shapely.polygons(np.concatenate([corners, corners[:, :1]], axis=1))


def _assign_cells(
    spots: gpd.GeoDataFrame, kind: str, xy: np.ndarray, cells: gpd.GeoDataFrame, spacing: float | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cells' polygons, parent spot positions and row positions, sorted by (spot, row)."""
    cell_kind = spot_kind(cells, "cells")
    if kind == "circles":
        s = _resolve_spacing(spots, kind, xy, spacing)
        regions = _lattice_cells(xy, s, lattice_orientation(xy, s))
    else:
        regions = _repair(np.asarray(spots.geometry.values, dtype=object))
    cell_geoms = np.asarray(cells.geometry.values, dtype=object)
    if cell_kind == "circles":
        pts = cell_geoms
        polys = _circle_polygons(shapely.get_coordinates(pts), np.asarray(cells["radius"], dtype=np.float64))
    else:
        polys = _repair(cell_geoms)
        pts = shapely.centroid(polys)
    ci, si = shapely.STRtree(regions).query(pts, predicate="intersects")
    if len(ci) == 0:
        raise SoscopeInputError(
            "No cell centroid lies inside any spot's lattice cell/footprint: are `cells` in the spots' "
            "intrinsic coordinate system?"
        )
    # a centroid on a shared border (or in overlapping cells of an irregular layout): nearest centre wins,
    # then the lower spot position, so the assignment is deterministic
    d = np.hypot(*(shapely.get_coordinates(pts[ci]) - xy[si]).T)
    order = np.lexsort((si, d, ci))
    ci, si = ci[order], si[order]
    first = np.ones(len(ci), dtype=bool)
    first[1:] = ci[1:] != ci[:-1]
    ci, si = ci[first], si[first]
    order = np.lexsort((ci, si))
    return polys[ci[order]], si[order], ci[order]


def make_subspots(
    spots: gpd.GeoDataFrame,
    scheme: str,
    *,
    cells: gpd.GeoDataFrame | None = None,
    spacing: float | None = None,
) -> SubspotLayout:
    """Split every spot into sub-spot polygons.

    Parameters
    ----------
    spots
        The spots in their intrinsic coordinates: circles (Point + ``radius``) or polygons. Row order
        defines the spot positions ``0..N-1`` of the layout.
    scheme
        * ``"hex7"``: the spot's hexagonal lattice cell (regular hexagon, inradius ``spacing / 2``, flat
          sides facing the 6 neighbours) cut into a centre hexagon of 1/7 of the area (same orientation)
          and 6 trapezoids of 1/7 each, cut along the rays through the hexagon's vertices so that each
          faces one neighbour, as in the published soScope. Sub-spot 0 is the centre, 1..6 face the
          neighbours counter-clockwise starting with the one nearest the +x direction. With Visium
          geometry (55 um circles, 100 um lattice) the centre lies inside the circle (weight 1) and the
          outer parts have footprint weight ~0.15.
        * ``"rings:N"``: the same cell cut into ``1 + 3 N (N + 1)`` equal-area parts: a centre hexagon
          and N concentric hexagonal rings, ring j cut into ``6 j`` quadrilaterals (j per side of the
          hexagon); ``"rings:1"`` is ``"hex7"``. See ``_hex_templates``.
        * ``"grid:K"``: square/rectangular polygon spots (axis-aligned or rotated) split into K x K
          equal parts; for circles the square lattice cell (side ``spacing``, sides facing the
          neighbours) around the centre is split. Sub-spot ``row * K + col``.
        * ``"cells"`` / ``"cells:<name>"``: the polygons (or circles) of ``cells``, each assigned to the
          spot whose lattice cell (circles) or polygon (polygon spots) contains its centroid; ties go to
          the nearest centre. Cells outside every spot are dropped; spots may get any number of cells,
          including zero (``offsets`` then has equal consecutive entries). Sub-spots are ordered by spot,
          then by the cell's row position in ``cells``, which ``layout.source_index`` records.
        * ``"auto"``: see :func:`parse_subspot_scheme`.
    cells
        Segmentation polygons (or circles) in the spots' intrinsic coordinates, for ``"cells"``.
    spacing
        Lattice spacing (centre to centre of neighbours). Default :func:`lattice_spacing` of the
        centres; for a single spot ``2 * radius * 100 / 55`` (Visium ratio) for a circle or
        ``sqrt(area)`` for a polygon. One spacing and one orientation serve the whole element.

    Returns
    -------
    SubspotLayout
        Sorted by spot, then sub-spot. ``footprint_weight`` is
        ``area(polygon & parent footprint) / area(polygon)``: exact for circles, 1 by construction for
        grid parts of polygon spots (which tile their spot). Areas and centroids of generated parts are
        computed from their vertices relative to the spot centre, so they stay exact in large pixel
        coordinates.

    Raises
    ------
    SoscopeInputError
        For an unknown scheme, unusable spots (empty, mixed geometry types, points without ``radius``),
        ``grid:K`` on polygons that are not convex quadrilaterals, ``"cells"`` without ``cells`` or with
        no cell inside any spot.

    """
    kind = spot_kind(spots)
    scheme = parse_subspot_scheme(scheme, spots)
    xy = spot_centres(spots)
    n = len(xy)
    # measured footprints as shapely polygons (circles as 128-gons, ~3 kB each): only where intersections
    # need them
    footprints = spot_footprints(spots) if scheme.startswith("cells") or kind == "polygons" else None

    if scheme.startswith("cells"):
        if cells is None:
            raise SoscopeInputError(
                f'subspots="{scheme}" needs the cell polygons: pass `cells=` (a GeoDataFrame).'
            )
        polys, parent, source = _assign_cells(spots, kind, xy, cells, spacing)
        return _cells_layout(polys, parent, n, footprints, scheme, source)

    # circles: exact analytic overlap with the disc; polygons: shapely intersection with the polygon
    weights = (
        {"radius": np.asarray(spots["radius"], dtype=np.float64)}
        if kind == "circles"
        else {"footprints": footprints}
    )
    if scheme.startswith("grid:"):
        k = int(scheme.split(":")[1])
        if kind == "polygons":  # the parts tile the spot itself: weight 1 by construction
            return _parts_layout(xy, _grid_parts(_quad_corners(footprints), xy, k), scheme)
        s = _resolve_spacing(spots, kind, xy, spacing)
        order = lattice_orientation(xy, s)
        theta = order["theta4"] if order["psi4"] >= ORDER_MIN else 0.0
        return _parts_layout(xy, _grid_parts(_square_cell_corners(xy, s, theta), xy, k), scheme, **weights)

    n_rings = 1 if scheme == "hex7" else int(scheme.split(":")[1])
    s = _resolve_spacing(spots, kind, xy, spacing)
    order = lattice_orientation(xy, s)
    theta = order["theta6"] if order["psi6"] >= ORDER_MIN else 0.0
    parts = [(None, tpl[None]) for tpl in _hex_templates(n_rings, s, theta)]  # absolute: centre + template
    return _parts_layout(xy, parts, scheme, **weights)
