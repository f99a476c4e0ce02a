"""Shared pytest configuration: single-threaded torch and the real-data folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")

import torch  # noqa: E402

# On small CI machines more threads than cores makes training far slower, not faster.
torch.set_num_threads(1)

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA_DIR = REPO_ROOT.parent / "shared" / "data"
MISSING_DATA_REASON = "real data folder ../shared/data not found"


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """Folder with the real data files (``../shared/data`` from the repository root).

    It is returned whether or not it exists; use :func:`require_shared_data` to skip when absent.
    """
    return SHARED_DATA_DIR


def require_shared_data(name: str | None = None) -> Path:
    """Return ``../shared/data`` (or a file in it), skipping the test when it is absent."""
    if not SHARED_DATA_DIR.is_dir():
        pytest.skip(MISSING_DATA_REASON)
    if name is None:
        return SHARED_DATA_DIR
    path = SHARED_DATA_DIR / name
    if not path.exists():
        pytest.skip(f"real data file ../shared/data/{name} not found")
    return path


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
