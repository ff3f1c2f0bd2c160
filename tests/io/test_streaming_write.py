"""Streaming the enhanced tables into the store chunk by chunk: identical to the in-memory path, atomic."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import spatialdata as sd
import torch
import zarr

import soscope
from soscope._constants import SoscopeFiles
from soscope._errors import SoscopeInputError
from soscope.io import BlockWriter, create_dense_array, recover_store
from soscope.model._apply import enhance_and_write
from soscope.model._predict import predict

TMP_PREFIX = SoscopeFiles.TMP_PREFIX

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the store helpers (not a package)
from store_helpers import tree_digest  # noqa: E402

MODEL_ARGS = dict(table="table", n_hidden=16, n_latent=4, device="cpu", progress=False, seed=0)


@pytest.fixture(scope="module")
def sample_store(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("stream") / "sample.zarr"
    soscope.datasets.synthetic(n_spots=150, n_features=24, k=7, image=True, seed=3).write(path)
    return path


@pytest.fixture(scope="module")
def model(sample_store):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        m = soscope.SoScope(sd.read_zarr(sample_store), **MODEL_ARGS)
        m.train(epochs=2)
    finally:
        torch.set_num_threads(before)
    return m


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


#: small blocks, chunks and row groups, so the streaming path writes many of each
SMALL_PIECES = dict(
    stream_block_bytes=24 * 4 * 300,  # ~300 rows per zarr block
    infer_chunk_spots=40,
    shapes_rows_per_group=256,
)


def _enhance(model, store: Path, *, stream: bool, n_samples: int = 2):
    """Enhance the store; ``stream`` forces the streaming path (tiny blocks) or the in-memory path."""
    backed = sd.read_zarr(store)
    with soscope.settings.override(stream_min_bytes=0 if stream else 1 << 62, **SMALL_PIECES):
        model.enhance(backed, n_samples=n_samples)
    return backed


def test_streamed_store_reads_back_identical_to_in_memory(model, sample_store, tmp_path):
    mem = _enhance(model, _copy(sample_store, tmp_path / "mem.zarr"), stream=False)
    streamed = _enhance(model, _copy(sample_store, tmp_path / "str.zarr"), stream=True)
    # the streamed table holds a lazy X in memory, the in-memory one a numpy X; both equal
    assert not isinstance(streamed.tables["table_soscope"].X, np.ndarray)
    assert isinstance(mem.tables["table_soscope"].X, np.ndarray)
    np.testing.assert_array_equal(
        np.asarray(streamed.tables["table_soscope"].X), mem.tables["table_soscope"].X
    )
    x_group = zarr.open_group(str(tmp_path / "str.zarr" / "tables" / "table_soscope"), mode="r")
    n_rows = mem.tables["table_soscope"].n_obs
    assert x_group["X"].chunks[0] < n_rows / 3, "the streamed X must span several blocks"
    a, b = sd.read_zarr(tmp_path / "mem.zarr"), sd.read_zarr(tmp_path / "str.zarr")
    assert set(a.tables) == set(b.tables) and set(a.shapes) == set(b.shapes)
    ta, tb = a.tables["table_soscope"], b.tables["table_soscope"]
    assert ta.shape == tb.shape == (n_rows, 24)
    assert np.abs(np.asarray(ta.X)).sum() > 0
    np.testing.assert_array_equal(np.asarray(tb.X), np.asarray(ta.X))
    np.testing.assert_array_equal(np.asarray(tb.layers["std"]), np.asarray(ta.layers["std"]))
    assert ta.obs.equals(tb.obs) and ta.var.equals(tb.var)
    assert ta.uns["spatialdata_attrs"] == tb.uns["spatialdata_attrs"]
    assert tb.uns["soscope"]["modality"] == ta.uns["soscope"]["modality"]
    sa, sb = a.shapes["spots_soscope"], b.shapes["spots_soscope"]
    assert sa.index.equals(sb.index) and list(sa.columns) == list(sb.columns)
    assert sa.drop(columns="geometry").equals(sb.drop(columns="geometry"))
    assert sa.geometry.geom_equals_exact(sb.geometry, tolerance=0).all()
    assert sd.transformations.get_transformation(sb, get_all=True) == sd.transformations.get_transformation(
        sa, get_all=True
    )
    parquet = pq.ParquetFile(tmp_path / "str.zarr" / "shapes" / "spots_soscope" / "shapes.parquet")
    assert parquet.metadata.num_row_groups == -(-len(sa) // 256), "shapes are written a row group at a time"
    assert sb.total_bounds.tolist() == sa.total_bounds.tolist()
    assert not list((tmp_path / "str.zarr").glob(f"{TMP_PREFIX}*")), "the staging folder must be removed"


def test_shapes_beyond_the_memory_limit_are_written_but_not_loaded(model, sample_store, tmp_path, caplog):
    """Past ``settings.max_shapes_in_memory`` polygons, the shapes go to the store only.

    They are written from vertex arrays, a row group at a time: the store equals the in-memory path's, the
    in-memory SpatialData holds the tables but not the shapes, an earlier run's shapes left in memory are
    dropped, and a warning says how to read them.
    """
    import logging

    mem = _enhance(model, _copy(sample_store, tmp_path / "mem.zarr"), stream=False)
    assert "spots_soscope" in mem.shapes
    disk = _copy(sample_store, tmp_path / "disk.zarr")
    backed = sd.read_zarr(disk)
    with soscope.settings.override(max_shapes_in_memory=10, stream_min_bytes=0):
        with caplog.at_level(logging.WARNING, logger="soscope"):
            model.enhance(mem)  # the same object again: its in-memory shapes are now stale
        assert "spots_soscope" not in mem.shapes and "table_soscope" in mem.tables
        assert any("not loaded into this SpatialData" in r.getMessage() for r in caplog.records)
        model.enhance(backed)
    assert "spots_soscope" not in backed.shapes
    a, b = sd.read_zarr(tmp_path / "mem.zarr"), sd.read_zarr(disk)
    sa, sb = a.shapes["spots_soscope"], b.shapes["spots_soscope"]
    assert len(sb) == a.tables["table_soscope"].n_obs > 10
    assert sa.index.equals(sb.index) and sa.drop(columns="geometry").equals(sb.drop(columns="geometry"))
    assert sa.geometry.geom_equals_exact(sb.geometry, tolerance=0).all()
    np.testing.assert_array_equal(
        np.asarray(b.tables["table_soscope"].X), np.asarray(a.tables["table_soscope"].X)
    )


def test_streamed_results_equal_untiled_prediction(model, sample_store, tmp_path):
    """The streamed X holds, row for row, the untiled network output (no row lost or misplaced)."""
    streamed = _enhance(model, _copy(sample_store, tmp_path / "s.zarr"), stream=True)
    full = predict(model.module, model.prepared.data, model.normaliser, device="cpu", chunk_spots=10**9)
    back = sd.read_zarr(tmp_path / "s.zarr").tables["table_soscope"]
    np.testing.assert_allclose(np.asarray(back.X), full[0]["enhanced"], rtol=1e-4, atol=1e-5)
    assert np.asarray(streamed.tables["table_soscope"].X).shape == full[0]["enhanced"].shape


def test_failure_while_streaming_rolls_back(model, sample_store, tmp_path, monkeypatch):
    store = _copy(sample_store, tmp_path / "s.zarr")
    before = tree_digest(store)
    calls = {"n": 0}
    original = BlockWriter.__call__

    def failing(self, rows, res):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("disk full")
        return original(self, rows, res)

    monkeypatch.setattr(BlockWriter, "__call__", failing)
    backed = sd.read_zarr(store)
    with (
        pytest.raises(RuntimeError, match="disk full"),
        soscope.settings.override(stream_min_bytes=0, infer_chunk_spots=40),
    ):
        model.enhance(backed)
    assert tree_digest(store) == before
    assert "table_soscope" not in backed.tables and "spots_soscope" not in backed.shapes


def test_stream_without_store_is_refused(model):
    mem = sd.SpatialData(shapes=dict(model.sdata.shapes), tables=dict(model.sdata.tables))
    with pytest.raises(SoscopeInputError, match="local zarr store"):
        enhance_and_write(
            mem,
            model.prepared,
            model.module,
            model.normaliser,
            uns={},
            key_added="x",
            device="cpu",
            stream=True,
        )
    assert "table_x" not in mem.tables


@pytest.mark.parametrize("budget", [1 << 30, 0])
def test_block_writer_any_row_order(tmp_path, budget):
    """Rows arriving in random order land in place; a zero budget forces partial blocks merged on disk."""
    zarr.open_group(str(tmp_path / "t"), mode="w").create_group("layers")
    n, f = 1000, 5
    arrays = {
        "x": create_dense_array(tmp_path / "t", "X", (n, f), block_rows=64),
        "s": create_dense_array(tmp_path / "t", "layers/std", (n, f), block_rows=64),
    }
    rng = np.random.default_rng(0)
    truth = rng.random((n, f)).astype(np.float32) + 0.5
    writer = BlockWriter(arrays, lambda res: {"x": res[0]["x"], "s": -res[0]["x"]}, max_buffer_bytes=budget)
    for part in np.array_split(rng.permutation(n), 37):
        writer(part, [{"x": truth[part]}])
    writer.close()
    np.testing.assert_array_equal(arrays["x"][:], truth)
    np.testing.assert_array_equal(arrays["s"][:], -truth)
    assert writer.rows_written == n
    assert zarr.open_group(str(tmp_path / "t"))["X"].attrs["encoding-type"] == "array"


def test_block_writer_detects_missing_rows(tmp_path):
    zarr.open_group(str(tmp_path / "t"), mode="w")
    arr = create_dense_array(tmp_path / "t", "X", (100, 2), block_rows=16)
    writer = BlockWriter({"x": arr}, lambda res: {"x": res})
    writer(np.arange(90), np.ones((90, 2), np.float32))
    with pytest.raises(RuntimeError, match="90 of 100 rows"):
        writer.close()


KILL_SCRIPT = """
import sys, spatialdata as sd, soscope, torch
from soscope.io import BlockWriter
torch.set_num_threads(1)
soscope.settings.stream_min_bytes = 0
soscope.settings.stream_block_bytes = 24 * 4 * 300
soscope.settings.infer_chunk_spots = 30
original = BlockWriter.__call__
def paused(self, rows, res):
    original(self, rows, res)
    if self.rows_written > 0:
        print("streaming", flush=True)
        sys.stdin.readline()  # the parent kills this process here
