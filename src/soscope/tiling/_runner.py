"""The one runner of per-chunk tasks: serially, on local threads, or on a ``dask.distributed`` cluster.

A caller describes its work as ``n_tasks`` independent tasks and hands each result to a *sink* as tasks
complete, a bounded number of tasks at a time, so memory does not grow with the number of tasks:

* **serial**: task after task in the calling thread;
* **threads** (default without a client): waves of a few tasks per thread on Dask's threaded scheduler.
  Numeric work (torch, numpy) releases the GIL, so tasks run in parallel;
* **distributed**: on a ``dask.distributed`` client (``client=``, or the active one). An object needed by
  every task (e.g. a network's weights) is scattered to every worker *once* (``broadcast=True``) and turned
  into what tasks use (e.g. the network) once per worker process, then cached; each task carries only its
  own arguments, built on the client, so workers never need the whole input.

Which one runs follows ``client=`` first, then ``soscope.settings.parallel_backend``.
"""

from __future__ import annotations

import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from .._errors import SoscopeInputError
from .._progress import progress_bar
from .._settings import settings

#: a sink receives the index of a completed task and its result, in the calling thread
Sink = Callable[[int, Any], None]

_CACHE: dict[str, Any] = {}  # per worker process: token of a broadcast object → what was built from it
_CACHE_LOCK = threading.Lock()
_BUILDS = 0  # objects built in this process from broadcast ones (a worker builds one per run)


@dataclass
class Remote:
    """How tasks run on a ``dask.distributed`` worker.

    Attributes
    ----------
    function
        ``function(built, *args)`` runs task ``i`` on a worker: ``built`` is ``build(shared)``, made once per
        worker process; ``args`` are ``arguments(i)``. Must be importable (a module-level function).
    arguments
        ``arguments(i)`` → the tuple of task ``i``'s own arguments, built on the client (kept small: only
        what the task needs).
    shared
        An object every task needs, scattered once to every worker (None: nothing is scattered).
    build
        Turns ``shared`` into what tasks use, once per worker process (default: ``shared`` as it is).
        Must be importable.

    """

    function: Callable[..., Any]
    arguments: Callable[[int], tuple]
    shared: Any = None
    build: Callable[[Any], Any] | None = None


def active_client(client: Any = None) -> Any:
    """Return ``client``, else the active ``dask.distributed`` client, else None (without importing it)."""
    if client is not None:
        return client
    if "distributed" not in sys.modules:  # no client can be active if distributed was never imported
        return None
    from distributed import get_client

    try:
        return get_client()
    except ValueError:
        return None


def choose_backend(client: Any = None) -> tuple[str, Any]:
    """Return the backend a run uses: ``("serial" | "threads" | "distributed", client or None)``.

    ``client=`` wins; otherwise ``soscope.settings.parallel_backend`` decides (None: the active client when
    there is one, else local threads).
    """
    if client is not None:
        return "distributed", client
    backend = settings.parallel_backend
    if backend in ("threads", "serial"):
        return backend, None
    found = active_client()
    if found is not None:
        return "distributed", found
    if backend == "dask-distributed":
        raise SoscopeInputError(
            "soscope.settings.parallel_backend is 'dask-distributed' but no dask.distributed client is "
            "active: create one (`Client(...)`), pass client=, or set "
            "soscope.settings.parallel_backend = None."
        )
    return "threads", None


