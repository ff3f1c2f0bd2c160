"""The sub-spot layout: the one structure every stage after geometry reads."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from soscope.geometry._polygons import PolygonArray


@dataclass(frozen=True)
class SubspotLayout:
    """Sub-spots of N spots, stored ragged (CSR style) so spots may have different numbers of sub-spots.

    All coordinates are in the *intrinsic* coordinate system of the spots element (the one its geometry
    is written in); transformations are carried separately by the caller.

    Attributes
    ----------
    polygons
        The ``M`` sub-spot polygons (:class:`~soscope.geometry.PolygonArray`: vertex arrays, about 100
        bytes per hex7 part where a shapely polygon costs about 1 kB), sorted by parent then ``subspot``;
        ``None`` where they are not carried (the per-chunk copies that inference ships to workers).
        :attr:`geometry` builds the shapely objects.
    spot_index
        ``(M,)`` int64, position (0..N-1) of each sub-spot's parent in the spots' row order.
    subspot
        ``(M,)`` int32, index of the sub-spot within its parent (0..K_i-1).
    offsets
        ``(N+1,)`` int64, sub-spots of spot ``i`` are rows ``offsets[i]:offsets[i+1]``.
    area
        ``(M,)`` float64 polygon areas (intrinsic units squared).
    footprint_weight
        ``(M,)`` float64 in [0, 1]: area of the polygon inside the parent's measured footprint / polygon
        area. A spot's expected counts are ``sum_k footprint_weight_k * expected_counts_in_polygon_k``.
    centroid
        ``(M, 2)`` float64 polygon centroids (x, y).
    scheme
        The scheme that made them (``"hex7"``, ``"grid:3"``, ``"rings:2"``, or ``"cells:<element>"``).
    source_index
        ``(M,)`` int64 or ``None``. For ``"cells"`` layouts: the row *position* (0..C-1) in the ``cells``
        GeoDataFrame of each sub-spot (map to labels with ``cells.index[source_index]``); ``None`` for
        layouts generated from a scheme.

    """

    polygons: PolygonArray | None
    spot_index: np.ndarray
    subspot: np.ndarray
    offsets: np.ndarray
    area: np.ndarray
    footprint_weight: np.ndarray
    centroid: np.ndarray
    scheme: str
    source_index: np.ndarray | None = None

    @property
    def geometry(self) -> np.ndarray:
        """``(M,)`` object array of shapely polygons, built anew on each access.

        On large layouts slice :attr:`polygons` first: 1M Visium spots have 7M hex7 parts, about 7 GB as
        shapely objects.
        """
        if self.polygons is None:
            raise ValueError("this layout does not carry its polygons")
        return self.polygons.to_shapely()

    @property
    def n_spots(self) -> int:
        """Number of parent spots N."""
        return len(self.offsets) - 1

    @property
    def n_subspots(self) -> int:
        """Total number of sub-spots M."""
        return len(self.spot_index)

    @property
    def footprint_area(self) -> np.ndarray:
        """``(N,)`` measured area of each spot: the sum over its sub-spots of area × footprint weight."""
        return np.bincount(self.spot_index, weights=self.area * self.footprint_weight, minlength=self.n_spots)

    @property
    def counts_per_spot(self) -> np.ndarray:
        """``(N,)`` number of sub-spots of each spot."""
        return np.diff(self.offsets)

    def rows_of(self, spots: np.ndarray) -> np.ndarray:
        """Sub-spot rows of the given spot positions, in the order of ``spots`` (vectorised, no loop)."""
        spots = np.asarray(spots, dtype=np.int64)
        counts = self.counts_per_spot[spots]
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        return np.repeat(self.offsets[spots] - starts, counts) + np.arange(counts.sum(), dtype=np.int64)

    def subset(self, spots: np.ndarray) -> SubspotLayout:
        """Layout restricted to the given spot positions (re-indexed 0..len(spots)-1, in that order)."""
        spots = np.asarray(spots, dtype=np.int64)
        counts = self.counts_per_spot[spots]
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        rows = self.rows_of(spots)
        return SubspotLayout(
            polygons=None if self.polygons is None else self.polygons[rows],
            spot_index=np.repeat(np.arange(len(spots), dtype=np.int64), counts),
            subspot=self.subspot[rows],
            offsets=offsets,
            area=self.area[rows],
            footprint_weight=self.footprint_weight[rows],
            centroid=self.centroid[rows],
            scheme=self.scheme,
            source_index=None if self.source_index is None else self.source_index[rows],
        )
