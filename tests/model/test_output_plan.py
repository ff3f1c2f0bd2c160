"""What enhance computes and writes: ``features=``, ``dtype=``, the memory limit, and default epochs.

The selected features must equal the same columns of an all-feature run exactly (in memory and streamed
into a store, in one feature block or many); float16 outputs must round float32 ones; work that cannot fit
the memory limit is refused before training with the store untouched; a lower memory limit cuts smaller
inference tasks without changing any value.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import spatialdata as sd
import torch

import soscope
from soscope._errors import SoscopeInputError
from soscope.model._core import default_epochs
from soscope.model._plan import MIN_CHUNK_SPOTS, plan_output

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the store helpers (not a package)
from store_helpers import tree_digest  # noqa: E402

MODEL_ARGS = dict(table="table", n_hidden=16, n_latent=4, device="cpu", progress=False, seed=0)
N_FEATURES = 30


@pytest.fixture(scope="module")
def sample_store(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("plan") / "sample.zarr"
    sdata = soscope.datasets.synthetic(n_spots=120, n_features=N_FEATURES, k=7, image=True, seed=5)
    var = sdata.tables["table"].var
    var["highly_variable"] = np.arange(N_FEATURES) % 3 == 0
    var["score"] = np.arange(N_FEATURES, dtype=float)
    sdata.write(path)
    return path


@pytest.fixture(scope="module")
def model(sample_store, one_torch_thread):
    m = soscope.SoScope(sd.read_zarr(sample_store), **MODEL_ARGS)
    m.train(epochs=2)
    return m


@pytest.fixture(scope="module")
def full(model):
    """Return the all-feature float32 result, in memory."""
    out = model.enhance(inplace=False, key_added="full", n_samples=0)
    return out.tables["table_full"]


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("block", [None, 2])
def test_named_features_equal_their_columns_of_the_full_run(model, full, block):
    names = list(full.var_names)
    wanted = [names[17], names[3], names[9]]  # not in table order: written in the table's order
    with soscope.settings.override(**({} if block is None else {"feature_block_size": block})):
        out = model.enhance(inplace=False, key_added="sel", features=wanted)
    table = out.tables["table_sel"]
    assert list(table.var_names) == [names[3], names[9], names[17]]
    # 3 columns instead of 30 (and blocks of 2): other matrix widths, whose products some CPUs' kernels
    # round differently, so the same values up to float32 rounding (as in test_feature_blocks.py)
    np.testing.assert_allclose(table.X, full.X[:, [3, 9, 17]], rtol=1e-5, atol=1e-6)
    assert table.uns["soscope"]["output"]["n_features"] == 3
    assert table.n_obs == full.n_obs


def test_boolean_var_column_selects_features(model, full):
    out = model.enhance(inplace=False, key_added="hv", features="highly_variable")
    table = out.tables["table_hv"]
    expected = np.flatnonzero(np.arange(N_FEATURES) % 3 == 0)
    assert list(table.var_names) == [full.var_names[i] for i in expected]
    np.testing.assert_allclose(table.X, full.X[:, expected], rtol=1e-5, atol=1e-6)  # other widths: rounding


def test_streamed_selection_in_float16_reads_back(model, full, sample_store, tmp_path):
    store = _copy(sample_store, tmp_path / "s.zarr")
    backed = sd.read_zarr(store)
    names = list(full.var_names)
    with soscope.settings.override(stream_min_bytes=0, infer_chunk_spots=25, stream_block_bytes=4096):
        model.enhance(backed, features=names[:7], dtype="float16", n_samples=0)
    back = sd.read_zarr(store).tables["table_soscope"]
    x = np.asarray(back.X)
    assert x.dtype == np.float16 and x.shape == (full.n_obs, 7)
    # 7 of 30 columns: float32 values equal up to rounding, which can move a value to the next float16
    expected = full.X[:, :7].astype(np.float16)
    assert np.mean(x == expected) > 0.99
    np.testing.assert_allclose(x.astype(np.float32), full.X[:, :7], rtol=1e-3, atol=1e-3)
    assert back.uns["soscope"]["output"]["dtype"] == "float16"


def test_float16_in_memory_rounds_the_float32_values(model, full):
    out = model.enhance(inplace=False, key_added="half", dtype="float16").tables["table_half"]
    assert out.X.dtype == np.float16
    np.testing.assert_array_equal(out.X, full.X.astype(np.float16))
    # three significant digits: relative error at most 2**-11
    big = full.X > 1
    assert np.max(np.abs(out.X[big].astype(np.float32) - full.X[big]) / full.X[big]) <= 2.0**-11


def test_lower_memory_limit_cuts_smaller_tasks_with_equal_values(model, full):
    sdata, prepared = model.sdata, model.prepared
    roomy = plan_output(sdata, prepared, inplace=False, log=False)
    assert roomy.chunk_spots == soscope.settings.infer_chunk_spots
    per_task = plan_output(sdata, prepared, inplace=False, log=False, chunk_spots=1)
    assert per_task.chunk_spots == 1  # a given size is used as it is
    out_bytes = roomy.output_bytes(prepared.data.layout.n_subspots)
    # room for the outputs plus a few tasks of about 40 spots
    probe = soscope.settings.memory_limit
    with soscope.settings.override(memory_limit=out_bytes + (1 << 20)):
        tight = plan_output(sdata, prepared, inplace=False, log=False)
        assert MIN_CHUNK_SPOTS <= tight.chunk_spots < prepared.data.n_spots
        out = model.enhance(inplace=False, key_added="tight")
    assert soscope.settings.memory_limit == probe
    np.testing.assert_array_equal(out.tables["table_tight"].X, full.X)


def test_work_beyond_the_memory_limit_is_refused_before_training(model, sample_store, tmp_path):
    store = _copy(sample_store, tmp_path / "r.zarr")
    before = tree_digest(store)
    out_bytes = plan_output(model.sdata, model.prepared, log=False).output_bytes(
        model.prepared.data.layout.n_subspots
    )
    # room for the outputs but not for two tasks of the smallest size
    with (
        soscope.settings.override(memory_limit=out_bytes + 4096),
        pytest.raises(SoscopeInputError, match="smallest tasks"),
    ):
        soscope.enhance(sd.read_zarr(store), table="table", progress=False, epochs=1)
    assert tree_digest(store) == before
    # not backed by a store: the outputs would be held in memory, and the error says how to stream them
    mem = sd.read_zarr(store)
    mem.path = None
    with (
        soscope.settings.override(memory_limit=4096),
        pytest.raises(SoscopeInputError, match="zarr store"),
    ):
        soscope.enhance(mem, table="table", progress=False, epochs=1, inplace=False)


@pytest.mark.parametrize(
    ("features", "message"),
    [
        (["gene_0", "no_such_gene"], "not features of this table"),
        ("score", "not True/False"),
        ("no_such_column", "neither 'all', a boolean var column"),
        ([], "selects no feature"),
        (3, "must be 'all'"),
    ],
)
def test_bad_features_fail_before_training(sample_store, tmp_path, features, message):
    store = _copy(sample_store, tmp_path / "b.zarr")
    before = tree_digest(store)
    with pytest.raises(SoscopeInputError, match=message):
        soscope.enhance(sd.read_zarr(store), table="table", progress=False, epochs=1, features=features)
    assert tree_digest(store) == before


def test_bad_dtype_and_memory_limit_are_refused(model):
    with pytest.raises(SoscopeInputError, match="dtype must be one of"):
        model.enhance(inplace=False, dtype="float64")
    with pytest.raises(SoscopeInputError, match="memory_limit"):
        soscope.settings.memory_limit = -1
    with pytest.raises(SoscopeInputError, match="memory_limit"):
        soscope.settings.memory_limit = 1.5
    assert soscope.settings.memory_limit is None


def test_default_epochs_cap_the_steps_of_large_sections():
    # small sections: ~600 steps, at least 20 epochs (unchanged); 75 steps per epoch and less: 20 epochs
    assert [default_epochs(n) for n in (100, 1000, 5000, 19_200)] == [200, 150, 30, 20]
    for n in (20_000, 50_000, 200_000, 1_000_000):
        steps_per_epoch = -(-n // 256)
        epochs = default_epochs(n)
        assert epochs < 20
        assert epochs * steps_per_epoch >= 1500 > (epochs - 1) * steps_per_epoch
    assert default_epochs(200_000) == 2


def test_features_across_modalities_write_only_the_tables_asked_for():
    """Names select within each modality; a modality none of whose features is named gets no table."""
    import anndata as ad
    import scipy.sparse as sp
    from spatialdata.models import TableModel

    sdata = soscope.datasets.synthetic(n_spots=60, n_features=12, k=7, image=False, seed=2)
    spots = sdata.tables["table"]
    var = spots.var.copy()
    var["feature_types"] = np.where(np.arange(12) < 6, "protein", "rna")
    table = ad.AnnData(X=sp.csr_matrix(spots.X), obs=spots.obs.copy(), var=var)
    del sdata.tables["table"]
    sdata.tables["joint"] = TableModel.parse(
        table, region="spots", region_key="region", instance_key="spot_id"
    )
    with torch.random.fork_rng():
        model = soscope.SoScope(sdata, **{**MODEL_ARGS, "table": "joint"})
        model.train(epochs=1)
    full = model.enhance(inplace=False, key_added="all")
    names = list(var.index)
    only_rna = model.enhance(inplace=False, key_added="r", features=[names[8], names[7]])
    assert "joint_r_rna" in only_rna.tables and "joint_r_protein" not in only_rna.tables
    got = only_rna.tables["joint_r_rna"]
    assert list(got.var_names) == [names[7], names[8]]
    # other matrix widths: equal up to float32 rounding
    np.testing.assert_allclose(
        got.X, full.tables["joint_all_rna"][:, [names[7], names[8]]].X, rtol=1e-5, atol=1e-6
    )
    both = model.enhance(inplace=False, key_added="b", features=[names[1], names[10]])
    assert list(both.tables["joint_b_protein"].var_names) == [names[1]]
    assert list(both.tables["joint_b_rna"].var_names) == [names[10]]
