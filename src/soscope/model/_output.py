"""Turn predictions into the elements written back: sub-spot shapes and enhanced tables."""

from __future__ import annotations

import anndata as ad
import geopandas as gpd
import numpy as np
import pandas as pd

from .._names import slug
from ._setup import Prepared

REGION_KEY = "region"
INSTANCE_KEY = "instance_id"


def output_names(prepared: Prepared, key_added: str) -> tuple[dict[str, str], dict[str, str]]:
    """Names of the written elements: spots element → shapes name, modality → table name."""
    sel = prepared.selection
    shapes = {name: f"{name}_{key_added}" for name in sel.spots}
    mods = [m.name for m in prepared.data.modalities]
    if len(mods) == 1:
        tables = {mods[0]: f"{sel.table}_{key_added}"}
    else:
        tables = {m: f"{sel.table}_{key_added}_{slug(m)}" for m in mods}
    return shapes, tables


def results_to_elements(sdata, prepared: Prepared, predictions: list[dict[str, np.ndarray]], *, key_added: str, uns: dict):
    """Sub-spot shapes (one per spots element) and enhanced tables (one per modality), parsed and linked."""
    from spatialdata.models import ShapesModel, TableModel
    from spatialdata.transformations import get_transformation

    sel = prepared.selection
    data = prepared.data
    shape_names, table_names = output_names(prepared, key_added)
    shapes: dict[str, gpd.GeoDataFrame] = {}
    obs_parts = []
    for name in sel.spots:
        layout = prepared.layouts[name]
        positions = sel.spots_of(name)
        parent_ids = np.asarray(sel.instance_ids)[positions][layout.spot_index]
        gdf = gpd.GeoDataFrame(
            {"spot_id": parent_ids, "subspot": layout.subspot.astype(np.int64)},
            geometry=gpd.GeoSeries(layout.geometry),
        )
        gdf.index = pd.RangeIndex(layout.n_subspots)
        transformations = get_transformation(sdata.shapes[name], get_all=True)
        shapes[shape_names[name]] = ShapesModel.parse(gdf, transformations=dict(transformations))
        obs_parts.append(
            pd.DataFrame(
                {
                    REGION_KEY: shape_names[name],
                    INSTANCE_KEY: np.arange(layout.n_subspots, dtype=np.int64),
                    "spot_id": parent_ids,
                    "subspot": layout.subspot.astype(np.int64),
                    "section": np.asarray(data.sections)[positions][layout.spot_index],
                    "footprint_weight": layout.footprint_weight.astype(np.float32),
                }
            )
        )
    obs = pd.concat(obs_parts, ignore_index=True)
    obs[REGION_KEY] = pd.Categorical(obs[REGION_KEY], categories=list(shape_names.values()))
    obs["section"] = obs["section"].astype("category")
    obs.index = obs.index.astype(str)
    # prediction rows follow the concatenated layout, which is element by element like obs
    src_var = sdata.tables[sel.table].var
    tables = {}
    for spec, pred in zip(data.modalities, predictions, strict=True):
        mask = prepared.modality_masks[spec.name]
        var = src_var.iloc[np.flatnonzero(mask)].copy()
        var = var.loc[data.feature_names[[m.name for m in data.modalities].index(spec.name)]] if len(var) else var
        adata = ad.AnnData(X=pred["enhanced"], obs=obs.copy(), var=var)
        if "std" in pred:
            adata.layers["std"] = pred["std"]
        adata.uns["soscope"] = {**uns, "modality": spec.name, "likelihood_used": spec.likelihood}
        tables[table_names[spec.name]] = TableModel.parse(
            adata, region=list(shape_names.values()), region_key=REGION_KEY, instance_key=INSTANCE_KEY
        )
    return shapes, tables
