"""Evaluation metrics for joint / mosaic multimodal embeddings and imputation.

All functions take plain arrays (or pandas / scipy.sparse objects), return values and never
write into an AnnData or MuData object.

- :func:`integration_scores`, :func:`silhouette_label`: scIB-style bio-conservation and
  batch-correction scores (via :mod:`scib_metrics`).
- :func:`imputation_scores`, :func:`per_feature_correlation`: predicted vs observed features.
- :func:`knn_overlap`: neighbourhood agreement of two embeddings of the same cells.
- :func:`foscttm`, :func:`matching_score`, :func:`knn_matching_matrix`: cross-modality
  matching of paired cells.
"""

from ._imputation import imputation_scores, per_feature_correlation
from ._integration import integration_scores, silhouette_label
from ._matching import foscttm, knn_matching_matrix, matching_score
from ._neighbors import knn_overlap

__all__ = [
    "foscttm",
    "imputation_scores",
    "integration_scores",
    "knn_matching_matrix",
    "knn_overlap",
    "matching_score",
    "per_feature_correlation",
    "silhouette_label",
]
