"""plan_chunks: cores partition the spots, halos hold every k-hop neighbour and never cross sections."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.sparse.csgraph import shortest_path

from soscope.geometry import spot_graph
from soscope.tiling import Chunk, adjacency, expand_hops, plan_chunks


def _hex(n_rows: int, n_cols: int, spacing: float = 100.0, origin=(0.0, 0.0)) -> np.ndarray:
    rows, cols = np.meshgrid(np.arange(n_rows), np.arange(n_cols), indexing="ij")
    x = cols * spacing + (rows % 2) * spacing / 2
    y = rows * spacing * np.sqrt(3) / 2
    return np.stack([x.ravel(), y.ravel()], 1) + np.asarray(origin)


@pytest.fixture(scope="module")
def two_sections():
    """Two hexagonal sections that touch (a lattice spacing apart), plus one lone spot section."""
    a = _hex(14, 18)
    b = _hex(10, 9, origin=(18 * 100.0, 0.0))  # continues the lattice of A to the right
    c = np.array([[5000.0, 5000.0]])
    centres = np.vstack([a, b, c])
    sections = np.array(["A"] * len(a) + ["B"] * len(b) + ["C"])
    edges = spot_graph(centres, sections=sections)
    return centres, sections, edges


def _hops(edges: np.ndarray, n: int) -> np.ndarray:
    return shortest_path(adjacency(edges, n).astype(float), unweighted=True, directed=True)


@pytest.mark.parametrize("chunk_spots", [1, 7, 40, 100, 10_000])
@pytest.mark.parametrize("n_hops", [0, 1, 2, 3])
def test_cores_partition_and_halos_are_exact(two_sections, chunk_spots, n_hops):
    centres, sections, edges = two_sections
    n = len(centres)
    chunks = plan_chunks(centres, edges, sections=sections, chunk_spots=chunk_spots, n_hops=n_hops)
    cores = np.concatenate([c.core for c in chunks])
    assert np.array_equal(np.sort(cores), np.arange(n)), "cores must partition the spots"
    dist = _hops(edges, n)
    for c in chunks:
        assert isinstance(c, Chunk)
        assert len(c.core) > 0
        assert np.all(np.diff(c.nodes) > 0), "nodes sorted and unique"
        assert np.array_equal(c.nodes[c.core_in_nodes], c.core)
        # one section per chunk, core and halo alike
        assert len(np.unique(sections[c.nodes])) == 1
        # the halo is exactly the n_hops neighbourhood of the core
        within = np.flatnonzero(dist[c.core].min(0) <= n_hops)
        assert np.array_equal(c.nodes, within)


def test_touching_sections_would_be_joined_without_labels(two_sections):
    """The sections touch: a graph without section labels links them; with labels no edge crosses."""
    centres, sections, edges = two_sections
    assert np.all(sections[edges[0]] == sections[edges[1]])
    joined = spot_graph(centres)
    assert np.any(sections[joined[0]] != sections[joined[1]])


def test_chunk_sizes_and_determinism(two_sections):
    centres, sections, edges = two_sections
    chunks = plan_chunks(centres, edges, sections=sections, chunk_spots=40, n_hops=2)
    again = plan_chunks(centres, edges, sections=sections, chunk_spots=40, n_hops=2)
    assert len(chunks) == len(again)
    for a, b in zip(chunks, again, strict=True):
        assert np.array_equal(a.core, b.core) and np.array_equal(a.nodes, b.nodes)
    # several tiles per large section, sizes around the target
    per_section = {s: sum(sections[c.core[0]] == s for c in chunks) for s in "ABC"}
    assert per_section["A"] >= 4 and per_section["B"] >= 2 and per_section["C"] == 1
    assert max(len(c.core) for c in chunks) <= 3 * 40
    # one chunk per section when the target exceeds the section
    assert len(plan_chunks(centres, edges, sections=sections, chunk_spots=10_000)) == 3


def test_no_sections_and_no_edges():
    centres = _hex(6, 6)
    empty = np.zeros((2, 0), dtype=np.int64)
    chunks = plan_chunks(centres, empty, chunk_spots=10, n_hops=2)
    assert np.array_equal(np.sort(np.concatenate([c.core for c in chunks])), np.arange(36))
    assert all(np.array_equal(c.core, c.nodes) for c in chunks)


def test_degenerate_extent():
    """Spots on a line (zero height) still tile."""
    centres = np.stack([np.arange(50) * 100.0, np.zeros(50)], 1)
    edges = spot_graph(centres)
    chunks = plan_chunks(centres, edges, chunk_spots=10, n_hops=1)
    assert np.array_equal(np.sort(np.concatenate([c.core for c in chunks])), np.arange(50))
    assert len(chunks) >= 4


def test_expand_hops_matches_shortest_paths(two_sections):
    centres, _, edges = two_sections
    n = len(centres)
    adj = adjacency(edges, n)
    assert sp.issparse(adj)
    dist = _hops(edges, n)
    seeds = np.array([0, 17, 300])
    for k in range(4):
        assert np.array_equal(expand_hops(adj, seeds, k), np.flatnonzero(dist[seeds].min(0) <= k))
