"""Execute every tutorial notebook end to end on the real data (as CI does).

Each notebook in ``tutorials/`` runs in a fresh Jupyter kernel with ``tutorials/`` as working
directory and ``MOSAICVI_DATA_DIR`` pointing at ``../shared/data``; a notebook that raises fails the
test. The committed notebook is not modified (the executed copy stays in memory).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from _shared_data import REPO_ROOT, require_shared_data

TUTORIALS_DIR = REPO_ROOT / "tutorials"
NOTEBOOKS = sorted(TUTORIALS_DIR.glob("*.ipynb"))
CELL_TIMEOUT_S = 900


def test_tutorials_exist():
    assert len(NOTEBOOKS) >= 4, f"expected the four tutorial notebooks, found {NOTEBOOKS}"


@pytest.mark.tutorial
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_tutorial_runs(notebook: Path, monkeypatch):
    data_dir = require_shared_data()
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")

    # the kernel is a child process: it inherits these
    monkeypatch.setenv("MOSAICVI_DATA_DIR", str(data_dir))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))

    nb = nbformat.read(notebook, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(TUTORIALS_DIR)}},
    )
    start = time.perf_counter()
    client.execute()
    elapsed = time.perf_counter() - start
    n_code = sum(cell.cell_type == "code" for cell in nb.cells)
    assert n_code > 0
    print(f"\n{notebook.name}: {n_code} code cells executed in {elapsed:.0f} s")
