"""What :func:`soscope.enhance` computes and writes, and in pieces of what size: the output plan.

One plan per call, made before any work starts (:func:`plan_output`): which features are enhanced
(``features=``), in which float dtype they are written (``dtype=``), whether the outputs stream into the
zarr store, and how many spots an inference task holds so that the tasks in flight fit the memory limit
(``soscope.settings.memory_limit``, default half of the memory available). Work that cannot fit even in the
smallest tasks is refused here, with what to change, before training starts.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from numbers import Integral
from typing import Any

import numpy as np
import pandas as pd

from .._errors import SoscopeInputError
from .._settings import settings
from ._setup import Prepared

logger = logging.getLogger("soscope")

#: the float dtypes the enhanced values can be written in (``dtype=``)
OUTPUT_DTYPES = ("float32", "float16")
#: the fewest spots an inference task may hold before the work is refused for lack of memory
MIN_CHUNK_SPOTS = 32
#: float32 sub-spot × feature intermediates held per feature of a block while a chunk is computed (decoded
#: rates, offsets, their logits and the conditioned split; measured peak ≈ 6 on NB with an image), doubled
#: for the halo
_INTERMEDIATES_PER_FEATURE = 2 * 8


@dataclasses.dataclass(frozen=True)
class OutputPlan:
    """What an enhance call computes and writes (made by :func:`plan_output`).

    Attributes
    ----------
    features
        Per modality the sorted feature columns enhanced (None: all of them).
    widths
        Enhanced features per modality (0: the modality's table is not written).
    dtype
        Float dtype of ``X`` and the layers written.
    n_samples
        Posterior draws (``layers["std"]``, ``["q10"]``, ``["q90"]`` when > 0).
    chunk_spots
        Core spots per inference task.
    stream
        Whether results stream into the zarr store chunk by chunk.
    memory_limit
        Bytes the plan keeps inference within.

    """

    features: list[np.ndarray | None] | None
    widths: tuple[int, ...]
    dtype: np.dtype
    n_samples: int
    chunk_spots: int
    stream: bool
    memory_limit: int

    @property
    def n_layers(self) -> int:
        """Arrays written per table: ``X``, and ``std``, ``q10``, ``q90`` with posterior draws."""
        return 4 if self.n_samples else 1

    def output_bytes(self, n_subspots: int) -> int:
        """Bytes of the enhanced arrays (``X`` and layers) of ``n_subspots`` rows."""
        return n_subspots * sum(self.widths) * self.dtype.itemsize * self.n_layers

    def as_uns(self) -> dict[str, Any]:
        """Return the plan as recorded in ``uns["soscope"]["output"]``."""
        return {
            "dtype": self.dtype.name,
            "features": "all" if self.features is None else "selected",
            "n_features": int(sum(self.widths)),
        }


def memory_limit() -> int:
    """Bytes inference may use: ``soscope.settings.memory_limit``, else half of the memory available now."""
    if settings.memory_limit is not None:
        return settings.memory_limit
    import psutil

    return int(psutil.virtual_memory().available // 2)


def resolve_features(features: Any, prepared: Prepared, var: pd.DataFrame) -> list[np.ndarray | None] | None:
    """Return per modality the sorted columns that ``features`` selects (None: every feature).

    ``features``: None or ``"all"``; the name of a boolean column of the table's ``var`` (such as
    ``"highly_variable"``); one feature name; or a sequence of feature names. Names are matched in every
    modality; a modality none of whose features is named gets an empty selection (no table is written
    for it).
    """
    if features is None or (isinstance(features, str) and features == "all"):
        return None
    names = [list(n) for n in prepared.data.feature_names]
    if isinstance(features, str):
        if features in var.columns:
            column = var[features]
            if not pd.api.types.is_bool_dtype(column):
                raise SoscopeInputError(
                    f"features={features!r}: the var column {features!r} holds {column.dtype} values, not "
                    "True/False; pass a boolean column (e.g. 'highly_variable') or a list of feature names."
                )
            wanted = set(map(str, var.index[column.to_numpy(dtype=bool)]))
            what = f"the var column {features!r}"
        elif any(features in n for n in names):
            wanted, what = {features}, f"feature {features!r}"
        else:
            bool_columns = [str(c) for c in var.columns if pd.api.types.is_bool_dtype(var[c])]
            raise SoscopeInputError(
                f"features={features!r} is neither 'all', a boolean var column (the table has "
                f"{bool_columns or 'none'}), nor a feature name; pass a list of names, e.g. "
                f"features={names[0][:3]!r}."
            )
    elif isinstance(features, Sequence | np.ndarray | pd.Index):
        given = [str(f) for f in features]
        known = set().union(*map(set, names))
        missing = [f for f in given if f not in known]
        if missing:
            raise SoscopeInputError(
                f"features: {len(missing)} of the {len(given)} names are not features of this table "
                f"(e.g. {missing[:5]}); the table's features are e.g. {names[0][:5]}."
            )
        wanted, what = set(given), f"the {len(set(given))} named features"
    else:
        raise SoscopeInputError(
            f"features must be 'all', a boolean var column's name or a list of feature names, got "
            f"{type(features).__name__}."
        )
    selection = [np.flatnonzero(np.isin(np.asarray(n, dtype=object), list(wanted))) for n in names]
    if sum(len(s) for s in selection) == 0:
        raise SoscopeInputError(f"features: {what} selects no feature to enhance; select at least one.")
    return selection


def _per_spot_bytes(prepared: Prepared, widths: Sequence[int], dtype: np.dtype, n_samples: int) -> float:
    """Return the peak bytes an inference task holds per core spot (results, one block's intermediates)."""
    sub_per_spot = prepared.data.layout.n_subspots / max(1, prepared.data.n_spots)
    layers = 4 if n_samples else 1
    # torch's float32 results of the core sub-spots, plus their copy in the output dtype
    results = sum(widths) * (4 + dtype.itemsize) * layers
    block = min(settings.feature_block_size, max(widths, default=0))
    intermediates = block * 4 * _INTERMEDIATES_PER_FEATURE * (1 + n_samples)
    return sub_per_spot * (results + intermediates)


def plan_output(
    sdata,
    prepared: Prepared,
    *,
    features: Any = None,
    dtype: str = "float32",
    n_samples: int = 0,
    chunk_spots: int | None = None,
    inplace: bool = True,
    stream: bool | None = None,
    workers: int = 2,
    log: bool = True,
) -> OutputPlan:
    """Decide what an enhance call computes and writes, and refuse work that cannot fit in memory.

    Parameters
    ----------
    sdata, prepared
        The SpatialData and its prepared spots.
    features
        Features to enhance (see :func:`resolve_features`; default all).
    dtype
        ``"float32"`` or ``"float16"`` (half the size; about 3 significant digits, values up to 65,504).
    n_samples
        Posterior draws (their three layers are written too).
    chunk_spots
        Core spots per inference task; default ``soscope.settings.infer_chunk_spots``, lowered so that
        ``workers`` tasks in flight fit the memory limit. A given number is used as it is.
    inplace, stream
        Whether results go into ``sdata``'s store; ``stream=None`` streams large outputs into a local zarr
        store (see ``soscope.settings.stream_min_bytes``).
    workers
        Tasks computed at once (the local engine's threads).
    log
        Log the plan (once per call).

    Raises
    ------
    SoscopeInputError
        A bad ``features``, ``dtype`` or ``chunk_spots``, or work that does not fit the memory limit.

    """
    from ..io import local_store_path

    if dtype not in OUTPUT_DTYPES:
        raise SoscopeInputError(f"dtype must be one of {list(OUTPUT_DTYPES)}, got {dtype!r}.")
    out_dtype = np.dtype(dtype)
    if chunk_spots is not None and (
        isinstance(chunk_spots, bool) or not isinstance(chunk_spots, Integral) or chunk_spots < 1
    ):
        raise SoscopeInputError(
            f"chunk_spots must be a positive whole number of spots per inference task, got {chunk_spots!r} "
            "(leave it out for soscope.settings.infer_chunk_spots)."
        )
    table = prepared.selection.table
    selection = resolve_features(features, prepared, sdata.tables[table].var)
    widths = tuple(
        m.n_features if selection is None else len(selection[mi])
        for mi, m in enumerate(prepared.data.modalities)
    )
    limit = memory_limit()
    n_subspots = prepared.data.layout.n_subspots
    out_bytes = n_subspots * sum(widths) * out_dtype.itemsize * (4 if n_samples else 1)
    if stream is None:
        stream = inplace and local_store_path(sdata) is not None and out_bytes >= settings.stream_min_bytes
    fix = (
        "enhance fewer features (features=['gene', ...] or features='highly_variable'), write compact "
        "values (dtype='float16'), leave out the posterior draws (n_samples=0), or raise "
        "soscope.settings.memory_limit"
    )
    if not stream and out_bytes > limit:
        raise SoscopeInputError(
            f"the enhanced values ({out_bytes / 1e9:.1f} GB: {n_subspots:,} sub-spots × "
            f"{sum(widths):,} features as {out_dtype.name}) would be held in memory, beyond the memory "
            f"limit of {limit / 1e9:.1f} GB. Write the SpatialData to a zarr store first "
            "(sdata.write('x.zarr'); sdata = sd.read_zarr('x.zarr')) so that soscope streams the results "
            f"into it, or {fix}."
        )
    per_spot = _per_spot_bytes(prepared, widths, out_dtype, n_samples)
    budget = limit - (settings.write_buffer_bytes if stream else out_bytes)
    fitting = int(budget // max(1.0, workers * per_spot))
    if chunk_spots is None:
        if fitting < MIN_CHUNK_SPOTS:
            raise SoscopeInputError(
                f"inference needs about {workers * per_spot * MIN_CHUNK_SPOTS / 1e9:.2f} GB for its smallest "
                f"tasks ({workers} tasks of {MIN_CHUNK_SPOTS} spots, {sum(widths):,} features), beyond the "
                f"{max(budget, 0) / 1e9:.2f} GB left of the memory limit ({limit / 1e9:.1f} GB); {fix}, or "
                "lower soscope.settings.feature_block_size."
            )
        chunk_spots = min(settings.infer_chunk_spots, fitting)
    plan = OutputPlan(
        features=selection,
        widths=widths,
        dtype=out_dtype,
        n_samples=int(n_samples),
        chunk_spots=int(chunk_spots),
        stream=bool(stream),
        memory_limit=int(limit),
    )
    if log:
        logger.info(
            "enhancing %s features as %s in tasks of %d spots (memory limit %.1f GB)%s",
            f"{sum(widths):,}", out_dtype.name, plan.chunk_spots, limit / 1e9,
            "; streamed into the store" if stream else "",
        )  # fmt: skip
    return plan
