"""Execute the tutorials (``tutorials/NN_*.py``, percent format) into notebooks for the docs.

The scripts are the source; the docs show ``docs/tutorials/NN_*.ipynb`` with their outputs, stored in git so
the docs build runs nothing (``nb_execution_mode = "off"``). ``tests/test_docs.py`` checks that each stored
notebook still matches its script, and ``tests/test_tutorials.py`` runs every script on small data.

Run after changing a tutorial (a few minutes on a laptop CPU; the scripts' default sizes)::

    python docs/render_tutorials.py              # all tutorials
    python docs/render_tutorials.py 02 04        # those whose names start with these
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ROOT / "tutorials"
TARGET = ROOT / "docs" / "tutorials"
#: a tutorial script: two digits, an underscore, a name
PATTERN = "[0-9][0-9]_*.py"
_CELL = re.compile(r"^# %%(?P<rest>.*)$")
#: stderr lines that are noise on a docs page (third-party deprecation notices), removed from the outputs
_NOISE = re.compile(
    r"autosharding|return next\(self\.gen\)|TqdmWarning|from \.autonotebook import|IProgress not found"
)
#: figures larger than this (bytes of PNG) are stored as JPEG: tissue images make multi-MB PNGs
_MAX_PNG = 400_000


def tutorials() -> list[Path]:
    """Return the tutorial scripts, in order."""
    return sorted(SOURCES.glob(PATTERN))


def cells(path: Path) -> list[tuple[str, str]]:
    """Return the ``(cell_type, source)`` of each cell of a percent-format script (the header is skipped)."""
    out: list[tuple[str, list[str]]] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        m = _CELL.match(line)
        if m:
            out.append(("markdown" if "[markdown]" in m["rest"] else "code", []))
        elif out:
            kind, lines = out[-1]
            if kind == "markdown":
                line = line[2:] if line.startswith("# ") else line.removeprefix("#")
            lines.append(line)
    return [(kind, "\n".join(lines).strip("\n")) for kind, lines in out]


def notebook(path: Path):
    """Return an unexecuted notebook with the cells of a percent-format script."""
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    make = {"markdown": nbformat.v4.new_markdown_cell, "code": nbformat.v4.new_code_cell}
    nb.cells = [make[kind](source) for kind, source in cells(path)]
    return nb


def tidy(nb) -> None:
    """Drop noise lines from stderr outputs and store large PNG figures as JPEG (in place)."""
    import base64
    import io

    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        kept = []
        for output in cell.outputs:
            if output.get("output_type") == "stream" and output.get("name") == "stderr":
                lines = output["text"].splitlines(keepends=True)
                lines = [ln for ln in lines if ln.strip() and not _NOISE.search(ln)]
                if not lines:
                    continue
                output["text"] = "".join(lines)
            data = output.get("data", {})
            png = data.get("image/png")
            if png is not None and len(png) * 3 // 4 > _MAX_PNG:
                from PIL import Image

                img = Image.open(io.BytesIO(base64.b64decode(png))).convert("RGB")
                buf = io.BytesIO()
                img.save(buf, format="JPEG", quality=85, optimize=True)
                del data["image/png"]
                data["image/jpeg"] = base64.b64encode(buf.getvalue()).decode("ascii")
            kept.append(output)
        cell.outputs = kept


def render(path: Path, target: Path = TARGET, timeout: int = 3600) -> Path:
    """Execute the tutorial ``path`` in a fresh kernel and write ``target/<name>.ipynb``; return its path."""
    import nbformat
    from nbclient import NotebookClient

    nb = notebook(path)
    # soscope.pl returns figures not registered with pyplot: load the inline backend so Jupyter shows them
    nb.cells.insert(0, nbformat.v4.new_code_cell("%matplotlib inline"))
    with tempfile.TemporaryDirectory(prefix="soscope_tutorial_") as work:
        env_before = os.environ.get("SOSCOPE_TUTORIAL_OUT")
        os.environ["SOSCOPE_TUTORIAL_OUT"] = work  # the kernel inherits it
        try:
            NotebookClient(
                nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": work}}
            ).execute()
        finally:
            if env_before is None:
                os.environ.pop("SOSCOPE_TUTORIAL_OUT", None)
            else:
                os.environ["SOSCOPE_TUTORIAL_OUT"] = env_before
    del nb.cells[0]
    tidy(nb)
    for i, cell in enumerate(nb.cells):  # stable ids: a re-render changes only what the outputs change
        cell["id"] = f"cell-{i}"
        if cell.cell_type == "code":
            cell.execution_count = (cell.execution_count or 1) - 1
            for output in cell.outputs:
                if "execution_count" in output:
                    output["execution_count"] = cell.execution_count
    target.mkdir(parents=True, exist_ok=True)
    out = target / f"{path.stem}.ipynb"
    nbformat.write(nb, out)
    return out


def main(argv: list[str] | None = None) -> int:
    """Render the tutorials named on the command line (prefixes), or all of them."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="tutorial name prefixes (default: all)")
    parser.add_argument("--tidy-only", action="store_true", help="only tidy the stored notebooks' outputs")
    args = parser.parse_args(argv)
    chosen = [p for p in tutorials() if not args.names or any(p.stem.startswith(n) for n in args.names)]
    if not chosen:
        print(f"no tutorial matches {args.names}", file=sys.stderr)
        return 2
    if args.tidy_only:
        import nbformat

        for path in chosen:
            stored = TARGET / f"{path.stem}.ipynb"
            nb = nbformat.read(stored, as_version=4)
            tidy(nb)
            nbformat.write(nb, stored)
        return 0
    for path in chosen:
        t0 = time.perf_counter()
        out = render(path)
        print(f"{path.name} -> {out.relative_to(ROOT)} ({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
