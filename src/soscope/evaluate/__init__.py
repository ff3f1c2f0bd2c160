"""Evaluation: pseudo-spots with sub-spot truth, metrics, baselines, scoring, domains, markers, references."""

from soscope.evaluate._baselines import (
    count_oracle,
    even_split,
    expected_counts_oracle,
    gaussian_interpolation,
    image_regression,
    image_ridge_split,
    interpolation_split,
    spot_density,
)
from soscope.evaluate._domains import DOMAIN_METHODS, TRUTH_K_RANGE, cluster_truth, domains, markers
from soscope.evaluate._metrics import (
    pearson_per_feature,
    rmse_normalised,
    spearman_per_feature,
    ssim_maps,
    summary,
)
from soscope.evaluate._pseudo import pseudo_spots
from soscope.evaluate._reference import (
    REFERENCE_K_RANGE,
    REFERENCE_METHODS,
    reference_from_cells,
    score_cell_types,
)
from soscope.evaluate._score import BASELINES, ORACLES, score, score_arrays

__all__ = [
    "BASELINES",
    "DOMAIN_METHODS",
    "ORACLES",
    "REFERENCE_K_RANGE",
    "REFERENCE_METHODS",
    "TRUTH_K_RANGE",
    "cluster_truth",
    "count_oracle",
    "domains",
    "even_split",
    "expected_counts_oracle",
    "gaussian_interpolation",
    "image_regression",
    "image_ridge_split",
    "interpolation_split",
    "markers",
    "pearson_per_feature",
    "pseudo_spots",
    "reference_from_cells",
    "rmse_normalised",
    "score",
    "score_arrays",
    "score_cell_types",
    "spearman_per_feature",
    "spot_density",
    "ssim_maps",
    "summary",
]
