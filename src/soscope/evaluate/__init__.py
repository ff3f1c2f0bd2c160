"""Evaluation: pseudo-spots with sub-spot truth, metrics, naive baselines, and scoring."""

from soscope.evaluate._baselines import even_split, gaussian_interpolation, image_regression, spot_density
from soscope.evaluate._metrics import (
    pearson_per_feature,
    rmse_normalised,
    spearman_per_feature,
    ssim_maps,
    summary,
)
from soscope.evaluate._pseudo import pseudo_spots
from soscope.evaluate._score import BASELINES, score, score_arrays

__all__ = [
    "BASELINES",
    "even_split",
    "gaussian_interpolation",
    "image_regression",
    "pearson_per_feature",
    "pseudo_spots",
    "rmse_normalised",
    "score",
    "score_arrays",
    "spearman_per_feature",
    "spot_density",
    "ssim_maps",
    "summary",
]
