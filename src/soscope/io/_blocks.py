"""Streaming results into zarr arrays a whole block at a time (whole-slide outputs that do not fit in memory).

Results arrive per chunk of spots, in any order (:func:`soscope.tiling.run_tasks`); :class:`BlockWriter`
buffers them per zarr block and writes each block once, so memory stays bounded and blocks are not rewritten.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .._settings import settings


def stream_block_rows(n_features: int) -> int:
    """Rows of one zarr block of a streamed ``(rows, n_features)`` float32 array.

    Blocks of whole rows, about ``soscope.settings.stream_block_bytes`` each (at least 256 rows).
    """
    return max(256, settings.stream_block_bytes // (4 * max(1, n_features)))


class BlockWriter:
    """A sink writing chunk results into 2-D zarr arrays (rows in layout order), one whole block at a time.

    A chunk's core sub-spots are scattered over the rows (the rows follow the spots' order, the chunks
    are spatial tiles), so writing each chunk's rows straight into zarr would rewrite every block it
    touches many times. Rows are buffered per zarr block instead and a block is written once, when all its
    rows have arrived. Chunks run tile row by tile row, so with spots stored in a spatially coherent order
    (lattices, bins) blocks fill steadily and few are buffered at once. In any order, when the buffers
    exceed ``max_buffer_bytes`` the fullest blocks are merged into what is on disk (read, overlay, write),
    so memory stays bounded either way.

    Parameters
    ----------
    arrays
        Name → zarr array ``(rows, features)`` (all with the same number of rows and of block rows).
    route
        Maps a chunk result to ``{name: values}`` for the arrays.
    max_buffer_bytes
        Memory allowed for partly filled blocks (default ``soscope.settings.write_buffer_bytes``).

    """

    def __init__(
        self,
        arrays: dict[str, Any],
        route: Callable[[Any], dict[str, np.ndarray]],
        *,
        max_buffer_bytes: int | None = None,
    ):
        self.arrays = arrays
        self.route = route
        first = next(iter(arrays.values()))
        self.n_rows = first.shape[0]
        self.block = first.chunks[0]
        self.max_buffer_bytes = settings.write_buffer_bytes if max_buffer_bytes is None else max_buffer_bytes
        self._buf: dict[int, dict[str, np.ndarray]] = {}
        self._mask: dict[int, np.ndarray] = {}
        self._filled = np.zeros(-(-self.n_rows // self.block), dtype=np.int64)
        self._on_disk = np.zeros(len(self._filled), dtype=bool)  # a partial block was already written
        self._bytes_per_row = sum(a.shape[1] * np.dtype(a.dtype).itemsize for a in arrays.values())
        self.rows_written = 0

    def _bounds(self, b: int) -> tuple[int, int]:
        return b * self.block, min(self.n_rows, (b + 1) * self.block)

    def __call__(self, rows: np.ndarray, res: Any) -> None:
        """Buffer the values ``route(res)`` of layout rows ``rows``; write the blocks they complete."""
        values = self.route(res)
        rows = np.asarray(rows, dtype=np.int64)
        blocks = rows // self.block
        order = np.argsort(blocks, kind="stable")
        bounds = np.flatnonzero(np.diff(blocks[order])) + 1
        for idx in np.split(order, bounds):
            if len(idx) == 0:
                continue
            b = int(blocks[idx[0]])
            lo, hi = self._bounds(b)
            if b not in self._buf:
                self._buf[b] = {
                    k: np.zeros((hi - lo, a.shape[1]), dtype=a.dtype) for k, a in self.arrays.items()
                }
                self._mask[b] = np.zeros(hi - lo, dtype=bool)
            local = rows[idx] - lo
            for k, v in values.items():
                self._buf[b][k][local] = v[idx]
            self._mask[b][local] = True
            self._filled[b] += len(idx)
            if self._filled[b] >= hi - lo:
                self._flush(b)
        while self._buf and len(self._buf) * self.block * self._bytes_per_row > self.max_buffer_bytes:
            self._flush(max(self._buf, key=lambda blk: self._mask[blk].sum()))

    def _flush(self, b: int) -> None:
        lo, hi = self._bounds(b)
        buf, mask = self._buf.pop(b), self._mask.pop(b)
        for k, arr in self.arrays.items():
            block = buf[k]
            if self._on_disk[b] or not mask.all():
                if self._on_disk[b]:  # merge with the part written earlier
                    old = np.asarray(arr[lo:hi])
                    block = np.where(mask[:, None], block, old)
            arr[lo:hi] = block
        self._on_disk[b] = self._on_disk[b] or not mask.all()
        self.rows_written += int(mask.sum())

    def close(self) -> None:
        """Write the blocks still buffered (all rows must have arrived)."""
        for b in list(self._buf):
            self._flush(b)
        if int(self._filled.sum()) != self.n_rows:
            # every row of the arrays has one producer; a gap means a chunk's results were lost
            raise RuntimeError(f"{int(self._filled.sum())} of {self.n_rows} rows were written")
