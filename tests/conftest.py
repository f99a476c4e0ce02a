"""Shared pytest configuration: single-threaded torch and the real-data folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")

import torch  # noqa: E402

from _shared_data import SHARED_DATA_DIR, require_shared_data  # noqa: E402

# On small CI machines more threads than cores makes training far slower, not faster.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """Folder with the real data files (``../shared/data`` from the repository root).

    It is returned whether or not it exists; use :func:`require_shared_data` to skip when absent.
    """
    return SHARED_DATA_DIR


@pytest.fixture
def shared_data(shared_data_dir: Path) -> Path:
    """Like ``shared_data_dir`` but skips the test when the folder is absent."""
    return require_shared_data()


@pytest.fixture(scope="session")
def shared_data_file():
    """Factory fixture: ``shared_data_file("x.h5mu")`` returns the path or skips the test."""
    return require_shared_data


@pytest.fixture(autouse=True)
def _fixed_seed():
    """Same random state for every test, whatever order the tests run in."""
    import scvi

    scvi.settings.seed = 0
