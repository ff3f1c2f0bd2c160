"""``soscope.settings``: package-wide defaults users may change (chunk sizes, device, parallelism, memory).

Every value here is read when a computation starts, never bound at import, so setting an attribute (or
using :meth:`Settings.override`) takes effect for the next call. Per-call arguments (``chunk_spots=``,
``device=``, ``client=`` ...) take precedence over these defaults where a function offers them.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

from ._errors import SoscopeInputError

#: values of :attr:`Settings.parallel_backend`
PARALLEL_BACKENDS = (None, "threads", "serial", "dask-distributed")

_MiB = 1 << 20


def _integer(name: str, minimum: int, what: str, example: str = "") -> Callable[[Any], int]:
    """Return a validator of integers >= ``minimum`` whose error names the setting and what it takes."""

    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise SoscopeInputError(f"soscope.settings.{name} must be {what}, got {value!r}{example}.")
        return int(value)

    return check


def _positive_int(name: str) -> Callable[[Any], int]:
    return _integer(name, 1, "a positive integer")


def _bytes(name: str) -> Callable[[Any], int]:
    example = f"; e.g. soscope.settings.{name} = 512 * 2**20 for 512 MiB"
    return _integer(name, 0, "a number of bytes (an integer >= 0)", example)


def _count(name: str) -> Callable[[Any], int]:
    return _integer(name, 0, "an integer >= 0")


def _optional_bytes(name: str) -> Callable[[Any], int | None]:
    check = _integer(
        name, 1, "None or a positive number of bytes", f"; e.g. soscope.settings.{name} = 4 * 2**30"
    )

    def check_optional(value: Any) -> int | None:
        return None if value is None else check(value)

    return check_optional


def _device(value: Any) -> str:
    text = str(value)
    if text != "auto":
        import torch  # only to check the name; every computation imports torch anyway

        try:
            torch.device(text)
        except (RuntimeError, TypeError) as err:
            raise SoscopeInputError(
                f"soscope.settings.device must be 'auto' or a torch device ('cpu', 'cuda', 'cuda:1' ...), "
                f"got {value!r}."
            ) from err
    return text


def _bool(name: str) -> Callable[[Any], bool]:
    def check(value: Any) -> bool:
        if not isinstance(value, bool):
            raise SoscopeInputError(f"soscope.settings.{name} must be True or False, got {value!r}.")
        return value

    return check


def _backend(value: Any) -> str | None:
    if value not in PARALLEL_BACKENDS:
        raise SoscopeInputError(
            f"soscope.settings.parallel_backend must be one of {list(PARALLEL_BACKENDS)}, got {value!r}: "
            "None uses the active dask.distributed client when there is one, else local threads."
        )
    return value


_VALIDATORS: dict[str, Callable[[Any], Any]] = {
    "infer_chunk_spots": _positive_int("infer_chunk_spots"),
    "train_chunk_spots": _positive_int("train_chunk_spots"),
    "dense_block_rows": _positive_int("dense_block_rows"),
    "feature_block_size": _positive_int("feature_block_size"),
    "device": _device,
    "progress": _bool("progress"),
    "parallel_backend": _backend,
    "batch_cache_bytes": _bytes("batch_cache_bytes"),
    "write_buffer_bytes": _bytes("write_buffer_bytes"),
    "stream_min_bytes": _bytes("stream_min_bytes"),
    "stream_block_bytes": _positive_int("stream_block_bytes"),
    "max_shapes_in_memory": _count("max_shapes_in_memory"),
    "shapes_rows_per_group": _positive_int("shapes_rows_per_group"),
    "memory_limit": _optional_bytes("memory_limit"),
}


@dataclasses.dataclass
class Settings:
    """soscope's package-wide defaults; the one instance is ``soscope.settings``.

    Attributes are validated when set (a wrong value raises :class:`~soscope.SoscopeInputError` naming
    the setting and what it accepts). Change one for the rest of the session
    (``soscope.settings.infer_chunk_spots = 512``) or temporarily with :meth:`override`.

    Attributes
    ----------
    infer_chunk_spots
        Spots per inference task (plus their halo, which covers the network's receptive field), 2048 by
        default: about 0.3 GB of activations with 200 features. Smaller chunks bound memory more tightly
        and give more tasks to share between workers; results do not depend on it. Per call:
        ``SoScope.enhance(chunk_spots=...)``.
    train_chunk_spots
        Spots per training minibatch (plus their halo), 256 by default; a per-call ``batch_size``
        overrides it.
    dense_block_rows
        Rows (spots) densified at once when statistics are computed from a sparse table (4096): a
        whole-transcriptome table is never made dense whole.
    feature_block_size
        Features computed at once per sub-spot (1024): a modality with more features is enhanced a block
        of this many features at a time, and its training offsets are computed only for the features a
        step scores, so no array of sub-spots × all features is built (the largest arrays of a chunk are
        its sub-spots × this many features; with ``n_samples`` draws, that many times more). The enhanced
        values do not depend on it beyond float rounding; the posterior draws (``n_samples``) are seeded
        per block, so their spread and quantiles vary with it within their Monte Carlo noise. Data with at
        most this many features per modality are computed exactly as in one block.
    device
        What ``device="auto"`` (the default of every call) means: ``"auto"`` (CUDA when available, else
        the CPU), or a torch device such as ``"cpu"`` or ``"cuda:1"``. Cluster workers asked for
        ``"auto"`` resolve it on their own hardware.
    progress
        False hides every progress bar, whatever the calls ask for (True: calls decide).
    parallel_backend
        Where chunk tasks run: ``None`` (default): on the active ``dask.distributed`` client when there
        is one, else on local threads; ``"threads"``: local threads even with a client active;
        ``"serial"``: one task after another in the calling thread (debugging); ``"dask-distributed"``:
        on a client, which must be given (``client=``) or active. A ``client=`` argument always wins.
    batch_cache_bytes
        Memory for built training minibatches (1 GiB): within it each minibatch is built once and kept,
        with its offsets computed whole; beyond, batches are rebuilt from their chunk on every use (a whole
        slide trains in bounded memory, more slowly). Freed when training ends.
    write_buffer_bytes
        Memory for partly filled zarr blocks while results stream into a store (512 MiB); beyond it the
        fullest blocks are merged into what is on disk.
    stream_min_bytes
        Enhanced outputs (``X`` and layers, float32) at least this large are streamed chunk by chunk into
        a SpatialData's local zarr store instead of being held in memory (512 MiB; 0: always stream).
    stream_block_bytes
        Target size of one zarr block (whole rows) of the streamed arrays (16 MiB).
    max_shapes_in_memory
        Streamed outputs keep their sub-spot polygons in the in-memory SpatialData up to this many
        (2,000,000, about 2 GB as shapely objects); beyond, they are only written to the store.
    shapes_rows_per_group
        Polygons per parquet row group of streamed sub-spot shapes (262,144).
    memory_limit
        Bytes that enhancing may hold at once (None, the default: half of the memory available when a call
        starts, read with psutil). Inference tasks hold fewer spots when many features would not fit
        otherwise (the plan is logged once per call), and work that cannot fit even in tasks of 32 spots
        is refused before training starts, with what to change.

    """

    infer_chunk_spots: int = 2048
    train_chunk_spots: int = 256
    dense_block_rows: int = 4096
    feature_block_size: int = 1024
    device: str = "auto"
    progress: bool = True
    parallel_backend: str | None = None
    batch_cache_bytes: int = 1024 * _MiB
    write_buffer_bytes: int = 512 * _MiB
    stream_min_bytes: int = 512 * _MiB
    stream_block_bytes: int = 16 * _MiB
    max_shapes_in_memory: int = 2_000_000
    shapes_rows_per_group: int = 1 << 18
    memory_limit: int | None = None

    def __setattr__(self, name: str, value: Any) -> None:
        if name not in _VALIDATORS:
            raise SoscopeInputError(
                f"soscope.settings has no setting {name!r}; the settings are: {', '.join(_VALIDATORS)}."
            )
        object.__setattr__(self, name, _VALIDATORS[name](value))

    @contextlib.contextmanager
    def override(self, **values: Any) -> Iterator[Settings]:
        """Change settings inside a ``with`` block; the previous values come back on exit, even on error.

        All values are validated before any is changed.

        Examples
        --------
        >>> import soscope
        >>> with soscope.settings.override(infer_chunk_spots=512, progress=False):
        ...     pass  # soscope.enhance(sdata) here runs chunks of 512 spots, without progress bars

        """
        for name, value in values.items():
            if name not in _VALIDATORS:
                raise SoscopeInputError(
                    f"soscope.settings has no setting {name!r}; the settings are: {', '.join(_VALIDATORS)}."
                )
            _VALIDATORS[name](value)
        before = {name: getattr(self, name) for name in values}
        try:
            for name, value in values.items():
                setattr(self, name, value)
            yield self
        finally:
            for name, value in before.items():
                object.__setattr__(self, name, value)

    def reset(self) -> None:
        """Restore every default."""
        for field in dataclasses.fields(self):
            object.__setattr__(self, field.name, field.default)


#: the package-wide settings (``soscope.settings``)
settings = Settings()
