"""Sub-spot geometry: splitting spots into sub-spot polygons, and the spot / sub-spot graphs."""

from soscope.geometry._graph import lattice_spacing, spot_graph, subspot_graph, subspot_size
from soscope.geometry._layout import SubspotLayout
from soscope.geometry._polygons import PolygonArray
from soscope.geometry._subspots import make_subspots, parse_subspot_scheme, spot_centres, spot_footprints

__all__ = [
    "PolygonArray",
    "SubspotLayout",
    "lattice_spacing",
    "make_subspots",
    "parse_subspot_scheme",
    "spot_centres",
    "spot_footprints",
    "spot_graph",
    "subspot_graph",
    "subspot_size",
]
