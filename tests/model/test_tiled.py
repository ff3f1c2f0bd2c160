"""Tiled inference (chunks with a halo) equals untiled inference, on the chunk borders too."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from model_helpers import train_model

from soscope.model._core import receptive_hops
from soscope.model._predict import collect, predict, run_inference
from soscope.tiling import plan_chunks

SMALL = 40


def _border_spots(data, chunk_spots: int) -> np.ndarray:
    """Spots with a graph neighbour owned by another chunk."""
    chunks = plan_chunks(data.centres, data.edge_index, sections=data.sections, chunk_spots=chunk_spots)
    owner = np.empty(data.n_spots, dtype=np.int64)
    for i, c in enumerate(chunks):
        owner[c.core] = i
    src, dst = data.edge_index
    cross = owner[src] != owner[dst]
    return np.unique(src[cross])


def _check_tiled_equals_untiled(model):
    data = model.prepared.data
    kw = dict(device=torch.device("cpu"))
    full = predict(model.module, data, model.normaliser, chunk_spots=10**9, **kw)
    tiled = predict(model.module, data, model.normaliser, chunk_spots=SMALL, **kw)
    n_chunks = len(plan_chunks(data.centres, data.edge_index, sections=data.sections, chunk_spots=SMALL))
    assert n_chunks >= 4, "the small chunk size must cut the section into several tiles"
    border = _border_spots(data, SMALL)
    assert len(border) > data.n_spots // 4, "many spots should sit on chunk borders"
    border_rows = data.layout.rows_of(border)
    for f, t in zip(full, tiled, strict=True):
        assert set(f) == set(t) == {"enhanced", "mean"}
        for key in ("enhanced", "mean"):
            assert np.isfinite(f[key]).all()
            assert np.abs(f[key]).sum() > 0, "every sub-spot row must be written"
            np.testing.assert_allclose(
                t[key][border_rows],
                f[key][border_rows],
                rtol=1e-4,
                atol=1e-5,
                err_msg=f"{key} on chunk borders",
            )
            np.testing.assert_allclose(t[key], f[key], rtol=1e-4, atol=1e-5, err_msg=key)


def test_tiled_equals_untiled_hex7_image(hex_model):
    assert hex_model.scheme == "hex7" and hex_model.module.use_image
    _check_tiled_equals_untiled(hex_model)


def test_tiled_equals_untiled_grid_no_image(grid_model):
    assert grid_model.scheme.startswith("grid") and not grid_model.module.use_image
    _check_tiled_equals_untiled(grid_model)


def test_halo_too_shallow_would_differ(hex_model):
    """Sanity of the test itself: with no halo the border spots do change."""
    data = hex_model.prepared.data
    full = predict(
        hex_model.module, data, hex_model.normaliser, device=torch.device("cpu"), chunk_spots=10**9
    )
    cut, sink = collect(data.layout.n_subspots, hex_model.module.config, 0)
    run_inference(
        hex_model.module, data, hex_model.normaliser, sink, device="cpu", chunk_spots=SMALL, n_hops=0
    )
    assert not np.allclose(cut[0]["mean"], full[0]["mean"], rtol=1e-4, atol=1e-5)


def test_receptive_hops_cover_graph_layers(hex_model):
    cfg = hex_model.module.config
    assert receptive_hops(cfg) >= cfg.n_graph_layers


def test_tiled_std_is_finite(hex_model):
    """With posterior samples the chunked path also fills the std layer everywhere."""
    data = hex_model.prepared.data
    res = predict(
        hex_model.module,
        data,
        hex_model.normaliser,
        device=torch.device("cpu"),
        chunk_spots=SMALL,
        n_samples=3,
    )
    assert res[0]["std"].shape == res[0]["mean"].shape
    assert np.isfinite(res[0]["std"]).all() and (res[0]["std"] >= 0).all()


@pytest.mark.parametrize("n_graph_layers", [3])
def test_tiled_equals_untiled_deeper_encoder(hex_sdata, n_graph_layers):
    """A deeper encoder needs a deeper halo; the plan follows the module's receptive field."""
    model = train_model(hex_sdata, epochs=1, n_graph_layers=n_graph_layers, use_graph=True)
    assert receptive_hops(model.module.config) == n_graph_layers
    _check_tiled_equals_untiled(model)


def test_tiled_equals_untiled_two_sections():
    """Two sections side by side: chunks and halos stay within a section, results unchanged."""
    from model_helpers import MODEL_ARGS

    import soscope

    sdata = soscope.datasets.synthetic(n_spots=120, n_features=30, k=9, image=False, n_sections=2, seed=1)
    model = soscope.SoScope(sdata, **MODEL_ARGS)
    model.train(epochs=2)
    data = model.prepared.data
    assert len(np.unique(data.sections)) == 2
    _check_tiled_equals_untiled(model)


@pytest.mark.parametrize("fixture", ["hex_model", "grid_model"])
def test_tiled_equals_untiled_on_several_threads(fixture, request, monkeypatch):
    """Chunk tasks spread over 3 threads of Dask's threaded scheduler: same results, borders included."""
    import threading

    import soscope.model._predict as pr

    threads = set()
    run_chunk = pr.run_chunk

    def spy(*args, **kwargs):
        threads.add(threading.get_ident())
        return run_chunk(*args, **kwargs)

    monkeypatch.setattr(pr, "local_workers", lambda device, n: min(3, n))
    monkeypatch.setattr(pr, "run_chunk", spy)
    _check_tiled_equals_untiled(request.getfixturevalue(fixture))
    assert len(threads) >= 2, "chunks must run as tasks on several threads"


def test_chunk_spots_argument_and_setting_give_the_same_results(hex_model, hex_sdata):
    """``SoScope.enhance(chunk_spots=...)`` and ``settings.infer_chunk_spots`` cut the same chunks.

    The results do not depend on the chunk size (the halo covers the receptive field).
    """
    import soscope

    def x(**kw):
        return np.asarray(
            hex_model.enhance(hex_sdata, key_added="chunks", inplace=False, **kw).tables["table_chunks"].X
        )

    default = x()
    by_argument = x(chunk_spots=SMALL)
    with soscope.settings.override(infer_chunk_spots=SMALL):
        by_setting = x()
    np.testing.assert_array_equal(by_argument, by_setting)
    np.testing.assert_allclose(by_argument, default, rtol=1e-4, atol=1e-5)
    with pytest.raises(soscope.SoscopeInputError, match="chunk_spots"):
        x(chunk_spots=0)


def test_serial_backend_equals_threads(hex_model):
    """``parallel_backend="serial"`` runs the same chunk tasks in the calling thread: identical results."""
    import soscope

    data = hex_model.prepared.data
    kw = dict(device="cpu", chunk_spots=SMALL, n_samples=2)
    threads = predict(hex_model.module, data, hex_model.normaliser, **kw)
    with soscope.settings.override(parallel_backend="serial"):
        serial = predict(hex_model.module, data, hex_model.normaliser, **kw)
    for a, b in zip(threads, serial, strict=True):
        assert set(a) == set(b)
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
