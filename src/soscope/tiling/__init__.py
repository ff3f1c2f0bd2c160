"""Chunks of spots with a halo, so large sections run piece by piece with results equal to untiled ones."""

from ._plan import Chunk, adjacency, expand_hops, plan_chunks

__all__ = ["Chunk", "adjacency", "expand_hops", "plan_chunks"]
