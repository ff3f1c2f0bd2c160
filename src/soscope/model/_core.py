"""Training and inference of the network on :class:`SpotData`, independent of SpatialData."""

from __future__ import annotations

import dataclasses
import logging
import math

import numpy as np
import torch

from ..module import ModuleConfig, SoScopeModule, SpotBatch
from ..tiling import adjacency, plan_chunks
from ..train import History, TrainConfig, train_module
from ._data import Normaliser, SpotData, make_batch

logger = logging.getLogger("soscope")

TRAIN_CHUNK_SPOTS = 256  # spots per training minibatch (plus their halo)
INFER_CHUNK_SPOTS = 4096  # spots per inference task (plus their halo)


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` → CUDA when available, else CPU."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def receptive_hops(config: ModuleConfig) -> int:
    """Graph hops a spot's result depends on: the encoder's layers, and the interpolation kernel (2 hops)."""
    return max(config.n_graph_layers if config.use_graph else 0, 2)


def default_epochs(n_spots: int, chunk_spots: int = TRAIN_CHUNK_SPOTS) -> int:
    """Epochs giving ~600 optimizer steps, between 20 and 200 (early stopping usually ends sooner)."""
    steps_per_epoch = max(1, math.ceil(n_spots / chunk_spots))
    return int(np.clip(math.ceil(600 / steps_per_epoch), 20, 200))


def build_batches(
    data: SpotData,
    norm: Normaliser,
    config: ModuleConfig,
    *,
    chunk_spots: int,
    loss_spots: np.ndarray | None = None,
) -> tuple[list, list[SpotBatch]]:
    """Plan chunks over ``data`` and build their tensors."""
    hops = receptive_hops(config)
    chunks = plan_chunks(data.centres, data.edge_index, sections=data.sections, chunk_spots=chunk_spots, n_hops=hops)
    adj = adjacency(data.edge_index, data.n_spots)
    sub_adj = None if data.sub_edge_index is None else adjacency(data.sub_edge_index, data.layout.n_subspots)
    batches = [
        make_batch(
            data, c, norm, loss_spots=loss_spots, use_image_offset=config.use_image, adj=adj, sub_adj=sub_adj
        )
        for c in chunks
    ]
    return chunks, batches


def fit(
    module: SoScopeModule,
    data: SpotData,
    norm: Normaliser,
    train_config: TrainConfig,
    *,
    validation_fraction: float = 0.1,
    device: torch.device,
    progress: bool,
    history: History | None = None,
) -> History:
    """Train ``module`` on the spots of ``data``, holding out ``validation_fraction`` of them for early stopping.

    Held-out spots stay in the graph (their neighbours still see them) but their likelihood is used only
    for validation.
    """
    rng = np.random.default_rng(train_config.seed)
    held_out = rng.random(data.n_spots) < validation_fraction
    chunks, batches = build_batches(data, norm, module.config, chunk_spots=TRAIN_CHUNK_SPOTS)
    train = []
    for chunk, b in zip(chunks, batches, strict=True):
        held = torch.as_tensor(held_out[chunk.nodes])
        train.append(dataclasses.replace(b, loss_mask=b.loss_mask & ~held, val_mask=b.loss_mask & held))
    return train_module(module, train, train_config, device=device, progress=progress, history=history)


def predict(
    module: SoScopeModule,
    data: SpotData,
    norm: Normaliser,
    *,
    device: torch.device | str,
    n_samples: int = 0,
    chunk_spots: int = INFER_CHUNK_SPOTS,
    progress: bool = False,
    client=None,
    sink=None,
) -> list[dict[str, np.ndarray]] | None:
    """Enhanced sub-spot profiles for every sub-spot of ``data`` (rows in layout order), per modality.

    Runs as a Dask graph of chunks (core + halo; see :mod:`soscope.model._dask`): on the local threaded
    scheduler, or on a ``dask.distributed`` cluster when ``client`` is given or one is active. Memory is
    bounded by the chunk size; core results equal untiled results because the halo covers the receptive
    field.

    Parameters
    ----------
    module, data, norm
        The trained network, the spots and the model's normalisation.
    device
        Device of the local engine (``"auto"``: CUDA when available); cluster workers resolve their own.
    n_samples
        When > 0, also ``"std"`` over this many posterior samples (seeded per chunk).
    chunk_spots
        Core spots per chunk.
    progress
        Show a progress bar over chunks.
    client
        A ``dask.distributed`` client to run on (default: the active one, if any; else local threads).
    sink
        ``sink(rows, results)`` receives each chunk's core results as it completes (e.g. a
        :class:`~soscope.model._dask.BlockWriter` streaming them to zarr); ``None`` returns the results as
        in-memory arrays instead.

    Returns
    -------
    Per modality ``{"enhanced", "mean"[, "std"]}`` arrays, or None when a ``sink`` is given.

    """
    from ._dask import collect, run_inference

    out = None
    if sink is None:
        out, sink = collect(data.layout.n_subspots, module.config, n_samples)
    hops = receptive_hops(module.config)
    run_inference(
        module, data, norm, sink, device=device, chunk_spots=chunk_spots, n_hops=hops, n_samples=n_samples,
        client=client, progress=progress,
    )  # fmt: skip
    return out


@torch.no_grad()
def latent(module: SoScopeModule, data: SpotData, norm: Normaliser, *, device: torch.device) -> np.ndarray:
    """Posterior mean latent ``(N, n_latent)`` of every spot."""
    module.to(device).eval()
    chunks = plan_chunks(data.centres, data.edge_index, sections=data.sections, chunk_spots=INFER_CHUNK_SPOTS, n_hops=receptive_hops(module.config))
    adj = adjacency(data.edge_index, data.n_spots)
    z = np.zeros((data.n_spots, module.config.n_latent), dtype=np.float32)
    for chunk in chunks:
        batch = make_batch(data, chunk, norm, use_image_offset=False, adj=adj).to(device)
        mu, _ = module.encode(batch)
        z[chunk.core] = mu[chunk.core_in_nodes].cpu().numpy()
    return z
