"""Every tutorial runs (on small data) so it cannot rot."""

# ruff: noqa: D103
import runpy
from pathlib import Path

import pytest

TUTORIALS = sorted((Path(__file__).parents[1] / "tutorials").glob("*.py"))


@pytest.mark.parametrize("path", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_tutorial_runs(path, tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    monkeypatch.setenv("SOSCOPE_TUTORIAL_SPOTS", "200")
    monkeypatch.setenv("SOSCOPE_TUTORIAL_OUT", str(tmp_path))
    namespace = runpy.run_path(str(path))
    assert "sdata" in namespace
    pngs = list(tmp_path.glob("*.png"))
    assert pngs and all(p.stat().st_size > 10_000 for p in pngs)
