"""Sub-spot construction: hex7, rings:N, grid:K, cells, scheme parsing, the layout structure."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pytest
import shapely
from scipy.spatial import Voronoi

from soscope._errors import SoscopeInputError
from soscope.geometry import (
    SubspotLayout,
    lattice_spacing,
    make_subspots,
    parse_subspot_scheme,
    spot_centres,
    spot_footprints,
)

HEX_AREA = np.sqrt(3) / 2  # hexagonal lattice cell area / spacing**2
LATTICES = [(0.0, 1.0), (0.3, 1.0), (np.deg2rad(17.0), 3.7)]  # (rotation, pixels per um)


def _union_per_spot(layout: SubspotLayout) -> np.ndarray:
    gdf = gpd.GeoDataFrame({"spot": layout.spot_index}, geometry=layout.geometry)
    return gdf.dissolve("spot").geometry.values.__array__()


def _overlap_area(geoms: np.ndarray) -> float:
    i, j = shapely.STRtree(geoms).query(geoms, predicate="intersects")
    keep = i < j
    return float(shapely.area(shapely.intersection(geoms[i[keep]], geoms[j[keep]])).sum())


def _voronoi_cells(xy: np.ndarray) -> dict[int, shapely.Polygon]:
    """Independent reference: bounded Voronoi regions of the centres."""
    vor = Voronoi(xy)
    out = {}
    for i, r in enumerate(vor.point_region):
        region = vor.regions[r]
        if region and -1 not in region:
            out[i] = shapely.Polygon(vor.vertices[region])
    return out


def _interior(xy: np.ndarray, spacing: float) -> np.ndarray:
    """Spots with a full ring of 6 neighbours."""
    from scipy.spatial import cKDTree

    counts = np.array([len(n) - 1 for n in cKDTree(xy).query_ball_point(xy, 1.1 * spacing)])
    return np.flatnonzero(counts == 6)


# ------------------------------------------------------------------------------------------------ hex7
@pytest.mark.parametrize(("theta", "scale"), LATTICES)
def test_hex7_tiles_lattice_cells(hex_circles, theta, scale):
    spots = hex_circles(16, 16, theta=theta, scale=scale)
    n, s = len(spots), 100.0 * scale
    layout = make_subspots(spots, "hex7")
    assert layout.scheme == "hex7" and layout.n_spots == n and layout.n_subspots == 7 * n
    np.testing.assert_array_equal(layout.counts_per_spot, 7)
    np.testing.assert_array_equal(layout.offsets, np.arange(n + 1) * 7)
    np.testing.assert_array_equal(layout.spot_index, np.repeat(np.arange(n), 7))
    np.testing.assert_array_equal(layout.subspot, np.tile(np.arange(7), n))
    assert layout.spot_index.dtype == np.int64 and layout.subspot.dtype == np.int32
    assert shapely.is_valid(layout.geometry).all()
    assert layout.source_index is None

    cell = HEX_AREA * s**2
    np.testing.assert_allclose(layout.area, cell / 7, rtol=1e-9)  # all seven parts are equal
    np.testing.assert_allclose(layout.area.sum(), n * cell, rtol=1e-9)  # cells tile
    # disjoint within and across spots
    assert _overlap_area(layout.geometry) < 1e-9 * n * cell
    # union of a spot's parts is its hexagonal lattice cell == the Voronoi cell of the lattice
    unions = _union_per_spot(layout)
    np.testing.assert_allclose(shapely.area(unions), cell, rtol=1e-6)
    vor = _voronoi_cells(spot_centres(spots))
    interior = _interior(spot_centres(spots), s)
    assert len(interior) > 100
    for i in interior:
        assert unions[i].symmetric_difference(vor[i]).area < 1e-6 * cell
    np.testing.assert_allclose(layout.centroid[::7], spot_centres(spots), atol=1e-9 * s)


@pytest.mark.parametrize(("theta", "scale"), LATTICES)
def test_hex7_footprint_weights(hex_circles, theta, scale):
    spots = hex_circles(6, 6, theta=theta, scale=scale)
    layout = make_subspots(spots, "hex7")
    r, part = 27.5 * scale, HEX_AREA * (100.0 * scale) ** 2 / 7
    w = layout.footprint_weight.reshape(-1, 7)
    np.testing.assert_allclose(w[:, 0], 1.0, atol=1e-12)  # the centre hexagon lies inside the circle
    expected = (np.pi * r**2 - part) / 6 / part
    assert 0.14 < expected < 0.16
    np.testing.assert_allclose(w[:, 1:], expected, rtol=1e-9)  # exact: the overlap is analytic
    # the circle polygon has the circle's exact area, so the overlaps add up to pi r^2
    np.testing.assert_allclose((w * layout.area.reshape(-1, 7)).sum(1), np.pi * r**2, rtol=1e-9)


@pytest.mark.parametrize(("scheme", "radius"), [("rings:2", 70.0), ("hex7", 45.0), ("grid:3", 40.0)])
def test_circle_weights_match_shapely(hex_circles, scheme, radius):
    # circles larger than the centre part, some even larger than the cell: every kind of crossing
    spots = hex_circles(3, 3, radius=radius, theta=0.4, scale=1.3)
    layout = make_subspots(spots, scheme)
    disc = shapely.buffer(shapely.points(spot_centres(spots)), radius * 1.3, quad_segs=1024)
    ref = shapely.area(shapely.intersection(layout.geometry, disc[layout.spot_index])) / layout.area
    np.testing.assert_allclose(layout.footprint_weight, ref, atol=1e-5)
    assert (layout.footprint_weight > 0).all() and (layout.footprint_weight < 1).any()


@pytest.mark.parametrize("theta", [0.0, 0.3, -0.5])
def test_hex7_parts_face_neighbours(hex_circles, theta):
    spots = hex_circles(5, 5, theta=theta)
    layout = make_subspots(spots, "hex7")
    xy = spot_centres(spots)
    d = layout.centroid.reshape(-1, 7, 2)[:, 1:] - xy[:, None]
    ang = np.arctan2(d[..., 1], d[..., 0])
    # part k faces a neighbour: its direction is theta + 60 deg * (k - 1) modulo the lattice symmetry,
    # and part 1 faces the neighbour closest to +x
    expected = theta + np.pi / 3 * np.arange(6)
    diff = np.angle(np.exp(1j * (ang - expected[None])))
    first = np.angle(np.exp(6j * theta)) / 6
    np.testing.assert_allclose(diff, first - theta, atol=1e-9)
    # the outer edge of part k is shared in full with the facing part of the neighbour in that direction
    poly = layout.geometry.reshape(-1, 7)
    centre = 12  # interior spot of the 5 x 5 lattice
    for k in range(1, 7):
        direction = np.array([np.cos(ang[centre, k - 1]), np.sin(ang[centre, k - 1])])
        nb = int(np.argmin(np.linalg.norm(xy - (xy[centre] + 100.0 * direction), axis=1)))
        opposite = (k - 1 + 3) % 6 + 1
        shared = poly[centre, k].boundary.intersection(poly[nb, opposite].buffer(1e-6)).length
        np.testing.assert_allclose(shared, 100.0 / np.sqrt(3), rtol=1e-4)  # one hexagon side


def test_hex7_explicit_spacing_and_single_spot(hex_circles):
    one = hex_circles(1, 1)
    layout = make_subspots(one, "hex7")  # fallback: 2 r * 100 / 55 = 100
    np.testing.assert_allclose(layout.area.sum(), HEX_AREA * 100.0**2, rtol=1e-9)
    layout = make_subspots(hex_circles(4, 4), "hex7", spacing=80.0)
    np.testing.assert_allclose(layout.area, HEX_AREA * 80.0**2 / 7, rtol=1e-9)
    with pytest.raises(SoscopeInputError, match="spacing"):
        make_subspots(hex_circles(4, 4), "hex7", spacing=-1.0)


# ----------------------------------------------------------------------------------------------- rings
@pytest.mark.parametrize("n_rings", [1, 2, 3])
def test_rings_equal_parts_cover_cell(hex_circles, n_rings):
    spots = hex_circles(5, 5, theta=0.2, scale=2.0)
    layout = make_subspots(spots, f"rings:{n_rings}")
    k = 1 + 3 * n_rings * (n_rings + 1)
    cell = HEX_AREA * 200.0**2
    assert layout.scheme == ("hex7" if n_rings == 1 else f"rings:{n_rings}")
    np.testing.assert_array_equal(layout.counts_per_spot, k)
    assert shapely.is_valid(layout.geometry).all()
    np.testing.assert_allclose(layout.area, cell / k, rtol=1e-9)
    assert _overlap_area(layout.geometry) < 1e-9 * len(spots) * cell
    unions = _union_per_spot(layout)
    np.testing.assert_allclose(shapely.area(unions), cell, rtol=1e-6)
    # ... and it is the same hexagon as hex7's (T-junctions between rings may leave zero-area slivers)
    hexes = _union_per_spot(make_subspots(spots, "hex7"))
    assert (shapely.area(shapely.symmetric_difference(unions, hexes)) < 1e-9 * cell).all()
    # weights are overlaps with the 55 um circle: inner parts inside, sum equals the circle's area
    w = layout.footprint_weight.reshape(-1, k)
    np.testing.assert_allclose(w[:, 0], 1.0, atol=1e-12)
    assert (w <= 1.0).all() and (w >= 0.0).all()
    np.testing.assert_allclose((w * layout.area.reshape(-1, k)).sum(1), np.pi * 55.0**2, rtol=1e-9)


def test_rings1_is_hex7(hex_circles):
    spots = hex_circles(4, 4)
    a, b = make_subspots(spots, "rings:1"), make_subspots(spots, "hex7")
    assert all(x.equals(y) for x, y in zip(a.geometry, b.geometry, strict=True))


# ------------------------------------------------------------------------------------------------ grid
@pytest.mark.parametrize("k", [1, 2, 3, 4, 5, 6])
@pytest.mark.parametrize(("theta", "aspect"), [(0.0, 1.0), (0.4, 1.0), (0.0, 1.5), (-0.7, 0.6)])
def test_grid_splits_squares(square_spots, k, theta, aspect):
    spots = square_spots(4, side=8.0, theta=theta, aspect=aspect)
    layout = make_subspots(spots, f"grid:{k}")
    n, area = len(spots), 64.0 * aspect
    np.testing.assert_array_equal(layout.counts_per_spot, k * k)
    assert shapely.is_valid(layout.geometry).all()
    np.testing.assert_allclose(layout.area, area / k**2, rtol=1e-9)
    np.testing.assert_array_equal(layout.footprint_weight, 1.0)
    assert _overlap_area(layout.geometry) < 1e-9 * n * area
    unions = _union_per_spot(layout)
    sym = shapely.area(shapely.symmetric_difference(unions, spots.geometry.values))
    assert (sym < 1e-9 * area).all()
    # parts are rectangles: 4 corners, area == oriented envelope area
    assert (shapely.get_num_coordinates(layout.geometry) == 5).all()
    np.testing.assert_allclose(
        shapely.area(shapely.oriented_envelope(layout.geometry)), layout.area, rtol=1e-9
    )


def test_grid_order_is_row_major(square_spots):
    layout = make_subspots(square_spots(2, side=9.0), "grid:3")
    c = layout.centroid[:9]
    np.testing.assert_allclose(c[:, 0].reshape(3, 3), np.tile([47.0, 50.0, 53.0], (3, 1)))
    np.testing.assert_allclose(c[:, 1].reshape(3, 3), np.tile([[67.0], [70.0], [73.0]], (1, 3)))
    # a polygon given clockwise and starting elsewhere yields the same parts
    poly = square_spots(1, side=9.0).geometry.values[0]
    corners = list(poly.exterior.coords)[:4][::-1]  # clockwise
    flipped = gpd.GeoDataFrame(geometry=[shapely.Polygon(corners[2:] + corners[:2])])
    other = make_subspots(flipped, "grid:3")
    np.testing.assert_allclose(other.centroid, c, atol=1e-12)


def test_grid_on_circles_uses_square_lattice_cell(square_circles):
    spots = square_circles(6, spacing=10.0, radius=4.0)
    layout = make_subspots(spots, "grid:2")
    np.testing.assert_allclose(layout.area, 25.0, rtol=1e-9)
    assert _overlap_area(layout.geometry) < 1e-9
    np.testing.assert_allclose(layout.area.sum(), 36 * 100.0, rtol=1e-9)
    # each quarter square holds a quarter of the circle
    np.testing.assert_allclose(layout.footprint_weight, np.pi * 16 / 4 / 25, rtol=1e-9)


def test_grid_rejects_non_quadrilaterals(hex_circles):
    hexes = gpd.GeoDataFrame(geometry=spot_footprints(hex_circles(3, 3)))  # 128-gons
    with pytest.raises(SoscopeInputError, match="quadrilateral"):
        make_subspots(hexes, "grid:2")
    # but a rectangle with an extra collinear vertex is fine
    box = gpd.GeoDataFrame(geometry=[shapely.Polygon([(0, 0), (2, 0), (4, 0), (4, 4), (0, 4)])])
    np.testing.assert_allclose(make_subspots(box, "grid:2").area, 4.0)


# ----------------------------------------------------------------------------------------------- cells
def test_cells_assignment_hand_checked(square_spots):
    # spots: 2 x 2 squares of side 10 with lower-left corner (0, 0): spot 0 = [0,10]x[0,10], spot 1 =
    # [10,20]x[0,10], spot 2 = [0,10]x[10,20], spot 3 = [10,20]x[10,20]
    spots = square_spots(2, side=10.0, origin=(5.0, 5.0))
    cells = gpd.GeoDataFrame(
        {"name": ["a", "b", "c", "d", "e", "f"]},
        geometry=[
            shapely.box(12, 2, 14, 4),  # a: spot 1
            shapely.box(1, 1, 3, 3),  # b: spot 0
            shapely.box(30, 30, 32, 32),  # c: outside every spot -> dropped
            shapely.box(8, 2, 14, 4),  # d: centroid (11, 3) -> spot 1, half of it inside spot 0
            shapely.Point(15, 15).buffer(1.0),  # e: spot 3
            shapely.box(4, 4, 6, 6),  # f: spot 0
        ],
        index=[10, 11, 12, 13, 14, 15],
    )
    layout = make_subspots(spots, "cells:nuclei", cells=cells)
    assert layout.scheme == "cells:nuclei"
    np.testing.assert_array_equal(layout.counts_per_spot, [2, 2, 0, 1])  # ragged, with an empty spot
    np.testing.assert_array_equal(layout.offsets, [0, 2, 4, 4, 5])
    np.testing.assert_array_equal(layout.spot_index, [0, 0, 1, 1, 3])
    np.testing.assert_array_equal(layout.subspot, [0, 1, 0, 1, 0])
    # ordered by spot, then by row position in `cells`
    np.testing.assert_array_equal(cells["name"].values[layout.source_index], ["b", "f", "a", "d", "e"])
    np.testing.assert_array_equal(cells.index[layout.source_index], [11, 15, 10, 13, 14])
    np.testing.assert_allclose(layout.footprint_weight, [1, 1, 1, 4 / 6 * 1.0, 1], rtol=1e-12)
    np.testing.assert_allclose(layout.area[:4], [4, 4, 4, 12])


def test_cells_on_circles_use_lattice_cells(hex_circles):
    spots = hex_circles(3, 3)  # centres (1000 + 100 c + 50 (r % 2), 2000 + 86.6 r)
    cells = gpd.GeoDataFrame(
        {"radius": [5.0, 5.0, 5.0]},
        geometry=gpd.points_from_xy([1100.0, 1140.0, 1500.0], [2000.0, 2000.0, 2000.0]),
    )
    layout = make_subspots(spots, "cells", cells=cells)
    # (1140, 2000) lies outside every circle but inside spot 1's hexagonal cell; (1500, 2000) is outside
    np.testing.assert_array_equal(layout.spot_index, [1, 1])
    np.testing.assert_array_equal(layout.source_index, [0, 1])
    np.testing.assert_allclose(layout.footprint_weight, [1.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(layout.area, np.pi * 25.0, rtol=1e-9)


def test_cells_errors(square_spots):
    spots = square_spots(2)
    with pytest.raises(SoscopeInputError, match="cells="):
        make_subspots(spots, "cells")
    far = gpd.GeoDataFrame(geometry=[shapely.box(1e6, 1e6, 1e6 + 1, 1e6 + 1)])
    with pytest.raises(SoscopeInputError, match="coordinate"):
        make_subspots(spots, "cells", cells=far)


# --------------------------------------------------------------------------------------------- parsing
def test_parse_auto(hex_circles, square_spots, square_circles):
    assert parse_subspot_scheme("auto", hex_circles(6, 6, theta=0.4, scale=3.0)) == "hex7"
    assert parse_subspot_scheme("auto", square_spots(4)) == "grid:3"
    assert parse_subspot_scheme("auto", square_circles(6)) == "grid:2"
    rng = np.random.default_rng(0)
    beads = gpd.GeoDataFrame(
        {"radius": np.full(300, 5.0)}, geometry=gpd.points_from_xy(*rng.uniform(0, 1000, (2, 300)))
    )
    assert parse_subspot_scheme("auto", beads) == "grid:2"
    assert make_subspots(hex_circles(3, 3), "auto").scheme == "hex7"
    # hexagonal lattice of non-rectangular polygons (e.g. the circles drawn as polygons): hex7
    polys = gpd.GeoDataFrame(geometry=spot_footprints(hex_circles(5, 5)))
    assert parse_subspot_scheme("auto", polys) == "hex7"
    by_poly, by_circle = make_subspots(polys, "auto"), make_subspots(hex_circles(5, 5), "hex7")
    np.testing.assert_allclose(by_poly.area, by_circle.area, rtol=1e-9)
    # (polygon footprints: shapely intersection with the 128-gon, close to the exact circle)
    np.testing.assert_allclose(by_poly.footprint_weight, by_circle.footprint_weight, rtol=1e-4)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("hex7", "hex7"),
        (" HEX7 ", "hex7"),
        ("grid:4", "grid:4"),
        ("Grid: 2", "grid:2"),
        ("rings:2", "rings:2"),
        ("rings:1", "hex7"),
        ("cells", "cells"),
        ("cells:nuclei", "cells:nuclei"),
    ],
)
def test_parse_valid(given, expected):
    assert parse_subspot_scheme(given) == expected


def test_parse_element_names():
    assert parse_subspot_scheme("cell_boundaries", elements=["cell_boundaries"]) == "cells:cell_boundaries"


@pytest.mark.parametrize(
    "bad",
    ["hex", "hex19", "grid", "grid:0", "grid:17", "grid:x", "rings:0", "rings:7", "squares", "", 7, None],
)
def test_parse_invalid(bad, square_spots):
    with pytest.raises(SoscopeInputError, match="hex7") as err:
        parse_subspot_scheme(bad, square_spots(2))
    assert "grid:K" in str(err.value)
    with pytest.raises(SoscopeInputError):
        make_subspots(square_spots(2), bad)


def test_bad_spots(hex_circles):
    pts = hex_circles(2, 2).drop(columns="radius")
    with pytest.raises(SoscopeInputError, match="radius"):
        make_subspots(pts, "hex7")
    with pytest.raises(SoscopeInputError, match="empty"):
        make_subspots(hex_circles(2, 2).iloc[:0], "hex7")
    with pytest.raises(SoscopeInputError, match="GeoDataFrame"):
        make_subspots(np.zeros((3, 2)), "hex7")
    mixed = gpd.GeoDataFrame({"radius": [1.0, 1.0]}, geometry=[shapely.Point(0, 0), shapely.box(0, 0, 1, 1)])
    with pytest.raises(SoscopeInputError, match="geometry types"):
        make_subspots(mixed, "auto")


def test_auto_on_non_rectangular_irregular_polygons_raises():
    rng = np.random.default_rng(1)
    blobs = gpd.GeoDataFrame(geometry=shapely.buffer(shapely.points(rng.uniform(0, 1000, (50, 2))), 5.0))
    with pytest.raises(SoscopeInputError, match="hex7"):
        parse_subspot_scheme("auto", blobs)


# ---------------------------------------------------------------------------------------------- helpers
def test_lattice_spacing(hex_circles):
    xy = spot_centres(hex_circles(6, 6, theta=0.3, scale=2.5))
    assert lattice_spacing(xy) == pytest.approx(250.0, rel=1e-9)
    dup = np.vstack([xy, xy[:3]])  # duplicated centres are ignored, not a spacing of 0
    assert lattice_spacing(dup) == pytest.approx(250.0, rel=1e-9)
    # position jitter does not bias it (the nearest of 6 jittered neighbours would be too close)
    jittered = xy + np.random.default_rng(0).uniform(-2.5, 2.5, xy.shape)
    assert lattice_spacing(jittered) == pytest.approx(250.0, rel=2e-3)
    with pytest.raises(SoscopeInputError, match="spacing"):
        lattice_spacing(xy[:1])
    with pytest.raises(SoscopeInputError):
        lattice_spacing(np.zeros((3, 3)))


def test_spot_footprints(hex_circles, square_spots):
    fp = spot_footprints(hex_circles(2, 2))
    np.testing.assert_allclose(shapely.area(fp), np.pi * 27.5**2, rtol=1e-12)
    assert (shapely.get_num_coordinates(fp) >= 65).all()
    sq = square_spots(2)
    assert all(a.equals(b) for a, b in zip(spot_footprints(sq), sq.geometry.values, strict=True))


# --------------------------------------------------------------------------------------------- layout
def _same(a: SubspotLayout, b: SubspotLayout) -> None:
    assert a.scheme == b.scheme
    for name in ("spot_index", "subspot", "offsets", "area", "footprint_weight", "centroid"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert all(x.equals(y) for x, y in zip(a.geometry, b.geometry, strict=True))
    if a.source_index is None:
        assert b.source_index is None
    else:
        np.testing.assert_array_equal(a.source_index, b.source_index)


def test_subset_round_trip(hex_circles, square_spots):
    layout = make_subspots(hex_circles(4, 4), "rings:2")
    _same(layout.subset(np.arange(layout.n_spots)), layout)
    pick = np.array([5, 0, 11])
    sub = layout.subset(pick)
    assert sub.n_spots == 3 and sub.n_subspots == 57
    np.testing.assert_array_equal(sub.offsets, [0, 19, 38, 57])
    np.testing.assert_array_equal(
        sub.area, layout.area[np.concatenate([np.arange(o, o + 19) for o in pick * 19])]
    )
    # back again: the inverse permutation of a permutation restores the layout
    perm = np.random.default_rng(0).permutation(layout.n_spots)
    _same(layout.subset(perm).subset(np.argsort(perm)), layout)
    # ragged layouts (and source_index) survive too
    spots = square_spots(2, side=10.0, origin=(5.0, 5.0))
    cells = gpd.GeoDataFrame(
        geometry=[shapely.box(1, 1, 2, 2), shapely.box(12, 12, 13, 13), shapely.box(3, 3, 4, 4)]
    )
    ragged = make_subspots(spots, "cells", cells=cells)
    np.testing.assert_array_equal(ragged.counts_per_spot, [2, 0, 0, 1])
    sub = ragged.subset(np.array([3, 1, 0]))
    np.testing.assert_array_equal(sub.counts_per_spot, [1, 0, 2])
    np.testing.assert_array_equal(sub.source_index, [1, 0, 2])
    _same(sub.subset(np.array([2, 1, 0])).subset(np.array([2, 1, 0])), sub)
