"""Cut the spots of each section into spatial chunks with a halo deep enough for exact chunked results."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp


@dataclass(frozen=True)
class Chunk:
    """One unit of work: the spots it owns (``core``) and every spot it needs to compute them (``nodes``).

    Both hold global spot positions; ``nodes`` is sorted and contains ``core``.
    """

    core: np.ndarray
    nodes: np.ndarray

    @property
    def core_in_nodes(self) -> np.ndarray:
        """Positions of the core spots within ``nodes``."""
        return np.searchsorted(self.nodes, self.core)


def adjacency(edge_index: np.ndarray, n_spots: int) -> sp.csr_matrix:
    """Sparse boolean CSR adjacency of a ``(2, E)`` edge index."""
    data = np.ones(edge_index.shape[1], dtype=bool)
    return sp.csr_matrix((data, (edge_index[0], edge_index[1])), shape=(n_spots, n_spots))


def expand_hops(adj: sp.csr_matrix, seeds: np.ndarray, n_hops: int) -> np.ndarray:
    """Sorted positions of all spots within ``n_hops`` graph hops of ``seeds`` (seeds included).

    Cost is proportional to the neighbourhood's size, not to the whole graph.
    """
    nodes = np.unique(seeds)
    frontier = nodes
    for _ in range(n_hops):
        if len(frontier) == 0:
            break
        neigh = np.unique(adj[frontier].indices)
        new = np.setdiff1d(neigh, nodes, assume_unique=True)
        nodes = np.union1d(nodes, new)
        frontier = new
    return nodes


def plan_chunks(
    centres: np.ndarray,
    edge_index: np.ndarray,
    *,
    sections: np.ndarray | None = None,
    chunk_spots: int = 2048,
    n_hops: int = 2,
) -> list[Chunk]:
    """Square spatial tiles of about ``chunk_spots`` spots each, per section, each with an ``n_hops`` halo.

    Parameters
    ----------
    centres
        ``(N, 2)`` spot centres.
    edge_index
        ``(2, E)`` spot graph; the halo follows its edges, so it never crosses sections.
    sections
        ``(N,)`` section labels; tiles never mix sections.
    chunk_spots
        Target number of core spots per tile.
    n_hops
        Halo depth in graph hops: the receptive field of the encoder (and of the spatial prior).

    Returns
    -------
    Chunks in a deterministic order (section, then tile row, then tile column); the cores partition
    all spots.

    """
    n = len(centres)
    if sections is None:
        sections = np.zeros(n, dtype=np.int64)
    adj = adjacency(edge_index, n)
    chunks: list[Chunk] = []
    for section in np.unique(sections):
        members = np.flatnonzero(sections == section)
        xy = centres[members]
        lo, hi = xy.min(0), xy.max(0)
        extent = np.maximum(hi - lo, 1e-9)
        n_tiles = max(1, int(np.ceil(len(members) / chunk_spots)))
        # tiles as square as the section's extent allows
        nx = max(1, int(round(np.sqrt(n_tiles * extent[0] / extent[1]))))
        ny = max(1, int(np.ceil(n_tiles / nx)))
        ix = np.minimum((nx * (xy[:, 0] - lo[0]) / extent[0]).astype(np.int64), nx - 1)
        iy = np.minimum((ny * (xy[:, 1] - lo[1]) / extent[1]).astype(np.int64), ny - 1)
        tile = iy * nx + ix
        order = np.argsort(tile, kind="stable")
        bounds = np.flatnonzero(np.diff(tile[order])) + 1
        for group in np.split(members[order], bounds):
            core = np.sort(group)
            chunks.append(Chunk(core=core, nodes=expand_hops(adj, core, n_hops)))
    return chunks
