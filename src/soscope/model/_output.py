"""Turn predictions into the elements written back: sub-spot shapes and enhanced tables."""

from __future__ import annotations

import anndata as ad
import geopandas as gpd
import numpy as np
import pandas as pd

from .._constants import SoscopeKeys, SoscopeLayers
from .._names import slug
from ._setup import Prepared

REGION_KEY = "region"
INSTANCE_KEY = "instance_id"


def _categorical(labels: np.ndarray, index: np.ndarray) -> pd.Categorical:
    """``labels[index]`` as a categorical, without building one string per row."""
    categories, codes = np.unique(labels, return_inverse=True)
    return pd.Categorical.from_codes(codes[index], categories=categories.astype(str).tolist())


def subspot_columns(parent_ids: np.ndarray, layout) -> pd.DataFrame:
    """Return the columns of a sub-spot shapes element: parent ``spot_id`` and ``subspot`` (RangeIndex)."""
    return pd.DataFrame(
        {SoscopeKeys.SPOT_ID: parent_ids, SoscopeKeys.SUBSPOT: layout.subspot.astype(np.int64)},
        index=pd.RangeIndex(layout.n_subspots),
    )


def parent_ids(prepared: Prepared, name: str) -> np.ndarray:
    """Instance ids of the parent spot of each sub-spot of spots element ``name``."""
    sel = prepared.selection
    return np.asarray(sel.instance_ids)[sel.spots_of(name)][prepared.layouts[name].spot_index]


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


def spot_table_name(prepared: Prepared, key_added: str) -> str:
    """Name of the spot-level table written with a single-cell reference (each spot's type abundances)."""
    return f"{prepared.selection.table}_{key_added}_spots"


def cell_type_outputs(abundance: np.ndarray, cell_types: list[str], cells: bool) -> tuple[dict, pd.DataFrame]:
    """``obsm`` entries and ``obs`` columns of a table given each row's ``(n, T)`` type abundance.

    ``obsm["cell_type_abundance"]`` always; for segmented cells (``cells=True``) also each cell's type
    probabilities ``obsm["cell_type_probability"]`` and its most likely type ``obs["cell_type"]``.
    """
    a = np.asarray(abundance, dtype=np.float32)
    obsm = {SoscopeKeys.CELL_TYPE_ABUNDANCE: a}
    obs = pd.DataFrame(index=pd.RangeIndex(len(a)))
    if cells:
        total = a.sum(1, keepdims=True)
        prob = np.where(total > 0, a / np.maximum(total, 1e-30), 1.0 / a.shape[1]).astype(np.float32)
        obsm[SoscopeKeys.CELL_TYPE_PROBABILITY] = prob
        obs[SoscopeKeys.CELL_TYPE] = pd.Categorical.from_codes(prob.argmax(1), categories=list(cell_types))
    return obsm, obs


def _instance_ids(ids: np.ndarray) -> np.ndarray:
    """Instance ids as integers or strings (spatialdata's instance keys; selections hold them as objects)."""
    index = pd.Index(ids)
    if index.inferred_type == "integer":
        return index.astype(np.int64).to_numpy()
    return index.astype(str).to_numpy()


def spot_table(sdata, prepared: Prepared, abundance: np.ndarray, *, uns: dict):
    """Return the spot-level table: a row per spot, annotating the spots element(s), type abundances."""
    from spatialdata.models import TableModel

    sel = prepared.selection
    parts = []
    for name in sel.spots:
        positions = sel.spots_of(name)
        parts.append(
            pd.DataFrame(
                {
                    REGION_KEY: pd.Categorical([name] * len(positions), categories=list(sel.spots)),
                    INSTANCE_KEY: _instance_ids(np.asarray(sel.instance_ids)[positions]),
                    SoscopeKeys.SECTION: np.asarray(prepared.data.sections)[positions],
                    "_row": positions,
                }
            )
        )
    obs = pd.concat(parts, ignore_index=True)
    rows = obs.pop("_row").to_numpy()
    obs[SoscopeKeys.SECTION] = obs[SoscopeKeys.SECTION].astype(str).astype("category")
    obs.index = obs.index.astype(str)
    adata = ad.AnnData(obs=obs, uns={SoscopeKeys.UNS: uns})
    adata.obsm[SoscopeKeys.CELL_TYPE_ABUNDANCE] = np.asarray(abundance, dtype=np.float32)[rows]
    return TableModel.parse(adata, region=list(sel.spots), region_key=REGION_KEY, instance_key=INSTANCE_KEY)


