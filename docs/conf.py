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
    "myst_nb",
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
# No default "members": with one, Sphinx replaces an explicit ``:members: a, b`` list by all
# members. Every directive that documents members says ``:members:``.
autodoc_default_options = {"show-inheritance": True}
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

source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
myst_enable_extensions = ["dollarmath", "colon_fence"]
# Notebooks are rendered with the outputs committed in tutorials/ (CI executes them on the real
# data in tests/tutorials/test_tutorials.py; the docs build needs neither the data nor a kernel).
nb_execution_mode = "off"
nb_merge_streams = True


def _copy_tutorials() -> None:
    """Render the notebooks of tutorials/ under docs/tutorials/ (one copy, made at build time)."""
    import shutil

    target = Path(__file__).parent / "tutorials"
    for notebook in sorted((ROOT / "tutorials").glob("*.ipynb")):
        shutil.copy2(notebook, target / notebook.name)


_copy_tutorials()


def _public_name(cls: type) -> str | None:
    """``package.Class`` where ``cls`` is importable from a public package (its first one).

    ``mosaicvi.base._outputs.ImputationMixin`` -> ``mosaicvi.base.ImputationMixin``, and
    likewise for scvi-tools (``scvi.model.base._base_model.BaseModelClass`` ->
    ``scvi.model.base.BaseModelClass``); ``None`` when no public package exports it.
    """
    import importlib

    parts = getattr(cls, "__module__", "").split(".")
    private = [i for i, part in enumerate(parts) if part.startswith("_")]
    if not private:
        return None
    for end in range(private[0], 0, -1):
        package = ".".join(parts[:end])
        try:
            if getattr(importlib.import_module(package), cls.__name__, None) is cls:
                return f"{package}.{cls.__name__}"
        except ImportError:
            continue
    return None


def _public_bases(app, name, obj, options, bases) -> None:
    """Show base classes under the names they are documented and imported by."""
    for i, base in enumerate(bases):
        public = _public_name(base) if isinstance(base, type) else None
        if public is not None:
            bases[i] = f":py:class:`~{public}`"


def setup(app) -> None:
    app.connect("autodoc-process-bases", _public_bases)


master_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "**.ipynb_checkpoints"]

html_theme = "sphinx_book_theme"  # the theme of scanpy, scvi-tools and the scverse docs
html_theme_options = {
    "repository_url": "https://github.com/mosaicvi/mosaicvi",
    "use_repository_button": True,
    "path_to_docs": "docs/",
    "navigation_with_keys": False,
}
html_title = f"mosaicvi {release}"
