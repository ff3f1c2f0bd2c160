"""Datasets: a synthetic tissue with known sub-spot truth, the real example shipped in the package, and
loaders of the real high-resolution data used by the benchmarks (read from disk, never downloaded).
"""

from soscope.datasets._example import example
from soscope.datasets._real import load_merfish_mini, load_verafish, shared_data_dir
from soscope.datasets._synthetic import synthetic

__all__ = ["example", "load_merfish_mini", "load_verafish", "shared_data_dir", "synthetic"]
