"""Training and inference of the network on :class:`SpotData`, independent of SpatialData."""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence

import numpy as np
import torch

from .._settings import settings
from ..module import LazyColumns, ModuleConfig, SoScopeModule, SpotBatch
from ..tiling import adjacency, plan_chunks
from ..train import History, TrainConfig, train_module
from ._data import Normaliser, SpotData, make_batch

logger = logging.getLogger("soscope")


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """Return the torch device of a ``device=`` argument.

    ``"auto"`` (or None) means ``soscope.settings.device``, whose own default ``"auto"`` is CUDA when
    available, else the CPU.
    """
    if isinstance(device, torch.device):
        return device
    if device is None or device == "auto":
        device = settings.device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def receptive_hops(config: ModuleConfig) -> int:
    """Graph hops a spot's result depends on: the encoder's layers, and the interpolation kernel (2 hops)."""
    return max(config.n_graph_layers if config.use_graph else 0, 2)


def spot_chunks(data: SpotData, config: ModuleConfig, chunk_spots: int) -> list:
    """Plan chunks of ``chunk_spots`` spots over ``data``, each with the halo ``config``'s network reads."""
    return plan_chunks(
        data.centres,
        data.edge_index,
        sections=data.sections,
        chunk_spots=chunk_spots,
        n_hops=receptive_hops(config),
    )


#: optimizer steps the default epochs reach at least (small sections), and at most (large slides)
DEFAULT_MIN_STEPS, DEFAULT_MAX_STEPS = 600, 1500


def default_epochs(n_spots: int, chunk_spots: int | None = None) -> int:
    """Epochs giving at least 600 optimizer steps and 20 epochs, but no more epochs than reach 1,500 steps.

    Small sections get ~600 steps (at most 200 epochs); sections of up to ``75 * chunk_spots`` spots
    (19,200 with the default steps of 256) get 20 epochs; larger ones get the fewest epochs reaching 1,500
    steps (a 200,000-spot slide: 2 epochs of 782 steps instead of 20). Measured on truth
    (``benchmarks/training_steps.py``, 12,000 synthetic spots with an image): 1,029 steps score 0.0036 mean
    Pearson below 4,165 steps and 2,107 steps 0.0020 below; without the image 1,029 steps score best.

    ``chunk_spots``: spots per step (default ``soscope.settings.train_chunk_spots``).
    """
    chunk_spots = settings.train_chunk_spots if chunk_spots is None else chunk_spots
    steps_per_epoch = max(1, math.ceil(n_spots / chunk_spots))
    least = max(math.ceil(DEFAULT_MIN_STEPS / steps_per_epoch), 20)
    most = max(1, math.ceil(DEFAULT_MAX_STEPS / steps_per_epoch))
    return int(min(least, most, 200))


class ChunkBatches(Sequence[SpotBatch]):
    """The minibatches of chunks of spots, each built from its chunk when first used.

    Built batches are kept while their tensors total at most ``cache_bytes`` (small data: every batch is
    built once), and rebuilt on every use beyond (a whole slide: memory per step stays bounded).
    :func:`make_batch` is deterministic, so caching does not change results.

    Parameters
    ----------
    data, norm, config
        The spots, the fitted normaliser and the network's configuration.
    chunks
        The chunks (:func:`soscope.tiling.plan_chunks`), one batch each.
    loss_spots
        Boolean ``(N,)``: spots whose likelihood may count (see :func:`make_batch`).
    held_out
        Boolean ``(N,)``: spots scored for validation only (their ``val_mask``), not trained on.
    cache_bytes
        Memory for built batches (default ``soscope.settings.batch_cache_bytes``): within it each batch is
        built once; beyond, batches are rebuilt on every use, so memory per step stays bounded.
    device
        Where the batches are put (and kept: on a GPU, cached batches are not copied again at each step).

    """

    def __init__(
        self,
        data: SpotData,
        norm: Normaliser,
        config: ModuleConfig,
        chunks: list,
        *,
        loss_spots: np.ndarray | None = None,
        held_out: np.ndarray | None = None,
        cache_bytes: int | None = None,
        device: torch.device | str = "cpu",
    ):
        self.data, self.norm, self.config, self.chunks, self.device = data, norm, config, chunks, device
        self.loss_spots, self.held_out = loss_spots, held_out
        self.cache_bytes = settings.batch_cache_bytes if cache_bytes is None else cache_bytes
        self.adj = adjacency(data.edge_index, data.n_spots)
        self._cache: dict[int, SpotBatch] = {}
        self._cached_bytes = 0

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        i = int(i)
        if i in self._cache:
            return self._cache[i]
        chunk = self.chunks[i]
        batch = make_batch(
            self.data, chunk, self.norm, loss_spots=self.loss_spots, use_image_offset=self.config.use_image,
            adj=self.adj,
        )  # fmt: skip
        if self.held_out is not None:
            held = torch.as_tensor(self.held_out[chunk.nodes])
            batch = dataclasses.replace(
                batch, loss_mask=batch.loss_mask & ~held, val_mask=batch.loss_mask & held
            )
        batch = batch.to(self.device)
        size = batch_bytes(batch)
        room = self.cache_bytes - self._cached_bytes
        if size <= room:
            # a kept batch gets its wide offsets computed whole where they fit too: recomputing them at every
            # step cost more than the network's backward pass (4,000 spots x 2,000 features)
            batch = computed_offsets(batch, room - size)
            size = batch_bytes(batch)
            self._cache[i] = batch
            self._cached_bytes += size
        return batch


