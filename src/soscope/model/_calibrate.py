"""Calibrate a trained model to batches (sections, samples) it has not seen, without retraining.

A new section differs from the training sections by its library size and feature-wise capture bias. The
network (encoder, image head, offsets) is kept frozen; each new batch gets its own row of the per-batch
feature bias ``b_batch`` (and the mean of the trained batch embeddings), fitted in closed form on the new
section's spots (its spatial prior first brought to the common scale: :attr:`Normaliser.batch_scale`):

* counts: ``b_g = log((Σ_i x_ig + ½) / (Σ_i μ_ig + ½))``, the maximum-likelihood multiplicative factor of
  Poisson-like observations (``μ`` the model's spot means with ``b = 0``; the ½ keeps absent features finite);
* Gaussian values: ``b_g = mean_i (x_ig - μ_ig)``.

Enhanced outputs then remove each batch's bias relative to the mean over the *trained* batches, so new
sections land on the training sections' common scale.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from .._settings import settings
from ..module import N_TRAINED_BATCHES, SoScopeModule
from ._core import spot_chunks
from ._data import Normaliser, SpotData, batch_scale_rows, make_batch

logger = logging.getLogger("soscope")


def new_batches(data: SpotData, norm: Normaliser) -> list[str]:
    """Batch labels of ``data`` that the model was not trained on, in order of first appearance."""
    return [b for b in dict.fromkeys(np.asarray(data.batches).tolist()) if b not in norm.batch_codes]


@torch.no_grad()
def calibrate_new_batches(
    module: SoScopeModule,
    data: SpotData,
    norm: Normaliser,
    *,
    device: torch.device | str = "cpu",
    chunk_spots: int | None = None,
) -> list[str]:
    """Add a closed-form feature bias for every batch of ``data`` unknown to the model (see module docs).

    Modifies ``module`` (extra rows of the batch bias and embedding; ``config.n_batches``) and ``norm``
    (``batch_codes``) in place, so a saved model keeps the calibration. Returns the calibrated labels.
    ``chunk_spots``: spots per chunk of the pass over the data (default: ``settings.infer_chunk_spots``).
    """
    new = new_batches(data, norm)
    if not new:
        return []
    cfg = module.config
    n_old = len(norm.batch_codes)
    n_ref = int(cfg.extra.get(N_TRAINED_BATCHES, n_old))
    codes = {b: n_old + j for j, b in enumerate(new)}
    # grow the per-batch parameters: embedding rows at the trained mean, bias rows at 0 (fitted below)
    emb = module.batch_embed.weight.data
    grown = torch.cat([emb[:n_old], emb[:n_ref].mean(0, keepdim=True).expand(len(new), -1)], dim=0)
    module.batch_embed = torch.nn.Embedding.from_pretrained(grown.clone(), freeze=False)
    for mi, p in enumerate(module.batch_bias):
        module.batch_bias[mi] = torch.nn.Parameter(
            torch.cat([p.data[:n_old], p.data.new_zeros(len(new), p.shape[1])])
        )
    norm.batch_codes.update(codes)
    # the new batches' spatial prior on the common scale (their capture bias is then fitted below)
    neutral = [
        np.full((n_old, m.n_features), 1.0 if m.is_count else 0.0, dtype=np.float32) for m in data.modalities
    ]
    old = norm.batch_scale if norm.batch_scale is not None else neutral
    norm.batch_scale = [
        np.vstack([rows, added]) for rows, added in zip(old, batch_scale_rows(data, norm, new), strict=True)
    ]
    cfg.n_batches = n_old + len(new)
    cfg.extra[N_TRAINED_BATCHES] = n_ref

    fit_batch_bias(module, data, norm, new, device=device, chunk_spots=chunk_spots)
    logger.info(
        "calibrated %d new batch(es) %s on %d spots: per-feature bias fitted with the network frozen",
        len(new), new, int(np.isin(np.asarray(data.batches), new).sum()),
    )  # fmt: skip
    return new


@torch.no_grad()
def fit_batch_bias(
    module: SoScopeModule,
    data: SpotData,
    norm: Normaliser,
    labels: list[str],
    *,
    device: torch.device | str = "cpu",
    chunk_spots: int | None = None,
) -> None:
    """Set the feature bias rows of batches ``labels`` in closed form, given the rest of the network.

    Each row is first zeroed, then set to the maximum-likelihood shift between the batch's observed spots and
    the model's spot means (see the module docs). Used to calibrate new batches, and to start training with
    several batches from their bias rather than from 0 (gradient steps alone move it too slowly, and the
    spot deviations would absorb it instead).
    """
    cfg = module.config
    chunk_spots = settings.infer_chunk_spots if chunk_spots is None else chunk_spots
    codes = np.array([norm.batch_codes[b] for b in labels], dtype=np.int64)
    for p in module.batch_bias:
        p.data[codes] = 0.0
    was_training = module.training
    module.eval().to(device)
    is_member = np.isin(np.asarray(data.batches), labels)
    position = {b: j for j, b in enumerate(labels)}
    label_pos = np.array([position.get(b, -1) for b in np.asarray(data.batches)], dtype=np.int64)
    sums_x = [np.zeros((len(labels), m.n_features)) for m in cfg.modalities]
    sums_mu = [np.zeros((len(labels), m.n_features)) for m in cfg.modalities]
    n_spots = np.zeros(len(labels))
    chunks = spot_chunks(data, cfg, chunk_spots)
    for chunk in chunks:
        core = chunk.core[is_member[chunk.core]]
        if len(core) == 0:
            continue
        batch = make_batch(data, chunk, norm).to(device)
        mu, _ = module.encode(batch)
        where = np.searchsorted(chunk.nodes, core)
        keep = batch.loss_mask.cpu().numpy()[where]  # non-empty spots
        where, core = where[keep], core[keep]
        which = label_pos[core]
        np.add.at(n_spots, which, 1)
        for features in _feature_blocks(cfg, settings.feature_block_size):
            # the fitted rows are 0 here; a block of features at a time (sub-spots × features is the largest)
            values = module.subspot_values(batch, mu, with_batch_bias=True, features=features)
            for mi, (mean, _) in enumerate(module.spot_means(batch, values)):
                cols = slice(None) if features[mi] is None else features[mi]
                if mean.shape[1] == 0:
                    continue
                np.add.at(sums_x[mi][:, cols], which, batch.x[mi][where][:, cols].cpu().numpy())
                np.add.at(sums_mu[mi][:, cols], which, mean[where].cpu().numpy())
    for mi, spec in enumerate(cfg.modalities):
        if spec.is_count:
            bias = np.log((sums_x[mi] + 0.5) / (sums_mu[mi] + 0.5))
        else:
            bias = (sums_x[mi] - sums_mu[mi]) / np.maximum(n_spots, 1)[:, None]
        module.batch_bias[mi].data[codes] = torch.as_tensor(bias, dtype=module.batch_bias[mi].dtype)
    module.train(was_training)


def _feature_blocks(config, block: int) -> list[list]:
    """Return per step the columns of each modality (None: all; an empty slice: none), blocks of ``block``.

    One step of all features when every modality fits in a block; else one modality's block per step.
    """
    mods = config.modalities
    if all(m.n_features <= block for m in mods):
        return [[None] * len(mods)]
    return [
        [slice(a, min(a + block, m.n_features)) if j == mi else slice(0, 0) for j in range(len(mods))]
        for mi, m in enumerate(mods)
        for a in range(0, m.n_features, block)
    ]
