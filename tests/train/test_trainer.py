"""The training loop: steps per epoch from ``batch_size``, checkpoint/resume, divergence, latent space."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch
from conftest import MODEL_ARGS, N_SPOTS

import soscope
from soscope.train import _trainer


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ------------------------------------------------------------------------------------ batch size
def test_batch_size_sets_the_steps_per_epoch(new_model):
    """One optimizer step per chunk of ``batch_size`` spots: smaller batches, more steps per epoch."""
    small, whole = new_model(), new_model()
    small.train(epochs=2, batch_size=20)
    whole.train(epochs=2)  # the default, 256 spots: all 100 spots in one step
    assert whole.train_config.batch_size == 256 and whole.history.steps == [1, 1]
    assert small.train_config.batch_size == 20
    assert len(small.history.steps) == 2 and small.history.steps[0] == small.history.steps[1]
    assert small.history.steps[0] >= math.ceil(N_SPOTS / 20), small.history.steps
    assert small.history.train_loss != whole.history.train_loss


@pytest.mark.parametrize("bad", [0, -5, 2.5, True, "64"])
def test_bad_batch_size_is_refused_before_training(new_model, bad):
    model = new_model()
    with pytest.raises(soscope.SoscopeInputError, match="batch_size"):
        model.train(epochs=1, batch_size=bad)
    assert model.history is None and not model.is_trained


def test_enhance_trains_with_the_batch_size(small_sdata):
    out = soscope.enhance(
        small_sdata, epochs=1, batch_size=20, inplace=False, key_added="bs", seed=0, **MODEL_ARGS
    )
    info = out.tables["table_bs"].uns["soscope"]
    assert info["train"]["batch_size"] == 20
    assert int(np.asarray(info["history"]["steps"])[0]) >= math.ceil(N_SPOTS / 20)


def test_enhance_refuses_a_bad_batch_size_before_the_set_up(small_sdata):
    with pytest.raises(soscope.SoscopeInputError, match="batch_size"):
        soscope.enhance(small_sdata, batch_size=0, **MODEL_ARGS)


# ------------------------------------------------------------------------------------ checkpoints
class _Killed(Exception):
    """Stands for the process dying right after a checkpoint was written."""


def test_resume_continues_as_the_uninterrupted_run(new_model, tmp_path, monkeypatch):
    """Train 6 epochs, checkpoint every 3; die after the first; resume: the same run as without a stop."""
    kw = dict(epochs=6, batch_size=25, checkpoint_every=3)  # several steps an epoch: the batch order matters
    new_model = functools.partial(
        new_model, image=None
    )  # with the image: its head has its own optimizer group
    full = new_model()
    full.train(checkpoint_dir=tmp_path / "full", **kw)

    real_save = _trainer._save_checkpoint

    def save_then_die(*args, **kwargs):
        real_save(*args, **kwargs)
        raise _Killed

    monkeypatch.setattr(_trainer, "_save_checkpoint", save_then_die)
    with pytest.raises(_Killed):
        new_model().train(checkpoint_dir=tmp_path / "run", **kw)
    monkeypatch.undo()
    state = torch.load(tmp_path / "run" / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert state["epoch"] == 2 and state["history"]["epoch"] == [0, 1, 2]

    resumed = new_model()
    with torch.no_grad():  # other starting weights: only the checkpoint can make the result equal
        for p in resumed.module.parameters():
            p.add_(0.5)
    resumed.train(checkpoint_dir=tmp_path / "run", resume=True, **kw)
    assert resumed.history.epoch == list(range(6))
    assert resumed.history.as_dict() == full.history.as_dict()
    assert _same_weights(resumed.module, full.module)


def test_resume_with_another_batch_size_is_refused(new_model, tmp_path):
    model = new_model()
    model.train(epochs=2, batch_size=25, checkpoint_dir=tmp_path, checkpoint_every=1)
    other = new_model()
    before = {k: v.clone() for k, v in other.module.state_dict().items()}
    with pytest.raises(soscope.SoscopeInputError, match="steps per epoch.*batch_size"):
        other.train(epochs=4, batch_size=256, checkpoint_dir=tmp_path, resume=True)
    assert all(torch.equal(v, other.module.state_dict()[k]) for k, v in before.items()), "left as it was"


def test_without_resume_a_checkpoint_is_ignored(new_model, tmp_path):
    kw = dict(epochs=4, batch_size=25, checkpoint_every=2, checkpoint_dir=tmp_path)
    first = new_model()
    first.train(**kw)
    assert (tmp_path / "checkpoint.pt").is_file()
    again = new_model()
    again.train(**kw)  # resume=False: trains from its own start, as ``first`` did
    assert again.history.as_dict() == first.history.as_dict()
    assert _same_weights(again.module, first.module)


# ------------------------------------------------------------------------------------ divergence
def test_non_finite_loss_raises_training_diverged(new_model):
    model = new_model()
    with torch.no_grad():  # a NaN feature level makes every loss NaN from the first step
        model.module.spot_heads[0].bias.fill_(float("nan"))
    with pytest.raises(soscope.TrainingDivergedError, match="lower lr") as err:
        model.train(epochs=3)
    assert "epoch 0" in str(err.value)
    assert isinstance(err.value, soscope.SoscopeError)
    assert not model.is_trained


# ------------------------------------------------------------------------------------ latent space
@pytest.fixture(scope="module")
def trained(small_sdata):
    model = soscope.SoScope(small_sdata, **MODEL_ARGS, seed=0, spot_latent=True)
    model.train(epochs=3)
    return model


def test_latent_shape(trained):
    z = trained.get_latent()
    assert z.shape == (N_SPOTS, MODEL_ARGS["n_latent"]) and z.dtype == np.float32
    assert np.isfinite(z).all()
    assert (z.std(axis=0) > 0).all(), "spots must differ in the latent space"


def test_latent_is_deterministic(trained, small_sdata, tmp_path):
    z = trained.get_latent()
    assert np.array_equal(z, trained.get_latent())
    # the same data prepared again, and the model after a save/load, give the same latent
    assert np.array_equal(z, trained.get_latent(small_sdata))
    trained.save(tmp_path / "m")
    loaded = soscope.SoScope.load(tmp_path / "m", device="cpu", progress=False)
    assert np.array_equal(z, loaded.get_latent(small_sdata))


def test_latent_follows_the_seed(trained, small_sdata):
    same = soscope.SoScope(small_sdata, **MODEL_ARGS, seed=0, spot_latent=True)
    same.train(epochs=3)
    assert np.array_equal(same.get_latent(), trained.get_latent())
    other = soscope.SoScope(small_sdata, **MODEL_ARGS, seed=1, spot_latent=True)
    other.train(epochs=3)
    assert not np.allclose(other.get_latent(), trained.get_latent())


def test_without_a_spot_latent_nothing_is_encoded_and_the_latent_is_refused(small_sdata):
    model = soscope.SoScope(small_sdata, **MODEL_ARGS, seed=0)  # spot_latent=False: the default
    assert not model.module.config.spot_latent
    encoder = {k: v.clone() for k, v in model.module.state_dict().items() if k.startswith("input_proj")}
    model.train(epochs=2)
    # the posterior is the prior and its draws never reach the output: the encoder is never updated
    after = model.module.state_dict()
    assert encoder and all(torch.equal(v, after[k]) for k, v in encoder.items())
    with pytest.raises(soscope.SoscopeInputError, match="spot_latent=True"):
        model.get_latent()
    with pytest.raises(soscope.SoscopeInputError, match="spot_latent=True"):
        soscope.SoScope(small_sdata, **MODEL_ARGS, spot_latent=False).train(epochs=1, pretrain_epochs=2)