BlockWriter.__call__ = paused
sdata = sd.read_zarr(sys.argv[1])
soscope.enhance(sdata, table="table", epochs=1, progress=False, n_hidden=16, n_latent=4, device="cpu")
"""


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
@pytest.mark.timeout(300)
def test_sigkill_while_streaming_leaves_store_readable(sample_store, tmp_path):
    store = _copy(sample_store, tmp_path / "s.zarr")
    before = tree_digest(store)
    proc = subprocess.Popen(
        [sys.executable, "-c", KILL_SCRIPT, str(store)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        # the child prints once a block of X is on disk in the staging folder, then waits for us
        assert proc.stdout.readline().strip() == "streaming"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    staged = list(store.glob(f"{TMP_PREFIX}*/staged.zarr/tables/table_soscope/X"))
    assert staged, "the kill must happen while X is being written into the staging folder"
    after = {k: v for k, v in tree_digest(store).items() if not k.startswith(TMP_PREFIX)}
    assert after == before, "nothing outside the staging folder may change"
    back = sd.read_zarr(store)
    assert "table_soscope" not in back.tables and "spots_soscope" not in back.shapes
    assert set(back.tables) == {"table", "truth"}
    recover_store(store)  # what the next run does first: the staging folder is gone
    assert tree_digest(store) == before
