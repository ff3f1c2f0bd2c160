"""Spot and sub-spot neighbour graphs."""

from __future__ import annotations

import numpy as np
import pytest

from soscope._errors import SoscopeInputError
from soscope.geometry import make_subspots, spot_centres, spot_graph, subspot_graph


def _check_edge_index(edges: np.ndarray, n: int) -> None:
    assert edges.dtype == np.int64 and edges.ndim == 2 and edges.shape[0] == 2
    assert (edges >= 0).all() and (edges < n).all()
    assert (edges[0] != edges[1]).all()  # no self-loops
    pairs = set(map(tuple, edges.T.tolist()))
    assert len(pairs) == edges.shape[1]  # no duplicates
    assert pairs == {(j, i) for i, j in pairs}  # symmetric
    order = np.lexsort((edges[1], edges[0]))
    np.testing.assert_array_equal(order, np.arange(edges.shape[1]))  # sorted by source, then target


# ------------------------------------------------------------------------------------------ spot graph
@pytest.mark.parametrize(("theta", "scale"), [(0.0, 1.0), (0.3, 3.7)])
def test_spot_graph_hex(hex_circles, theta, scale):
    xy = spot_centres(hex_circles(10, 12, theta=theta, scale=scale))
    edges = spot_graph(xy)
    _check_edge_index(edges, len(xy))
    deg = np.bincount(edges[0], minlength=len(xy))
    rows, cols = np.divmod(np.arange(len(xy)), 12)
    interior = (rows > 0) & (rows < 9) & (cols > 0) & (cols < 11)
    assert (deg[interior] == 6).all()
    assert (deg[~interior] < 6).all() and (deg >= 2).all()
    lengths = np.linalg.norm(xy[edges[0]] - xy[edges[1]], axis=1)
    np.testing.assert_allclose(lengths, 100.0 * scale, rtol=1e-9)


def test_spot_graph_square(square_spots):
    xy = spot_centres(square_spots(7, side=8.0, theta=0.5))
    edges = spot_graph(xy)
    _check_edge_index(edges, len(xy))
    deg = np.bincount(edges[0], minlength=len(xy)).reshape(7, 7)
    assert (deg[1:-1, 1:-1] == 4).all()
    assert deg[0, 0] == 2 and (deg[0, 1:-1] == 3).all()


def test_spot_graph_sections(hex_circles):
    xy = spot_centres(hex_circles(6, 6))
    # two sections on top of each other in the same coordinates (plus a different unit for the second)
    both = np.vstack([xy, xy * 2.0])
    sections = np.array(["A1"] * len(xy) + ["B1"] * len(xy))
    edges = spot_graph(both, sections=sections)
    _check_edge_index(edges, len(both))
    assert (sections[edges[0]] == sections[edges[1]]).all()
    single = spot_graph(xy)
    np.testing.assert_array_equal(edges[:, : single.shape[1]], single)
    np.testing.assert_array_equal(edges[:, single.shape[1] :], single + len(xy))
    # interleaved labels and a lone spot in its own section
    labels = np.where(np.arange(len(xy)) % 2 == 0, "even", "odd").astype(object)
    labels[0] = "alone"
    edges = spot_graph(xy, sections=labels)
    _check_edge_index(edges, len(xy))
    assert (labels[edges[0]] == labels[edges[1]]).all() and 0 not in edges
    with pytest.raises(SoscopeInputError, match="sections"):
        spot_graph(xy, sections=labels[:-1])


def test_spot_graph_knn_irregular():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 1000, (400, 2))
    edges = spot_graph(xy, k=6)
    _check_edge_index(edges, len(xy))
    deg = np.bincount(edges[0], minlength=len(xy))
    assert (deg >= 6).all()
    # the 6 nearest of every spot are among its neighbours
    from scipy.spatial import cKDTree

    _, nbr = cKDTree(xy).query(xy, k=7)
    pairs = set(map(tuple, edges.T.tolist()))
    assert all((i, j) in pairs for i in range(len(xy)) for j in nbr[i, 1:])
    with pytest.raises(SoscopeInputError):
        spot_graph(xy, k=0)


def test_spot_graph_spacing_and_tolerance(hex_circles):
    xy = spot_centres(hex_circles(6, 6))
    assert spot_graph(xy, spacing=50.0).shape[1] == 0
    # with a radius of 2 * spacing * 0.9 the second ring (at sqrt(3) * spacing) joins
    deg = np.bincount(spot_graph(xy, tolerance=0.8)[0], minlength=len(xy))
    assert deg.max() == 12
    assert spot_graph(xy[:1]).shape == (2, 0)


