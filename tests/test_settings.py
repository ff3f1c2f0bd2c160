"""``soscope.settings``: validated attributes, temporary overrides, and the defaults the code reads."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import soscope
from soscope import SoscopeInputError
from soscope._settings import Settings


def test_defaults_match_a_fresh_settings_object():
    fresh = Settings()
    assert fresh.infer_chunk_spots == 2048 and fresh.train_chunk_spots == 256
    assert fresh.device == "auto" and fresh.progress is True and fresh.parallel_backend is None
    assert soscope.settings is soscope._settings.settings


@pytest.mark.parametrize(
    ("name", "bad"),
    [
        ("infer_chunk_spots", 0),
        ("infer_chunk_spots", 2.5),
        ("train_chunk_spots", True),
        ("progress", "yes"),
        ("parallel_backend", "processes"),
        ("device", "gpu0"),
        ("write_buffer_bytes", -1),
        ("max_shapes_in_memory", "many"),
    ],
)
def test_bad_values_are_refused_with_the_setting_named(name, bad):
    s = Settings()
    before = getattr(s, name)
    with pytest.raises(SoscopeInputError, match=name):
        setattr(s, name, bad)
    assert getattr(s, name) == before


def test_unknown_setting_lists_the_settings():
    with pytest.raises(SoscopeInputError, match="infer_chunk_spots"):
        soscope.settings.infer_chunk_spot = 10  # a typo must not pass silently


def test_override_restores_even_on_error():
    s = Settings()
    with pytest.raises(RuntimeError), s.override(infer_chunk_spots=7, progress=False):
        assert (s.infer_chunk_spots, s.progress) == (7, False)
        raise RuntimeError
    assert (s.infer_chunk_spots, s.progress) == (2048, True)


def test_override_validates_everything_before_changing_anything():
    s = Settings()
    with pytest.raises(SoscopeInputError), s.override(infer_chunk_spots=7, parallel_backend="nope"):
        pass
    assert s.infer_chunk_spots == 2048


def test_reset_restores_defaults():
    s = Settings()
    s.infer_chunk_spots, s.stream_min_bytes = 3, 0
    s.reset()
    assert dataclasses.asdict(s) == dataclasses.asdict(Settings())


def test_auto_device_follows_the_setting():
    from soscope.model._core import resolve_device

    with soscope.settings.override(device="cpu"):
        assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")  # an explicit device wins


def test_progress_off_hides_every_bar():
    from soscope._progress import progress_bar

    with soscope.settings.override(progress=False):
        assert progress_bar(True, 10, "x") is None
    assert progress_bar(False, 10, "x") is None
    bar = progress_bar(True, 2, "x")
    assert bar is not None
    bar.update(2)
    bar.close()


def test_training_batch_cache_reads_the_setting():
    """ChunkBatches keeps built batches up to ``settings.batch_cache_bytes`` (0: rebuilds each time)."""
    import numpy as np

    from soscope.model._core import build_batches

    sdata = soscope.datasets.synthetic(n_spots=60, n_features=8, seed=0)
    m = soscope.SoScope(sdata, table="table", n_hidden=8, n_latent=2, device="cpu", progress=False)
    data = m.prepared.data
    with soscope.settings.override(batch_cache_bytes=0):
        _, nocache = build_batches(data, m.normaliser, m.module.config, chunk_spots=20)
    _, cached = build_batches(data, m.normaliser, m.module.config, chunk_spots=20)
    assert nocache[0] is not nocache[0]  # rebuilt on every use
    assert cached[0] is cached[0]
    np.testing.assert_array_equal(nocache[0].x[0].numpy(), cached[0].x[0].numpy())


def test_cached_batches_hold_wide_offsets_computed_whole():
    """A kept batch computes its on-demand offsets once, to the values computed per block of columns."""
    import numpy as np
    import torch

    from soscope.model._core import build_batches, computed_offsets
    from soscope.module import LazyColumns

    sdata = soscope.datasets.synthetic(n_spots=60, n_features=8, seed=0)
    m = soscope.SoScope(sdata, table="table", n_hidden=8, n_latent=2, device="cpu", progress=False)
    data = m.prepared.data
    with soscope.settings.override(feature_block_size=3):  # 8 features > 3: offsets computed on demand
        with soscope.settings.override(batch_cache_bytes=0):
            _, nocache = build_batches(data, m.normaliser, m.module.config, chunk_spots=20)
        _, cached = build_batches(data, m.normaliser, m.module.config, chunk_spots=20)
        lazy = nocache[0].sub_offset[0]
        assert isinstance(lazy, LazyColumns)
        whole = cached[0].sub_offset[0]
        assert isinstance(whole, torch.Tensor) and tuple(whole.shape) == lazy.shape
        blocks = torch.cat([lazy.columns(slice(a, min(a + 3, 8))) for a in range(0, 8, 3)], dim=1)
        np.testing.assert_allclose(whole.numpy(), blocks.numpy(), rtol=1e-6, atol=1e-6)
        # a budget too small for the offsets keeps them on demand
        assert isinstance(computed_offsets(nocache[0], budget=10).sub_offset[0], LazyColumns)
