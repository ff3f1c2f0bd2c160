"""Sub-spot geometry: splitting spots into sub-spot polygons, and the spot / sub-spot graphs."""

from soscope.geometry._graph import lattice_spacing, spot_graph, subspot_graph, subspot_size
from soscope.geometry._layout import SubspotLayout
from soscope.geometry._polygons import PolygonArray
from soscope.geometry._subspots import (
    ORDER_MIN,
    lattice_orientation,
    make_subspots,
    parse_subspot_scheme,
    spot_centres,
    spot_footprints,
    spot_kind,
)

__all__ = [
    "ORDER_MIN",
    "PolygonArray",
    "SubspotLayout",
    "lattice_orientation",
    "lattice_spacing",
    "make_subspots",
    "parse_subspot_scheme",
    "spot_centres",
    "spot_footprints",
    "spot_graph",
    "spot_kind",
    "subspot_graph",
    "subspot_size",
]
