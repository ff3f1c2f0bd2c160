"""Plots: spots next to soscope's enhanced sub-spots, training curves, accuracy against baselines.

Every function returns a matplotlib :class:`~matplotlib.figure.Figure` made without pyplot (headless: it
renders with Agg when saved) and writes it to ``save=`` when given.
"""

from soscope.pl._maps import enhanced, enhanced_tables
from soscope.pl._training import accuracy, training

__all__ = ["accuracy", "enhanced", "enhanced_tables", "training"]
