"""Array helpers shared by the model's data preparation and its single-cell reference (no model state).

Kept apart from ``_data.py`` so that ``_reference.py``, which ``_data.py`` uses, needs nothing from it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

from ..geometry import SubspotLayout


def standardised_image(data: Any, norm: Any, rows: np.ndarray | None = None) -> np.ndarray:
    """Image features of sub-spot ``rows`` (None: all) standardised with their section's own statistics.

    ``data`` is a :class:`~soscope.model._data.SpotData`, ``norm`` its
    :class:`~soscope.model._data.Normaliser` (whose statistics serve data built without per-section ones).
    """
    f = data.image_features if rows is None else data.image_features[rows]
    if data.image_standardiser is None:  # data built without per-section statistics: the training ones
        return norm.standardise_image(f)
    spots = data.layout.spot_index if rows is None else data.layout.spot_index[rows]
    return data.image_standardiser.standardise(f, data.sections[spots])


def spot_density(x, layout: SubspotLayout, area_unit: float):
    """Return counts per area unit of each spot's footprint (values unchanged for non-count modalities)."""
    return _row_scale(x, area_unit / np.maximum(layout.footprint_area, 1e-12))


def _row_scale(x, factors: np.ndarray):
    if sp.issparse(x):
        return sp.diags(factors) @ x
    return np.asarray(x) * factors[:, None]
