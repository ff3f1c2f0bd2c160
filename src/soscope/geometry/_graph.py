"""Lattice spacing and the spot / sub-spot neighbour graphs (sparse edge lists, never dense matrices)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import shapely
from scipy.spatial import cKDTree

from soscope._errors import SoscopeInputError

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

    from soscope.geometry._layout import SubspotLayout

__all__ = ["lattice_spacing", "spot_graph", "subspot_graph"]


def _as_centres(centres: ArrayLike) -> np.ndarray:
    arr = np.asarray(centres, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise SoscopeInputError(
            f"`centres` must be an (N, 2) array of x, y coordinates; got shape {arr.shape}."
        )
    if not np.isfinite(arr).all():
        raise SoscopeInputError("`centres` contains NaN or infinite coordinates; drop or fix those spots.")
    return arr


def lattice_spacing(centres: ArrayLike) -> float:
    """Centre-to-centre distance of the spot lattice.

    The median nearest-neighbour distance, refined as the median length of all lattice bonds (pairs
    closer than 1.25 times that first estimate). On a perfect lattice both are equal; with position
    jitter the nearest of 6 neighbours is biased short, the median bond is not.

    Parameters
    ----------
    centres
        ``(N, 2)`` spot centres (x, y) in any unit.

    Returns
    -------
    float
        The spacing, in the unit of ``centres``. Coincident duplicates are ignored; the medians make it
        robust to tissue edges and missing spots.

    Raises
    ------
    SoscopeInputError
        With fewer than 2 distinct spots: the spacing is then undefined and must be passed explicitly
        (``make_subspots(..., spacing=...)``, which for a single circle falls back to
        ``2 * radius * 100 / 55``, the Visium ratio; for a single polygon to ``sqrt(area)``).

    """
    xy = _as_centres(centres)
    if len(xy) < 2:
        raise SoscopeInputError(
            f"Cannot infer the lattice spacing from {len(xy)} spot(s); pass `spacing=` explicitly."
        )
    # Duplicated centres (stacked sections, repeated spots) would pull the medians to 0: keep one of each.
    # Centroids of polygons sharing a centre differ by float rounding, so "the same" is relative to the
    # coordinates' magnitude.
    tol = 1e-9 * max(float(np.abs(xy).max()), float(np.ptp(xy, axis=0).max()))
    if tol > 0:
        xy = xy[np.sort(np.unique(np.round(xy / tol), axis=0, return_index=True)[1])]
    if len(xy) < 2 or tol == 0:  # tol == 0: every centre is (0, 0)
        raise SoscopeInputError(
            "All spot centres coincide, so the lattice spacing is undefined: check the spots' coordinates "
            "(or pass `spacing=` to make_subspots)."
        )
    tree = cKDTree(xy)
    dist, _ = tree.query(xy, k=2)
    nn = dist[:, 1]
    nn = nn[nn > tol]  # near-duplicates that straddled a rounding boundary
    if len(nn) == 0:
        nn = dist[:, 1]
    first = float(np.median(nn))
    pairs = tree.query_pairs(r=1.25 * first, output_type="ndarray")
    bonds = np.linalg.norm(xy[pairs[:, 0]] - xy[pairs[:, 1]], axis=1)
    bonds = bonds[bonds > tol]
    return float(np.median(bonds)) if len(bonds) else first


def _sorted_unique_edges(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Symmetrise, drop self-loops and duplicates, sort by (source, target); ``(2, E)`` int64."""
    src = np.asarray(src, dtype=np.int64)
    dst = np.asarray(dst, dtype=np.int64)
    s = np.concatenate([src, dst])
    t = np.concatenate([dst, src])
    keep = s != t
    s, t = s[keep], t[keep]
    if len(s) == 0:
        return np.zeros((2, 0), dtype=np.int64)
    order = np.lexsort((t, s))
    s, t = s[order], t[order]
    first = np.ones(len(s), dtype=bool)
    first[1:] = (s[1:] != s[:-1]) | (t[1:] != t[:-1])
    return np.stack([s[first], t[first]]).astype(np.int64)


