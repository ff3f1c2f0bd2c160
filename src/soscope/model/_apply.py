"""Applying a trained network to a SpatialData: inference, then the sub-spot shapes and tables written back.

Small outputs are computed in memory and written with :func:`soscope.io.write_results`; large ones stream
chunk by chunk into the store (:class:`soscope.io.BlockWriter`). Inference itself is in ``_predict.py``.
"""

from __future__ import annotations

import logging
from numbers import Integral
from typing import Any

import numpy as np
import torch

from .._constants import SoscopeLayers
from .._errors import SoscopeInputError
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
from ._data import Normaliser, SpotData
from ._output import output_names, parent_ids, results_to_elements, subspot_columns, subspot_shapes
from ._predict import ChunkResult, predict

logger = logging.getLogger("soscope")


def output_bytes(data: SpotData, n_samples: int) -> int:
    """Bytes of the enhanced tables' ``X`` (and ``std``, ``q10``, ``q90`` layers) as float32."""
    return data.layout.n_subspots * sum(m.n_features for m in data.modalities) * 4 * (4 if n_samples else 1)


def will_stream(sdata, data: SpotData, n_samples: int, *, inplace: bool = True) -> bool:
    """Whether :func:`enhance_and_write` streams by default (``stream=None``) for these data.

    It does when writing in place into a SpatialData backed by a local zarr store and the outputs reach
    ``soscope.settings.stream_min_bytes``.
    """
    return (
        inplace
        and local_store_path(sdata) is not None
        and output_bytes(data, n_samples) >= settings.stream_min_bytes
    )


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
):
    """Run inference on ``prepared`` and write the sub-spot shapes and enhanced tables into ``sdata``.

    Small outputs are computed in memory and written with :func:`~soscope.io.write_results`. Outputs of
    ``soscope.settings.stream_min_bytes`` or more on a SpatialData backed by a local zarr store
    (``stream=None``, see :func:`will_stream`), or with ``stream=True``, are streamed: the tables are staged
    without ``X``, and each chunk's results are written into the staged zarr arrays as its task completes
    (:class:`~soscope.io.BlockWriter`); the elements move into place only when all chunks are written, so an
    interrupted run leaves no partial results under the final names. The two paths give identical stores.

    ``chunk_spots``: core spots per inference task (default ``soscope.settings.infer_chunk_spots``).

    Returns
    -------
    The SpatialData holding the results (``sdata`` itself when ``inplace``).

    """
    data = prepared.data
    if chunk_spots is None:
        chunk_spots = settings.infer_chunk_spots  # read once: both paths below use the same chunks
    elif isinstance(chunk_spots, bool) or not isinstance(chunk_spots, Integral) or chunk_spots < 1:
        raise SoscopeInputError(
            f"chunk_spots must be a positive whole number of spots per inference task, got {chunk_spots!r} "
            "(leave it out for soscope.settings.infer_chunk_spots)."
        )
    if stream is None:
        stream = will_stream(sdata, data, n_samples, inplace=inplace)
    if not stream:
        preds = predict(
            module,
            data,
            norm,
            device=device,
            n_samples=n_samples,
            progress=progress,
            client=client,
            chunk_spots=chunk_spots,
            with_mean=False,  # not written back: it would double the results held in memory
        )
        shapes, tables = results_to_elements(sdata, prepared, preds, key_added=key_added, uns=uns)
        fill = staged_shapes = None
    else:
        skeleton = [{"enhanced": None} for _ in data.modalities]
        # shapes: a one-row stand-in is staged by spatialdata, then its parquet is written in row groups
        # straight from the polygons' vertex arrays
        staged_shapes, tables = results_to_elements(
            sdata, prepared, skeleton, key_added=key_added, uns=uns, stand_in_shapes=True
        )
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
            for mi, spec in enumerate(data.modalities):
                group = staged / "tables" / table_of[spec.name]
                shape = (data.layout.n_subspots, spec.n_features)
                rows = stream_block_rows(spec.n_features)
                arrays[f"{mi}/enhanced"] = create_dense_array(group, "X", shape, block_rows=rows)
                for layer in (SoscopeLayers.STD, SoscopeLayers.Q10, SoscopeLayers.Q90) if n_samples else ():
                    arrays[f"{mi}/{layer}"] = create_dense_array(
                        group, f"layers/{layer}", shape, block_rows=rows
                    )

            def route(res: ChunkResult) -> dict[str, np.ndarray]:
                return {
                    f"{mi}/{k}": v for mi, r in enumerate(res) for k, v in r.items() if f"{mi}/{k}" in arrays
                }

            writer = BlockWriter(arrays, route)
            predict(
                module, data, norm, device=device, n_samples=n_samples, progress=progress, client=client,
                chunk_spots=chunk_spots, sink=writer, with_mean=False,
            )  # fmt: skip
            writer.close()

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
