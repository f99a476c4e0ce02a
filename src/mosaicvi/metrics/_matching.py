"""Cross-modality matching metrics for paired cells (FOSCTTM, matching score)."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import scipy.sparse as sp
from scipy.spatial.distance import cdist
from sklearn.neighbors import NearestNeighbors

from ._validation import as_embedding, check_k, check_same_n_obs

# Upper bound on the number of entries of one block of the distance matrix (128 MiB float64).
_MAX_BLOCK_ENTRIES = 2**24


def _auto_chunk_size(n: int, chunk_size: int | None) -> int:
    if chunk_size is None:
        return max(1, min(n, _MAX_BLOCK_ENTRIES // max(n, 1)))
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int | np.integer):
        raise ValueError(f"`chunk_size` must be a positive integer or None, got {chunk_size!r}.")
    if chunk_size < 1:
        raise ValueError(f"`chunk_size` must be a positive integer or None, got {chunk_size}.")
    return int(chunk_size)


def _foscttm_counts(x: np.ndarray, y: np.ndarray, chunk_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-cell counts ``n1`` (x -> y) and ``n2`` (y -> x) of cells closer than the true match."""
    n = x.shape[0]
    # True-match distances, computed by the same cdist routine as the blocks below so that the
    # strict comparisons are not affected by a different rounding of the diagonal.
    diag = np.empty(n, dtype=np.float64)
    for start in range(0, n, chunk_size):
        stop = min(start + chunk_size, n)
        diag[start:stop] = np.diagonal(cdist(x[start:stop], y[start:stop], "sqeuclidean"))

    n1 = np.empty(n, dtype=np.int64)  # row counts: #{j : d(x_i, y_j) < d(x_i, y_i)}
    n2 = np.zeros(n, dtype=np.int64)  # column counts: #{j : d(y_i, x_j) < d(y_i, x_i)}
    for start in range(0, n, chunk_size):
        stop = min(start + chunk_size, n)
        block = cdist(x[start:stop], y, "sqeuclidean")  # block[r, j] = d(x_{start+r}, y_j)^2
        n1[start:stop] = np.count_nonzero(block < diag[start:stop, None], axis=1)
        n2 += np.count_nonzero(block < diag[None, :], axis=0)
    return n1, n2


def foscttm(
    x: Any,
    y: Any,
    chunk_size: int | None = None,
    return_per_cell: bool = False,
) -> float | tuple[float, np.ndarray]:
    r"""Fraction Of Samples Closer Than the True Match (FOSCTTM).

    For ``N`` paired cells with representation ``x_i`` (e.g. embedded from modality A) and
    ``y_i`` (embedded from modality B) in a shared space,

    .. math::

        \mathrm{FOSCTTM} = \frac{1}{2N} \sum_i \left( \frac{n^{(1)}_i}{N} +
        \frac{n^{(2)}_i}{N} \right),

    with :math:`n^{(1)}_i = \#\{j : d(x_i, y_j) < d(x_i, y_i)\}` and
    :math:`n^{(2)}_i = \#\{j : d(y_i, x_j) < d(y_i, x_i)\}`, Euclidean distance ``d`` and a
    strict inequality (ties do not count). Lower is better: identical representations give
    0, unrelated ones about 0.5. Distances are computed in blocks of rows so that memory
    stays bounded (about 128 MiB per block by default) for tens of thousands of cells.

    Parameters
    ----------
    x
        Array-like of shape ``(n_cells, n_dims)``; row ``i`` is cell ``i`` seen from the
        first modality.
    y
        Array-like of the same shape; row ``i`` is the same cell ``i`` seen from the second
        modality.
    chunk_size
        Number of rows of the distance matrix computed at once. ``None`` chooses it so that a
        block has at most ``2**24`` entries.
    return_per_cell
        Whether to also return the per-cell values ``(n1_i + n2_i) / (2 N)``.

    Returns
    -------
    float or tuple
        The FOSCTTM in ``[0, (N - 1) / N]``; with ``return_per_cell=True`` a tuple
        ``(foscttm, per_cell)`` whose per-cell array has mean equal to the score.

    Raises
    ------
    ValueError
        If the inputs are not 2-D, contain NaN/inf, or have different shapes.
    """
    xa = as_embedding(x, "x")
    ya = as_embedding(y, "y")
    check_same_n_obs(xa, ya, "x", "y")
    if xa.shape[1] != ya.shape[1]:
        raise ValueError(
            "`x` and `y` must live in the same space (same number of dimensions), got "
            f"{xa.shape[1]} and {ya.shape[1]}."
        )
    n = xa.shape[0]
    n1, n2 = _foscttm_counts(xa, ya, _auto_chunk_size(n, chunk_size))
    per_cell = (n1 + n2) / (2.0 * n)
    score = float(per_cell.mean())
    if return_per_cell:
        return score, per_cell
    return score


