"""Inference over spot chunks: the network on each chunk (core + halo), run by ``soscope.tiling.run_tasks``.

Each task runs the network on one chunk (core spots + a halo covering the receptive field, from
:func:`soscope.tiling.plan_chunks`) and returns the sub-spot results of its core spots only, so the results
do not depend on the tiling. Results go to a *sink* as tasks complete: preallocated arrays
(:func:`collect`, small data) or zarr arrays on disk (:class:`soscope.io.BlockWriter`, whole slides).

On a ``dask.distributed`` cluster the model's weights, configuration and normalisation are scattered to every
worker once and each worker builds the network once, on its own device (``"auto"``: its GPU when it has
one); each task carries only its chunk's arrays, sliced on the client.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from .._settings import settings
from ..module import ModuleConfig, SoScopeModule
from ..tiling import Chunk, Remote, adjacency, plan_chunks, run_tasks
from ._core import receptive_hops, resolve_device
from ._data import Normaliser, SpotData, make_batch

logger = logging.getLogger("soscope")

#: results of one task: per modality a dict "enhanced"/("mean")/("std"/"q10"/"q90") → (core sub-spots,
#: features) float32
ChunkResult = list[dict[str, np.ndarray]]
#: per modality, the sorted feature columns to compute (None: all features of that modality); None: all
FeatureSelection = list[np.ndarray | None] | None
#: a sink receives the layout rows of a chunk's core sub-spots and their results
Sink = Callable[[np.ndarray, ChunkResult], None]

_SEED_LOCK = threading.Lock()  # posterior samples use torch's global generator: one chunk at a time


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
        cell_type_abundance=None if data.cell_type_abundance is None else data.cell_type_abundance[nodes],
        nuclei_count=None if data.nuclei_count is None else data.nuclei_count[rows],
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
    threads: int | None = None,
    feature_block_size: int | None = None,
    with_mean: bool = True,
    features: FeatureSelection = None,
    dtype: np.dtype | str = np.float32,
) -> ChunkResult:
    """Run the network on a chunk payload (:func:`chunk_payload`); return its core spots' sub-spot results.

    Features are computed ``feature_block_size`` at a time (default ``soscope.settings.feature_block_size``;
    see :meth:`SoScopeModule.enhance`) and only the core sub-spots' rows are kept, so a chunk holds its
    core × features results plus one block's intermediates. ``with_mean=False`` leaves out ``"mean"``
    (not written back by :func:`soscope.enhance`: it would double the chunk's results). ``features``: per
    modality the sorted feature columns to compute (None: all); ``dtype``: the
    results' float dtype (float32, or float16 for compact outputs).

    ``threads``: torch intra-op threads for this chunk on the CPU, set in the thread running it. MKL's float32
    matrix products sum in an order that depends on the thread count (measured: wide inputs, e.g. 2,000
    features, differ in their last bits between 1 and 2 threads), so both engines pass the same count and a
    chunk gives the same bits on local threads and on a cluster worker. Setting it here, not only once
    for the run, also fixes the count of reused Dask threads, whose OpenMP state is per thread.
    """
    if threads is not None and device.type == "cpu":
        torch.set_num_threads(threads)
    chunk = Chunk(core=np.asarray(core, dtype=np.int64), nodes=np.arange(payload.n_spots, dtype=np.int64))
    if feature_block_size is None:
        feature_block_size = settings.feature_block_size
    # offsets of a modality wider than a block are computed per block (the client's setting, on a worker)
    batch = make_batch(
        payload, chunk, norm, use_image_offset=module.config.use_image, feature_block_size=feature_block_size
    ).to(device)
    local_rows = torch.as_tensor(payload.layout.rows_of(chunk.core), device=device)
    kw = dict(
        n_samples=n_samples, feature_block_size=feature_block_size, rows=local_rows, with_mean=with_mean,
        features=None if features is None else [
            None if c is None else torch.as_tensor(c, dtype=torch.long, device=device) for c in features
        ],
    )  # fmt: skip
    with torch.no_grad():
        if n_samples:
            with _SEED_LOCK, torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                torch.manual_seed(seed)  # per chunk: reproducible whatever the order tasks run in
                res = module.enhance(batch, **kw)
        else:
            res = module.enhance(batch, **kw)
    return [{k: v.cpu().numpy().astype(dtype, copy=False) for k, v in r.items()} for r in res]


def build_network(model: dict) -> tuple[SoScopeModule, torch.device, Normaliser]:
    """Build the network of a scattered model on this worker's device (once per worker, by the runner)."""
    dev = resolve_device(model["device"])  # per worker: its own GPU when it has one
    module = SoScopeModule(model["config"])
    module.load_state_dict(model["state_dict"])
    module.to(dev).eval()
    return module, dev, model["normaliser"]


def remote_chunk(
    built: tuple,
    payload: SpotData,
    core: np.ndarray,
    n_samples: int,
    seed: int,
    threads: int,
    feature_block_size: int | None = None,
    with_mean: bool = True,
    features: FeatureSelection = None,
    dtype: str = "float32",
) -> ChunkResult:
    """Run a chunk task on a worker; ``built`` is :func:`build_network`'s result, cached per worker.

    The worker keeps ``threads`` torch threads afterwards: restoring the previous count while another task
    of the run still computes would change that task's thread count mid-chunk.
    """
    module, dev, norm = built
    return run_chunk(
        module, payload, core, norm, device=dev, n_samples=n_samples, seed=seed, threads=threads,
        feature_block_size=feature_block_size, with_mean=with_mean, features=features, dtype=dtype,
    )  # fmt: skip


def local_workers(device: torch.device, n_chunks: int) -> int:
    """Threads of the local engine: one per core on the CPU (torch then uses one each), two on a GPU."""
    if device.type != "cpu":
        return max(1, min(2, n_chunks))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(cores, n_chunks))


