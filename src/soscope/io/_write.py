"""Write soscope's results into a SpatialData and, when it is backed by zarr, into its store atomically.

How the store is updated (local stores)
---------------------------------------
1. The new elements are put in a throwaway SpatialData and written with the public
   :meth:`SpatialData.write` into ``<store>/.soscope_tmp_<uuid>/staged.zarr``. The ``.soscope_tmp_*`` folder
   has no zarr metadata of its own, so zarr, spatialdata and metadata consolidation never see it (and a crash
   leaves the store readable). The store itself is not touched in this phase.
2. Commit: for each element, an existing ``<store>/<type>/<name>`` is renamed into the temporary folder and
   the staged folder is renamed into place (``os.replace``, same filesystem). A missing ``shapes/`` or
   ``tables/`` group is created from the staged one.
3. When the store uses consolidated metadata it is re-consolidated, so readers see the new elements.
4. Any exception (or interrupt) during 1–3 undoes the renames in reverse order (and re-consolidates when
   step 3 had started), so the store is as before; the temporary folder is always removed.

A hard kill (SIGKILL, power loss) cannot run step 4. For that, the temporary folder records its owner
(``owner.json``: host and process id) and, before the first rename, the whole commit plan
(``journal.json``, written atomically). :func:`recover_store` — run at the start of every soscope run on
a store and by every write — finds the temporary folders of processes that are gone and undoes their
commit from the plan, reading the state of each element from the filesystem (each rename is atomic, so
every element is either before or after its rename), then removes the folder. Whatever the moment of
the kill, the store is then as it was before the killed run. Without a journal (a kill before the
commit started) the store was never touched and the folder is simply removed.

Streaming (tables larger than memory): with ``fill=``, the tables are staged as skeletons (obs, var, uns,
no ``X``) and ``fill(staged_store)`` then writes their ``X`` / layers into the staged store chunk by chunk
(:func:`create_dense_array`) before step 2; results still become visible only at the commit. After the
commit, the in-memory SpatialData gets these tables with ``X`` read lazily (Dask) from the store.

The elements are put into the in-memory SpatialData before step 1 and taken out again (the previous ones
put back) if the store update fails, so memory and store agree either way.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from soscope._constants import SoscopeFiles
from soscope._errors import SoscopeInputError
from soscope.io._validate import _fmt_list, check_output_names, element_type

logger = logging.getLogger(__name__)

TMP_PREFIX = SoscopeFiles.TMP_PREFIX
_STAGED = "staged.zarr"
_ASIDE = "replaced"
_TRASH = "trash"
_OWNER = "owner.json"
_JOURNAL = "journal.json"
#: a temporary folder without an owner file younger than this may belong to a run that is just starting
_OWNERLESS_GRACE_S = 60.0
_ELEMENT_TYPES = ("images", "labels", "points", "shapes", "tables")


def local_store_path(sdata: Any) -> Path | None:
    """Return the store as a local directory, or None when not backed / not local."""
    path = getattr(sdata, "path", None)
    if path is None:
        return None
    protocol = getattr(path, "protocol", "")  # UPath
    if isinstance(protocol, (tuple, list)):
        protocol = protocol[0] if protocol else ""
    text = str(path)
    if protocol not in ("", "file", "local") or ("://" in text and not text.startswith("file://")):
        return None  # remote store
    try:
        p = Path(text[len("file://") :]) if text.startswith("file://") else Path(os.fspath(path))
    except TypeError:
        return None
    if not p.is_dir():
        raise SoscopeInputError(
            f"The SpatialData is backed by {str(path)!r}, which is not a folder any more: set `sdata.path = "
            "None` to keep the results in memory, or write the whole object with `sdata.write(new_path)`."
        )
    return p


def _zarr_format(root: Path) -> int:
    if (root / "zarr.json").is_file():
        return 3
    if (root / ".zgroup").is_file():
        return 2
    return 3


def _is_consolidated(sdata: Any, root: Path) -> bool:
    """Tell whether the store keeps consolidated metadata (read from the files: cheap, version-proof)."""
    zj = root / "zarr.json"
    if zj.is_file():
        try:
            meta = json.loads(zj.read_text())
        except (OSError, ValueError):
            meta = {}
        if meta.get("consolidated_metadata"):
            return True
    if (root / ".zmetadata").is_file():
        return True
    has = getattr(sdata, "has_consolidated_metadata", None)
    if has is not None and not zj.is_file() and not (root / ".zgroup").is_file():
        return bool(has())
    return False


def _consolidate(sdata: Any, root: Path) -> None:
    if sdata is not None and hasattr(sdata, "write_consolidated_metadata"):
        sdata.write_consolidated_metadata()
        return
    import zarr

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        zarr.consolidate_metadata(str(root))


def _validate_elements(shapes: Mapping[str, Any], tables: Mapping[str, Any], sdata: Any) -> None:
    from spatialdata.models import ShapesModel, TableModel

    for name, gdf in shapes.items():
        try:
            ShapesModel.validate(gdf)
        except Exception as e:  # spatialdata raises ValueError / TypeError / AssertionError
            raise SoscopeInputError(f"Shapes '{name}' to write are not valid spatialdata shapes: {e}") from e
    for name, adata in tables.items():
        try:
            TableModel().validate(adata)  # a classmethod in 0.7, callable on an instance either way
        except Exception as e:
            raise SoscopeInputError(f"Table '{name}' to write is not a valid spatialdata table: {e}") from e
        attrs = adata.uns.get("spatialdata_attrs") or {}
        region = attrs.get("region")
        if region is None:
            continue
        regions = [region] if isinstance(region, str) else [str(r) for r in region]
        missing = [r for r in regions if r not in shapes and element_type(sdata, r) is None]
        if missing:
            raise SoscopeInputError(
                f"Table '{name}' annotates {_fmt_list(missing)}, which is neither written with it nor in the "
                "SpatialData: pass the shapes in `shapes=`."
            )


def _write_json_atomic(path: Path, obj: Any) -> None:
    """Write ``obj`` as JSON so that readers see the old file or the whole new one, never a part."""
    part = path.with_name(path.name + ".part")
    with open(part, "w") as fh:
        json.dump(obj, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(part, path)


def _owner_is_running(tmp: Path) -> bool:
    """Tell whether the process that made the temporary folder ``tmp`` may still be using it."""
    try:
        owner = json.loads((tmp / _OWNER).read_text())
    except (OSError, ValueError):
        # no owner file yet: a run may be between creating the folder and writing it
        try:
            age = time.time() - tmp.stat().st_mtime
        except OSError:
            return False
        return age < _OWNERLESS_GRACE_S
    if owner.get("host") != socket.gethostname():
        return True  # another machine's process (a shared filesystem): cannot tell, leave it alone
    pid = int(owner.get("pid", -1))
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    return True


def _rollback_plan(root: Path, tmp: Path, plan: Mapping[str, Any]) -> None:
    """Undo a commit described by ``plan`` from whatever state a kill left it in.

    Each element's commit is two atomic renames: the old element (if any) ``dst → aside``, then the new one
    ``staged → dst``. So: the staged folder gone and ``dst`` present means the new element is in place
    (move it to the trash); then an old element found aside goes back. Idempotent: a recovery that is
    itself killed can run again.
    """
    trash = tmp / _TRASH
    for op in reversed(plan["elements"]):
        dst, staged, aside = root / op["dst"], tmp / op["staged"], tmp / op["aside"]
        if not staged.exists() and dst.exists():
            trash.mkdir(exist_ok=True)
            os.replace(dst, trash / f"{len(list(trash.iterdir()))}")
        if aside.exists() and not dst.exists():
            os.replace(aside, dst)
    for group in plan.get("created_groups", []):
        folder = root / group
        if folder.is_dir() and not any(p.is_dir() for p in folder.iterdir()):
            shutil.rmtree(folder)


def recover_store(store: Any) -> list[str]:
    """Undo what killed soscope runs left in a local zarr store; return the temporary folders removed.

    A temporary folder ``.soscope_tmp_*`` whose process is gone is removed; when it holds a commit plan (the
    run was killed while moving its results into place), the store is first put back as it was before
    that run (see the module's notes). Folders of runs still going are left alone. Called at the start of
    every soscope run on a backed SpatialData and by every write; safe to call at any time.

    Parameters
    ----------
    store
        A SpatialData (its backing store, if local) or the path of a local zarr store.

    Returns
    -------
    The names of the temporary folders that were cleaned up.

    """
    root = store if isinstance(store, (str, os.PathLike)) else local_store_path(store)
    if root is None:
        return []
    root = Path(root)
    cleaned = []
    for tmp in sorted(root.glob(f"{TMP_PREFIX}*")):
        if not tmp.is_dir() or _owner_is_running(tmp):
            continue
        journal = tmp / _JOURNAL
        if journal.is_file():
            plan = json.loads(journal.read_text())
            _rollback_plan(root, tmp, plan)
            if plan.get("consolidated"):
                _consolidate(None, root)
            logger.warning(
                "Undid the interrupted write of %s into %s: the store is as it was before that run.",
                [op["dst"] for op in plan["elements"]],
                root,
            )
        shutil.rmtree(tmp)
        cleaned.append(tmp.name)
    if cleaned:
        logger.info("Removed %d temporary folder(s) of interrupted soscope runs from %s.", len(cleaned), root)
    return cleaned


def element_paths_on_disk(root: Path) -> list[str]:
    """``"<type>/<name>"`` of every element folder in a local store (hidden folders excluded)."""
    return [f"{t}/{n}" for t in _ELEMENT_TYPES for n in _ls(root / t)]


def check_writable(sdata: Any, types: Mapping[str, str], overwrite: bool) -> None:
    """Refuse output names held by elements soscope did not write, in memory or (only) on disk.

    ``types`` maps each output name to ``"shapes"`` or ``"tables"``. Called before training (so a
    collision fails fast) and again by :func:`write_results`.
    """
    root = local_store_path(sdata)
    on_disk: list[str] = []
    if root is not None:
        on_disk = [
            p
            for p in element_paths_on_disk(root)
            if p.split("/", 1)[1] in types and element_type(sdata, p.split("/", 1)[1]) is None
        ]
    check_output_names(sdata, types, overwrite, on_disk=on_disk)


def write_results(
    sdata: Any,
    *,
    shapes: Mapping[str, Any] | None = None,
    tables: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    fill: Callable[[Path], None] | None = None,
    staged_shapes: Mapping[str, Any] | None = None,
) -> None:
    """Put soscope's shapes and tables into ``sdata`` and, if it is backed by zarr, into its store atomically.

    Elements are stored as given: they must already carry their transformations (shapes) and region
    metadata (tables, ``uns["spatialdata_attrs"]``), and should carry the ``uns["soscope"]`` marker (tables)
    so that a later run may replace them.

    Parameters
    ----------
    sdata
        The SpatialData to write into.
    shapes
        Name → GeoDataFrame (parsed with ``ShapesModel.parse``).
    tables
        Name → AnnData (parsed with ``TableModel.parse``); may annotate shapes written alongside.
    overwrite
        Replace existing elements of the same names that soscope did not write (its own earlier outputs
        are always replaced).
    fill
        Streaming: called as ``fill(staged_store)`` after the elements are staged and before they are moved
        into place; it writes the tables' ``X`` / layers (the ``tables`` are skeletons with ``X=None``)
        with :func:`create_dense_array`. Requires a local zarr store.
    staged_shapes
        Streaming: small stand-ins (e.g. the first row) staged instead of the full shapes, whose
        ``shapes.parquet`` ``fill`` then rewrites in full (:func:`write_shapes_parquet`). Those also given in
        ``shapes`` go into memory; the others are written to the store only (an element of the same name
        in memory is removed): millions of polygons would not fit in memory as shapely objects.

    Raises
    ------
    SoscopeInputError
        Invalid elements or names, or a name held by an element soscope did not write (without
        ``overwrite``). Nothing is written then.

    Notes
    -----
    On a local store the update is all-or-nothing: elements are written under a temporary folder and moved
    into place once all are written; on any failure the store is left as it was. On a remote store
    (fsspec/UPath) the elements are written one by one with spatialdata's ``write_element``, which is not
    atomic.

    """
    shapes = dict(shapes or {})
    tables = dict(tables or {})
    staged_shapes = dict(staged_shapes or {})
    disk_only = [n for n in staged_shapes if n not in shapes]
    both = (set(shapes) | set(staged_shapes)) & set(tables)
    if both:
        raise SoscopeInputError(f"Names used for both shapes and tables: {_fmt_list(sorted(both))}.")
    if not shapes and not tables and not staged_shapes:
        return
    types = {**dict.fromkeys([*shapes, *staged_shapes], "shapes"), **dict.fromkeys(tables, "tables")}

    root = local_store_path(sdata)
    check_writable(sdata, types, overwrite)
    _validate_elements({**shapes, **staged_shapes}, tables, sdata)
    if fill is not None and root is None:
        raise SoscopeInputError("streaming results to disk needs a SpatialData backed by a local zarr store")

    # Memory first (it cannot fail after the checks above), then the store; undo memory if the store fails.
    previous = _put_in_memory(sdata, shapes, tables, remove=disk_only)
    try:
        if root is not None:
            _write_atomic(sdata, root, {**shapes, **staged_shapes}, tables, fill=fill)
            if fill is not None:
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message=".*not present in the SpatialData.*")
                    for name, skeleton in tables.items():  # the complete tables, read lazily from the store
                        sdata.tables[name] = read_table_lazy(root / "tables" / name, skeleton)
        elif getattr(sdata, "path", None) is not None:
            _write_remote(sdata, shapes, tables)
    except BaseException:
        _restore_memory(sdata, previous)
        raise


def _ls(folder: Path) -> list[str]:
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _put_in_memory(
    sdata: Any, shapes: Mapping[str, Any], tables: Mapping[str, Any], *, remove: Sequence[str] = ()
) -> list[tuple[str, str, Any]]:
    """Put the elements into ``sdata`` and drop the shapes ``remove``.

    Returns ``(type, name, previous element or None)`` to undo it.
    """
    previous = [("shapes", n, sdata.shapes.get(n)) for n in [*shapes, *remove]]
    previous += [("tables", n, sdata.tables.get(n)) for n in tables]
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*not present in the SpatialData.*")
            for name in remove:
                if name in sdata.shapes:
                    del sdata.shapes[name]
            for name, gdf in shapes.items():
                sdata.shapes[name] = gdf
            for name, adata in tables.items():
                sdata.tables[name] = adata
    except BaseException:
        _restore_memory(sdata, previous)
        raise
    return previous


def _restore_memory(sdata: Any, previous: list[tuple[str, str, Any]]) -> None:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not present in the SpatialData.*")
        for etype, name, old in reversed(previous):  # tables first: they may annotate the shapes
            container = getattr(sdata, etype)
            if old is None:
                if name in container:
                    del container[name]
            else:
                container[name] = old


def _staging_sdata(shapes: Mapping[str, Any], tables: Mapping[str, Any]) -> Any:
    from spatialdata import SpatialData

    with warnings.catch_warnings():
        # tables may annotate shapes that live only in the target SpatialData
        warnings.filterwarnings("ignore", message=".*not present in the SpatialData.*")
        return SpatialData(shapes=dict(shapes), tables=dict(tables))


def _staging_formats(root: Path) -> Any:
    """Return formats matching the store: zarr v2 stores (old spatialdata) get the v2-era formats."""
    if _zarr_format(root) != 2:
        return None
    try:
        from spatialdata._io.format import SpatialDataContainerFormatV01

        return SpatialDataContainerFormatV01()
    except ImportError:  # pragma: no cover - layout of a future spatialdata
        logger.warning(
            "Could not find spatialdata's zarr v2 formats; writing zarr v3 elements into a v2 store."
        )
        return None


def _stage(sdata_tmp: Any, staged: Path, formats: Any) -> None:
    """Write the new elements into the staging store (a separate zarr store in the temporary folder)."""
    kwargs: dict[str, Any] = {"consolidate_metadata": False}
    if formats is not None:
        kwargs["sdata_formats"] = formats
    with quiet_zarr_writes():
        sdata_tmp.write(staged, **kwargs)


@contextlib.contextmanager
def quiet_zarr_writes() -> Iterator[None]:
    """Silence zarr 3's "autosharding will be the default" UserWarning, given on every array written.

    It concerns zarr's future defaults, not the user's data, and would repeat once per array of each write.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*autosharding.*", category=UserWarning)
        yield


def _write_atomic(
    sdata: Any,
    root: Path,
    shapes: Mapping[str, Any],
    tables: Mapping[str, Any],
    fill: Callable[[Path], None] | None = None,
) -> None:
    recover_store(root)
    tmp = root / f"{TMP_PREFIX}{uuid.uuid4().hex}"
    tmp.mkdir()
    staged = tmp / _STAGED
    aside = tmp / _ASIDE
    consolidated = _is_consolidated(sdata, root)
    # undo log: ("created_group", path) | ("aside", original, moved_to) | ("placed", path)
    undo: list[tuple[str, Path, Path | None]] = []
    consolidating = False
    try:
        _write_json_atomic(tmp / _OWNER, {"host": socket.gethostname(), "pid": os.getpid()})
        _stage(_staging_sdata(shapes, tables), staged, _staging_formats(root))
        if fill is not None:
            fill(staged)
        items = [("shapes", n) for n in shapes] + [("tables", n) for n in tables]
        # the whole plan on disk before the first rename: a hard kill from here on is undone by
        # recover_store (the in-process rollback below handles exceptions and interrupts)
        plan = {
            "consolidated": consolidated,
            "created_groups": sorted({etype for etype, _ in items if not (root / etype).exists()}),
            "elements": [
                {
                    "dst": f"{etype}/{name}",
                    "staged": f"{_STAGED}/{etype}/{name}",
                    "aside": f"{_ASIDE}/{etype}/{name}",
                }
                for etype, name in items
            ],
        }
        _write_json_atomic(tmp / _JOURNAL, plan)
        for etype, name in items:
            group = root / etype
            if not group.exists():
                group.mkdir()
                undo.append(("created_group", group, None))
                # copy the group's own metadata (zarr.json, or .zgroup/.zattrs)
                for f in (staged / etype).iterdir():
                    if f.is_file():
                        shutil.copy2(f, group / f.name)
            dst = group / name
            if dst.exists():
                moved = aside / etype / name
                moved.parent.mkdir(parents=True, exist_ok=True)
                os.replace(dst, moved)
                undo.append(("aside", dst, moved))
            os.replace(staged / etype / name, dst)
            undo.append(("placed", dst, None))
        if consolidated:
            consolidating = True
            _consolidate(sdata, root)
        # committed: without its journal the folder is only litter, whatever happens to it next
        (tmp / _JOURNAL).unlink()
    except BaseException:
        _rollback(undo)
        if consolidating:
            try:
                _consolidate(sdata, root)
            except Exception:  # pragma: no cover - report the original error
                logger.exception("Re-consolidating the metadata of %s after a failed write failed.", root)
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info("Wrote %s to %s.", [f"{t}/{n}" for t, n in items], root)


def create_dense_array(
    table_group: Path, key: str, shape: tuple[int, int], *, block_rows: int, dtype: Any = "float32"
) -> Any:
    """Create an empty dense array ``key`` (``"X"`` or ``"layers/<name>"``) in a staged AnnData's zarr group.

    The array is chunked in blocks of ``block_rows`` whole rows (for writing a block at a time) and
    carries anndata's encoding attributes, so ``anndata`` / ``spatialdata`` read it like one they wrote.
    Returns the ``zarr.Array`` to fill.
    """
    import zarr

    group = zarr.open_group(str(table_group), mode="r+")
    parent, _, name = key.rpartition("/")
    if parent:
        group = group[parent]
    with quiet_zarr_writes():
        arr = group.create_array(
            name,
            shape=shape,
            chunks=(max(1, min(block_rows, shape[0])), max(1, shape[1])),
            dtype=dtype,
            fill_value=0,
        )
    arr.attrs.update({"encoding-type": "array", "encoding-version": "0.2.0"})
    return arr


#: rows per row group when soscope writes a shapes element's parquet itself (bounded memory)
SHAPES_ROWS_PER_GROUP = 1 << 18


def write_shapes_parquet(path: Path, frame: Any, polygons: Any, *, rows_per_group: int | None = None) -> None:
    """Rewrite a staged shapes element's ``shapes.parquet`` with ``frame``'s columns and ``polygons``.

    ``path`` must hold the parquet that spatialdata wrote for a stand-in with the same columns and index
    kind (e.g. the first row): its schema and GeoParquet / pandas metadata are reused, with the row range
    and the bounding box updated, so ``sd.read_zarr`` reads the file like one spatialdata wrote.
    ``polygons`` (a :class:`~soscope.geometry.PolygonArray`, one per row of ``frame``) become shapely
    objects and WKB one row group at a time, so memory does not grow with the number of rows (a
    GeoDataFrame of 7M polygons alone would take about 7 GB).
    """
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq
    import shapely

    rows_per_group = rows_per_group or SHAPES_ROWS_PER_GROUP
    schema = pq.read_schema(path)
    meta = dict(schema.metadata or {})
    geo = json.loads(meta[b"geo"])
    geom_col = geo["primary_column"]
    n = len(frame)
    if len(polygons) != n:
        raise ValueError(f"write_shapes_parquet: {len(polygons)} polygons for {n} rows")
    if b"pandas" in meta:
        pandas_meta = json.loads(meta[b"pandas"])
        for ix in pandas_meta.get("index_columns", []):
            if isinstance(ix, dict) and ix.get("kind") == "range":
                if not (isinstance(frame.index, pd.RangeIndex) and frame.index.step == 1):
                    raise ValueError("write_shapes_parquet: a range-indexed stand-in needs a RangeIndex")
                ix["start"], ix["stop"], ix["step"] = int(frame.index.start), int(frame.index.stop), 1
        meta[b"pandas"] = json.dumps(pandas_meta).encode()
    if "bbox" in geo["columns"][geom_col]:
        coords = polygons.coords
        box = [*coords.min(0), *coords.max(0)] if len(coords) else [np.nan] * 4
        geo["columns"][geom_col]["bbox"] = [float(v) for v in box]
    meta[b"geo"] = json.dumps(geo).encode()
    schema = schema.with_metadata(meta)
    tmp = path.with_name(path.name + ".part")
    with pq.ParquetWriter(tmp, schema) as writer:
        for start in range(0, n, rows_per_group):
            part = slice(start, min(n, start + rows_per_group))
            arrays = []
            for field in schema:
                if field.name == geom_col:
                    wkb = shapely.to_wkb(polygons[part].to_shapely())
                    arrays.append(pa.array(wkb, type=field.type))
                elif field.name == "__index_level_0__":
                    arrays.append(pa.array(np.asarray(frame.index[part]), type=field.type))
                else:
                    arrays.append(pa.array(np.asarray(frame[field.name].iloc[part]), type=field.type))
            writer.write_table(pa.Table.from_arrays(arrays, schema=schema))
    os.replace(tmp, path)


def read_table_lazy(table_group: Path, template: Any) -> Any:
    """Return the skeleton ``template`` with ``X`` and layers read lazily (Dask) from ``table_group``."""
    import anndata as ad
    import dask.array as da
    import zarr

    group = zarr.open_group(str(table_group), mode="r")

    def lazy(arr):
        return da.from_zarr(arr, chunks=(arr.chunks[0], arr.shape[1]))

    layers = {name: lazy(arr) for name, arr in group["layers"].arrays()} if "layers" in group else {}
    return ad.AnnData(
        X=lazy(group["X"]) if "X" in group else None,
        obs=template.obs,
        var=template.var,
        uns=template.uns,
        obsm=dict(template.obsm),
        layers=layers,
    )


def _rollback(undo: list[tuple[str, Path, Path | None]]) -> None:
    for kind, path, moved in reversed(undo):
        try:
            if kind == "placed":
                shutil.rmtree(path)
            elif kind == "aside":
                assert moved is not None
                os.replace(moved, path)
            elif kind == "created_group":
                shutil.rmtree(path)
        except Exception:  # pragma: no cover - keep undoing the rest
            logger.exception("Could not undo %s of %s while rolling back a failed write.", kind, path)


def _write_remote(sdata: Any, shapes: Mapping[str, Any], tables: Mapping[str, Any]) -> None:
    """Non-local stores: spatialdata's own element writes (delete, then write; not atomic)."""
    logger.warning("The store %s is not a local folder: writing soscope's results is not atomic.", sdata.path)
    on_disk = set()
    try:
        on_disk = {p.split("/", 1)[1] for p in sdata.elements_paths_on_disk()}
    except Exception:  # pragma: no cover
        pass
    for name in [*shapes, *tables]:
        if name in on_disk:
            sdata.delete_element_from_disk(name)
        with quiet_zarr_writes():
            sdata.write_element(name)
