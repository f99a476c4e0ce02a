"""Neighbourhood-based comparison of embeddings."""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp
from sklearn.neighbors import NearestNeighbors

from ._validation import as_embedding, check_k, check_same_n_obs


def _knn_excluding_self(x: np.ndarray, k: int, n_jobs: int = 1) -> np.ndarray:
    """Exact Euclidean k nearest neighbours of every row of ``x`` among the other rows.

    The cell itself is removed even when exact duplicates make it appear at a position other
    than the first; if it is not returned at all (more than ``k`` duplicates), the farthest
    of the ``k + 1`` returned neighbours is dropped instead.

    Returns
    -------
    Array of shape ``(n, k)`` with neighbour indices, nearest first.
    """
    n = x.shape[0]
    nn = NearestNeighbors(n_neighbors=k + 1, n_jobs=n_jobs).fit(x)
    idx = nn.kneighbors(x, return_distance=False)
    is_self = idx == np.arange(n)[:, None]
    # stable sort moves the (at most one) self entry to the end, keeping the order of the rest
    order = np.argsort(is_self, axis=1, kind="stable")
    return np.take_along_axis(idx, order, axis=1)[:, :k]


def _indicator(idx: np.ndarray, n_cols: int) -> sp.csr_matrix:
    """Sparse 0/1 matrix with ones at ``(i, idx[i, j])``."""
    n, k = idx.shape
    indptr = np.arange(0, n * k + 1, k)
    data = np.ones(n * k, dtype=np.float64)
    return sp.csr_matrix((data, idx.ravel(), indptr), shape=(n, n_cols))


def knn_overlap(
    embedding_a: Any,
    embedding_b: Any,
    k: int = 15,
    return_per_cell: bool = False,
    n_jobs: int = 1,
) -> float | tuple[float, np.ndarray]:
    """Overlap of the k-nearest-neighbour sets of the same cells in two embeddings.

    For every cell ``i`` the score is ``|kNN_a(i) ∩ kNN_b(i)| / k``, where ``kNN_a(i)`` are
    the ``k`` nearest other cells of ``i`` in ``embedding_a`` (exact Euclidean search with
    :class:`sklearn.neighbors.NearestNeighbors`, the cell itself excluded). The function
    returns the mean over cells. Typical use: compare a unimodal embedding (e.g. RNA-only
    latent space) with the joint embedding of the same cells to measure how much of the
    unimodal neighbourhood structure the joint space keeps.

    Parameters
    ----------
    embedding_a
        Array-like of shape ``(n_cells, d_a)``.
    embedding_b
        Array-like of shape ``(n_cells, d_b)`` with the same cells in the same order;
        ``d_b`` may differ from ``d_a``.
    k
        Number of neighbours, ``1 <= k <= n_cells - 1``.
    return_per_cell
        Whether to also return the per-cell overlaps.
    n_jobs
        Number of parallel jobs for the neighbour search.

    Returns
    -------
    float or tuple
        The mean overlap in ``[0, 1]`` (1 = identical neighbourhoods; independent embeddings
        give about ``k / (n_cells - 1)``). With ``return_per_cell=True``, a tuple
        ``(mean, per_cell)`` where ``per_cell`` is a float array of length ``n_cells``.

    Raises
    ------
    ValueError
        If the inputs are not 2-D, contain NaN/inf, have different numbers of cells, or
        ``k`` is out of range.
    """
    a = as_embedding(embedding_a, "embedding_a")
    b = as_embedding(embedding_b, "embedding_b")
    check_same_n_obs(a, b, "embedding_a", "embedding_b")
    n = a.shape[0]
    if n < 2:
        raise ValueError("knn_overlap needs at least 2 cells.")
    k = check_k(k, n - 1)
    ind_a = _indicator(_knn_excluding_self(a, k, n_jobs), n)
    ind_b = _indicator(_knn_excluding_self(b, k, n_jobs), n)
    shared = np.asarray(ind_a.multiply(ind_b).sum(axis=1)).ravel()
    per_cell = shared / k
    mean = float(per_cell.mean())
    if return_per_cell:
        return mean, per_cell
    return mean