def computed_offsets(batch: SpotBatch, budget: int) -> SpotBatch:
    """Return ``batch`` with its on-demand offsets (:class:`LazyColumns`) computed whole, within ``budget``.

    Every column is computed from its own inputs, so the values are those the columns would be computed
    with one block at a time.
    """
    if batch.sub_offset is None or not any(isinstance(o, LazyColumns) for o in batch.sub_offset):
        return batch
    offsets = []
    for offset in batch.sub_offset:
        nbytes = 4 * offset.shape[0] * offset.shape[1] if isinstance(offset, LazyColumns) else 0
        if isinstance(offset, LazyColumns) and nbytes <= budget:
            offset = offset.columns(None)
            budget -= nbytes
        offsets.append(offset)
    return dataclasses.replace(batch, sub_offset=offsets)


def batch_bytes(batch: SpotBatch) -> int:
    """Bytes of a batch's tensors."""
    total = 0
    for value in batch.__dict__.values():
        for t in value if isinstance(value, list) else [value]:
            if isinstance(t, torch.Tensor):
                total += t.element_size() * t.nelement()
    return total


def build_batches(
    data: SpotData,
    norm: Normaliser,
    config: ModuleConfig,
    *,
    chunk_spots: int,
    loss_spots: np.ndarray | None = None,
    held_out: np.ndarray | None = None,
    device: torch.device | str = "cpu",
) -> tuple[list, ChunkBatches]:
    """Plan chunks over ``data``; return them and their (lazily built) minibatches."""
    chunks = spot_chunks(data, config, chunk_spots)
    return chunks, ChunkBatches(
        data, norm, config, chunks, loss_spots=loss_spots, held_out=held_out, device=device
    )


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
    chunk_spots: int | None = None,
) -> History:
    """Train ``module`` on ``data``'s spots, holding out ``validation_fraction`` of them for early stopping.

    Held-out spots stay in the graph (their neighbours still see them) but their likelihood is used only
    for validation. Each optimizer step sees one chunk of ``chunk_spots`` core spots (plus their halo;
    default ``soscope.settings.train_chunk_spots``).
    """
    chunk_spots = settings.train_chunk_spots if chunk_spots is None else chunk_spots
    rng = np.random.default_rng(train_config.seed)
    held_out = rng.random(data.n_spots) < validation_fraction
    _, batches = build_batches(
        data, norm, module.config, chunk_spots=chunk_spots, held_out=held_out, device=device
    )
    return train_module(module, batches, train_config, device=device, progress=progress, history=history)


@torch.no_grad()
def latent(module: SoScopeModule, data: SpotData, norm: Normaliser, *, device: torch.device) -> np.ndarray:
    """Posterior mean latent ``(N, n_latent)`` of every spot."""
    module.to(device).eval()
    chunks = spot_chunks(data, module.config, settings.infer_chunk_spots)
    adj = adjacency(data.edge_index, data.n_spots)
    z = np.zeros((data.n_spots, module.config.n_latent), dtype=np.float32)
    for chunk in chunks:
        batch = make_batch(data, chunk, norm, use_image_offset=False, adj=adj).to(device)
        mu, _ = module.encode(batch)
        z[chunk.core] = mu[chunk.core_in_nodes].cpu().numpy()
    return z
