"""Sphinx configuration for the mosaicvi documentation."""

import os
import sys
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _dist_version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

project = "mosaicvi"
author = "mosaicvi developers"
copyright = "2025, mosaicvi developers"
try:
    release = _dist_version("mosaicvi")
except PackageNotFoundError:
    release = "0.0.0"
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.intersphinx",
    "sphinx.ext.viewcode",
    "sphinx.ext.mathjax",
]
try:  # optional: nicer type hints when installed (pip install -e ".[docs]")
    import sphinx_autodoc_typehints  # noqa: F401

    extensions.append("sphinx_autodoc_typehints")
except ImportError:
    pass

autosummary_generate = True
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
napoleon_numpy_docstring = True
napoleon_google_docstring = False

intersphinx_mapping = {
    "python": ("https://docs.python.org/3", None),
    "numpy": ("https://numpy.org/doc/stable", None),
    "anndata": ("https://anndata.readthedocs.io/en/stable", None),
    "mudata": ("https://mudata.readthedocs.io/en/latest", None),
    "scvi": ("https://docs.scvi-tools.org/en/stable", None),
    "torch": ("https://docs.pytorch.org/docs/stable", None),
}
if os.environ.get("MOSAICVI_DOCS_OFFLINE"):  # machines without internet: no cross-links
    intersphinx_mapping = {}

source_suffix = {".rst": "restructuredtext"}
master_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

try:
    import furo  # noqa: F401

    html_theme = "furo"
except ImportError:
    html_theme = "alabaster"
html_title = f"mosaicvi {release}"
