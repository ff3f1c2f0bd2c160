"""The user-facing model: set up from a SpatialData, train, enhance, save and load."""

from ._evidence import fit_footprint_ridge, footprint_design, positive
from ._output import output_names
from ._soscope import SoScope

__all__ = ["SoScope", "fit_footprint_ridge", "footprint_design", "output_names", "positive"]