# --------------------------------------------------------------------------------------- sub-spot graph
@pytest.mark.parametrize(
    ("theta", "scale", "jitter"), [(0.0, 1.0, 0.0), (0.3, 3.7, 0.0), (0.0, 1.0, 0.25), (0.2, 2.0, 0.5)]
)
def test_subspot_graph_hex7(hex_circles, theta, scale, jitter):
    spots = hex_circles(8, 8, theta=theta, scale=scale, jitter=jitter * scale)
    layout = make_subspots(spots, "hex7")
    edges = subspot_graph(layout)
    _check_edge_index(edges, layout.n_subspots)
    nbrs = {i: set() for i in range(layout.n_subspots)}
    for i, j in edges.T.tolist():
        nbrs[i].add(j)
    rows, cols = np.divmod(np.arange(len(spots)), 8)
    interior = np.flatnonzero((rows > 0) & (rows < 7) & (cols > 0) & (cols < 7))
    for s in range(len(spots)):
        # the centre touches exactly its own 6 ring parts
        assert nbrs[7 * s] == set(range(7 * s + 1, 7 * s + 7))
    for s in interior:
        for k in range(1, 7):
            row = 7 * s + k
            own = {7 * s, 7 * s + (k % 6) + 1, 7 * s + ((k - 2) % 6) + 1}
            assert own <= nbrs[row]
            other = nbrs[row] - own
            # across spots: exactly the facing part of the neighbour in that direction
            assert len(other) == 1
            (o,) = other
            assert layout.subspot[o] == (k - 1 + 3) % 6 + 1
    # the graph does not change with jitter of 0.25-0.5% of the spacing (integer pixel rounding)
    if jitter:
        exact = subspot_graph(make_subspots(hex_circles(8, 8, theta=theta, scale=scale), "hex7"))
        np.testing.assert_array_equal(edges, exact)


@pytest.mark.parametrize("k", [1, 3])
def test_subspot_graph_grid_has_no_diagonals(square_spots, k):
    n = 5
    layout = make_subspots(square_spots(n, side=6.0, theta=0.2), f"grid:{k}")
    edges = subspot_graph(layout)
    _check_edge_index(edges, layout.n_subspots)
    # the sub-squares form one (n k) x (n k) grid: interior ones have 4 neighbours, corners 2
    deg = np.bincount(edges[0], minlength=layout.n_subspots)
    assert deg.max() == 4 and deg.min() == 2
    m = n * k
    assert edges.shape[1] == 2 * 2 * m * (m - 1)
    # cross-spot edges exist
    assert (layout.spot_index[edges[0]] != layout.spot_index[edges[1]]).any()


def test_subspot_graph_rings(hex_circles):
    layout = make_subspots(hex_circles(4, 4), "rings:2")
    edges = subspot_graph(layout)
    _check_edge_index(edges, layout.n_subspots)
    within = layout.spot_index[edges[0]] == layout.spot_index[edges[1]]
    # inside one spot: centre - ring 1 (6), neighbours within ring 1 (6), ring 1 - ring 2 (each ring-1
    # trapezoid touches the 2 ring-2 pieces on its side: 12, across T-junctions), within ring 2 (12)
    per_spot = np.bincount(layout.spot_index[edges[0][within]], minlength=16) // 2
    assert (per_spot == per_spot[0]).all()
    assert per_spot[0] == 6 + 6 + 12 + 12
    assert (~within).any()


def test_subspot_graph_cells_and_tiny(square_spots):
    import geopandas as gpd
    import shapely

    spots = square_spots(2, side=10.0, origin=(5.0, 5.0))
    cells = gpd.GeoDataFrame(
        geometry=[shapely.box(8, 1, 10, 3), shapely.box(10, 1, 12, 3), shapely.box(1, 6, 3, 8)]
    )
    layout = make_subspots(spots, "cells", cells=cells)
    edges = subspot_graph(layout)
    # the first two touch along a side (across spots 0 and 1), the third touches nothing
    np.testing.assert_array_equal(edges, [[0, 2], [2, 0]])
    one = make_subspots(square_spots(1), "grid:1")
    assert subspot_graph(one).shape == (2, 0)


def test_subspot_graph_exact_mode_and_errors(hex_circles):
    layout = make_subspots(hex_circles(5, 5, theta=0.3), "rings:2")
    # exact contact only: the same graph on a perfect lattice (float noise is tolerated)
    np.testing.assert_array_equal(subspot_graph(layout, tolerance=0.0), subspot_graph(layout))
    # a large min_shared keeps only long edges: the hexagon sides between neighbouring spots vanish
    long_only = subspot_graph(layout, min_shared=40.0)
    assert long_only.shape[1] == 0
    with pytest.raises(SoscopeInputError, match="tolerance"):
        subspot_graph(layout, tolerance=-1.0)
