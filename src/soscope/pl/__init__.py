"""Plots: spots next to soscope's enhanced sub-spots, training curves, accuracy against baselines.

Every function returns a matplotlib :class:`~matplotlib.figure.Figure` made without pyplot (headless: it
renders with Agg when saved) and writes it to ``save=`` when given. :func:`enhanced` draws the shapes with
spatialdata-plot when it is installed (``soscope[plot]``), else with matplotlib alone.
"""

from soscope.pl._maps import BACKENDS, enhanced, enhanced_tables
from soscope.pl._training import accuracy, training

__all__ = ["BACKENDS", "accuracy", "enhanced", "enhanced_tables", "training"]
