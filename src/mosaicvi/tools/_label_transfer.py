"""Transferring labels from a reference embedding to query cells."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn.neighbors import NearestNeighbors


def _labels_in_latent_order(labels: Any, index: pd.Index | None, n_cells: int) -> pd.Series:
    """Labels in the order of the reference latent's rows (a Series is aligned by name)."""
    if isinstance(labels, pd.Series) and not isinstance(labels.index, pd.RangeIndex):
        if index is None:
            raise ValueError(
                "reference_labels is a Series indexed by cell names, but the latent's cell "
                "names are unknown. Pass `reference_index=` (e.g. the reference's obs_names, "
                "in the latent's order) so that labels are matched by name, or pass the labels "
                "as an array in the latent's order (`labels.to_numpy()`)."
            )
        index = pd.Index(index)
        if len(index) != n_cells:
            raise ValueError(f"reference_index has {len(index)} names for {n_cells} cells.")
        if not labels.index.is_unique:
            raise ValueError("reference_labels has duplicated cell names in its index.")
        missing = index.difference(labels.index)
        if len(missing):
            raise ValueError(
                f"{len(missing)} reference cells have no label in reference_labels (e.g. "
                f"{list(missing[:3])}); its index must contain every name of reference_index."
            )
        return pd.Series(labels.reindex(index).to_numpy(dtype=object))
    return pd.Series(np.asarray(labels, dtype=object))


def label_transfer(
    reference_latent: np.ndarray,
    reference_labels: Any,
    query_latent: np.ndarray,
    k: int = 15,
    query_index: pd.Index | None = None,
    reference_index: pd.Index | None = None,
) -> pd.DataFrame:
    """Label query cells by their nearest reference cells in a shared latent space.

    Each of the ``k`` nearest reference cells votes for its label with a weight that decays with
    distance (Gaussian kernel with the query cell's mean neighbour distance as bandwidth). The
    uncertainty is one minus the winning label's share of the votes: 0 when all neighbours
    agree, close to 1 - 1/k when they all differ.

    Parameters
    ----------
    reference_latent
        ``(n_reference, d)`` embedding of the labelled cells.
    reference_labels
        Their labels; missing labels (NaN/None) are ignored. An array or list is read in the
        order of ``reference_latent``'s rows. A :class:`pandas.Series` indexed by cell names
        (e.g. ``mdata.obs["cell_type"]``) is matched to the rows by name, which needs
        ``reference_index``.
    query_latent
        ``(n_query, d)`` embedding of the cells to label, in the same space.
    k
        Number of neighbours.
    query_index
        Index for the result (e.g. the query's ``obs_names``).
    reference_index
        Cell names of ``reference_latent``'s rows (e.g. the reference's ``obs_names``).

    Returns
    -------
    DataFrame with columns ``label`` and ``uncertainty``, one row per query cell.
    """
    reference_latent = np.asarray(reference_latent, dtype=np.float64)
    query_latent = np.asarray(query_latent, dtype=np.float64)
    labels = _labels_in_latent_order(reference_labels, reference_index, len(reference_latent))
    if len(labels) != len(reference_latent):
        raise ValueError(
            f"{len(labels)} reference labels for {len(reference_latent)} reference cells."
        )
    if reference_latent.shape[1] != query_latent.shape[1]:
        raise ValueError(
            f"Reference and query latents have {reference_latent.shape[1]} and "
            f"{query_latent.shape[1]} dimensions; embed both with the same model."
        )
    known = labels.notna().to_numpy()
    if known.sum() < k:
        raise ValueError(f"Need at least k={k} labelled reference cells, got {int(known.sum())}.")
    reference_latent, labels = reference_latent[known], labels[known].astype(str).to_numpy()

    distances, neighbours = (
        NearestNeighbors(n_neighbors=k).fit(reference_latent).kneighbors(query_latent)
    )
    bandwidth = distances.mean(1, keepdims=True) + 1e-12
    weights = np.exp(-((distances / bandwidth) ** 2))
    weights /= weights.sum(1, keepdims=True)
    classes, codes = np.unique(labels, return_inverse=True)
    votes = np.zeros((len(query_latent), len(classes)))
    np.add.at(votes, (np.arange(len(query_latent))[:, None], codes[neighbours]), weights)
    best = votes.argmax(1)
    return pd.DataFrame(
        # clipped: the weights sum to 1 only up to rounding, so 1 - max could be -1e-16
        {"label": classes[best], "uncertainty": np.clip(1.0 - votes.max(1), 0.0, 1.0)},
        index=query_index if query_index is not None else pd.RangeIndex(len(query_latent)),
    )
