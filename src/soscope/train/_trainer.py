"""The training loop: minibatches of spot chunks, KL warm-up, LR schedule, early stopping, checkpoints."""

from __future__ import annotations

import copy
import json
import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .._errors import SoscopeInputError, TrainingDivergedError
from .._progress import progress_bar
from ..module import SoScopeModule, SpotBatch

logger = logging.getLogger("soscope")


@dataclass
class TrainConfig:
    """Settings of one training run (stored in the model's history)."""

    epochs: int = 200
    pretrain_epochs: int = 0  # graph-autoencoder pretraining of the encoder first (the published step 1)
    lr: float = 2e-3
    weight_decay: float = 1e-4
    image_weight_decay: float = 1e-4
    kl_weight: float = 1.0
    kl_warmup_fraction: float = 0.2
    image_reg_weight: float = 0.0  # off by default, as SoScope.train: it added nothing measurable
    image_warmup_fraction: float = 0.0  # first share of steps with spot deviations off (image explains first)
    max_features: int | None = 512  # features per modality scored per step (a random subset when more)
    early_stopping: bool = True
    patience: int = 30
    min_epochs: int = 20
    grad_clip: float = 10.0
    checkpoint_dir: str | None = None
    checkpoint_every: int = 25
    resume: bool = False
    seed: int = 0
    # spots per training step: the core spots of each minibatch chunk. Recorded here (it shapes the run, so it
    # belongs in the history); the caller applies it when it plans the chunks (soscope.model._core.fit)
    batch_size: int = 256


@dataclass
class History:
    """Per-epoch training curves."""

    epoch: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    validation_loss: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    pretrain_loss: list[float] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)  # optimizer steps (minibatches) in each epoch
    best_epoch: int = -1
    stopped_early: bool = False

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def _lr_factor(step: int, total: int) -> float:
    """Linear warm-up over 5% of the steps, then cosine decay to 10% of the base rate."""
    warm = max(1, int(0.05 * total))
    if step < warm:
        return (step + 1) / warm
    t = (step - warm) / max(1, total - warm)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))


def train_module(
    module: SoScopeModule,
    batches: Sequence[SpotBatch],
    config: TrainConfig,
    *,
    device: torch.device,
    progress: bool = True,
    history: History | None = None,
    on_epoch: Callable[[int, float], None] | None = None,
    description: str = "training",
) -> History:
    """Fit ``module`` on ``batches`` (each one optimizer step).

    Spots in a batch's ``val_mask`` are held out: their negative ELBO, computed in the same forward pass
    without entering the gradient, is the validation loss. Early stopping keeps the weights with the lowest
    validation loss (smoothed over epochs, as it is scored with sampled latents). Deterministic for a seed
    on CPU: the batch order is drawn from a seeded generator.
    """
    history = history or History()
    module.to(device)
    image_params = [p for n, p in module.named_parameters() if n.startswith(("image_trunk", "image_heads"))]
    other_params = [
        p for n, p in module.named_parameters() if not n.startswith(("image_trunk", "image_heads"))
    ]
    groups = [{"params": other_params, "weight_decay": config.weight_decay}]
    if image_params:  # the image head is shared by all sub-spots: decay keeps it from fitting spot noise
        groups.append({"params": image_params, "weight_decay": config.image_weight_decay})
    opt = torch.optim.AdamW(groups, lr=config.lr)
    total_steps = config.epochs * len(batches)
    start_epoch = 0
    rng = np.random.default_rng(config.seed)
    has_validation = False  # some batch holds validation spots: known after the first epoch
    smoothed = None
    best: tuple[float, dict | None] = (math.inf, None)
    bad_epochs = 0
    ckpt = Path(config.checkpoint_dir) / "checkpoint.pt" if config.checkpoint_dir else None
    if ckpt is not None and config.resume and ckpt.exists():
        state = torch.load(ckpt, map_location=device, weights_only=True)
        saved_steps = state.get("loop", {}).get("steps_per_epoch")
        if saved_steps is not None and int(saved_steps) != len(batches):  # checked before anything changes
            raise SoscopeInputError(
                f"the checkpoint in {ckpt.parent} was written with {int(saved_steps)} steps per epoch, this "
                f"run has {len(batches)}: resume with the same data and batch_size, or pass resume=False to "
                "start afresh"
            )
        module.load_state_dict(state["module"])
        opt.load_state_dict(state["optimizer"])
        start_epoch = int(state["epoch"]) + 1
        for k, v in state["history"].items():
            setattr(history, k, list(v) if isinstance(v, list) else v)
        if "loop" in state:  # the loop's own state: the resumed run continues as the uninterrupted one would
            rng.bit_generator.state = json.loads(state["loop"]["numpy_rng"])
            # generator states are CPU byte tensors, whatever map_location put them on
            torch.set_rng_state(state["loop"]["torch_rng"].cpu())
            if device.type == "cuda" and state["loop"].get("cuda_rng") is not None:
                torch.cuda.set_rng_state(state["loop"]["cuda_rng"].cpu(), device)
            has_validation = bool(state["loop"]["has_validation"])
            smoothed = state["loop"]["smoothed"]
            best = (float(state["loop"]["best_loss"]), state["loop"]["best_module"])
            bad_epochs = int(state["loop"]["bad_epochs"])
        else:  # a checkpoint written before the loop state was saved: continue as those versions did
            rng = np.random.default_rng(config.seed + start_epoch)
            if history.validation_loss:
                best = (min(history.validation_loss), copy.deepcopy(module.state_dict()))
        logger.info("resumed training from %s at epoch %d", ckpt, start_epoch)
    # batches may be built when used (a lazy sequence): they are fetched and moved one step at a time
    if config.pretrain_epochs > 0 and start_epoch == 0 and not history.pretrain_loss:
        _pretrain(module, batches, config, rng, history, progress, device)
    warmup_steps = max(1, int(config.kl_warmup_fraction * total_steps))
    bar = progress_bar(progress, config.epochs - start_epoch, description)
    for epoch in range(start_epoch, config.epochs):
        module.train()
        losses, val_sum, val_n = [], 0.0, 0
        for bi in rng.permutation(len(batches)):
            step = epoch * len(batches) + len(losses)
            factor = _lr_factor(step, total_steps)
            for g in opt.param_groups:
                g["lr"] = config.lr * factor
            kl_w = config.kl_weight * min(1.0, (step + 1) / warmup_steps)
            batch = batches[bi].to(device)
            out = module.loss(
                batch,
                kl_weight=kl_w,
                image_reg_weight=config.image_reg_weight,
                max_features=config.max_features,
                # image warm-up: spot deviations off for the first steps (the image explains first)
                spot_deviation=step >= config.image_warmup_fraction * total_steps,
            )
            opt.zero_grad(set_to_none=True)
            out["loss"].backward()
            torch.nn.utils.clip_grad_norm_(module.parameters(), config.grad_clip)
            opt.step()
            losses.append(float(out["loss"].detach()))
            if "val_sum" in out:
                val_sum += float(out["val_sum"])
                val_n += int(out["val_n"])
        has_validation = has_validation or val_n > 0
        train_loss = float(np.mean(losses))
        raw_val = val_sum / val_n if val_n else train_loss
        smoothed = raw_val if smoothed is None else 0.7 * smoothed + 0.3 * raw_val
        val_loss = smoothed
        history.epoch.append(epoch)
        history.train_loss.append(train_loss)
        history.validation_loss.append(raw_val)
        history.lr.append(config.lr * factor)
        history.steps.append(len(losses))
        if not np.isfinite(train_loss):
            raise TrainingDivergedError(
                f"training diverged at epoch {epoch} (loss {train_loss}); lower lr (now {config.lr}) "
                "or check the input"
            )
        if best[1] is None or val_loss < best[0] - 1e-4 * abs(best[0]):
            best = (val_loss, copy.deepcopy(module.state_dict()))
            history.best_epoch = epoch
            bad_epochs = 0
        else:
            bad_epochs += 1
        if bar is not None:
            bar.update(1, f"loss {train_loss:.3g} val {val_loss:.3g}")
        if on_epoch is not None:
            on_epoch(epoch, train_loss)
        if ckpt is not None and ((epoch + 1) % config.checkpoint_every == 0 or epoch + 1 == config.epochs):
            loop = {
                "numpy_rng": json.dumps(rng.bit_generator.state),
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                "has_validation": has_validation,
                "smoothed": smoothed,
                "best_loss": best[0],
                "best_module": best[1],
                "bad_epochs": bad_epochs,
                "steps_per_epoch": len(batches),
            }
            _save_checkpoint(ckpt, module, opt, epoch, history, loop)
        if (
            config.early_stopping
            and has_validation
            and epoch + 1 >= config.min_epochs
            and bad_epochs >= config.patience
        ):
            history.stopped_early = True
            logger.info("early stopping at epoch %d (best %d)", epoch, history.best_epoch)
            break
    if bar is not None:
        bar.close()
    if config.early_stopping and has_validation and best[1] is not None:
        module.load_state_dict(best[1])
    module.eval()
    return history