def matching_score(matching_matrix: Any) -> float:
    """Mean probability mass that a cell-by-cell matching puts on the true partner.

    ``matching_matrix[i, j] >= 0`` scores how strongly cell ``i`` of one modality is matched
    to cell ``j`` of the other, with cell ``i`` being the true partner of cell ``i``. Each row
    is normalised to sum to one and the mean of the diagonal is returned. 1 means all mass is
    on the true matches; a uniform matrix gives ``1 / N``.

    Rows whose sum is zero (a cell matched to nothing) contribute 0 to the mean, i.e. they
    count as putting no mass on the true match; a :class:`UserWarning` reports how many there
    were.

    Parameters
    ----------
    matching_matrix
        Square non-negative array-like or scipy sparse matrix of shape ``(N, N)``.

    Returns
    -------
    float
        Matching score in ``[0, 1]`` (higher is better).

    Raises
    ------
    ValueError
        If the matrix is not square, is empty, or contains negative, NaN or infinite values.
    """
    if sp.issparse(matching_matrix):
        m = sp.csr_matrix(matching_matrix, dtype=np.float64)
        if m.ndim != 2 or m.shape[0] != m.shape[1]:
            raise ValueError(f"`matching_matrix` must be square, got shape {m.shape}.")
        if m.shape[0] == 0:
            raise ValueError("`matching_matrix` is empty.")
        values = m.data
        if not np.all(np.isfinite(values)):
            raise ValueError("`matching_matrix` contains NaN or infinite values.")
        if np.any(values < 0):
            raise ValueError("`matching_matrix` must be non-negative.")
        row_sums = np.asarray(m.sum(axis=1)).ravel()
        diag = np.asarray(m.diagonal()).ravel()
    else:
        m = as_embedding(matching_matrix, "matching_matrix")
        if m.shape[0] != m.shape[1]:
            raise ValueError(f"`matching_matrix` must be square, got shape {m.shape}.")
        if np.any(m < 0):
            raise ValueError("`matching_matrix` must be non-negative.")
        row_sums = m.sum(axis=1)
        diag = np.diagonal(m).copy()
    empty = row_sums <= 0
    if np.any(empty):
        warnings.warn(
            f"{int(empty.sum())} of {len(row_sums)} rows of `matching_matrix` sum to zero; "
            "they contribute 0 to the matching score.",
            UserWarning,
            stacklevel=2,
        )
    fraction = np.zeros_like(diag)
    np.divide(diag, row_sums, out=fraction, where=~empty)
    return float(fraction.mean())


def knn_matching_matrix(x: Any, y: Any, k: int = 10, n_jobs: int = 1) -> sp.csr_matrix:
    """Row-normalised k-nearest-neighbour matching matrix from ``x`` to ``y``.

    Row ``i`` has weight ``1 / k`` on each of the ``k`` rows of ``y`` nearest to ``x_i``
    (exact Euclidean search) and 0 elsewhere. Pass the result to :func:`matching_score`.

    Parameters
    ----------
    x
        Array-like of shape ``(n_x, n_dims)`` (query cells).
    y
        Array-like of shape ``(n_y, n_dims)`` (candidate partners), in the same space as ``x``.
    k
        Number of neighbours, ``1 <= k <= n_y``.
    n_jobs
        Number of parallel jobs for the neighbour search.

    Returns
    -------
    scipy.sparse.csr_matrix
        Matrix of shape ``(n_x, n_y)`` whose rows each sum to one.

    Raises
    ------
    ValueError
        If the inputs are not 2-D, contain NaN/inf, have different numbers of dimensions,
        or ``k`` is out of range.
    """
    xa = as_embedding(x, "x")
    ya = as_embedding(y, "y")
    if xa.shape[1] != ya.shape[1]:
        raise ValueError(
            "`x` and `y` must live in the same space (same number of dimensions), got "
            f"{xa.shape[1]} and {ya.shape[1]}."
        )
    k = check_k(k, ya.shape[0])
    idx = (
        NearestNeighbors(n_neighbors=k, n_jobs=n_jobs).fit(ya).kneighbors(xa, return_distance=False)
    )
    n_x = xa.shape[0]
    indptr = np.arange(0, n_x * k + 1, k)
    data = np.full(n_x * k, 1.0 / k)
    out = sp.csr_matrix((data, idx.ravel(), indptr), shape=(n_x, ya.shape[0]))
    out.sort_indices()
    return out
