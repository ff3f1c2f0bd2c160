"""The one helper that turns spatialdata transformations into 2-D affine matrices."""

from __future__ import annotations

from typing import Any

import numpy as np


def affine_xy(element: Any, coordinate_system: str) -> np.ndarray:
    """Return the 3×3 affine matrix mapping ``element``'s intrinsic (x, y) to ``coordinate_system``."""
    from spatialdata.transformations import get_transformation

    t = get_transformation(element, to_coordinate_system=coordinate_system)
    return np.asarray(t.to_affine_matrix(input_axes=("x", "y"), output_axes=("x", "y")), dtype=np.float64)
