"""The user-facing model: set up from a SpatialData, train, enhance, save and load."""

from ._evidence import fit_footprint_ridge, footprint_design, positive
from ._output import output_names
from ._plan import OutputPlan, plan_output
from ._soscope import SoScope

__all__ = [
    "OutputPlan",
    "SoScope",
    "fit_footprint_ridge",
    "footprint_design",
    "output_names",
    "plan_output",
    "positive",
]
