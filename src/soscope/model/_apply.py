"""Applying a trained network to a SpatialData: inference, then the sub-spot shapes and tables written back.

Small outputs are computed in memory and written with :func:`soscope.io.write_results`; large ones stream
chunk by chunk into the store (:class:`soscope.io.BlockWriter`). Inference itself is in ``_predict.py``.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from .._constants import SoscopeLayers
from .._memory import release_free_memory
from .._settings import settings
from ..io import (
    BlockWriter,
    create_dense_array,
    local_store_path,
    stream_block_rows,
    write_results,
    write_shapes_parquet,
)
from ..module import SoScopeModule
from ._core import resolve_device
from ._data import Normaliser, standardised_image
from ._evidence import kernel_matrix
from ._output import (
    output_names,
    parent_ids,
    results_to_elements,
    spot_table,
    spot_table_name,
    subspot_columns,
    subspot_shapes,
)
from ._plan import plan_output
from ._predict import ChunkResult, local_workers, predict

logger = logging.getLogger("soscope")


def enhance_and_write(
    sdata,
    prepared,
    module: SoScopeModule,
    norm: Normaliser,
    *,
    uns: dict,
    key_added: str,
    device: torch.device | str,
    n_samples: int = 0,
    overwrite: bool = False,
    inplace: bool = True,
    client: Any = None,
    progress: bool = False,
    stream: bool | None = None,
    chunk_spots: int | None = None,
    features: Any = None,
    dtype: str = "float32",
):
    """Run inference on ``prepared`` and write the sub-spot shapes and enhanced tables into ``sdata``.

    What is computed and in tasks of what size is decided first (:func:`~soscope.model._plan.plan_output`:
    ``features``, ``dtype``, ``chunk_spots`` within ``soscope.settings.memory_limit``).
    Small outputs are computed in memory and written with :func:`~soscope.io.write_results`. Outputs of
    ``soscope.settings.stream_min_bytes`` or more on a SpatialData backed by a local zarr store
    (``stream=None``), or with ``stream=True``, are streamed: the tables are staged
    without ``X``, and each chunk's results are written into the staged zarr arrays as its task completes
    (:class:`~soscope.io.BlockWriter`); the elements move into place only when all chunks are written, so an
    interrupted run leaves no partial results under the final names. The two paths give identical stores.

    ``chunk_spots``: core spots per inference task (default ``soscope.settings.infer_chunk_spots``, fewer
    when many features would not fit the memory limit).

    Returns
    -------
    The SpatialData holding the results (``sdata`` itself when ``inplace``).

    """
    data = prepared.data
    plan = plan_output(
        sdata, prepared, features=features, dtype=dtype, n_samples=n_samples, chunk_spots=chunk_spots,
        inplace=inplace, stream=stream, workers=local_workers(resolve_device(device), data.n_spots),
    )  # fmt: skip
    uns = {**uns, "output": plan.as_uns()}
    run = dict(
        device=device, n_samples=n_samples, progress=progress, client=client, chunk_spots=plan.chunk_spots,
        with_mean=False,  # not written back: it would double the results held in memory
        features=plan.features, dtype=plan.dtype,
    )  # fmt: skip
    cell_types = subspot_cell_types(
        data, norm, module, device=device, client=client, chunk_spots=plan.chunk_spots
    )
    if not plan.stream:
        preds = predict(module, data, norm, **run)
        shapes, tables = results_to_elements(
            sdata, prepared, preds, key_added=key_added, uns=uns, features=plan.features,
            cell_types=cell_types,
        )  # fmt: skip
        fill = staged_shapes = None
    else:
        skeleton = [{"enhanced": None} for _ in data.modalities]
        # shapes: a one-row stand-in is staged by spatialdata, then its parquet is written in row groups
        # straight from the polygons' vertex arrays
        staged_shapes, tables = results_to_elements(
            sdata, prepared, skeleton, key_added=key_added, uns=uns, stand_in_shapes=True,
            features=plan.features, cell_types=cell_types,
        )  # fmt: skip
        shape_of, table_of = output_names(prepared, key_added)
        n_polygons = sum(prepared.layouts[name].n_subspots for name in shape_of)
        rows_per_group = settings.shapes_rows_per_group
        if n_polygons <= settings.max_shapes_in_memory:
            shapes = subspot_shapes(sdata, prepared, key_added=key_added)
        else:
            shapes = {}
            logger.warning(
                "%d sub-spot polygons (about %.0f GB as shapely objects) are written to the store but not "
                "loaded into this SpatialData: read them with `sd.read_zarr(%r, selection=('shapes',))`, or "
                "a part of them with `geopandas.read_parquet` / pyarrow from "
                "<store>/shapes/%s/shapes.parquet (row groups of %d polygons).",
                n_polygons, n_polygons * 1e3 / 1e9, str(local_store_path(sdata)),
                next(iter(shape_of.values())), rows_per_group,
            )  # fmt: skip

        def fill(staged) -> None:
            for name, out_name in shape_of.items():
                layout = prepared.layouts[name]
                frame = subspot_columns(parent_ids(prepared, name), layout)
                write_shapes_parquet(
                    staged / "shapes" / out_name / "shapes.parquet",
                    frame,
                    layout.polygons,
                    rows_per_group=rows_per_group,
                )
            release_free_memory()  # the shapely objects and WKB of the row groups, before inference
            arrays = {}
            for mi, (spec, width) in enumerate(zip(data.modalities, plan.widths, strict=True)):
                if width == 0:
                    continue  # no feature of this modality is enhanced: its table is not written
                group = staged / "tables" / table_of[spec.name]
                shape = (data.layout.n_subspots, width)
                rows = stream_block_rows(width)
                for key, name in [("enhanced", "X")] + [
                    (layer, f"layers/{layer}")
                    for layer in (
                        (SoscopeLayers.STD, SoscopeLayers.Q10, SoscopeLayers.Q90) if n_samples else ()
                    )
                ]:
                    arrays[f"{mi}/{key}"] = create_dense_array(
                        group, name, shape, block_rows=rows, dtype=plan.dtype
                    )

            def route(res: ChunkResult) -> dict[str, np.ndarray]:
                return {
                    f"{mi}/{k}": v for mi, r in enumerate(res) for k, v in r.items() if f"{mi}/{k}" in arrays
                }

            writer = BlockWriter(arrays, route)
            predict(module, data, norm, sink=writer, **run)
            writer.close()

    if cell_types is not None:  # each spot's type abundances, beside its sub-spots'
        cells = data.cell_type_abundance / norm.reference.reference.cells_scale()[None, :]
        tables[spot_table_name(prepared, key_added)] = spot_table(sdata, prepared, cells, uns=uns)
    if not inplace:
        import spatialdata as sd

        sdata = sd.SpatialData(
            images=dict(sdata.images), labels=dict(sdata.labels), points=dict(sdata.points),
            shapes=dict(sdata.shapes), tables=dict(sdata.tables),
        )  # fmt: skip
    write_results(
        sdata, shapes=shapes, tables=tables, overwrite=overwrite, fill=fill, staged_shapes=staged_shapes
    )
    release_free_memory()
    return sdata


def subspot_cell_types(
    data, norm: Normaliser, module: SoScopeModule, *, device, client=None, chunk_spots: int | None = None
) -> tuple[np.ndarray, list[str]] | None:
    """``((M, T) sub-spot cells of each type, type names)`` with a single-cell reference, else None.

    Each sub-spot's enhanced counts of the features shared with the reference are deconvolved
    (:func:`~soscope.model._reference.cells_from_counts`), starting from its spot's cells placed among its
    sub-spots as the offsets place them (neighbours' type densities and, when the network uses the image,
    the image's weighted evidence on types). The enhanced counts already join the spot's counts, the
    neighbours and the image: deconvolving them placed types better than the placement alone (MERFISH
    mini, cross-fitted references). One extra inference pass over the shared features, one chunk at a
    time: memory holds sub-spots x types, never sub-spots x features.
    """
    from ._reference import cells_from_counts, subspot_abundance

    fit = norm.reference
    if fit is None or data.cell_type_abundance is None:
        return None
    layout = data.layout
    img = None
    if module.use_image and data.image_features is not None and norm.image_mean is not None:
        img = standardised_image(data, norm)
    kernel = kernel_matrix(data.centres, layout.centroid, data.spacing)
    placed = subspot_abundance(
        fit, data.cell_type_abundance, layout, data.centres, data.spacing, norm.area_unit, img=img,
        kernel=kernel,
    ) / fit.reference.cells_scale()[None, :]  # fmt: skip
    mi = fit.modality
    shared = [
        np.asarray(fit.data_columns, dtype=np.int64) if k == mi else np.zeros(0, dtype=np.int64)
        for k in range(len(data.modalities))
    ]
    cells = np.zeros_like(placed)

    def deconvolve_chunk(rows: np.ndarray, res) -> None:
        cells[rows] = cells_from_counts(res[mi]["enhanced"], fit, init=placed[rows])

    predict(
        module, data, norm, device=device, client=client, chunk_spots=chunk_spots, sink=deconvolve_chunk,
        with_mean=False, features=shared,
    )  # fmt: skip
    return cells, list(fit.reference.cell_types)
