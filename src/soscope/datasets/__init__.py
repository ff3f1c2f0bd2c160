"""Datasets: a synthetic tissue with known sub-spot truth."""

from soscope.datasets._synthetic import synthetic

__all__ = ["synthetic"]
