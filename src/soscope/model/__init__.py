"""The user-facing model: set up from a SpatialData, train, enhance, save and load."""

from ._soscope import SoScope

__all__ = ["SoScope"]
