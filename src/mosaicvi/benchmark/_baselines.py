"""The RNA PCA baseline: embedding and nearest-neighbour imputation (one place for every script)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def rna_pca(counts, n_comps: int = 20, seed: int = 0) -> np.ndarray:
    """PCA of log-normalised RNA counts (``normalize_total`` to 1e4, ``log1p``), float32.

    ``n_comps`` is capped at the number of cells and genes minus one.
    """
    import anndata as ad
    import scanpy as sc

    rna = ad.AnnData(sp.csr_matrix(counts, dtype=np.float32))
    sc.pp.normalize_total(rna, target_sum=1e4)
    sc.pp.log1p(rna)
    n_comps = int(min(n_comps, rna.n_obs - 1, rna.n_vars - 1))
    sc.pp.pca(rna, n_comps=n_comps, random_state=seed)
    return np.asarray(rna.obsm["X_pca"], dtype=np.float32)


def knn_impute(
    embedding: np.ndarray, measured: np.ndarray, targets: np.ndarray, counts, k: int = 15
) -> np.ndarray:
    """Mean ``counts`` of each target cell's ``k`` nearest measured cells in ``embedding``.

    Parameters
    ----------
    embedding
        ``(n_cells, d)`` coordinates of every cell.
    measured, targets
        Integer positions of the cells with the modality and of the cells to impute.
    counts
        ``(len(measured), n_features)`` counts of the measured cells, in ``measured`` order.
    k
        Neighbours (capped at the number of measured cells).
    """
    from sklearn.neighbors import NearestNeighbors

    k = int(min(k, len(measured)))
    index = NearestNeighbors(n_neighbors=k).fit(embedding[measured])
    idx = index.kneighbors(embedding[targets], return_distance=False)
    weights = sp.csr_matrix(
        (np.full(idx.size, 1.0 / k), idx.ravel(), np.arange(0, idx.size + 1, k)),
        shape=(len(idx), len(measured)),
    )
    imputed = weights @ counts
    return np.asarray(imputed.toarray() if sp.issparse(imputed) else imputed, dtype=np.float32)
