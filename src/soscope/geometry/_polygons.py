"""Polygons as flat coordinate arrays: the memory-light store of sub-spot geometry.

A shapely polygon costs about 1 kB (Python object, GEOS rings, envelope); a whole-slide layout has
millions of sub-spots (1M Visium spots → 7M hex7 parts, 7 GB as shapely objects). :class:`PolygonArray`
keeps their vertices in shapely's ragged-array layout (16 bytes per vertex, ~100 bytes per hex7 part)
and builds shapely geometries only for the rows asked, e.g. one tile or one parquet row group at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import shapely

__all__ = ["PolygonArray"]


def _take_ranges(offsets: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return the positions of the ranges ``offsets[i]:offsets[i+1]`` for ``i`` in ``idx``, concatenated.

    Also returns the offsets of the concatenated ranges.
    """
    starts = offsets[idx]
    lengths = offsets[idx + 1] - starts
    new_offsets = np.zeros(len(idx) + 1, dtype=np.int64)
    np.cumsum(lengths, out=new_offsets[1:])
    flat = np.repeat(starts - new_offsets[:-1], lengths) + np.arange(new_offsets[-1], dtype=np.int64)
    return flat, new_offsets


@dataclass(frozen=True)
class PolygonArray:
    """``M`` polygons (or multipolygons) stored as coordinate arrays, in shapely's ragged-array layout.

    Attributes
    ----------
    coords
        ``(V, 2)`` float64 vertices; every ring is closed (its last vertex repeats its first).
    ring_offsets
        ``(R + 1,)`` int64: ring ``r`` is ``coords[ring_offsets[r]:ring_offsets[r + 1]]``.
    part_offsets
        ``(P + 1,)`` int64: polygon part ``p`` has rings ``part_offsets[p]:part_offsets[p + 1]``, the
        exterior first, then its holes.
    geom_offsets
        ``(M + 1,)`` int64: geometry ``i`` has parts ``geom_offsets[i]:geom_offsets[i + 1]``.
    multi
        ``(M,)`` bool: geometry ``i`` is a MultiPolygon (else a Polygon with exactly one part).

    """

    coords: np.ndarray
    ring_offsets: np.ndarray
    part_offsets: np.ndarray
    geom_offsets: np.ndarray
    multi: np.ndarray

    # ------------------------------------------------------------------------------------ construction
    @classmethod
    def from_rings(cls, rings: list[np.ndarray], origin: np.ndarray | None = None) -> PolygonArray:
        """Build polygons of one ring each, K per spot: ``rings[k]`` is ``(N, nv_k, 2)``, closed.

        Row ``i * K + k`` is part ``k`` of spot ``i`` (the order of generated sub-spot layouts). With
        ``origin`` ``(N, 2)``, the rings are relative to it and may be shared by all spots (``(1, nv_k, 2)``).
        The vertices are written straight into one array (no per-part copies of a whole slide's).
        """
        n = len(origin) if origin is not None else rings[0].shape[0]
        sizes = np.array([r.shape[1] for r in rings], dtype=np.int64)
        coords = np.empty((n, int(sizes.sum()), 2))
        start = 0
        for ring, size in zip(rings, sizes, strict=True):
            block = coords[:, start : start + size]
            block[...] = ring if origin is None else origin[:, None, :] + ring
            start += size
        coords = coords.reshape(-1, 2)
        m = n * len(rings)
        ring_offsets = np.zeros(m + 1, dtype=np.int64)
        np.cumsum(np.tile(sizes, n), out=ring_offsets[1:])
        one = np.arange(m + 1, dtype=np.int64)
        return cls(coords, ring_offsets, one, one.copy(), np.zeros(m, dtype=bool))

    @classmethod
    def from_shapely(cls, geoms: np.ndarray) -> PolygonArray:
        """Build from an array of shapely Polygons / MultiPolygons (empty ones allowed)."""
        geoms = np.asarray(geoms, dtype=object)
        if len(geoms) == 0:
            return cls.empty()
        kind = shapely.get_type_id(geoms)
        bad = ~np.isin(kind, (3, 6))
        if bad.any():
            raise TypeError(
                f"only Polygon and MultiPolygon geometries can be stored; got type ids {np.unique(kind[bad])}"
            )
        multi = kind == 6
        _, coords, (ring_offsets, part_offsets, geom_offsets) = _to_ragged_multipolygons(geoms)
        part_offsets, geom_offsets = part_offsets.astype(np.int64), geom_offsets.astype(np.int64)
        rings_per_part = np.diff(part_offsets)
        if (rings_per_part == 0).any():  # empty polygons are exported as a part without rings: drop it
            keep = rings_per_part > 0
            part_offsets = np.concatenate([[0], np.cumsum(rings_per_part[keep])])
            geom_offsets = np.concatenate([[0], np.cumsum(keep)])[geom_offsets]
        return cls(
            np.ascontiguousarray(coords, dtype=np.float64),
            ring_offsets.astype(np.int64),
            part_offsets,
            geom_offsets,
            multi,
        )

    @classmethod
    def empty(cls) -> PolygonArray:
        """Return an empty array."""
        zero = np.zeros(1, dtype=np.int64)
        return cls(np.zeros((0, 2)), zero, zero.copy(), zero.copy(), np.zeros(0, dtype=bool))

    @classmethod
    def concatenate(cls, arrays: list[PolygonArray]) -> PolygonArray:
        """Join several arrays, in order."""
        if len(arrays) == 1:
            return arrays[0]

        def cat_offsets(name: str, base_of) -> np.ndarray:
            parts, base = [np.zeros(1, dtype=np.int64)], 0
            for a in arrays:
                off = getattr(a, name)
                parts.append(off[1:] + base)
                base += base_of(a)
            return np.concatenate(parts)

        return cls(
            np.concatenate([a.coords for a in arrays]),
            cat_offsets("ring_offsets", lambda a: len(a.coords)),
            cat_offsets("part_offsets", lambda a: len(a.ring_offsets) - 1),
            cat_offsets("geom_offsets", lambda a: len(a.part_offsets) - 1),
            np.concatenate([a.multi for a in arrays]),
        )

    # ------------------------------------------------------------------------------------------ access
    def __len__(self) -> int:
        return len(self.geom_offsets) - 1

    @property
    def nbytes(self) -> int:
        """Bytes held by the arrays."""
        return sum(
            a.nbytes
            for a in (self.coords, self.ring_offsets, self.part_offsets, self.geom_offsets, self.multi)
        )

    def __getitem__(self, rows) -> PolygonArray:
        """Return the polygons at ``rows`` (integer positions, a boolean mask or a slice), in that order."""
        if isinstance(rows, slice):
            rows = np.arange(len(self))[rows]
        rows = np.asarray(rows)
        if rows.dtype == bool:
            rows = np.flatnonzero(rows)
        rows = rows.astype(np.int64, copy=False).ravel()
        if len(rows) and (rows.min() < -len(self) or rows.max() >= len(self)):
            raise IndexError(f"row index out of range for {len(self)} polygons")
        rows = np.where(rows < 0, rows + len(self), rows)
        parts, geom_offsets = _take_ranges(self.geom_offsets, rows)
        rings, part_offsets = _take_ranges(self.part_offsets, parts)
        vertices, ring_offsets = _take_ranges(self.ring_offsets, rings)
        return PolygonArray(self.coords[vertices], ring_offsets, part_offsets, geom_offsets, self.multi[rows])

    def to_shapely(self) -> np.ndarray:
        """``(M,)`` object array of shapely Polygons / MultiPolygons."""
        if len(self) == 0:
            return np.empty(0, dtype=object)
        geoms = shapely.from_ragged_array(
            shapely.GeometryType.MULTIPOLYGON,
            self.coords,
            (self.ring_offsets, self.part_offsets, self.geom_offsets),
        )
        single = ~self.multi
        if single.any():  # one-part MultiPolygons back to the Polygons they were
            geoms[single] = shapely.get_geometry(geoms[single], 0)
            empty = single & (np.diff(self.geom_offsets) == 0)
            geoms[empty] = shapely.Polygon()
        return np.asarray(geoms, dtype=object)

    def transform(self, affine: np.ndarray) -> PolygonArray:
        """Map the polygons by the 2-D affine ``affine`` (3 × 3, acting on column vectors ``(x, y, 1)``)."""
        affine = np.asarray(affine, dtype=np.float64)
        coords = self.coords @ affine[:2, :2].T + affine[:2, 2]
        return PolygonArray(coords, self.ring_offsets, self.part_offsets, self.geom_offsets, self.multi)

    def bounds(self) -> np.ndarray:
        """``(M, 4)`` ``xmin, ymin, xmax, ymax`` of each geometry (NaN for empty ones)."""
        out = np.full((len(self), 4), np.nan)
        vstart = self.ring_offsets[self.part_offsets[self.geom_offsets]]  # first vertex of each geometry
        n_vertices = np.diff(vstart)
        has = n_vertices > 0
        if has.any():
            starts = vstart[:-1][has]
            out[has, :2] = np.minimum.reduceat(self.coords, starts, axis=0)
            out[has, 2:] = np.maximum.reduceat(self.coords, starts, axis=0)
        return out

    def edges(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Return every boundary segment (exteriors and holes): start, end ``(S, 2)`` and owning row ``(S,)``.

        Zero-length segments (repeated vertices) are left out.
        """
        n_rings = len(self.ring_offsets) - 1
        ring_of_vertex = np.repeat(np.arange(n_rings), np.diff(self.ring_offsets))
        part_of_ring = np.repeat(np.arange(len(self.part_offsets) - 1), np.diff(self.part_offsets))
        geom_of_part = np.repeat(np.arange(len(self)), np.diff(self.geom_offsets))
        same = ring_of_vertex[1:] == ring_of_vertex[:-1]
        start, end = self.coords[:-1][same], self.coords[1:][same]
        owner = geom_of_part[part_of_ring[ring_of_vertex[:-1][same]]]
        keep = (start != end).any(axis=1)
        return start[keep], end[keep], owner[keep].astype(np.int64)


def _to_ragged_multipolygons(geoms: np.ndarray):
    """Export Polygons / MultiPolygons in shapely's ragged layout, as MultiPolygons (3 offset levels)."""
    kind = shapely.get_type_id(geoms)
    if (kind == 3).all():  # all Polygons: add the one-part-per-geometry level
        gtype, coords, (ring_offsets, geom_offsets) = shapely.to_ragged_array(geoms, include_z=False)
        return gtype, coords, (ring_offsets, geom_offsets, np.arange(len(geoms) + 1, dtype=np.int64))
    # mixed Polygons and MultiPolygons are exported as MultiPolygons
    return shapely.to_ragged_array(geoms, include_z=False)
