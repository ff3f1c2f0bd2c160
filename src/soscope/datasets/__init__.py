"""Datasets: a synthetic tissue with known sub-spot truth, the shipped real example, real data loaders.

The loaders read the real high-resolution data used by the benchmarks from disk (never downloaded).
"""

from soscope.datasets._example import example
from soscope.datasets._real import load_merfish_mini, load_verafish, shared_data_dir
from soscope.datasets._synthetic import synthetic

__all__ = ["example", "load_merfish_mini", "load_verafish", "shared_data_dir", "synthetic"]
