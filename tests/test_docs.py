"""The documentation builds without warnings, and its tutorial notebooks are the tutorials' current code."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
DOCS = ROOT / "docs"
#: the docs build (nothing is executed: notebooks are stored with their outputs) must stay quick in CI
BUILD_BUDGET_S = 240


def _render_module():
    spec = importlib.util.spec_from_file_location("render_tutorials", DOCS / "render_tutorials.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


render = _render_module()
TUTORIALS = render.tutorials()


def test_tutorials_are_in_the_docs_and_the_readme():
    """Every tutorial has a page in the tutorials toctree and a link in the README."""
    assert len(TUTORIALS) >= 4
    toc = (DOCS / "tutorials.md").read_text()
    readme = (ROOT / "README.md").read_text()
    for path in TUTORIALS:
        assert f"tutorials/{path.stem}\n" in toc, f"{path.stem} is not in the toctree of docs/tutorials.md"
        assert f"tutorials/{path.name}" in readme, f"README.md does not link tutorials/{path.name}"
        notebook = f"docs/tutorials/{path.stem}.ipynb"
        assert notebook in readme, f"README.md does not link {notebook}"


def test_percent_cells_are_parsed():
    """The script → notebook conversion keeps markdown and code cells, in order, without the header."""
    cells = render.cells(TUTORIALS[0])
    assert cells[0][0] == "markdown" and cells[0][1].startswith("# ")
    assert any(kind == "code" and "import soscope" in src for kind, src in cells)
    assert not any("jupytext" in src for _, src in cells)
    assert all(src == src.strip("\n") for _, src in cells)


@pytest.mark.parametrize("path", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_stored_notebook_is_the_executed_tutorial(path):
    """docs/tutorials/<name>.ipynb has the script's cells, all executed without errors, with figures."""
    stored = DOCS / "tutorials" / f"{path.stem}.ipynb"
    hint = f"run `python docs/render_tutorials.py {path.stem[:2]}` to (re)generate {stored.relative_to(ROOT)}"
    assert stored.is_file(), hint
    nb = json.loads(stored.read_text())
    got = [(c["cell_type"], "".join(c["source"])) for c in nb["cells"]]
    assert got == render.cells(path), f"{stored.name} differs from {path.name}: {hint}"
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    counts = [c["execution_count"] for c in code]
    assert counts == list(range(1, len(code) + 1)), f"not executed in order, top to bottom: {hint}"
    outputs = [o for c in code for o in c["outputs"]]
    assert not [o for o in outputs if o["output_type"] == "error"]
    data = [o.get("data", {}) for o in outputs]
    images = [d[k] for d in data for k in ("image/png", "image/jpeg") if k in d]
    assert images, f"{stored.name} shows no figure"
    assert all(len(b64) > 10_000 for b64 in images)  # base64 of a real plot, not a stub


@pytest.mark.timeout(2 * BUILD_BUDGET_S)
def test_docs_build_without_warnings(tmp_path):
    """`sphinx-build -W` (warnings are errors) builds the site: API reference, tutorials and their figures."""
    out = tmp_path / "html"
    cmd = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
           "-d", str(tmp_path / "doctrees"), str(DOCS), str(out)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=2 * BUILD_BUDGET_S)
    assert proc.returncode == 0, f"sphinx-build failed:\n{proc.stderr[-6000:]}"
    api = (out / "api.html").read_text()
    assert "soscope.enhance" in api and "key_added" in api  # rendered from the docstrings
    for path in TUTORIALS:
        page = out / "tutorials" / f"{path.stem}.html"
        assert page.is_file(), f"no page for {path.stem}"
        html = page.read_text()
        for part in ('class="cell_input', 'class="cell_output', "<img"):  # myst-nb: code, outputs, figures
            assert part in html, f"{page.name} lacks {part!r}"
    figures = [p for p in (out / "_images").iterdir() if p.suffix in (".png", ".jpg")]
    assert len(figures) >= len(TUTORIALS) and all(p.stat().st_size > 10_000 for p in figures)


def test_contributor_architecture_names_every_subpackage_and_setting():
    """docs/dev/architecture.md draws the pipeline: it must not drift from the code it describes."""
    import dataclasses
    import re

    import soscope

    text = (ROOT / "docs" / "dev" / "architecture.md").read_text()
    src = ROOT / "src" / "soscope"
    subpackages = sorted(p.name for p in src.iterdir() if (p / "__init__.py").exists())
    drawn = set(re.findall(r"^[\s│├└─]*([a-z]+)\s{2,}", text.split("```text", 1)[1].split("```", 1)[0], re.M))
    assert set(subpackages) <= drawn, f"subpackages missing from the drawing: {set(subpackages) - drawn}"
    settings = {f.name for f in dataclasses.fields(soscope.settings)}
    in_table = set(re.findall(r"^\| `([a-z_]+)` \|", text, re.M))
    assert settings == in_table, (settings - in_table, in_table - settings)
