"""The user-facing model: set up from a SpatialData, train, enhance, save and load."""

from ._evidence import fit_footprint_ridge, footprint_design, positive
from ._output import output_names, spot_table_name
from ._plan import OutputPlan, plan_output
from ._reference import CellTypeReference, deconvolve
from ._soscope import SoScope

__all__ = [
    "CellTypeReference",
    "OutputPlan",
    "SoScope",
    "deconvolve",
    "fit_footprint_ridge",
    "footprint_design",
    "output_names",
    "plan_output",
    "positive",
    "spot_table_name",
]
