"""Chunks of spots with a halo, and the one runner of per-chunk tasks (serial, threads, dask.distributed).

Chunks with a halo covering the receptive field let large sections run piece by piece with results equal to
untiled ones; :func:`run_tasks` runs any per-chunk work (inference, image tiles) with bounded memory.
"""

from ._plan import Chunk, adjacency, expand_hops, plan_chunks
from ._runner import Remote, active_client, choose_backend, run_tasks, worker_builds, worker_cached

__all__ = [
    "Chunk",
    "Remote",
    "active_client",
    "adjacency",
    "choose_backend",
    "expand_hops",
    "plan_chunks",
    "run_tasks",
    "worker_builds",
    "worker_cached",
]
