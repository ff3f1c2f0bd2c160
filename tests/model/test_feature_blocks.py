"""Features in blocks (``soscope.settings.feature_block_size``): the same results as all features at once.

A modality wider than the block is enhanced a block of features at a time, and its sub-spot offsets are
computed only for the columns asked for (training steps, inference blocks); every output of a feature
depends on that feature alone, so blocking changes nothing beyond float rounding. The posterior draws
(``n_samples``) are reseeded per block: reproducible, the same distribution, not the same numbers.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from model_helpers import _variant, one_thread, train_model

import soscope
from soscope.model._data import make_batch
from soscope.model._predict import predict
from soscope.module import LazyColumns
from soscope.tiling import Chunk

BLOCK = 7  # 40 features: five whole blocks and a partial one


@pytest.fixture(scope="module")
def peaks_model(grid_sdata):
    """Two modalities (RNA counts: NB; peaks: Poisson), no image: blocks must not cross modalities."""
    return train_model(_variant(grid_sdata, "peaks"))


@pytest.fixture(scope="module")
def gaussian_model(grid_sdata):
    return train_model(_variant(grid_sdata, "normalised"))


def _predict(model, block: int | None = None, **kw):
    with soscope.settings.override(feature_block_size=block or soscope.settings.feature_block_size):
        data = model.prepared.data
        return predict(model.module, data, model.normaliser, device="cpu", chunk_spots=64, **kw)


@pytest.mark.parametrize("name", ["hex_model", "peaks_model", "gaussian_model"])
def test_blocks_equal_one_block(name, request):
    model = request.getfixturevalue(name)
    likelihoods = sorted({m.likelihood for m in model.module.config.modalities})
    assert {"hex_model": ["nb"], "peaks_model": ["nb", "poisson"], "gaussian_model": ["gaussian"]}[
        name
    ] == likelihoods
    widths = [m.n_features for m in model.module.config.modalities]
    assert max(widths) > BLOCK, "the block must cut the features"
    one = _predict(model)
    many = _predict(model, BLOCK)
    for a, b in zip(one, many, strict=True):
        assert set(a) == set(b) == {"enhanced", "mean"}
        for key in a:
            assert np.isfinite(b[key]).all()
            np.testing.assert_allclose(b[key], a[key], rtol=1e-5, atol=1e-6, err_msg=key)


def test_one_feature_blocks_equal_one_block(grid_model):
    np.testing.assert_allclose(
        _predict(grid_model, 1)[0]["enhanced"], _predict(grid_model)[0]["enhanced"], rtol=1e-5, atol=1e-6
    )


def test_without_mean_only_enhanced_is_computed(grid_model):
    full = _predict(grid_model)
    for block in (None, BLOCK):
        res = _predict(grid_model, block, with_mean=False)
        assert set(res[0]) == {"enhanced"}
        np.testing.assert_allclose(res[0]["enhanced"], full[0]["enhanced"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["hex_model", "grid_model"])
def test_lazy_offsets_equal_the_offsets(name, request):
    """Wider than the block, the offsets are computed on demand: the same columns, any block."""
    model = request.getfixturevalue(name)
    data, norm = model.prepared.data, model.normaliser
    chunk = Chunk(core=np.arange(30), nodes=np.arange(60))
    eager = make_batch(data, chunk, norm, use_image_offset=model.module.config.use_image)
    lazy = make_batch(data, chunk, norm, use_image_offset=model.module.config.use_image, feature_block_size=5)
    assert isinstance(eager.sub_offset[0], torch.Tensor)
    assert isinstance(lazy.sub_offset[0], LazyColumns)
    assert lazy.sub_offset[0].shape == tuple(eager.sub_offset[0].shape)
    whole = eager.sub_offset[0].numpy()
    np.testing.assert_array_equal(lazy.sub_offset[0].columns(None).numpy(), whole)
    picked = torch.tensor([0, 3, 17, 39])
    np.testing.assert_allclose(lazy.sub_offset[0].columns(picked).numpy(), whole[:, picked], rtol=1e-6)
    np.testing.assert_allclose(lazy.sub_offset[0].columns(slice(10, 17)).numpy(), whole[:, 10:17], rtol=1e-6)


def test_training_with_small_blocks_gives_the_same_model(grid_sdata, grid_model):
    """Training reads the offsets per step: lazily computed ones give the same steps (no image)."""
    with soscope.settings.override(feature_block_size=BLOCK):
        blocked = train_model(grid_sdata)
    trained, again = grid_model.module.state_dict(), blocked.module.state_dict()
    assert list(trained) == list(again)
    for name, value in trained.items():
        np.testing.assert_array_equal(again[name].numpy(), value.numpy(), err_msg=name)


def test_draws_per_block_are_reproducible_and_alike(grid_model):
    """The draws are seeded per block: reproducible, and the same distribution as one block's."""
    with one_thread():
        one = _predict(grid_model, n_samples=30, with_mean=False)[0]
        many = _predict(grid_model, BLOCK, n_samples=30, with_mean=False)[0]
        again = _predict(grid_model, BLOCK, n_samples=30, with_mean=False)[0]
    for key in ("std", "q10", "q90"):
        np.testing.assert_array_equal(many[key], again[key], err_msg=key)
        assert not np.array_equal(many[key], one[key]), "blocks after the first draw other numbers"
    np.testing.assert_allclose(many["enhanced"], one["enhanced"], rtol=1e-5, atol=1e-6)
    assert (many["q10"] <= many["q90"]).all()
    # the same spread on average (Monte Carlo noise of 30 draws over 1,800 sub-spots x 40 features)
    assert many["std"].mean() == pytest.approx(one["std"].mean(), rel=0.05)
    assert (many["q90"] - many["q10"]).mean() == pytest.approx((one["q90"] - one["q10"]).mean(), rel=0.05)


def test_feature_block_size_is_validated():
    with pytest.raises(soscope.SoscopeInputError, match="feature_block_size"):
        soscope.settings.feature_block_size = 0
    with pytest.raises(soscope.SoscopeInputError, match="feature_block_size"):
        soscope.settings.feature_block_size = 2.5
    assert soscope.settings.feature_block_size == 1024


def test_batch_bias_fitted_in_blocks_equals_one_block(peaks_model):
    """The closed-form batch bias (new sections' calibration) is summed a block of features at a time."""
    from soscope.model._calibrate import fit_batch_bias

    data, norm = peaks_model.prepared.data, peaks_model.normaliser
    labels = sorted(norm.batch_codes)
    fitted = []
    for block in (None, BLOCK):
        module = copy.deepcopy(peaks_model.module)
        with soscope.settings.override(feature_block_size=block or soscope.settings.feature_block_size):
            fit_batch_bias(module, data, norm, labels, chunk_spots=64)
        fitted.append([p.detach().numpy().copy() for p in module.batch_bias])
    for a, b in zip(*fitted, strict=True):
        assert np.abs(a).max() > 0, "the bias must be fitted"
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["gaussian_model", "grid_model"])
def test_batch_keeps_the_observed_values(name, request):
    """The encoder input is standardised in place: the batch's observations must stay the data's values."""
    model = request.getfixturevalue(name)
    data = model.prepared.data
    chunk = Chunk(core=np.arange(30), nodes=np.arange(60))
    for block in (None, BLOCK):
        batch = make_batch(data, chunk, model.normaliser, feature_block_size=block)
        np.testing.assert_array_equal(batch.x[0].numpy(), data.rows(0, chunk.nodes))
        assert not np.array_equal(batch.x_in[:, : data.modalities[0].n_features].numpy(), batch.x[0].numpy())
