"""Sphinx configuration of the soscope documentation (myst-nb: Markdown pages and notebooks)."""

from __future__ import annotations

import sys
import warnings
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from soscope._version import __version__  # noqa: E402

# sphinx-autodoc-typehints uses a Sphinx API deprecated for Sphinx 10: not ours to fix, and noisy.
warnings.filterwarnings("ignore", message=".*is deprecated. Check CHANGES for Sphinx API modifications.*")

project = "soscope"
author = "soscope contributors"
copyright = f"{date.today().year}, {author}"
version = release = __version__

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "sphinx_autodoc_typehints",
]

source_suffix = {".md": "myst-nb", ".ipynb": "myst-nb", ".rst": "restructuredtext"}
exclude_patterns = ["_build", "**.ipynb_checkpoints", "Thumbs.db", ".DS_Store"]
templates_path = ["_templates"]
# _static holds the README's figures (docs/_static/demo.png); git keeps no empty folder: use it if present.
html_static_path = ["_static"] if (Path(__file__).parent / "_static").is_dir() else []

# Notebooks (tutorials) are stored with their outputs; nothing runs at build time.
nb_execution_mode = "off"
myst_enable_extensions = ["colon_fence", "deflist", "dollarmath", "amsmath", "substitution"]
myst_heading_anchors = 3

# numpy-style docstrings
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = True
napoleon_use_ivar = True
napoleon_use_param = True
napoleon_custom_sections = [("Params", "Parameters")]

autosummary_generate = True
autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "undoc-members": False, "show-inheritance": False}
autodoc_typehints = "description"
typehints_defaults = "comma"
typehints_document_rtype_none = False  # an inserted ":rtype: None" after a Notes rubric breaks docutils
always_document_param_types = False
# No intersphinx: the build runs offline (links to numpy / spatialdata types render as plain text).

# Unresolvable cross-references to third-party types (rendered as text when offline) are not errors.
nitpicky = False

html_theme = "sphinx_book_theme"
html_title = "soscope"
html_theme_options = {"show_toc_level": 2}
