"""Evaluation metrics for joint / mosaic multimodal embeddings and imputation.

All functions take plain arrays (or pandas / scipy.sparse objects), return values and never
write into an AnnData or MuData object.

- :func:`integration_scores`, :func:`silhouette_label`: scIB-style bio-conservation and
  batch-correction scores (via :mod:`scib_metrics`).
- :func:`joint_embedding_scores`: the NeurIPS 2021 joint-embedding task score (NMI, cell-type
  ASW, :func:`cell_cycle_conservation`, :func:`trajectory_conservation`, batch ASW, graph
  connectivity); :func:`lineage_pseudotime` and :data:`ERYTHROID_LINEAGE` give a reference
  pseudotime from ordered cell types.
- :func:`imputation_scores`, :func:`per_feature_correlation`: predicted vs observed features.
- :func:`knn_overlap`: neighbourhood agreement of two embeddings of the same cells.
- :func:`foscttm`, :func:`matching_score`, :func:`knn_matching_matrix`: cross-modality
  matching of paired cells.
"""

from ._imputation import imputation_scores, per_feature_correlation
from ._integration import integration_scores, silhouette_label
from ._joint_embedding import (
    ERYTHROID_LINEAGE,
    cell_cycle_conservation,
    joint_embedding_scores,
    lineage_pseudotime,
    trajectory_conservation,
)
from ._matching import foscttm, knn_matching_matrix, matching_score
from ._neighbors import knn_overlap

__all__ = [
    "ERYTHROID_LINEAGE",
    "cell_cycle_conservation",
    "foscttm",
    "imputation_scores",
    "integration_scores",
    "joint_embedding_scores",
    "knn_matching_matrix",
    "knn_overlap",
    "lineage_pseudotime",
    "matching_score",
    "per_feature_correlation",
    "silhouette_label",
    "trajectory_conservation",
]
