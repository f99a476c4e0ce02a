"""Library-size normalisation and log1p of count matrices, read chunk by chunk of cells.

Used wherever a fixed transform is fitted or a score computed on a whole reference (JAE's input
transforms, cell-cycle scores): the only full-size array made is the normalised result.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import scipy.sparse as sp

#: counts per cell after normalisation
TARGET_SUM = 1e4
#: cells read at a time from a large matrix
CHUNK_ROWS = 10_000


def row_chunks(rows: np.ndarray, chunk_size: int = CHUNK_ROWS) -> Iterator[np.ndarray]:
    """Consecutive pieces of ``rows`` of at most ``chunk_size`` entries."""
    for start in range(0, len(rows), chunk_size):
        yield rows[start : start + chunk_size]


def is_sparse_rows(matrix) -> bool:
    """Whether rows of ``matrix`` come back sparse: a scipy matrix, or one read from disk."""
    return sp.issparse(matrix) or getattr(matrix, "format", None) in ("csr", "csc")


def select(matrix, rows: np.ndarray, columns: slice):
    """``matrix[rows][:, columns]`` as CSR for sparse input (any format), else an ndarray."""
    block = matrix[rows]
    return sp.csr_matrix(block)[:, columns] if sp.issparse(block) else np.asarray(block)[:, columns]


def _log_normalise_block(counts, dtype) -> sp.csr_matrix | np.ndarray:
    """log1p of ``counts`` scaled to ``TARGET_SUM`` per cell, as one new array of ``dtype``."""
    if sp.issparse(counts):
        logged = sp.csr_matrix(counts, dtype=dtype, copy=True)
        totals = np.asarray(logged.sum(1), dtype=np.float64).ravel()
        row_scale = (TARGET_SUM / np.maximum(totals, 1.0)).astype(dtype)
        logged.data *= np.repeat(row_scale, np.diff(logged.indptr))
        np.log1p(logged.data, out=logged.data)
        return logged
    logged = np.array(counts, dtype=dtype, copy=True)
    totals = logged.sum(1, keepdims=True, dtype=np.float64)
    logged *= (TARGET_SUM / np.maximum(totals, 1.0)).astype(dtype)
    return np.log1p(logged, out=logged)


def log_normalise(
    counts,
    rows: np.ndarray | None = None,
    columns: slice | None = None,
    dtype: type = np.float32,
    chunk_size: int = CHUNK_ROWS,
) -> sp.csr_matrix | np.ndarray:
    """``log1p`` of counts scaled to 10,000 per cell, for some cells and features, in a new array.

    Parameters
    ----------
    counts
        Cells x features counts, dense or sparse; never modified.
    rows, columns
        Integer positions of the cells and a slice of the features to normalise (default: all).
        They are read ``chunk_size`` cells at a time, so no copy of the selection is made.
    dtype
        Floating type of the result.

    Returns
    -------
    CSR matrix for sparse ``counts`` (its arrays sized exactly: a first pass counts the non-zeros
    of each cell), else an ndarray. A cell without counts stays all zero.
    """
    rows = np.arange(counts.shape[0]) if rows is None else np.asarray(rows)
    columns = slice(None) if columns is None else columns
    n_columns = len(range(*columns.indices(counts.shape[1])))
    if not is_sparse_rows(counts):
        out = np.empty((len(rows), n_columns), dtype=dtype)
        start = 0
        for chunk in row_chunks(rows, chunk_size):
            out[start : start + len(chunk)] = _log_normalise_block(
                select(counts, chunk, columns), dtype
            )
            start += len(chunk)
        return out
    row_nnz = [
        np.diff(select(counts, chunk, columns).indptr) for chunk in row_chunks(rows, chunk_size)
    ]
    indptr = np.zeros(len(rows) + 1, dtype=np.int64)
    if row_nnz:
        np.cumsum(np.concatenate(row_nnz), out=indptr[1:])
    data = np.empty(indptr[-1], dtype=dtype)
    indices = np.empty(indptr[-1], dtype=np.int32)
    start = 0
    for chunk in row_chunks(rows, chunk_size):
        block = _log_normalise_block(select(counts, chunk, columns), dtype)
        block.sort_indices()
        span = slice(indptr[start], indptr[start + len(chunk)])
        data[span], indices[span] = block.data, block.indices
        start += len(chunk)
    return sp.csr_matrix((data, indices, indptr), shape=(len(rows), n_columns))
