"""Inference as a Dask graph over spot chunks: local threaded scheduler or a ``dask.distributed`` cluster.

Each task runs the network on one chunk (core spots + a halo covering the receptive field, from
:func:`soscope.tiling.plan_chunks`) and returns the sub-spot results of its core spots only, so the results
do not depend on the tiling. Results are handed to a *sink* as tasks complete, a bounded number of tasks at
a time, so memory does not grow with the slide: the sink writes them into preallocated arrays (small data)
or into zarr arrays on disk (:class:`BlockWriter`, whole slides).

Engines
-------
* **Local** (default): waves of tasks run by Dask's threaded scheduler. The network's tensor operations
  release the GIL, so chunks run in parallel; torch uses ``cores / workers`` threads meanwhile.
* **Distributed**: when ``client=`` is given or a ``dask.distributed.Client`` is active. The model's weights,
  configuration and normalisation are scattered to every worker *once* (``broadcast=True``) and each worker
  builds the network once (cached), on its own device (``"auto"``: its GPU when it has one). Each task
  carries only its chunk's arrays, sliced on the client, so workers never need the whole slide.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from .._memory import release_free_memory
from ..module import ModuleConfig, SoScopeModule
from ..tiling import Chunk, adjacency, plan_chunks
from ._data import Normaliser, SpotData, make_batch

logger = logging.getLogger("soscope")

#: results of one task: per modality a dict "enhanced"/"mean"/("std") → (core sub-spots, features) float32
ChunkResult = list[dict[str, np.ndarray]]
#: a sink receives the layout rows of a chunk's core sub-spots and their results
Sink = Callable[[np.ndarray, ChunkResult], None]

_SEED_LOCK = threading.Lock()  # posterior samples use torch's global generator: one chunk at a time
_WORKER_MODULES: dict[str, tuple[SoScopeModule, torch.device]] = {}  # per worker process: token → module
_WORKER_LOCK = threading.Lock()
_WORKER_BUILDS = 0  # networks built in this process (a worker builds one per enhance)


def active_client(client: Any = None) -> Any:
    """Return ``client``, else the active ``dask.distributed`` client, else None (no import)."""
    if client is not None:
        return client
    import sys

    if "distributed" not in sys.modules:  # no client can be active if distributed was never imported
        return None
    from distributed import get_client

    try:
        return get_client()
    except ValueError:
        return None


def chunk_payload(data: SpotData, chunk: Chunk, adj=None) -> tuple[SpotData, np.ndarray]:
    """Return the :class:`SpotData` of a chunk's spots alone (core + halo, re-indexed) and its core positions.

    The network's output for the core spots is the same on this payload as on the whole data: the halo
    holds every spot within the receptive field, with the same local graph. Sub-spot polygons are not
    needed by inference and are left out (so payloads pickle small and fast), as are sub-spot edges.
    """
    nodes = chunk.nodes
    adj = adjacency(data.edge_index, data.n_spots) if adj is None else adj
    local = adj[nodes][:, nodes].tocoo()
    rows = data.layout.rows_of(nodes)
    # polygons are not used by the network: left out of the payload
    sub = dataclasses.replace(data.layout, polygons=None, source_index=None).subset(nodes)
    payload = dataclasses.replace(
        data,
        counts=[c[nodes] for c in data.counts],
        centres=data.centres[nodes],
        sections=data.sections[nodes],
        batches=data.batches[nodes],
        layout=sub,
        edge_index=np.vstack([local.row, local.col]).astype(np.int64),
        image_features=None if data.image_features is None else data.image_features[rows],
        subspot_size=None,  # the sub-spot graph serves only the training loss (image regulariser)
    )
    return payload, chunk.core_in_nodes


def run_chunk(
    module: SoScopeModule,
    payload: SpotData,
    core: np.ndarray,
    norm: Normaliser,
    *,
    device: torch.device,
    n_samples: int = 0,
    seed: int = 0,
) -> ChunkResult:
    """Run the network on a chunk payload (:func:`chunk_payload`); return its core spots' sub-spot results."""
    chunk = Chunk(core=np.asarray(core, dtype=np.int64), nodes=np.arange(payload.n_spots, dtype=np.int64))
    batch = make_batch(payload, chunk, norm, use_image_offset=module.config.use_image).to(device)
    with torch.no_grad():
        if n_samples:
            with _SEED_LOCK, torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                torch.manual_seed(seed)  # per chunk: reproducible whatever the order tasks run in
                res = module.enhance(batch, n_samples=n_samples)
        else:
            res = module.enhance(batch, n_samples=n_samples)
    local_rows = payload.layout.rows_of(chunk.core)
    return [
        {k: v[local_rows].cpu().numpy().astype(np.float32, copy=False) for k, v in r.items()} for r in res
    ]


