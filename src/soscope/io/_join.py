"""The table ↔ shapes join: which table rows annotate which element, and which shape each row is.

One place for what every reader of a SpatialData table needs (selection, pseudo-spots, scoring, plots):
the annotation keys (spatialdata's :func:`~spatialdata.models.get_table_keys`), the rows of one annotated
element, and the position of each row's instance in the element's index.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from soscope._errors import SoscopeInputError


@dataclass(frozen=True)
class TableAnnotation:
    """What a table annotates (``uns["spatialdata_attrs"]``), read once.

    Attributes
    ----------
    table
        The table's name (used in messages).
    regions
        The elements it annotates.
    region_key, instance_key
        Its ``obs`` columns naming each row's element and instance id.

    """

    table: str
    regions: list[str]
    region_key: str
    instance_key: str

    def rows_of(self, adata: Any, region: str) -> np.ndarray:
        """Return the table rows annotating ``region`` (every row when the table lacks the region column).

        A table annotating one element may omit ``obs[region_key]``; spatialdata's writers always add it,
        hand-made tables sometimes do not.
        """
        if self.region_key not in adata.obs:
            return np.arange(adata.n_obs) if region == self.regions[0] else np.empty(0, np.int64)
        return np.flatnonzero(adata.obs[self.region_key].astype(str).to_numpy() == str(region))

    def instance_ids(self, adata: Any, rows: np.ndarray) -> pd.Index:
        """Return the instance ids (``obs[instance_key]``) of table ``rows``."""
        return pd.Index(adata.obs[self.instance_key].to_numpy()[rows])


def table_annotation(sdata: Any, table: str) -> TableAnnotation:
    """Read what ``table`` annotates; raise naming the fix when it annotates nothing.

    Parameters
    ----------
    sdata
        The SpatialData holding the table.
    table
        The table's name.

    Raises
    ------
    SoscopeInputError
        When ``uns["spatialdata_attrs"]`` lacks region, region_key or instance_key.

    """
    from spatialdata.models import get_table_keys

    adata = sdata.tables[table]
    try:
        region, region_key, instance_key = get_table_keys(adata)
    except (ValueError, KeyError) as err:
        region = region_key = instance_key = None
        cause: Exception | None = err
    else:
        cause = None
    if region is None or not region_key or not instance_key:
        raise SoscopeInputError(
            f"Table '{table}' does not annotate any element (uns['spatialdata_attrs'] lacks region, "
            "region_key or instance_key): parse it with `TableModel.parse(adata, region=..., "
            "region_key=..., instance_key=...)`."
        ) from cause
    regions = [region] if isinstance(region, str) else [str(r) for r in np.asarray(region, object).ravel()]
    return TableAnnotation(table, regions, str(region_key), str(instance_key))


def match_instances(index: Any, ids: Any) -> np.ndarray:
    """Return the position of each instance id in an element's ``index`` (-1 where absent).

    Ids are compared as they are and, when nothing matches that way, as strings: a table read back from
    zarr often holds ``"12"`` where the shapes index holds ``12``.
    """
    index, ids = pd.Index(index), pd.Index(np.asarray(ids))
    pos = index.get_indexer(ids)
    if len(ids) and (pos < 0).all():
        pos = pd.Index(index.astype(str)).get_indexer(pd.Index(ids.astype(str)))
    return np.asarray(pos, dtype=np.int64)
