"""PolygonArray: sub-spot polygons as vertex arrays round-trip exactly to shapely, and stay small."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pytest
import shapely
from shapely.geometry import MultiPolygon, Polygon, box

from soscope.geometry import PolygonArray, make_subspots


def _mixed(seed: int = 0, n: int = 60) -> np.ndarray:
    """Polygons, polygons with holes, multipolygons and empty ones, in random order."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        x, y = rng.uniform(0, 100, 2)
        kind = i % 5
        if kind == 0:
            out.append(box(x, y, x + 3, y + 2))
        elif kind == 1:
            out.append(Polygon(box(x, y, x + 6, y + 6).exterior, [box(x + 1, y + 1, x + 2, y + 2).exterior]))
        elif kind == 2:
            out.append(MultiPolygon([box(x, y, x + 1, y + 1), box(x + 5, y, x + 7, y + 3)]))
        elif kind == 3:
            out.append(shapely.Point(x, y).buffer(2.0, 5))
        else:
            out.append(Polygon() if rng.random() < 0.5 else MultiPolygon())
    arr = np.empty(len(out), dtype=object)
    arr[:] = out
    return arr[rng.permutation(len(arr))]


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return all(
        x.geom_type == y.geom_type and (shapely.equals_exact(x, y, 0) or (x.is_empty and y.is_empty))
        for x, y in zip(a, b, strict=True)
    )


def test_round_trip_keeps_types_holes_parts_and_empties():
    geoms = _mixed()
    back = PolygonArray.from_shapely(geoms).to_shapely()
    assert len(back) == len(geoms)
    assert _same(geoms, back)


def test_take_slice_mask_and_concatenate_match_shapely():
    geoms = _mixed(1)
    arr = PolygonArray.from_shapely(geoms)
    rows = np.random.default_rng(2).integers(0, len(geoms), 100)  # repeats, any order
    assert _same(arr[rows].to_shapely(), geoms[rows])
    assert _same(arr[5:40:3].to_shapely(), geoms[5:40:3])
    mask = np.arange(len(geoms)) % 3 == 0
    assert _same(arr[mask].to_shapely(), geoms[mask])
    assert len(arr[np.zeros(0, dtype=np.int64)]) == 0
    assert _same(arr[[-1]].to_shapely(), geoms[[-1]])
    both = PolygonArray.concatenate([arr[:10], arr[10:], arr[:3]])
    assert _same(both.to_shapely(), np.concatenate([geoms, geoms[:3]]))
    with pytest.raises(IndexError):
        arr[[len(geoms)]]


def test_bounds_transform_and_edges_match_shapely():
    geoms = _mixed(3)
    arr = PolygonArray.from_shapely(geoms)
    np.testing.assert_array_equal(arr.bounds(), shapely.bounds(geoms))
    affine = np.array([[0.5, -0.2, 10.0], [0.3, 2.0, -4.0], [0.0, 0.0, 1.0]])
    moved = shapely.transform(geoms, lambda p: p @ affine[:2, :2].T + affine[:2, 2])
    assert all(
        shapely.equals_exact(a, b, 1e-9)
        for a, b in zip(arr.transform(affine).to_shapely(), moved, strict=True)
    )
    start, end, owner = arr.edges()
    segments = [
        int((shapely.get_num_coordinates(shapely.get_rings(g)) - 1).sum()) if not g.is_empty else 0
        for g in shapely.get_parts(geoms, return_index=False)
    ]
    assert len(start) == len(end) == len(owner) == sum(segments)
    assert (np.linalg.norm(end - start, axis=1) > 0).all()
    # each segment lies on its owner's boundary
    boundary = shapely.boundary(geoms[owner])
    mid = shapely.points((start + end) / 2)
    assert (shapely.distance(boundary, mid) < 1e-9).all()


def test_refuses_other_geometry_types():
    with pytest.raises(TypeError, match="Polygon and MultiPolygon"):
        PolygonArray.from_shapely(np.array([shapely.Point(0, 0)], dtype=object))


def test_hex7_layout_is_small_and_exact():
    """A hex7 layout keeps ~100 bytes per sub-spot (a shapely polygon: ~1 kB), with the exact polygons."""
    n_side = 30
    r, c = np.divmod(np.arange(n_side * n_side), n_side)
    xy = np.stack([(c + 0.5 * (r % 2)) * 100.0, r * np.sqrt(3) / 2 * 100.0], 1)
    spots = gpd.GeoDataFrame(
        {"radius": np.full(len(xy), 27.5)}, geometry=gpd.points_from_xy(xy[:, 0], xy[:, 1])
    )
    layout = make_subspots(spots, "hex7")
    assert layout.polygons.nbytes / layout.n_subspots < 150
    geoms = layout.geometry
    assert shapely.is_valid(geoms).all()
    np.testing.assert_allclose(shapely.area(geoms), layout.area, rtol=1e-9)
    cells = shapely.unary_union(geoms[layout.spot_index == 0])
    np.testing.assert_allclose(cells.area, np.sqrt(3) / 2 * 100.0**2, rtol=1e-9)