def subspot_shapes(
    sdata, prepared: Prepared, *, key_added: str, stand_in: bool = False
) -> dict[str, gpd.GeoDataFrame]:
    """Return the sub-spot shapes elements (one per spots element), parsed, with the spots' transformations.

    ``stand_in``: each element holds only its first sub-spot, a stand-in for staging whose parquet
    :func:`soscope.io._write.write_shapes_parquet` then writes in full from the layout's vertex arrays
    (no shapely object for the other rows).
    """
    from spatialdata.models import ShapesModel
    from spatialdata.transformations import get_transformation

    shapes = {}
    for name, out_name in output_names(prepared, key_added)[0].items():
        layout = prepared.layouts[name]
        rows = slice(0, 1) if stand_in else slice(None)
        gdf = gpd.GeoDataFrame(
            subspot_columns(parent_ids(prepared, name), layout)[rows],
            geometry=gpd.GeoSeries(layout.polygons[rows].to_shapely()),
        )
        transformations = get_transformation(sdata.shapes[name], get_all=True)
        shapes[out_name] = ShapesModel.parse(gdf, transformations=dict(transformations))
    return shapes


def results_to_elements(
    sdata,
    prepared: Prepared,
    predictions: list[dict[str, np.ndarray]],
    *,
    key_added: str,
    uns: dict,
    stand_in_shapes: bool = False,
    features: list[np.ndarray | None] | None = None,
    cell_types: tuple[np.ndarray, list[str]] | None = None,
):
    """Sub-spot shapes (one per spots element, see :func:`subspot_shapes`) and enhanced tables.

    One table per modality, parsed and linked to the shapes. ``features``: per modality the enhanced
    feature columns (None: all), the ``var`` rows of its table; a modality with none gets no table.
    ``cell_types``: ``(abundance (M, T), type names)`` of the sub-spots (a single-cell reference; see
    :func:`cell_type_outputs`).
    """
    from spatialdata.models import TableModel

    sel = prepared.selection
    data = prepared.data
    shape_names, table_names = output_names(prepared, key_added)
    shapes = subspot_shapes(sdata, prepared, key_added=key_added, stand_in=stand_in_shapes)
    obs_parts = []
    for name in sel.spots:
        layout = prepared.layouts[name]
        positions = sel.spots_of(name)
        obs_parts.append(
            pd.DataFrame(
                {
                    REGION_KEY: pd.Categorical.from_codes(
                        np.zeros(layout.n_subspots, dtype=np.int8), categories=[shape_names[name]]
                    ),
                    INSTANCE_KEY: np.arange(layout.n_subspots, dtype=np.int64),
                    SoscopeKeys.SPOT_ID: parent_ids(prepared, name),
                    SoscopeKeys.SUBSPOT: layout.subspot.astype(np.int64),
                    # a categorical from codes: millions of sub-spots as Python strings would take GBs
                    SoscopeKeys.SECTION: _categorical(
                        np.asarray(data.sections)[positions], layout.spot_index
                    ),
                    "footprint_weight": layout.footprint_weight.astype(np.float32),
                }
            )
        )
    obs = pd.concat(obs_parts, ignore_index=True)
    obs[REGION_KEY] = pd.Categorical(obs[REGION_KEY], categories=list(shape_names.values()))
    # one set of categories over the elements
    obs[SoscopeKeys.SECTION] = obs[SoscopeKeys.SECTION].astype("category")
    obs.index = obs.index.astype(str)
    obsm = {}
    if cell_types is not None:
        obsm, type_obs = cell_type_outputs(*cell_types, cells=prepared.scheme.startswith("cells"))
        for col in type_obs.columns:
            obs[col] = type_obs[col].to_numpy()
    # prediction rows follow the concatenated layout, which is element by element like obs
    src_var = sdata.tables[sel.table].var
    tables = {}
    for mi, (spec, pred) in enumerate(zip(data.modalities, predictions, strict=True)):
        cols = None if features is None else features[mi]
        if cols is not None and len(cols) == 0:
            continue  # no feature of this modality was asked for
        mask = prepared.modality_masks[spec.name]
        var = src_var.iloc[np.flatnonzero(mask)].copy()
        var = var.loc[data.feature_names[mi]] if len(var) else var
        if cols is not None:
            var = var.iloc[cols]
        adata = ad.AnnData(X=pred["enhanced"], obs=obs.copy() if len(data.modalities) > 1 else obs, var=var)
        for key, value in obsm.items():
            adata.obsm[key] = value
        # posterior predictive spread and 10 % / 90 % quantiles of each sub-spot's counts (n_samples > 0)
        for layer in (SoscopeLayers.STD, SoscopeLayers.Q10, SoscopeLayers.Q90):
            if layer in pred:
                adata.layers[layer] = pred[layer]
        adata.uns[SoscopeKeys.UNS] = {**uns, "modality": spec.name, "likelihood_used": spec.likelihood}
        tables[table_names[spec.name]] = TableModel.parse(
            adata, region=list(shape_names.values()), region_key=REGION_KEY, instance_key=INSTANCE_KEY
        )
    return shapes, tables