def _section_pairs(xy: np.ndarray, spacing: float | None, tolerance: float, k: int | None) -> np.ndarray:
    """Undirected neighbour pairs ``(P, 2)`` of one section (local positions)."""
    n = len(xy)
    if n < 2:
        return np.zeros((0, 2), dtype=np.int64)
    tree = cKDTree(xy)
    if k is not None:
        kk = min(k + 1, n)
        _, nbr = tree.query(xy, k=kk)
        nbr = nbr.reshape(n, kk)
        rows = np.repeat(np.arange(n), kk).reshape(n, kk)
        # drop the point itself (not necessarily in column 0 when centres are duplicated), keep k others
        other = nbr != rows
        other &= np.cumsum(other, axis=1) <= k
        return np.stack([rows[other], nbr[other]], axis=1)
    if spacing is None:
        try:
            spacing = lattice_spacing(xy)
        except SoscopeInputError:
            return np.zeros((0, 2), dtype=np.int64)
    return tree.query_pairs(r=(1.0 + tolerance) * spacing, output_type="ndarray").astype(np.int64)


def spot_graph(
    centres: ArrayLike,
    *,
    sections: ArrayLike | None = None,
    spacing: float | None = None,
    tolerance: float = 0.25,
    k: int | None = None,
) -> np.ndarray:
    """Lattice-neighbour graph of spots.

    Parameters
    ----------
    centres
        ``(N, 2)`` spot centres.
    sections
        Optional length-N labels (any dtype); no edge joins spots of different sections. Sections are
        handled independently, so they may overlap in coordinates or even use different units.
    spacing
        Lattice spacing. Default: :func:`lattice_spacing` of each section separately (a section with a
        single spot gets no edges).
    tolerance
        Relative slack: spots closer than ``(1 + tolerance) * spacing`` are neighbours. The default 0.25
        gives the 6 nearest neighbours on a hexagonal lattice and the 4 edge neighbours on a square one
        (diagonals sit at ``sqrt(2) * spacing``).
    k
        If given, use the ``k`` nearest neighbours of every spot instead of a radius (for irregular
        layouts such as slide-seq beads); the graph is the symmetrised union, so degrees may exceed ``k``.

    Returns
    -------
    np.ndarray
        ``(2, E)`` int64 edge index, both directions present, no self-loops, sorted by source then
        target.

    """
    xy = _as_centres(centres)
    n = len(xy)
    if k is not None and (int(k) != k or k < 1):
        raise SoscopeInputError(f"`k` must be a positive integer or None; got {k!r}.")
    if spacing is not None and not (np.isfinite(spacing) and spacing > 0):
        raise SoscopeInputError(f"`spacing` must be a positive number; got {spacing!r}.")
    if tolerance < 0:
        raise SoscopeInputError(f"`tolerance` must be >= 0; got {tolerance!r}.")
    if sections is None:
        groups = [np.arange(n)]
    else:
        codes, _ = pd.factorize(np.asarray(sections), use_na_sentinel=False)
        if len(codes) != n:
            raise SoscopeInputError(f"`sections` has {len(codes)} labels for {n} spots; give one per spot.")
        order = np.argsort(codes, kind="stable")
        bounds = np.flatnonzero(np.diff(codes[order])) + 1
        groups = np.split(order, bounds)  # one loop iteration per section, not per spot
    src, dst = [], []
    for idx in groups:
        pairs = _section_pairs(xy[idx], spacing, tolerance, None if k is None else int(k))
        src.append(idx[pairs[:, 0]])
        dst.append(idx[pairs[:, 1]])
    if not src:
        return np.zeros((2, 0), dtype=np.int64)
    return _sorted_unique_edges(np.concatenate(src), np.concatenate(dst))


