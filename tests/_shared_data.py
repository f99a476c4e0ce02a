"""Where the real data lives, and skipping tests cleanly when it is absent."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA_DIR = REPO_ROOT.parent / "shared" / "data"
MISSING_DATA_REASON = "real data folder ../shared/data not found"


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