def _worker_device(device: torch.device | str) -> str:
    """Return the device a cluster worker is asked for: "auto" resolves on the worker's own hardware."""
    spec = device.type if isinstance(device, torch.device) else str(device)
    if spec == "auto" and settings.device != "auto":
        spec = settings.device  # the user's default device, chosen on the client
    if spec == "cuda" and isinstance(device, torch.device):
        spec = "auto"  # a worker without a GPU falls back to its CPU
    return spec


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
    with_mean: bool = True,
    features: FeatureSelection = None,
    dtype: np.dtype | str = np.float32,
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
        Posterior predictive draws for the ``"std"``, ``"q10"``, ``"q90"`` results (seeded per chunk).
    client
        A ``dask.distributed`` client; default per ``soscope.settings.parallel_backend`` (the active client
        if any, else local threads).
    progress
        Show a progress bar over chunks.
    with_mean
        Also return ``"mean"``, the unconditioned model mean (False: ``"enhanced"`` and the draws' layers
        only).
    features, dtype
        Per modality the sorted feature columns to compute (None: all), and the results' float dtype.

    Features are computed ``soscope.settings.feature_block_size`` at a time (read once, here).

    Returns
    -------
    The number of chunks.

    """
    chunks = plan_chunks(
        data.centres, data.edge_index, sections=data.sections, chunk_spots=chunk_spots, n_hops=n_hops
    )
    adj = adjacency(data.edge_index, data.n_spots)
    local_device = resolve_device(device)
    module.to(local_device).eval()
    workers = local_workers(local_device, len(chunks))
    threads_before = torch.get_num_threads()
    # tasks share the cores: torch uses cores / workers threads in each, and cluster workers the same number
    # (on the CPU the thread count can change float32 sums in their last bits: see run_chunk)
    threads = max(1, threads_before // workers)
    block = settings.feature_block_size

    def local(i: int) -> ChunkResult:
        payload, core = chunk_payload(data, chunks[i], adj)
        return run_chunk(
            module, payload, core, norm, device=local_device, n_samples=n_samples, seed=i, threads=threads,
            feature_block_size=block, with_mean=with_mean, features=features, dtype=dtype,
        )  # fmt: skip

    def arguments(i: int) -> tuple:
        payload, core = chunk_payload(data, chunks[i], adj)
        return payload, core, n_samples, i, threads, block, with_mean, features, np.dtype(dtype).name

    shared = {
        "config": module.config,
        "state_dict": {k: v.detach().cpu() for k, v in module.state_dict().items()},
        "normaliser": norm,
        "device": _worker_device(device),
    }
    if local_device.type == "cpu":
        torch.set_num_threads(threads)
    try:
        run_tasks(
            len(chunks),
            local,
            lambda i, res: sink(data.layout.rows_of(chunks[i].core), res),
            remote=Remote(remote_chunk, arguments, shared=shared, build=build_network),
            client=client,
            workers=workers,
            progress=progress,
            description="soscope inference",
        )
    finally:
        torch.set_num_threads(threads_before)
    return len(chunks)


def collect(
    layout_rows: int,
    module_config: ModuleConfig,
    n_samples: int,
    *,
    with_mean: bool = True,
    features: FeatureSelection = None,
    dtype: np.dtype | str = np.float32,
) -> tuple[list[dict[str, np.ndarray]], Sink]:
    """Return preallocated results (per modality, rows in layout order) and the sink filling them.

    ``"enhanced"``, ``"mean"`` (unless ``with_mean`` is False: then the network is asked for none, see
    :func:`run_inference`) and ``"std"``, ``"q10"``, ``"q90"`` with samples are allocated up front, of
    ``dtype`` with the columns ``features`` (per modality; None: all); any further result the network
    returns gets its array when its first chunk arrives.
    """
    keys = ["enhanced"] + (["mean"] if with_mean else []) + (["std", "q10", "q90"] if n_samples else [])
    widths = [
        m.n_features if features is None or features[mi] is None else len(features[mi])
        for mi, m in enumerate(module_config.modalities)
    ]
    out = [{k: np.zeros((layout_rows, w), dtype=dtype) for k in keys} for w in widths]

    def sink(rows: np.ndarray, res: ChunkResult) -> None:
        for mi, r in enumerate(res):
            for key, arr in r.items():
                if key not in out[mi]:
                    out[mi][key] = np.zeros((layout_rows, arr.shape[1]), dtype=dtype)
                out[mi][key][rows] = arr

    return out, sink


def predict(
    module: SoScopeModule,
    data: SpotData,
    norm: Normaliser,
    *,
    device: torch.device | str,
    n_samples: int = 0,
    chunk_spots: int | None = None,
    progress: bool = False,
    client=None,
    sink=None,
    with_mean: bool = True,
    features: FeatureSelection = None,
    dtype: np.dtype | str = np.float32,
) -> list[dict[str, np.ndarray]] | None:
    """Enhanced sub-spot profiles for every sub-spot of ``data`` (rows in layout order), per modality.

    Runs one task per chunk (core + halo) with :func:`soscope.tiling.run_tasks`: on local threads, or on a
    ``dask.distributed`` cluster when ``client`` is given or one is active. Memory is bounded by the chunk
    size; core results equal untiled results because the halo covers the receptive field.

    Parameters
    ----------
    module, data, norm
        The trained network, the spots and the model's normalisation.
    device
        Device of the local engine (``"auto"``: see ``soscope.settings.device``); cluster workers resolve
        their own.
    n_samples
        When > 0, also ``"std"``, ``"q10"`` and ``"q90"`` over this many posterior predictive draws
        (seeded per chunk).
    chunk_spots
        Core spots per chunk (default ``soscope.settings.infer_chunk_spots``).
    progress
        Show a progress bar over chunks.
    client
        A ``dask.distributed`` client to run on (default: per ``soscope.settings.parallel_backend``).
    sink
        ``sink(rows, results)`` receives each chunk's core results as it completes (e.g. a
        :class:`soscope.io.BlockWriter` streaming them to zarr); ``None`` returns the results as in-memory
        arrays instead.
    with_mean
        Also compute ``"mean"`` (the unconditioned model mean); False halves the results' memory when
        only ``"enhanced"`` is written.
    features
        Per modality the sorted feature columns to compute (None: all): the results hold these columns.
    dtype
        Float dtype of the results (float32; float16 halves them).

    Returns
    -------
    Per modality ``{"enhanced"[, "mean"][, "std", "q10", "q90"]}`` arrays, or None when a ``sink`` is given.

    """
    out = None
    if sink is None:
        out, sink = collect(
            data.layout.n_subspots, module.config, n_samples, with_mean=with_mean, features=features,
            dtype=dtype,
        )  # fmt: skip
    run_inference(
        module, data, norm, sink, device=device,
        chunk_spots=settings.infer_chunk_spots if chunk_spots is None else chunk_spots,
        n_hops=receptive_hops(module.config), n_samples=n_samples, client=client, progress=progress,
        with_mean=with_mean, features=features, dtype=dtype,
    )  # fmt: skip
    return out
