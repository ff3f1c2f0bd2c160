"""Combine several SpatialData objects (samples, stores) into one to train a single model on them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from soscope._errors import SoscopeInputError


def combine(sdatas: Sequence[Any] | Mapping[str, Any]) -> Any:
    """One in-memory SpatialData holding every element of ``sdatas``, each name suffixed ``-<key>``.

    Tables are concatenated (they must share features and ``spatialdata_attrs`` keys); coordinate systems
    with the same name are merged. Each sample's spots element stays its own region, hence its own section
    (and batch): spots are never linked across samples.

    Parameters
    ----------
    sdatas
        A list of SpatialData (keys ``"0"``, ``"1"``, ...) or a dict key → SpatialData.

    Returns
    -------
    The combined SpatialData (its elements are the inputs' elements, not copies).

    Raises
    ------
    SoscopeInputError
        Fewer than one object, or tables that cannot be concatenated.

    """
    import spatialdata as sd

    parts = dict(sdatas) if isinstance(sdatas, Mapping) else {str(i): s for i, s in enumerate(sdatas)}
    if not parts:
        raise SoscopeInputError("combine() needs at least one SpatialData.")
    bad = [k for k, v in parts.items() if not isinstance(v, sd.SpatialData)]
    if bad:
        raise SoscopeInputError(
            f"combine(): the items {bad} are not SpatialData objects; pass SpatialData "
            "(e.g. sd.read_zarr(path))."
        )
    if len(parts) == 1:
        return next(iter(parts.values()))
    try:
        return sd.concatenate(parts, concatenate_tables=True, merge_coordinate_systems_on_name=True)
    except Exception as e:  # spatialdata raises ValueError/KeyError/AssertionError for incompatible tables
        raise SoscopeInputError(
            f"Could not combine the SpatialData objects {list(parts)} ({type(e).__name__}: {e}): "
            "their tables must share features and spatialdata_attrs (region_key, instance_key); or train "
            "on one of them."
        ) from e