def _shared_lengths(
    start: np.ndarray, end: np.ndarray, owner: np.ndarray, tol: float, chunk: int = 200_000
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Length of boundary shared by each pair of polygons (``i < j``), from collinear edge overlaps.

    Edge f of polygon j counts against edge e of polygon i when both end points of f lie within ``tol``
    of e's line; the shared length is the overlap of f's projection with e. Edges meeting at a corner
    at an angle fail the test (unless ``tol`` approaches their length), so corner contacts add nothing.
    """
    lo, hi = np.minimum(start, end), np.maximum(start, end)
    tree = shapely.STRtree(shapely.linestrings(np.stack([start, end], axis=1)))
    length = np.linalg.norm(end - start, axis=1)
    unit = (end - start) / length[:, None]
    out_i, out_j, out_len = [], [], []
    for c0 in range(0, len(start), chunk):  # bounded memory; one iteration per chunk of edges
        idx = np.arange(c0, min(c0 + chunk, len(start)))
        boxes = shapely.box(lo[idx, 0] - tol, lo[idx, 1] - tol, hi[idx, 0] + tol, hi[idx, 1] + tol)
        q, f = tree.query(boxes)  # bounding-box candidates only; the exact test is below
        e = idx[q]
        keep = owner[e] < owner[f]
        e, f = e[keep], f[keep]
        u = unit[e]
        rel_a, rel_b = start[f] - start[e], end[f] - start[e]
        off_a = np.abs(u[:, 0] * rel_a[:, 1] - u[:, 1] * rel_a[:, 0])
        off_b = np.abs(u[:, 0] * rel_b[:, 1] - u[:, 1] * rel_b[:, 0])
        ta, tb = (u * rel_a).sum(1), (u * rel_b).sum(1)
        overlap = np.minimum(np.maximum(ta, tb), length[e]) - np.maximum(np.minimum(ta, tb), 0.0)
        ok = (off_a <= tol) & (off_b <= tol) & (overlap > 0)
        out_i.append(owner[e[ok]])
        out_j.append(owner[f[ok]])
        out_len.append(overlap[ok])
    i, j, ln = np.concatenate(out_i), np.concatenate(out_j), np.concatenate(out_len)
    if len(i) == 0:
        return i, j, ln
    n = int(owner.max()) + 1
    pair, inverse = np.unique(i * n + j, return_inverse=True)
    return pair // n, pair % n, np.bincount(inverse, weights=ln)


def subspot_size(layout: SubspotLayout) -> float:
    """Return a spot's size: ``sqrt`` of the median summed sub-spot area per spot.

    The tolerances of :func:`subspot_graph` derive from it.
    """
    per_spot = np.bincount(np.asarray(layout.spot_index), weights=np.asarray(layout.area, dtype=np.float64))
    per_spot = per_spot[per_spot > 0]
    return float(np.sqrt(np.median(per_spot))) if len(per_spot) else 1.0


def subspot_graph(
    layout: SubspotLayout,
    *,
    tolerance: float | None = None,
    min_shared: float | None = None,
    size: float | None = None,
) -> np.ndarray:
    """Adjacency of sub-spots that share a boundary segment, within and across spots.

    Two sub-spots are neighbours when the total length of their boundary segments that run along each
    other (collinear to within ``tolerance``) exceeds ``min_shared``. Corner contacts (diagonal grid
    squares, hexagon triple points) share no segment and never count. The tolerance makes the graph
    robust to real lattices that are not exactly regular (integer pixel positions, slight shear), where
    the cells of neighbouring spots leave hairline gaps or overlaps, and to T-junctions between the
    rings of ``rings:N``, whose shared points differ in the last bits.

    The computation runs on the polygons' edges (a bounding-box STRtree query, then a vectorised
    collinear-overlap test), so it is linear in the number of sub-spots.

    Parameters
    ----------
    layout
        The sub-spots.
    tolerance
        Largest offset between two edges that still count as shared. Default ``0.02 * size`` where
        ``size = sqrt(median summed sub-spot area per spot)`` is the spot's size (2 um for Visium): on a
        synthetic hexagonal lattice no edge is lost or added up to +-0.5% position jitter or 2%
        anisotropic scaling, while integer Visium pixel coordinates jitter by ~0.25%.
    min_shared
        Minimum shared length. Default ``tolerance`` (at least ``1e-9 * size``): it rejects the short
        overlaps that jitter creates between parts that merely meet end to end, and is below every edge
        of the built-in schemes up to ``rings:6`` and ``grid:16``.
    size
        The spot size the defaults derive from; default :func:`subspot_size` of ``layout``. Pass the whole
        layout's to find the edges of a part of it (a training chunk) exactly as on the whole.

    Returns
    -------
    np.ndarray
        ``(2, E)`` int64 edge index over sub-spot rows, symmetric, no self-loops, sorted by source then
        target.

    """
    if layout.n_subspots < 2:
        return np.zeros((2, 0), dtype=np.int64)
    size = subspot_size(layout) if size is None else float(size)
    tol = 0.02 * size if tolerance is None else float(tolerance)
    if not tol >= 0:
        raise SoscopeInputError(f"`tolerance` must be >= 0; got {tolerance!r}.")
    if min_shared is None:
        min_shared = max(tol, 1e-9 * size)
    # a floor for float noise: exactly shared edges of neighbouring spots differ in the last bits
    start, end, owner = layout.polygons.edges()
    i, j, shared = _shared_lengths(start, end, owner, max(tol, 1e-9 * size))
    ok = shared > min_shared
    return _sorted_unique_edges(i[ok], j[ok])
