"""The runner of per-chunk tasks: every backend runs each task once and hands its result to the sink."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import soscope
from soscope import SoscopeInputError
from soscope.tiling import Remote, choose_backend, run_tasks, worker_builds, worker_cached

#: a hang guard for tests on a dask.distributed cluster, not a speed check: a 2-core machine under load
#: takes over a minute to start a LocalCluster and run them
HANG_S = 300


def _square(i: int) -> np.ndarray:
    return np.arange(4, dtype=np.float64) * i + i**2


def _remote_square(built: dict, i: int) -> np.ndarray:
    # ``built`` is what the worker made once from the broadcast object
    return _square(i) * built["scale"]


def _build(shared: dict) -> dict:
    return {"scale": shared["scale"]}


def _collect(n: int, backend: str | None = None, **kw) -> tuple[dict[int, np.ndarray], str]:
    got: dict[int, np.ndarray] = {}

    def sink(i: int, res: np.ndarray) -> None:
        assert i not in got, f"task {i} reached the sink twice"
        got[i] = res

    with soscope.settings.override(parallel_backend=backend):
        used = run_tasks(n, _square, sink, **kw)
    return got, used


@pytest.mark.parametrize("backend", ["serial", "threads"])
@pytest.mark.parametrize("n", [0, 1, 7])
def test_every_task_reaches_the_sink_once(backend, n):
    got, used = _collect(n, backend, workers=3)
    assert used == backend
    assert sorted(got) == list(range(n))
    for i, res in got.items():
        np.testing.assert_array_equal(res, _square(i))


def test_threads_backend_uses_several_threads():
    seen: set[int] = set()
    barrier = threading.Barrier(2, timeout=30)

    def task(i: int) -> int:
        seen.add(threading.get_ident())
        if i < 2:
            barrier.wait()  # the first two tasks can only finish if they run at the same time
        return i

    out: dict[int, int] = {}
    with soscope.settings.override(parallel_backend="threads"):
        run_tasks(6, task, out.__setitem__, workers=2)
    assert out == {i: i for i in range(6)} and len(seen) >= 2


def test_serial_backend_runs_in_the_calling_thread():
    seen: set[int] = set()

    def task(i: int) -> int:
        seen.add(threading.get_ident())
        return i

    with soscope.settings.override(parallel_backend="serial"):
        run_tasks(5, task, lambda i, r: None, workers=4)
    assert seen == {threading.get_ident()}


def test_task_error_reaches_the_caller():
    def task(i: int) -> int:
        if i == 3:
            raise ValueError("chunk 3 failed")
        return i

    for backend in ("serial", "threads"):
        with soscope.settings.override(parallel_backend=backend), pytest.raises(ValueError, match="chunk 3"):
            run_tasks(6, task, lambda i, r: None, workers=2)


def test_distributed_backend_requires_a_client():
    with (
        soscope.settings.override(parallel_backend="dask-distributed"),
        pytest.raises(SoscopeInputError, match="no dask.distributed client"),
    ):
        choose_backend()
    assert choose_backend() == ("threads", None)  # default: no client active → local threads


def test_worker_cache_builds_once_per_token():
    calls = []

    def build(shared):
        calls.append(shared)
        return shared * 2

    before = worker_builds()
    assert worker_cached("token-a", build, 5) == 10
    assert worker_cached("token-a", build, 5) == 10
    assert worker_cached("token-b", build, 6) == 12  # a new run replaces the cached object
    assert calls == [5, 6] and worker_builds() == before + 2


@pytest.fixture(scope="module")
def thread_client():
    """Start an in-process dask.distributed cluster (threads): the distributed path, no process start-up."""
    distributed = pytest.importorskip("distributed")
    with (
        distributed.LocalCluster(
            n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None, silence_logs=50
        ) as cluster,
        distributed.Client(cluster, set_as_default=False) as client,
    ):
        yield client


@pytest.mark.timeout(HANG_S)
def test_distributed_backend_matches_local(thread_client):
    remote = Remote(_remote_square, lambda i: (i,), shared={"scale": 1.0}, build=_build)
    local, _ = _collect(9, "threads", workers=2)
    got: dict[int, np.ndarray] = {}
    used = run_tasks(9, _square, got.__setitem__, remote=remote, client=thread_client)
    assert used == "distributed"
    assert sorted(got) == list(range(9))
    for i in range(9):
        np.testing.assert_array_equal(got[i], local[i])


@pytest.mark.timeout(HANG_S)
def test_active_client_is_used_unless_threads_are_asked_for(thread_client):
    remote = Remote(_remote_square, lambda i: (i,), shared={"scale": -1.0}, build=_build)
    with thread_client.as_current():
        got: dict[int, np.ndarray] = {}
        assert run_tasks(3, _square, got.__setitem__, remote=remote) == "distributed"
        np.testing.assert_array_equal(got[2], -_square(2))  # the remote function ran
        with soscope.settings.override(parallel_backend="threads"):
            assert run_tasks(3, _square, got.__setitem__, remote=remote) == "threads"
        np.testing.assert_array_equal(got[2], _square(2))
        # work with no remote form stays local even with a client active
        assert run_tasks(3, _square, got.__setitem__) == "threads"
