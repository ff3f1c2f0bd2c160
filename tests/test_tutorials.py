"""Every tutorial runs (on small data) so it cannot rot."""

import runpy
from pathlib import Path

import pytest

TUTORIALS = sorted((Path(__file__).parents[1] / "tutorials").glob("[0-9][0-9]_*.py"))
#: seconds after which a hung tutorial is stopped (pytest-timeout; CI: 2 cores): a guard, not a measurement,
#: so a slow, busy machine does not fail a correct tutorial
TIMEOUT_S = 240


def test_the_tutorials_exist():
    """One section; some sections → the rest; whole slide with Dask; multi-omics; downstream analysis."""
    stems = [p.stem for p in TUTORIALS]
    for prefix in ("01_", "02_", "03_", "04_", "05_"):
        assert any(s.startswith(prefix) for s in stems), stems


#: optional packages a tutorial needs (the `test` extra installs them): without them it is skipped
NEEDS = {"05": ("squidpy", "spatialdata_plot")}
#: tutorials on the shared real data (CI has it beside the repository)
NEEDS_SHARED_DATA = ("06",)


@pytest.mark.timeout(TIMEOUT_S)
@pytest.mark.parametrize("path", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_tutorial_runs(path, tmp_path, monkeypatch):
    import dataclasses

    import matplotlib

    import soscope

    for module in NEEDS.get(path.stem[:2], ()):
        pytest.importorskip(module)
    if path.stem[:2] in NEEDS_SHARED_DATA and soscope.datasets.shared_data_dir(required=False) is None:
        pytest.skip("needs the shared real data folder (../shared/data or SOSCOPE_SHARED_DATA)")

    matplotlib.use("Agg")
    monkeypatch.setenv("SOSCOPE_TUTORIAL_SPOTS", "200")
    monkeypatch.setenv("SOSCOPE_TUTORIAL_EPOCHS", "5")
    monkeypatch.setenv("SOSCOPE_TUTORIAL_OUT", str(tmp_path))
    before = dataclasses.asdict(soscope.settings)
    try:
        namespace = runpy.run_path(str(path))
    finally:
        # a tutorial may change soscope.settings (that is how users change them): none leaks into other tests
        for name, value in before.items():
            setattr(soscope.settings, name, value)
    assert "sdata" in namespace
    pngs = list(tmp_path.glob("*.png"))
    assert pngs and all(p.stat().st_size > 10_000 for p in pngs), [(p.name, p.stat().st_size) for p in pngs]
    check = CHECKS.get(path.stem[:2])
    if check is not None:
        check(namespace, {p.name for p in pngs})


def _check_sections(ns: dict, pngs: set[str]) -> None:
    """02: only section C is enhanced, by the model trained on A and B, and scored beside the baselines."""
    sdata = ns["sdata"]
    out = sdata.tables["table_from_AB"]
    assert out.n_obs == 7 * 200 and set(out.obs["spot_id"]) <= set(sdata.shapes["spots_C"].index)
    assert "spots_C_from_AB" in sdata.shapes and "spots_A_from_AB" not in sdata.shapes
    assert (ns["model_dir"] / "model.pt").is_file()
    assert {"soscope", "even_split", "gaussian_interpolation"} <= set(ns["summary"]["mean"])
    assert {"training.png", "accuracy.png", "maps_C.png"} <= pngs


def _check_dask(ns: dict, pngs: set[str]) -> None:
    """03: several chunks; the cluster's results equal the local scheduler's and are in the store."""
    import numpy as np
    import spatialdata as sd

    assert len(ns["chunks"]) > 1
    local, dask_run = (np.asarray(ns["sdata"].tables[f"table_{k}"].X) for k in ("local", "dask"))
    # the tutorial's own float32 tolerance (a few hundred float32 ulps; its comment derives it); the
    # LocalCluster and threaded engines run the same computation per chunk and usually agree bit for bit
    rtol = ns["FLOAT32_RTOL"]
    assert 1e-5 < rtol < 1e-3
    np.testing.assert_allclose(dask_run, local, rtol=rtol, atol=rtol * np.abs(local).max())
    assert local.shape == (7 * 200, 60) and local.std() > 0
    back = sd.read_zarr(ns["store"])
    assert {"table_local", "table_dask"} <= set(back.tables) and "spots_dask" in back.shapes
    assert "maps.png" in pngs


def _check_multiomics(ns: dict, pngs: set[str]) -> None:
    """04: one enhanced table per modality (283 proteins, 10 genes) over the same sub-pixels."""
    proteins, rna = ns["proteins"], ns["rna"]
    assert (proteins.n_vars, rna.n_vars) == (283, 10)
    assert proteins.n_obs == rna.n_obs == len(ns["sdata"].shapes["pixels_soscope"]) > ns["table"].n_obs
    assert ns["protein"] in proteins.var_names and ns["gene"] in rna.var_names
    assert "protein_and_gene.png" in pngs


def _check_downstream(ns: dict, pngs: set[str]) -> None:
    """05: domains scored at both resolutions, markers at three, Moran's I for every feature, two maps."""
    import numpy as np

    scores, contrast = ns["scores"], ns["contrast"]
    assert list(scores.index) == ["spot", "subspot"]
    assert np.isfinite(scores[["ari", "nmi"]].to_numpy()).all()
    assert set(contrast["resolution"]) == {"spot", "subspot", "truth"}
    assert contrast["auroc"].between(0, 1).all()
    assert len(ns["svg"]) == ns["sub"].n_vars and ns["sub"].obs["domain"].nunique() > 1
    # squidpy's spatial graph and Moran's I on the sub-spots
    assert "spatial_connectivities" in ns["sub"].obsp and "moranI" in ns["sub"].uns
    # the maps coloured the shapes through the tables: the domains are in their obs
    for name in ("table", "table_soscope"):
        assert ns["sdata"].tables[name].obs["domain"].nunique() > 1
    assert {"domains.png", "markers.png"} <= pngs


CHECKS = {"02": _check_sections, "03": _check_dask, "04": _check_multiomics, "05": _check_downstream}
