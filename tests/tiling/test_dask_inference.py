"""Inference as a Dask graph: several threads, a dask.distributed cluster and the untiled network agree."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import soscope
import soscope.model._predict as pr
from soscope.model._core import receptive_hops
from soscope.model._predict import predict
from soscope.tiling import active_client, plan_chunks, worker_builds

pytest.importorskip("spatialdata")

MODEL_ARGS = dict(table="table", n_hidden=16, n_latent=4, device="cpu", progress=False, seed=0)
SMALL = 30  # core spots per chunk: several chunks, most spots near a border

#: a hang guard for tests on a dask.distributed cluster, not a speed check: a 2-core machine under load
#: takes over a minute to start a LocalCluster and run them
HANG_S = 300


@pytest.fixture(scope="module", params=[(7, True), (9, False)], ids=["hex7-image", "grid3-no-image"])
def model(request):
    k, image = request.param
    sdata = soscope.datasets.synthetic(n_spots=150, n_features=20, k=k, image=image, seed=2)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        m = soscope.SoScope(sdata, **MODEL_ARGS)
        m.train(epochs=2)
    finally:
        torch.set_num_threads(before)
    assert m.scheme == ("hex7" if k == 7 else "grid:3")
    return m


def _predict(m, **kw):
    return predict(m.module, m.prepared.data, m.normaliser, device="cpu", **kw)


def _assert_same(a, b, exact=False):
    for ra, rb in zip(a, b, strict=True):
        assert set(ra) == set(rb)
        for key in ra:
            assert np.abs(ra[key]).sum() > 0
            if exact:
                np.testing.assert_array_equal(ra[key], rb[key], err_msg=key)
            else:
                np.testing.assert_allclose(ra[key], rb[key], rtol=1e-4, atol=1e-5, err_msg=key)


def test_chunk_payload_is_self_contained(model):
    """A chunk's payload alone (no polygons, local indices) gives its core spots' untiled results."""
    data = model.prepared.data
    chunks = plan_chunks(data.centres, data.edge_index, sections=data.sections, chunk_spots=SMALL,
                         n_hops=receptive_hops(model.module.config))  # fmt: skip
    full = _predict(model, chunk_spots=10**9)
    chunk = max(chunks, key=lambda c: len(c.nodes) - len(c.core))  # the one with the widest halo
    payload, core = pr.chunk_payload(data, chunk)
    assert payload.n_spots == len(chunk.nodes) < data.n_spots
    assert payload.layout.polygons is None, "polygons are not shipped with the tasks"
    res = pr.run_chunk(model.module, payload, core, model.normaliser, device=torch.device("cpu"))
    rows = data.layout.rows_of(chunk.core)
    np.testing.assert_allclose(res[0]["enhanced"], full[0]["enhanced"][rows], rtol=1e-4, atol=1e-5)


def test_posterior_std_does_not_depend_on_threads(model, monkeypatch):
    """Samples are seeded per chunk: the std layer is the same whatever the number of threads."""
    monkeypatch.setattr(pr, "local_workers", lambda device, n: 1)
    one = _predict(model, chunk_spots=SMALL, n_samples=3)
    monkeypatch.setattr(pr, "local_workers", lambda device, n: min(3, n))
    three = _predict(model, chunk_spots=SMALL, n_samples=3)
    assert (one[0]["std"] > 0).mean() > 0.5
    _assert_same(one, three, exact=True)


def test_auto_device_is_cpu_without_cuda(monkeypatch):
    from soscope.model._core import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")


@pytest.fixture(scope="module")
def cluster_client():
    """Start a 2-process LocalCluster (one thread each), shared by the tests of this module."""
    distributed = pytest.importorskip("distributed")
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=50
        ) as cluster,
        distributed.Client(cluster, set_as_default=False) as client,
    ):
        yield client


@pytest.mark.timeout(HANG_S)
def test_local_cluster_equals_local_scheduler(model, cluster_client):
    """The same graph on a 2-process LocalCluster: weights scattered once, a network built once per worker."""
    client = cluster_client
    local = _predict(model, chunk_spots=SMALL, n_samples=2)
    n_chunks = len(
        plan_chunks(model.prepared.data.centres, model.prepared.data.edge_index, chunk_spots=SMALL)
    )
    assert n_chunks >= 4
    builds_before = client.run(worker_builds)
    scatters = []
    original = client.scatter

    def spy(data, **kwargs):
        scatters.append(kwargs)
        return original(data, **kwargs)

    client.scatter = spy
    try:
        remote = _predict(model, chunk_spots=SMALL, n_samples=2, client=client)
    finally:
        client.scatter = original
    assert len(scatters) == 1 and scatters[0].get("broadcast") is True, "weights are broadcast once"
    builds = client.run(worker_builds)
    new = [builds[w] - builds_before[w] for w in builds]
    assert set(new) <= {0, 1} and sum(new) >= 1, (
        "each worker builds the network at most once for all its tasks"
    )
    _assert_same(local, remote, exact=True)
    full = _predict(model, chunk_spots=10**9)
    _assert_same([{k: r[k] for k in ("enhanced", "mean")} for r in remote], full)


@pytest.mark.timeout(HANG_S)
def test_active_client_is_used(model, cluster_client):
    """Without ``client=``, the graph runs on the active client (``with client.as_current()``)."""
    local = _predict(model, chunk_spots=SMALL)
    assert active_client() is None
    with cluster_client.as_current():
        assert active_client() is cluster_client
        builds_before = sum(cluster_client.run(worker_builds).values())
        active = _predict(model, chunk_spots=SMALL)
        assert sum(cluster_client.run(worker_builds).values()) > builds_before, "ran on the cluster"
    _assert_same(local, active, exact=True)


@pytest.mark.parametrize("k", [7, 9], ids=["hex7", "grid3"])
def test_training_chunks_find_the_whole_layouts_subspot_edges(k):
    """Each minibatch finds its sub-spot edges on its own polygons.

    Exactly the edges of the whole layout's sub-spot graph with both ends in the chunk, in the same order
    (cost ∝ chunk, not slide).
    """
    from soscope.geometry import subspot_graph
    from soscope.model._data import make_batch
    from soscope.tiling import adjacency

    sdata = soscope.datasets.synthetic(n_spots=150, n_features=20, k=k, image=True, seed=2)
    model = soscope.SoScope(sdata, **MODEL_ARGS)  # set up, not trained: the batches are what is tested
    data = model.prepared.data
    assert data.subspot_size is not None and data.image_features is not None
    whole = adjacency(subspot_graph(data.layout), data.layout.n_subspots)
    chunks = plan_chunks(data.centres, data.edge_index, sections=data.sections, chunk_spots=SMALL, n_hops=2)
    for chunk in chunks[:3]:
        batch = make_batch(data, chunk, model.normaliser)
        rows = data.layout.rows_of(chunk.nodes)
        local = whole[rows][:, rows]
        local.sort_indices()
        local = local.tocoo()
        assert batch.sub_edges.shape[1] > 0
        np.testing.assert_array_equal(batch.sub_edges.numpy(), np.vstack([local.row, local.col]))