def run_tasks(
    n_tasks: int,
    local: Callable[[int], Any],
    sink: Sink,
    *,
    remote: Remote | None = None,
    client: Any = None,
    workers: int = 1,
    progress: bool = False,
    description: str = "soscope",
) -> str:
    """Run tasks ``0 .. n_tasks - 1`` and pass each result to ``sink(i, result)`` as it completes.

    Parameters
    ----------
    n_tasks
        Number of tasks.
    local
        ``local(i)`` runs task ``i`` in this process (serial and threads backends); it must give the same
        result as ``remote`` would.
    sink
        Called in this thread for each completed task; tasks complete in any order.
    remote
        How tasks run on a cluster (:class:`Remote`); None: ``local`` is not sent anywhere, so a cluster
        is not used even when one is active.
    client
        A ``dask.distributed`` client; default: see :func:`choose_backend`.
    workers
        Threads of the threads backend.
    progress
        Show a progress bar over tasks.
    description
        The progress bar's label.

    Returns
    -------
    The backend that ran the tasks: ``"serial"``, ``"threads"`` or ``"distributed"``.

    """
    backend, client = choose_backend(client)
    if backend == "distributed" and remote is None:
        backend, client = "threads", None
    bar = progress_bar(progress, n_tasks, description)

    def done(i: int, result: Any) -> None:
        sink(i, result)
        if bar is not None:
            bar.update(1)

    try:
        if n_tasks == 0:
            pass
        elif backend == "serial":
            for i in range(n_tasks):
                done(i, local(i))
        elif backend == "threads":
            _run_threads(n_tasks, local, done, workers=workers)
        else:
            _run_distributed(client, n_tasks, remote, done)
    finally:
        if bar is not None:
            bar.close()
    return backend


def _windows(n: int, size: int) -> Iterator[range]:
    for start in range(0, n, size):
        yield range(start, min(n, start + size))


def _run_threads(n_tasks: int, local: Callable[[int], Any], done: Sink, *, workers: int) -> None:
    import dask

    workers = max(1, int(workers))
    task = dask.delayed(local, pure=False)  # pure=False: the closure is never hashed
    # waves of a few tasks per thread: results are consumed between waves, so memory stays bounded
    for window in _windows(n_tasks, 2 * workers):
        results = dask.compute(*[task(i) for i in window], scheduler="threads", num_workers=workers)
        for i, res in zip(window, results, strict=True):
            done(i, res)
        del results


def worker_cached(token: str, build: Callable[[Any], Any] | None, shared: Any) -> Any:
    """``build(shared)`` made once per process for ``token`` (one run at a time: a new token replaces it)."""
    global _BUILDS
    with _CACHE_LOCK:
        if token not in _CACHE:
            built = shared if build is None else build(shared)
            _CACHE.clear()  # keep one object per worker: a new run replaces the previous one
            _CACHE[token] = built
            _BUILDS += 1
        return _CACHE[token]


def worker_builds() -> int:
    """Objects this process has built from broadcast ones (on a worker: one per run that used it)."""
    return _BUILDS


def _remote_call(function: Callable, build: Callable | None, shared: Any, token: str, args: tuple) -> Any:
    return function(worker_cached(token, build, shared), *args)


def _run_distributed(client: Any, n_tasks: int, remote: Remote, done: Sink) -> None:
    import dask
    from distributed import as_completed

    token = uuid.uuid4().hex
    # the shared object travels once to every worker; tasks refer to it by key
    shared_f = None
    if remote.shared is not None:
        [shared_f] = client.scatter([remote.shared], broadcast=True, hash=False)
    task = dask.delayed(_remote_call, pure=False)
    in_flight = 2 * max(1, sum(client.nthreads().values()))
    index_of: dict[str, int] = {}

    def submit(i: int):
        args = dask.delayed(
            remote.arguments(i), name=f"soscope-task-{token}-{i}", traverse=False
        )  # not hashed
        fut = client.compute(task(remote.function, remote.build, shared_f, token, args))
        index_of[fut.key] = i
        return fut

    pending = iter(range(n_tasks))
    # loop=: the client given need not be the default one
    ac = as_completed([submit(i) for _, i in zip(range(in_flight), pending, strict=False)], loop=client.loop)
    try:
        for fut in ac:
            i = index_of.pop(fut.key)
            res = fut.result()
            fut.release()
            done(i, res)
            nxt = next(pending, None)
            if nxt is not None:
                ac.add(submit(nxt))
    finally:
        for f in list(ac.futures):
            f.cancel()
        if shared_f is not None:
            shared_f.release()