def _worker_module(model: dict, device: str) -> tuple[SoScopeModule, torch.device]:
    """Return the network of a scattered model on this worker (built once per worker process, then cached)."""
    global _WORKER_BUILDS
    token = model["token"]
    with _WORKER_LOCK:
        if token not in _WORKER_MODULES:
            from ._core import resolve_device

            dev = resolve_device(device)  # per worker: its own GPU when it has one
            module = SoScopeModule(model["config"])
            module.load_state_dict(model["state_dict"])
            module.to(dev).eval()
            _WORKER_MODULES.clear()  # keep one model per worker: a new enhance replaces the previous one
            _WORKER_MODULES[token] = (module, dev)
            _WORKER_BUILDS += 1
        return _WORKER_MODULES[token]


def _remote_chunk(
    model: dict, payload: SpotData, core: np.ndarray, device: str, n_samples: int, seed: int
) -> ChunkResult:
    module, dev = _worker_module(model, device)
    return run_chunk(module, payload, core, model["normaliser"], device=dev, n_samples=n_samples, seed=seed)


def _local_chunk(module, data, chunk, adj, norm, device, n_samples, seed) -> ChunkResult:
    payload, core = chunk_payload(data, chunk, adj)
    return run_chunk(module, payload, core, norm, device=device, n_samples=n_samples, seed=seed)


def _windows(n: int, size: int) -> Iterator[range]:
    for start in range(0, n, size):
        yield range(start, min(n, start + size))


def local_workers(device: torch.device, n_chunks: int) -> int:
    """Threads of the local engine: one per core on the CPU (torch then uses one each), two on a GPU."""
    if device.type != "cpu":
        return max(1, min(2, n_chunks))
    return max(
        1,
        min(
            len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1,
            n_chunks,
        ),
    )


def run_inference(
    module: SoScopeModule,
    data: SpotData,
    norm: Normaliser,
    sink: Sink,
    *,
    device: torch.device | str,
    chunk_spots: int,
    n_hops: int,
    n_samples: int = 0,
    client: Any = None,
    progress: bool = False,
) -> int:
    """Run the network on every chunk of ``data`` and pass each chunk's core results to ``sink``.

    Parameters
    ----------
    module, data, norm
        The trained network, the spots and the model's normalisation.
    sink
        Called in this thread as ``sink(rows, results)`` for each completed chunk (rows: the layout rows
        of its core sub-spots); chunks complete in any order.
    device
        Device of the local engine; on a cluster each worker resolves ``"auto"`` itself (a
        ``torch.device`` given here is passed to the workers by its type).
    chunk_spots, n_hops
        Core spots per chunk and halo depth (the network's receptive field).
    n_samples
        Posterior samples for the ``"std"`` result (seeded per chunk).
    client
        A ``dask.distributed`` client; default the active one, if any, else the local threaded scheduler.
    progress
        Show a progress bar over chunks.

    Returns
    -------
    The number of chunks.

    """
    from ..train._trainer import _progress

    chunks = plan_chunks(
        data.centres, data.edge_index, sections=data.sections, chunk_spots=chunk_spots, n_hops=n_hops
    )
    adj = adjacency(data.edge_index, data.n_spots)
    client = active_client(client)
    bar = _progress(progress, len(chunks), "soscope inference")
    try:
        if client is None:
            _run_local(module, data, norm, chunks, adj, sink, device=device, n_samples=n_samples, bar=bar)
        else:
            _run_distributed(
                client, module, data, norm, chunks, adj, sink, device=device, n_samples=n_samples, bar=bar
            )
    finally:
        if bar is not None:
            bar.close()
    return len(chunks)


