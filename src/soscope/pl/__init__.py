"""Plots: spots next to soscope's enhanced sub-spots, training curves, accuracy against baselines.

Every function returns a matplotlib :class:`~matplotlib.figure.Figure` made without pyplot (headless: it
renders with Agg when saved) and writes it to ``save=`` when given. :func:`enhanced` draws the shapes with
spatialdata-plot when it is installed (``soscope[plot]``), else with matplotlib alone. :func:`cell_types` maps
the cell-type shares of an enhancement with a single-cell reference, at spot and sub-spot resolution.
"""

from soscope.pl._maps import BACKENDS, enhanced, enhanced_tables
from soscope.pl._training import accuracy, training
from soscope.pl._types import cell_types

__all__ = ["BACKENDS", "accuracy", "cell_types", "enhanced", "enhanced_tables", "training"]
