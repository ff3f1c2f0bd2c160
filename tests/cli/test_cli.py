"""The ``soscope`` command line, run as users run it: in a subprocess, through the real entry points."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

EPOCHS = "1"

pytestmark = pytest.mark.filterwarnings("ignore:.*autosharding.*")


def run(
    *args: str | os.PathLike, cwd: Path | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    """``python -m soscope.cli ARGS`` with the test interpreter."""
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, "-m", "soscope.cli", *map(str, args)],
        capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout,
    )  # fmt: skip


def script() -> str:
    """Return the installed ``soscope`` console script of this environment."""
    path = Path(sys.executable).parent / ("soscope.exe" if os.name == "nt" else "soscope")
    found = str(path) if path.exists() else shutil.which("soscope")
    if found is None:
        pytest.fail("the `soscope` console script is not installed: run `pip install -e .`")
    return found


def _synthetic_store(path: Path, seed: int) -> Path:
    from soscope.datasets import synthetic

    synthetic(n_spots=200, n_features=50, seed=seed).write(path)
    return path


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> dict[str, Path]:
    """Two small synthetic stores (``table`` of spots + ``truth`` of sub-spots, image), written once."""
    base = tmp_path_factory.mktemp("stores")
    return {"a": _synthetic_store(base / "a.zarr", 0), "b": _synthetic_store(base / "b.zarr", 1)}


@pytest.fixture
def store_a(stores, tmp_path) -> Path:
    """Return a private copy of store a (the commands write into it)."""
    dst = tmp_path / "a.zarr"
    shutil.copytree(stores["a"], dst)
    return dst


def _one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


# --------------------------------------------------------------------------------------------- help
@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ((), ["enhance", "train", "apply", "evaluate", "demo", "info"]),
        (("info",), ["--table", "--spots", "--image"]),
        (("enhance",), ["--subspots", "--likelihood", "--key-added", "--epochs", "--device", "--seed",
                        "--overwrite", "--model", "--no-progress", "--layer"]),
        (("train",), ["--output", "--sections", "--epochs"]),
        (("apply",), ["MODEL_DIR", "STORE", "--key-added", "--features", "--dtype"]),
        (("evaluate",), ["--key-added", "--truth", "--out"]),
        (("demo",), ["--out", "--epochs"]),
    ],
)  # fmt: skip
def test_help(command, expected):
    """`--help` of the app and of every command names its options."""
    proc = run(*command, "--help")
    assert proc.returncode == 0, proc.stderr
    assert "Usage" in proc.stdout
    for word in expected:
        assert word in proc.stdout, f"{word!r} missing from `soscope {' '.join(command)} --help`"


def test_script_help_imports_nothing_heavy():
    """`soscope --help` answers without importing the heavy stack (what would make it slow).

    Checked by the modules loaded rather than by a clock: a timed test fails on a busy machine.
    """
    proc = subprocess.run([script(), "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "demo" in proc.stdout
    heavy = ("spatialdata", "torch", "matplotlib", "anndata", "dask", "geopandas")
    probe = (
        "import sys\n"
        "from soscope.cli import main\n"
        "sys.argv = ['soscope', '--help']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        f"print(sorted(m for m in {heavy!r} if m in sys.modules), file=sys.stderr)"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert "demo" in out.stdout
    loaded = out.stderr.strip().splitlines()[-1]
    assert loaded == "[]", f"`soscope --help` imports heavy modules: {out.stderr}"


def test_version():
    """`soscope --version` prints the package version."""
    from soscope._version import __version__

    proc = subprocess.run([script(), "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and __version__ in proc.stdout


# --------------------------------------------------------------------------------------------- errors
def test_missing_store_fails_with_a_message(tmp_path):
    """A missing store, a folder that is no store, a missing model: exit 2 and one line."""
    proc = run("enhance", tmp_path / "nope.zarr")
    assert "No SpatialData store at" in _one_line_error(proc)
    (tmp_path / "empty").mkdir()
    assert "not a zarr store" in _one_line_error(run("info", tmp_path / "empty"))
    assert "No saved model" in _one_line_error(run("apply", tmp_path / "no_model", tmp_path / "empty"))


def test_info_reports_the_choice(stores):
    """`info` lists the elements and what enhance would pick."""
    proc = run("info", stores["a"], "--table", "table")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    expected = (
        "shapes spots: 200 circles",
        "table  truth: 1,400 x 50",
        "enhance would use:",
        "table: table (X)",
        "spots: spots (200 spots)",
        "image: image",
        "coordinate system: global",
    )
    for text in expected:
        assert text in out, out
    # named layers only: from anndata 0.13 on, X is also layers[None] and must not be listed (or crash)
    truth_line = next(ln for ln in out.splitlines() if "table  truth:" in ln)
    listed = truth_line.split("; layers: ")[1].split(" [")[0].split(", ")
    assert sorted(listed) == ["footprint", "mean", "mean_footprint"], truth_line


def test_ambiguous_store_fails_with_the_candidates_and_the_option(stores, tmp_path):
    """Two candidate tables: exit 2, naming both and the CLI option to set."""
    import spatialdata as sd

    path = tmp_path / "two_tables.zarr"
    shutil.copytree(stores["a"], path)
    sdata = sd.read_zarr(path)
    sdata.tables["table_copy"] = sdata.tables["table"].copy()
    sdata.write_element("table_copy")
    err = _one_line_error(run("info", path))
    assert "'table'" in err and "'table_copy'" in err
    assert "`--table`" in err  # the CLI option, not the Python argument


def test_cli_terms_and_likelihood_parsing():
    """Library hints become CLI options; --likelihood takes a name or MODALITY=NAME pairs."""
    from soscope.cli._app import _cli_terms, _likelihood

    assert (
        _cli_terms("pass `table=` or `image=False`; `foo=` stays")
        == "pass `--table` or `--no-image`; `foo=` stays"
    )
    assert _cli_terms("set `coordinate_system=`") == "set `--coordinate-system`"
    assert _likelihood("nb") == "nb"
    assert _likelihood("Antibody Capture=poisson,Gene Expression=nb") == {
        "Antibody Capture": "poisson",
        "Gene Expression": "nb",
    }


def test_evaluate_before_enhance_and_bad_demo_option_fail_with_a_message(stores, tmp_path):
    """`evaluate` on a store soscope has not enhanced, and `demo --epochs 0`: exit 2, saying what to do."""
    err = _one_line_error(run("evaluate", stores["a"], "--truth", "truth"))
    assert "soscope enhance" in err and "--key-added" in err
    proc = run("demo", "--epochs", "0", "--out", tmp_path / "demo")
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "--epochs" in proc.stderr and "greater than or equal to 1" in proc.stderr
    assert not (tmp_path / "demo").exists()  # refused before any work


def test_train_refuses_to_overwrite_a_folder(stores, tmp_path):
    """`train -o` into a non-empty folder needs --overwrite."""
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "x").write_text("keep me")
    assert "--overwrite" in _one_line_error(run("train", stores["a"], "-o", tmp_path / "m"))


# --------------------------------------------------------------------------------------------- workflows
def _assert_enhanced(store: Path, key: str = "soscope") -> None:
    import spatialdata as sd

    sdata = sd.read_zarr(store)
    assert f"spots_{key}" in sdata.shapes, list(sdata.shapes)
    assert f"table_{key}" in sdata.tables, list(sdata.tables)
    shapes, table = sdata.shapes[f"spots_{key}"], sdata.tables[f"table_{key}"]
    attrs = table.uns["spatialdata_attrs"]
    assert attrs["region"] in (f"spots_{key}", [f"spots_{key}"])
    assert {"spot_id", "subspot"} <= set(table.obs.columns)
    assert set(table.obs[attrs["instance_key"]].astype(str)) == set(shapes.index.astype(str))
    assert table.n_obs == 200 * 7
    assert "soscope" in table.uns


def test_enhance_then_evaluate(store_a, tmp_path):
    """`enhance` writes sub-spot shapes + table into the store; `evaluate` scores them."""
    proc = run("enhance", store_a, "--table", "table", "--epochs", EPOCHS, "--batch-size", "50",
               "--device", "cpu", "--no-progress")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "table_soscope" in proc.stdout
    _assert_enhanced(store_a)
    import numpy as np
    import spatialdata as sd

    # --batch-size N: N spots per training step (200 spots: at least 4 steps per epoch)
    info = sd.read_zarr(store_a).tables["table_soscope"].uns["soscope"]
    assert int(info["train"]["batch_size"]) == 50
    assert int(np.asarray(info["history"]["steps"])[0]) >= 4

    report, png = tmp_path / "report.csv", tmp_path / "acc.png"
    proc = run("evaluate", store_a, "--truth", "truth", "--out", report, "--plot", png, "--no-ssim")
    assert proc.returncode == 0, proc.stderr
    assert "soscope" in proc.stdout and "even_split" in proc.stdout
    import pandas as pd

    df = pd.read_csv(report, index_col=0)
    assert len(df) == 50 and "pearson_soscope" in df.columns
    assert png.stat().st_size > 10_000


def test_train_then_apply(stores, store_a, tmp_path):
    """A model trained on one store enhances another through the installed script.

    Also: ``train --batch-size N`` trains with N spots per step, and ``enhance --model`` refuses training
    options.
    """
    import math

    import soscope

    model = tmp_path / "model"
    proc = run("train", store_a, "-o", model, "--table", "table", "--epochs", EPOCHS, "--batch-size", "50",
               "--device", "cpu", "--no-progress")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert model.exists() and any(model.iterdir())
    trained = soscope.SoScope.load(model, device="cpu", progress=False)
    assert trained.train_config.batch_size == 50
    assert trained.history.steps[0] >= math.ceil(200 / 50), "200 spots: one step would mean 256 per step"
    error = _one_line_error(run("enhance", store_a, "--model", model, "--batch-size", "50", "--no-progress"))
    assert "`--batch-size`" in error and "only apply when training" in error

    b = tmp_path / "b.zarr"
    shutil.copytree(stores["b"], b)
    proc = subprocess.run(
        [script(), "apply", str(model), str(b), "--table", "table", "--device", "cpu", "--no-progress"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    _assert_enhanced(b)

    # --features (repeatable) and --dtype: only those features, written as float16
    proc = subprocess.run(
        [script(), "apply", str(model), str(b), "--table", "table", "--device", "cpu", "--no-progress",
         "--key-added", "sel", "--features", "gene_7", "--features", "gene_1", "--dtype", "float16"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    import numpy as np
    import spatialdata as sd

    enhanced = sd.read_zarr(b)
    selected, full = enhanced.tables["table_sel"], enhanced.tables["table_soscope"]
    assert list(selected.var_names) == ["gene_1", "gene_7"]
    assert np.asarray(selected.X).dtype == np.float16
    # the same values up to the float32 rounding of a different feature block, then float16 rounding: a
    # value on a float16 rounding boundary may land one float16 step (2**-10 relative) either side
    np.testing.assert_allclose(
        np.asarray(selected.X, dtype=np.float32),
        np.asarray(full[:, ["gene_1", "gene_7"]].X, dtype=np.float32),
        rtol=2**-10,
        atol=0,
    )
    error = _one_line_error(run("apply", model, b, "--table", "table", "--features", "nope", "--no-progress"))
    assert "features='nope'" in error


def test_demo_writes_store_and_figure(tmp_path):
    """`demo` enhances the shipped example and writes the zarr and a PNG."""
    out = tmp_path / "demo"
    proc = run("demo", "--epochs", "5", "--out", out, "--device", "cpu", "--no-progress", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (out / "example_enhanced.zarr" / "zarr.json").is_file()
    png = out / "example_enhanced.png"
    assert png.stat().st_size > 10_000
    for word in ("spots: 1,618", "sub-spots:", "likelihoods:", "time:"):
        assert word in proc.stdout, proc.stdout
    import spatialdata as sd

    sdata = sd.read_zarr(out / "example_enhanced.zarr")
    assert "pixels_soscope" in sdata.shapes
    # one enhanced table per modality: proteins and RNA
    assert {"table_soscope_antibody_capture", "table_soscope_gene_expression"} <= set(sdata.tables)


def test_train_with_a_reference_then_apply_without_it(stores, store_a, tmp_path):
    """--reference / --cell-type-key: the model keeps the reference; apply needs none; info shows it."""
    import anndata as ad
    import numpy as np
    import spatialdata as sd

    truth = sd.read_zarr(stores["a"]).tables["truth"]
    x = truth.X.toarray() if hasattr(truth.X, "toarray") else np.asarray(truth.X)
    ref_path = tmp_path / "ref.h5ad"
    ad.AnnData(
        X=x, obs={"kind": truth.obs["cell_type"].astype(str).to_numpy()}, var=truth.var[[]]
    ).write_h5ad(ref_path)
    error = _one_line_error(run("enhance", store_a, "--reference", tmp_path / "none.h5ad", "--no-progress"))
    assert "No reference file" in error
    model = tmp_path / "model"
    proc = run("train", store_a, "-o", model, "--table", "table", "--epochs", EPOCHS, "--device", "cpu",
               "--no-progress", "--reference", ref_path, "--cell-type-key", "kind")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    b = tmp_path / "b.zarr"
    shutil.copytree(stores["b"], b)
    proc = run("apply", model, b, "--table", "table", "--device", "cpu", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    enhanced = sd.read_zarr(b)
    n_kt = enhanced.tables["table_soscope"].obsm["cell_type_abundance"]
    assert n_kt.shape[1] == truth.obs["cell_type"].nunique() and n_kt.sum() > 0
    assert enhanced.tables["table_soscope_spots"].obsm["cell_type_abundance"].shape[0] == 200
    info = run("info", b, "--table", "table")
    assert "reference:" in info.stdout and "cell types" in info.stdout
