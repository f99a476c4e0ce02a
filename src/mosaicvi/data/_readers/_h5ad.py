"""Reading ``obs``/``var`` and a subset of rows of an on-disk h5ad matrix, in chunks."""

from __future__ import annotations

import logging
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

logger = logging.getLogger(__name__)

# Largest number of stored values read from disk at once when loading a subset of cells.
_CHUNK_NNZ = 20_000_000


def _read_obs_var(f: h5py.File, path: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``obs`` and ``var`` of an h5ad without loading its matrices."""
    try:
        from anndata.io import read_elem
    except ImportError:  # anndata < 0.11
        from anndata.experimental import read_elem
    if isinstance(f.get("obs"), h5py.Group) and isinstance(f.get("var"), h5py.Group):
        return read_elem(f["obs"]), read_elem(f["var"])
    # anndata < 0.7 stored obs/var as compound datasets: let anndata parse the whole file
    logger.warning(
        "%s uses a pre-2020 h5ad layout; reading it with anndata (slower, more memory).", path.name
    )
    backed = ad.read_h5ad(path, backed="r")
    try:
        return backed.obs.copy(), backed.var.copy()
    finally:
        backed.file.close()


def _sparse_format(elem: h5py.Group) -> tuple[str, tuple[int, int]]:
    attrs = elem.attrs
    encoding = attrs.get("encoding-type", attrs.get("h5sparse_format"))
    if isinstance(encoding, bytes):
        encoding = encoding.decode()
    shape = attrs.get("shape", attrs.get("h5sparse_shape"))
    if encoding in ("csr_matrix", "csr"):
        return "csr", tuple(int(s) for s in shape)
    if encoding in ("csc_matrix", "csc"):
        return "csc", tuple(int(s) for s in shape)
    raise ValueError(f"Unsupported on-disk matrix encoding {encoding!r} at {elem.name}.")


def _windows(indptr: np.ndarray, max_nnz: int) -> list[tuple[int, int]]:
    """Split ``range(len(indptr) - 1)`` into consecutive windows of at most ``max_nnz`` values."""
    n = len(indptr) - 1
    bounds, start = [], 0
    while start < n:
        stop = int(np.searchsorted(indptr, indptr[start] + max_nnz, side="right")) - 1
        stop = min(max(stop, start + 1), n)
        bounds.append((start, stop))
        start = stop
    return bounds


def _read_rows(elem: h5py.Group | h5py.Dataset, rows: np.ndarray) -> sp.csr_matrix:
    """Rows ``rows`` (sorted, unique) of an on-disk h5ad matrix, as CSR, read in chunks."""
    if isinstance(elem, h5py.Dataset):  # dense
        n_obs, n_vars = elem.shape
        step = max(1, _CHUNK_NNZ // max(n_vars, 1))
        blocks = []
        for start in range(0, n_obs, step):
            inside = rows[(rows >= start) & (rows < start + step)]
            if inside.size:
                block = elem[start : min(start + step, n_obs)]
                blocks.append(sp.csr_matrix(block[inside - start]))
        return sp.vstack(blocks, format="csr")

    fmt, (n_obs, n_vars) = _sparse_format(elem)
    indptr = elem["indptr"][:].astype(np.int64)
    data, indices = elem["data"], elem["indices"]
    blocks = []
    if fmt == "csr":
        for start, stop in _windows(indptr, _CHUNK_NNZ):
            inside = rows[(rows >= start) & (rows < stop)]
            if inside.size == 0:
                continue
            lo, hi = indptr[start], indptr[stop]
            block = sp.csr_matrix(
                (data[lo:hi], indices[lo:hi], indptr[start : stop + 1] - lo),
                shape=(stop - start, n_vars),
            )
            blocks.append(block[inside - start])
        return sp.vstack(blocks, format="csr")
    # CSC: stream column windows, keep the selected rows of each
    for start, stop in _windows(indptr, _CHUNK_NNZ):
        lo, hi = indptr[start], indptr[stop]
        block = sp.csc_matrix(
            (data[lo:hi], indices[lo:hi], indptr[start : stop + 1] - lo),
            shape=(n_obs, stop - start),
        )
        blocks.append(block.tocsr()[rows])
    return sp.hstack(blocks, format="csr")