def _run_local(module, data, norm, chunks, adj, sink, *, device, n_samples, bar) -> None:
    import dask

    from ._core import resolve_device

    device = resolve_device(device)
    module.to(device).eval()
    workers = local_workers(device, len(chunks))
    threads_before = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(max(1, threads_before // workers))
    # graph leaves named once: the whole data and module are shared by the threads, never hashed or copied
    data_d = dask.delayed(data, name=f"soscope-data-{uuid.uuid4().hex}", traverse=False)
    module_d = dask.delayed(module, name=f"soscope-module-{uuid.uuid4().hex}", traverse=False)
    adj_d = dask.delayed(adj, name=f"soscope-adj-{uuid.uuid4().hex}", traverse=False)
    task = dask.delayed(_local_chunk, pure=False)
    try:
        # waves of a few tasks per thread: results are consumed between waves, so memory stays bounded
        for window in _windows(len(chunks), 2 * workers):
            tasks = [task(module_d, data_d, chunks[i], adj_d, norm, device, n_samples, i) for i in window]
            results = dask.compute(*tasks, scheduler="threads", num_workers=workers)
            for i, res in zip(window, results, strict=True):
                sink(data.layout.rows_of(chunks[i].core), res)
                if bar is not None:
                    bar.update(1)
            del results
    finally:
        torch.set_num_threads(threads_before)


def _run_distributed(client, module, data, norm, chunks, adj, sink, *, device, n_samples, bar) -> None:
    import dask
    from distributed import as_completed

    token = uuid.uuid4().hex
    model = {
        "token": token,
        "config": module.config,
        "state_dict": {k: v.detach().cpu() for k, v in module.state_dict().items()},
        "normaliser": norm,
    }
    # the weights travel once to every worker; tasks refer to them by key
    [model_f] = client.scatter([model], broadcast=True, hash=False)
    device_spec = device.type if isinstance(device, torch.device) else str(device)
    if device_spec == "cuda" and isinstance(device, torch.device):
        device_spec = "auto"  # a worker without a GPU falls back to its CPU
    task = dask.delayed(_remote_chunk, pure=False)
    n_threads = max(1, sum(client.nthreads().values()))
    in_flight = 2 * n_threads

    def submit(i: int):
        payload, core = chunk_payload(data, chunks[i], adj)
        payload_d = dask.delayed(payload, name=f"soscope-chunk-{token}-{i}", traverse=False)  # not hashed
        fut = client.compute(task(model_f, payload_d, core, device_spec, n_samples, i))
        index_of[fut.key] = i
        return fut

    index_of: dict[str, int] = {}
    pending = iter(range(len(chunks)))
    # loop=: the client given need not be the default one
    ac = as_completed([submit(i) for _, i in zip(range(in_flight), pending, strict=False)], loop=client.loop)
    try:
        for fut in ac:
            i = index_of.pop(fut.key)
            res = fut.result()
            fut.release()
            sink(data.layout.rows_of(chunks[i].core), res)
            if bar is not None:
                bar.update(1)
            nxt = next(pending, None)
            if nxt is not None:
                ac.add(submit(nxt))
    finally:
        for f in list(ac.futures):
            f.cancel()
        model_f.release()


def collect(
    layout_rows: int, module_config: ModuleConfig, n_samples: int
) -> tuple[list[dict[str, np.ndarray]], Sink]:
    """Return preallocated results (per modality, rows in layout order) and the sink filling them."""
    keys = ["enhanced", "mean"] + (["std"] if n_samples else [])
    out = [
        {k: np.zeros((layout_rows, m.n_features), dtype=np.float32) for k in keys}
        for m in module_config.modalities
    ]

    def sink(rows: np.ndarray, res: ChunkResult) -> None:
        for mi, r in enumerate(res):
            for key, arr in r.items():
                out[mi][key][rows] = arr

    return out, sink


class BlockWriter:
    """A sink writing chunk results into 2-D zarr arrays (rows in layout order), one whole block at a time.

    A chunk's core sub-spots are scattered over the rows (the rows follow the spots' order, the chunks
    are spatial tiles), so writing each chunk's rows straight into zarr would rewrite every block it
    touches many times. Rows are buffered per zarr block instead and a block is written once, when all its
    rows have arrived. Chunks run tile row by tile row, so with spots stored in a spatially coherent order
    (lattices, bins) blocks fill steadily and few are buffered at once. In any order, when the buffers
    exceed ``max_buffer_bytes`` the fullest blocks are merged into what is on disk (read, overlay, write),
    so memory stays bounded either way.

    Parameters
    ----------
    arrays
        Name → zarr array ``(rows, features)`` (all with the same number of rows and of block rows).
    route
        Maps a chunk result to ``{name: values}`` for the arrays.
    max_buffer_bytes
        Memory allowed for partly filled blocks.

    """

    def __init__(
        self,
        arrays: dict[str, Any],
        route: Callable[[ChunkResult], dict[str, np.ndarray]],
        *,
        max_buffer_bytes: int = 512 << 20,
    ):
        self.arrays = arrays
        self.route = route
        first = next(iter(arrays.values()))
        self.n_rows = first.shape[0]
        self.block = first.chunks[0]
        self.max_buffer_bytes = max_buffer_bytes
        self._buf: dict[int, dict[str, np.ndarray]] = {}
        self._mask: dict[int, np.ndarray] = {}
        self._filled = np.zeros(-(-self.n_rows // self.block), dtype=np.int64)
        self._on_disk = np.zeros(len(self._filled), dtype=bool)  # a partial block was already written
        self._bytes_per_row = sum(a.shape[1] * np.dtype(a.dtype).itemsize for a in arrays.values())
        self.rows_written = 0

    def _bounds(self, b: int) -> tuple[int, int]:
        return b * self.block, min(self.n_rows, (b + 1) * self.block)

    def __call__(self, rows: np.ndarray, res: ChunkResult) -> None:
        values = self.route(res)
        rows = np.asarray(rows, dtype=np.int64)
        blocks = rows // self.block
        order = np.argsort(blocks, kind="stable")
        bounds = np.flatnonzero(np.diff(blocks[order])) + 1
        for idx in np.split(order, bounds):
            if len(idx) == 0:
                continue
            b = int(blocks[idx[0]])
            lo, hi = self._bounds(b)
            if b not in self._buf:
                self._buf[b] = {
                    k: np.zeros((hi - lo, a.shape[1]), dtype=a.dtype) for k, a in self.arrays.items()
                }
                self._mask[b] = np.zeros(hi - lo, dtype=bool)
            local = rows[idx] - lo
            for k, v in values.items():
                self._buf[b][k][local] = v[idx]
            self._mask[b][local] = True
            self._filled[b] += len(idx)
            if self._filled[b] >= hi - lo:
                self._flush(b)
        while self._buf and len(self._buf) * self.block * self._bytes_per_row > self.max_buffer_bytes:
            self._flush(max(self._buf, key=lambda blk: self._mask[blk].sum()))

    def _flush(self, b: int) -> None:
        lo, hi = self._bounds(b)
        buf, mask = self._buf.pop(b), self._mask.pop(b)
        for k, arr in self.arrays.items():
            block = buf[k]
            if self._on_disk[b] or not mask.all():
                if self._on_disk[b]:  # merge with the part written earlier
                    old = np.asarray(arr[lo:hi])
                    block = np.where(mask[:, None], block, old)
            arr[lo:hi] = block
        self._on_disk[b] = self._on_disk[b] or not mask.all()
        self.rows_written += int(mask.sum())

    def close(self) -> None:
        """Write the blocks still buffered (all rows must have arrived)."""
        for b in list(self._buf):
            self._flush(b)
        if int(self._filled.sum()) != self.n_rows:
            raise RuntimeError(f"{int(self._filled.sum())} of {self.n_rows} rows were written")


#: enhanced outputs at least this large (bytes of X and layers) are streamed to the store, not held in memory
STREAM_MIN_BYTES = 512 * 2**20
#: streamed outputs keep their sub-spot shapes in memory up to this many polygons (~1 kB each as shapely
#: objects); beyond, the shapes are only written to the store
MAX_SHAPES_IN_MEMORY = 2_000_000
#: target size of one zarr block of the streamed arrays (whole rows)
STREAM_BLOCK_BYTES = 16 * 2**20


def output_bytes(data: SpotData, n_samples: int) -> int:
    """Bytes of the enhanced tables' ``X`` (and ``std`` layers) as float32."""
    return data.layout.n_subspots * sum(m.n_features for m in data.modalities) * 4 * (2 if n_samples else 1)


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
):
    """Run inference on ``prepared`` and write the sub-spot shapes and enhanced tables into ``sdata``.

    Small outputs are computed in memory and written with :func:`~soscope.io.write_results`. Outputs of
    :data:`STREAM_MIN_BYTES` or more on a SpatialData backed by a local zarr store (``stream=None``), or
    with ``stream=True``, are streamed: the tables are staged without ``X``, and each chunk's results are
    written into the staged zarr arrays as its task completes (:class:`BlockWriter`); the elements move
    into place only when all chunks are written, so an interrupted run leaves no partial results under
    the final names. The two paths give identical stores.

    Returns
    -------
    The SpatialData holding the results (``sdata`` itself when ``inplace``).

    """
    from ..io import write_results
    from ..io._write import SHAPES_ROWS_PER_GROUP, _local_store_path, create_dense_array, write_shapes_parquet
    from . import _core
    from ._output import output_names, parent_ids, results_to_elements, subspot_columns, subspot_shapes

    data = prepared.data
    chunk_spots = _core.INFER_CHUNK_SPOTS  # read at call time (tests and benchmarks change it)
    if stream is None:
        stream = (
            inplace
            and _local_store_path(sdata) is not None
            and output_bytes(data, n_samples) >= STREAM_MIN_BYTES
        )
    if not stream:
        preds = _core.predict(
            module,
            data,
            norm,
            device=device,
            n_samples=n_samples,
            progress=progress,
            client=client,
            chunk_spots=chunk_spots,
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
        if n_polygons <= MAX_SHAPES_IN_MEMORY:
            shapes = subspot_shapes(sdata, prepared, key_added=key_added)
        else:
            shapes = {}
            logger.warning(
                "%d sub-spot polygons (about %.0f GB as shapely objects) are written to the store but not "
                "loaded into this SpatialData: read them with `sd.read_zarr(%r, selection=('shapes',))`, or "
                "a part of them with `geopandas.read_parquet` / pyarrow from <store>/shapes/%s/shapes.parquet "
                "(row groups of %d polygons).",
                n_polygons, n_polygons * 1e3 / 1e9, str(_local_store_path(sdata)), next(iter(shape_of.values())),
                SHAPES_ROWS_PER_GROUP,
            )  # fmt: skip

        def fill(staged) -> None:
            for name, out_name in shape_of.items():
                layout = prepared.layouts[name]
                frame = subspot_columns(parent_ids(prepared, name), layout)
                write_shapes_parquet(staged / "shapes" / out_name / "shapes.parquet", frame, layout.polygons)
            release_free_memory()  # the shapely objects and WKB of the row groups, before inference
            arrays = {}
            for mi, spec in enumerate(data.modalities):
                group = staged / "tables" / table_of[spec.name]
                shape = (data.layout.n_subspots, spec.n_features)
                rows = max(256, STREAM_BLOCK_BYTES // (4 * max(1, spec.n_features)))
                arrays[f"{mi}/enhanced"] = create_dense_array(group, "X", shape, block_rows=rows)
                if n_samples:
                    arrays[f"{mi}/std"] = create_dense_array(group, "layers/std", shape, block_rows=rows)

            def route(res: ChunkResult) -> dict[str, np.ndarray]:
                return {
                    f"{mi}/{k}": v for mi, r in enumerate(res) for k, v in r.items() if f"{mi}/{k}" in arrays
                }

            writer = BlockWriter(arrays, route)
            _core.predict(
                module, data, norm, device=device, n_samples=n_samples, progress=progress, client=client,
                chunk_spots=chunk_spots, sink=writer,
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