def _pretrain(
    module: SoScopeModule,
    batches: Sequence[SpotBatch],
    config: TrainConfig,
    rng,
    history: History,
    progress: bool,
    device: torch.device,
) -> None:
    """Step 1: fit the encoder as a graph autoencoder of the spots (its own optimizer and schedule)."""
    params = [
        p
        for n, p in module.named_parameters()
        if n.startswith(("input_proj", "graph_", "to_latent", "spot_trunk", "batch_embed", "pretrain_head"))
    ]
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    total = config.pretrain_epochs * len(batches)
    warm = max(1, int(config.kl_warmup_fraction * total))
    bar = progress_bar(progress, config.pretrain_epochs, "pretraining (graph autoencoder)")
    step = 0
    module.train()
    for _ in range(config.pretrain_epochs):
        losses = []
        for bi in rng.permutation(len(batches)):
            for g in opt.param_groups:
                g["lr"] = config.lr * _lr_factor(step, total)
            out = module.pretrain_loss(
                batches[bi].to(device), kl_weight=config.kl_weight * min(1.0, (step + 1) / warm)
            )
            opt.zero_grad(set_to_none=True)
            out["loss"].backward()
            torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
            opt.step()
            losses.append(float(out["loss"].detach()))
            step += 1
        history.pretrain_loss.append(float(np.mean(losses)))
        if bar is not None:
            bar.update(1, f"loss {history.pretrain_loss[-1]:.3g}")
    if bar is not None:
        bar.close()


def _save_checkpoint(path: Path, module, opt, epoch: int, history: History, loop: dict | None = None) -> None:
    """Write a checkpoint atomically (temporary file, then rename): an interrupted write leaves the old one.

    ``loop`` holds the training loop's own state (random generators, early-stopping state and best weights),
    so that a resumed run takes the same steps as an uninterrupted one. Everything in the file is tensors,
    numbers and strings: it loads with ``torch.load(weights_only=True)``.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    payload = {
        "module": module.state_dict(),
        "optimizer": opt.state_dict(),
        "epoch": epoch,
        "history": history.as_dict(),
    }
    if loop is not None:
        payload["loop"] = loop
    torch.save(payload, tmp)
    os.replace(tmp, path)
