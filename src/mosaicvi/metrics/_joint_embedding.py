"""Metrics of the NeurIPS 2021 multimodal single-cell challenge, joint-embedding task.

The task scored an embedding with six scIB metrics (Luecken et al., *NeurIPS Datasets and
Benchmarks* 2021; Luecken et al., *Nat. Methods* 2022): NMI of a clustering, cell-type ASW,
cell-cycle conservation, trajectory conservation, batch ASW and graph connectivity, and ranked
methods by their mean.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy.stats import spearmanr
from sklearn.decomposition import PCA

from ._integration import (
    _K_GRAPH,
    _MIN_CELLS,
    _nanmean,
    _neighbors,
    _silhouette_batch,
    silhouette_label,
)
from ._validation import as_embedding, as_labels, check_same_n_obs

__all__ = [
    "ERYTHROID_LINEAGE",
    "cell_cycle_conservation",
    "joint_embedding_scores",
    "lineage_pseudotime",
    "trajectory_conservation",
]

#: Erythroid differentiation in bone marrow, earliest to latest, with the cell-type names of
#: the NeurIPS 2021 bone-marrow (BMMC) datasets; for :func:`lineage_pseudotime`.
ERYTHROID_LINEAGE: tuple[str, ...] = (
    "HSC",
    "MK/E prog",
    "Proerythroblast",
    "Erythroblast",
    "Normoblast",
    "Reticulocyte",
)

#: Keys of :func:`joint_embedding_scores` that are averaged into ``"overall"``.
JOINT_EMBEDDING_METRICS = (
    "nmi",
    "asw_label",
    "cell_cycle_conservation",
    "trajectory_conservation",
    "asw_batch",
    "graph_connectivity",
)

# Fewest cells for which a per-batch PC regression or a diffusion pseudotime is attempted.
_MIN_CELLS_SCORE = 10


def _as_vector(x: Any, name: str, n_obs: int, allow_nan: bool = False) -> np.ndarray:
    """Per-cell numeric values as a 1-D float64 array of length ``n_obs``."""
    if isinstance(x, pd.Series | pd.Index):
        x = x.to_numpy()
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"`{name}` must be numeric: {err}") from err
    if arr.ndim == 2 and 1 in arr.shape:
        arr = arr.ravel()
    if arr.ndim != 1:
        raise ValueError(f"`{name}` must be one-dimensional, got shape {arr.shape}.")
    if arr.shape[0] != n_obs:
        raise ValueError(f"`{name}` has length {arr.shape[0]} but the embedding has {n_obs} cells.")
    if not allow_nan and not np.all(np.isfinite(arr)):
        raise ValueError(f"`{name}` contains {int(np.sum(~np.isfinite(arr)))} NaN/inf value(s).")
    return arr


def _pcr_variance(x: np.ndarray, covariates: np.ndarray, n_comps: int) -> float:
    """Variance of ``x`` explained by ``covariates`` through its principal components (scIB PCR).

    ``sum_i R^2_i * var_i / sum_j var_j`` over the first ``n_comps`` PCs, where ``R^2_i`` is
    the coefficient of determination of a linear regression (with intercept) of the scores of
    PC ``i`` on all covariates jointly. As in scIB, the PC variances are normalised over the
    computed components, so with all components this is the fraction of total variance.
    """
    n, p = x.shape
    k = min(n_comps, n - 1, p)
    # arpack (deterministic start vector) only pays off for a truncated decomposition of a
    # large matrix; it also needs k < min(n, p).
    solver = "arpack" if k < min(n, p) and min(n, p) > 500 else "full"
    pca = PCA(n_components=k, svd_solver=solver, random_state=0)
    scores = pca.fit_transform(x)
    var = pca.explained_variance_
    # Constant covariates explain nothing; dropping them avoids an R^2 of rounding noise.
    covariates = covariates[:, np.ptp(covariates, axis=0) > 0]
    if var.sum() <= 0 or covariates.shape[1] == 0:
        return 0.0
    design = np.column_stack([np.ones(n), covariates])
    coef, *_ = np.linalg.lstsq(design, scores, rcond=None)
    ss_res = np.sum((scores - design @ coef) ** 2, axis=0)
    ss_tot = np.sum((scores - scores.mean(axis=0)) ** 2, axis=0)
    r2 = np.zeros(k)
    ok = ss_tot > 0
    r2[ok] = np.clip(1.0 - ss_res[ok] / ss_tot[ok], 0.0, 1.0)
    return float(np.sum(r2 * var) / np.sum(var))


def cell_cycle_conservation(
    embedding: Any,
    unintegrated: Any,
    s_score: Any,
    g2m_score: Any,
    batch: Any | None,
    n_comps: int = 50,
) -> float:
    """Conservation of the cell-cycle variance (scIB "cell-cycle conservation").

    For every batch ``b`` the variance contribution of the cell-cycle scores is measured
    before and after integration by principal-component regression: PCA of the matrix
    (``n_comps`` components, at most ``n_cells - 1`` and the number of columns), regression
    of each PC on the S and G2/M scores jointly (with intercept) giving ``R^2_i``, and
    ``contribution = sum_i R^2_i * var_i / sum_j var_j``. The batch score is
    ``1 - |after - before| / before`` clipped to ``[0, 1]``; the result is the mean over
    batches. Batches with fewer than 10 cells, or where the scores explain no variance of
    the unintegrated data (``before == 0``, e.g. constant scores), are skipped.

    Parameters
    ----------
    embedding
        Integrated embedding, ``(n_cells, n_dims)``.
    unintegrated
        Unintegrated representation of the same cells, e.g. a PCA of the log-normalised
        expression, ``(n_cells, n_features)`` (dense or scipy sparse).
    s_score, g2m_score
        Per-cell S-phase and G2/M scores computed on the unintegrated data, e.g. with
        :func:`mosaicvi.data.score_cell_cycle` or
        :func:`scanpy.tl.score_genes_cell_cycle`.
    batch
        Per-cell batch labels; None treats all cells as one batch.
    n_comps
        Number of principal components used for each regression.

    Returns
    -------
    float
        Score in ``[0, 1]``, 1 = cell-cycle variance preserved exactly; NaN if no batch
        can be scored.

    Raises
    ------
    ValueError
        On mismatched lengths, non-finite values or ``n_comps < 1``.
    """
    if isinstance(n_comps, bool) or not isinstance(n_comps, int | np.integer) or n_comps < 1:
        raise ValueError(f"`n_comps` must be a positive integer, got {n_comps!r}.")
    x_post = as_embedding(embedding, "embedding")
    x_pre = as_embedding(unintegrated, "unintegrated")
    check_same_n_obs(x_post, x_pre, "embedding", "unintegrated")
    n = x_post.shape[0]
    cov = np.column_stack(
        [_as_vector(s_score, "s_score", n), _as_vector(g2m_score, "g2m_score", n)]
    )
    if batch is None:
        batch_codes = np.zeros(n, dtype=np.int64)
    else:
        batch_codes, _ = as_labels(batch, "batch", n, allow_missing=False)

    per_batch = []
    for b in np.unique(batch_codes):
        mask = batch_codes == b
        if mask.sum() < _MIN_CELLS_SCORE:
            continue
        before = _pcr_variance(x_pre[mask], cov[mask], n_comps)
        if before <= 0:
            continue
        after = _pcr_variance(x_post[mask], cov[mask], n_comps)
        per_batch.append(float(np.clip(1.0 - abs(after - before) / before, 0.0, 1.0)))
    if not per_batch:
        return float("nan")
    return float(np.mean(per_batch))


def trajectory_conservation(
    embedding: Any,
    pseudotime: Any,
    n_neighbors: int = 15,
    root: int | None = None,
) -> float:
    """Agreement of a diffusion pseudotime on the embedding with a reference pseudotime (scIB).

    The cells with a finite ``pseudotime`` are kept; scanpy builds their ``n_neighbors``-NN
    graph on the embedding (:func:`scanpy.pp.neighbors`), a diffusion map
    (:func:`scanpy.tl.diffmap`) and the diffusion pseudotime (:func:`scanpy.tl.dpt`) from a
    root cell. Cells not reachable from the root (infinite DPT) are dropped. The score is the
    Spearman correlation ``rho`` between DPT and ``pseudotime``, mapped to ``(rho + 1) / 2``.

    Parameters
    ----------
    embedding
        Embedding, ``(n_cells, n_dims)``.
    pseudotime
        Reference pseudotime per cell; NaN marks cells outside the trajectory. A lineage
        ordering from :func:`lineage_pseudotime` works as well.
    n_neighbors
        Neighbours of the kNN graph (capped at the number of trajectory cells).
    root
        Index (into all cells) of the root cell; by default the first cell with the smallest
        reference pseudotime.

    Returns
    -------
    float
        Score in ``[0, 1]``: 1 = same ordering, 0.5 = unrelated, 0 = reversed. NaN if fewer
        than 10 cells remain or either pseudotime is constant.

    Raises
    ------
    ValueError
        On mismatched lengths, an invalid ``n_neighbors`` or a ``root`` outside the
        trajectory.
    """
    import anndata as ad
    import scanpy as sc

    x = as_embedding(embedding, "embedding")
    n = x.shape[0]
    pt = _as_vector(pseudotime, "pseudotime", n, allow_nan=True)
    if isinstance(n_neighbors, bool) or not isinstance(n_neighbors, int | np.integer):
        raise ValueError(f"`n_neighbors` must be an integer, got {n_neighbors!r}.")
    if n_neighbors < 2:
        raise ValueError(f"`n_neighbors` must be >= 2, got {n_neighbors}.")
    in_traj = np.flatnonzero(np.isfinite(pt))
    if root is not None:
        if not isinstance(root, int | np.integer) or not 0 <= root < n:
            raise ValueError(f"`root` must be a cell index in [0, {n}), got {root!r}.")
        if not np.isfinite(pt[root]):
            raise ValueError(f"`root` cell {root} has no finite pseudotime (not in the trajectory)")
    if len(in_traj) < _MIN_CELLS_SCORE:
        return float("nan")

    x_t, pt_t = x[in_traj], pt[in_traj]
    m = len(in_traj)
    iroot = int(np.argmin(pt_t)) if root is None else int(np.searchsorted(in_traj, root))
    tmp = ad.AnnData(obs=pd.DataFrame(index=[str(i) for i in range(m)]), obsm={"X_emb": x_t})
    sc.pp.neighbors(tmp, n_neighbors=min(n_neighbors, m), use_rep="X_emb", random_state=0)
    n_dcs = min(15, m - 2)  # diffmap needs fewer components than cells
    sc.tl.diffmap(tmp, n_comps=n_dcs)
    tmp.uns["iroot"] = iroot
    sc.tl.dpt(tmp, n_dcs=min(10, n_dcs))
    dpt = tmp.obs["dpt_pseudotime"].to_numpy(dtype=np.float64)
    ok = np.isfinite(dpt)
    if ok.sum() < _MIN_CELLS_SCORE:
        return float("nan")
    if np.ptp(dpt[ok]) == 0 or np.ptp(pt_t[ok]) == 0:
        return float("nan")
    rho = spearmanr(dpt[ok], pt_t[ok]).statistic
    return float((rho + 1.0) / 2.0)


def lineage_pseudotime(labels: Any, lineage: Sequence[str]) -> np.ndarray:
    """Pseudotime proxy from an ordered list of cell types.

    Parameters
    ----------
    labels
        Per-cell labels (array-like, pandas Series or Categorical).
    lineage
        Cell-type names from earliest to latest, e.g. :data:`ERYTHROID_LINEAGE`.

    Returns
    -------
    numpy.ndarray
        ``float64`` array: the position of each cell's label in ``lineage`` (0, 1, 2, ...)
        and NaN for cells whose label is not in it (or missing).

    Raises
    ------
    ValueError
        If ``lineage`` is empty, a string, or contains duplicates.
    """
    if isinstance(lineage, str):
        raise ValueError("`lineage` must be a sequence of label names, not a single string.")
    steps = [str(s) for s in lineage]
    if not steps:
        raise ValueError("`lineage` is empty.")
    if len(set(steps)) != len(steps):
        raise ValueError(f"`lineage` contains duplicated names: {steps}.")
    if isinstance(labels, pd.Series | pd.Index):
        values = labels.astype(object).to_numpy()
    else:
        values = np.asarray(labels, dtype=object).ravel()
    rank = {s: float(i) for i, s in enumerate(steps)}
    return np.array(
        [rank.get(str(v), np.nan) if not pd.isna(v) else np.nan for v in values],
        dtype=np.float64,
    )


def _trajectory_columns(pseudotime: Any, n: int) -> list[np.ndarray]:
    """Split a 1-D pseudotime or a cells x trajectories table into per-trajectory vectors."""
    if isinstance(pseudotime, pd.DataFrame):
        return [_as_vector(pseudotime[c], f"pseudotime[{c!r}]", n, True) for c in pseudotime]
    arr = np.asarray(pseudotime, dtype=np.float64)
    if arr.ndim == 2 and arr.shape[1] > 1:
        if arr.shape[0] != n:
            raise ValueError(f"`pseudotime` has {arr.shape[0]} rows but the embedding has {n}.")
        return [arr[:, j] for j in range(arr.shape[1])]
    return [_as_vector(arr, "pseudotime", n, allow_nan=True)]


def _conservation_scores(
    x: np.ndarray,
    batch_codes: np.ndarray,
    unintegrated: Any | None,
    s_score: Any | None,
    g2m_score: Any | None,
    pseudotime: Any | None,
) -> dict[str, float]:
    """Cell-cycle and trajectory conservation of :func:`joint_embedding_scores` (NaN when
    their inputs are not given).
    """
    out: dict[str, float] = {}
    if unintegrated is not None and s_score is not None:
        out["cell_cycle_conservation"] = cell_cycle_conservation(
            x, unintegrated, s_score, g2m_score, batch_codes
        )
    else:
        out["cell_cycle_conservation"] = float("nan")
    if pseudotime is not None:
        columns = _trajectory_columns(pseudotime, x.shape[0])
        out["trajectory_conservation"] = _nanmean(
            [trajectory_conservation(x, pt) for pt in columns]
        )
    else:
        out["trajectory_conservation"] = float("nan")
    return out


def joint_embedding_scores(
    embedding: Any,
    labels: Any,
    batch: Any,
    *,
    unintegrated: Any | None = None,
    s_score: Any | None = None,
    g2m_score: Any | None = None,
    pseudotime: Any | None = None,
    n_jobs: int = 1,
    clustering: Literal["leiden", "kmeans"] = "leiden",
) -> dict[str, float | int]:
    """Score of the NeurIPS 2021 joint-embedding task (mean of six scIB metrics).

    Metrics (all in ``[0, 1]``, higher is better):

    - ``"nmi"``: NMI between ``labels`` and a clustering of the embedding: Leiden on the
      15-NN graph at the best of 10 resolutions (0.2 ... 2.0), as in scIB, via
      :func:`scib_metrics.nmi_ari_cluster_labels_leiden`; or k-means with k = number of
      labels when ``clustering="kmeans"`` (faster).
    - ``"asw_label"``: cell-type silhouette, rescaled (:func:`silhouette_label`).
    - ``"cell_cycle_conservation"``: :func:`cell_cycle_conservation`, computed only when
      ``unintegrated``, ``s_score`` and ``g2m_score`` are all given, else NaN.
    - ``"trajectory_conservation"``: :func:`trajectory_conservation`, computed only when
      ``pseudotime`` is given, else NaN. With several trajectories (columns of a 2-D
      ``pseudotime``) it is the mean over those that can be scored.
    - ``"asw_batch"``: scIB batch ASW within cell types; NaN with a single batch or when
      every cell type is found in one batch only.
    - ``"graph_connectivity"``: per-label connectivity of the 15-NN graph
      (:func:`scib_metrics.graph_connectivity`).

    ``"overall"`` is the mean of the metrics that are not NaN and ``"n_metrics"`` the
    number of them (the challenge averaged all six).

    Parameters
    ----------
    embedding
        Joint embedding, ``(n_cells, n_dims)``; never modified.
    labels
        Per-cell cell types. Cells with a missing label are left out of the label-based
        metrics (``nmi``, ``asw_label``, ``asw_batch``, ``graph_connectivity``).
    batch
        Per-cell batch labels; missing values are not allowed.
    unintegrated
        Unintegrated representation of the same cells (e.g. PCA of the log-normalised RNA)
        for cell-cycle conservation.
    s_score, g2m_score
        Per-cell cell-cycle scores for cell-cycle conservation (both or neither).
    pseudotime
        Reference pseudotime (NaN outside the trajectory), 1-D, or 2-D / DataFrame with one
        column per trajectory. :func:`lineage_pseudotime` gives one from cell types.
    n_jobs
        Parallel jobs for the neighbour search and the Leiden resolution sweep.
    clustering
        ``"leiden"`` (scIB, default) or ``"kmeans"`` for ``"nmi"``.

    Returns
    -------
    dict
        The six metrics and ``"overall"`` as Python floats, ``"n_metrics"`` as an int.

    Raises
    ------
    ValueError
        On mismatched lengths, non-finite embedding values, missing batch values, fewer than
        10 labelled cells or two labels, only one of ``s_score`` / ``g2m_score``, or an
        invalid ``clustering``.
    """
    import scib_metrics

    if clustering not in ("leiden", "kmeans"):
        raise ValueError(f"`clustering` must be 'leiden' or 'kmeans', got {clustering!r}.")
    if (s_score is None) != (g2m_score is None):
        raise ValueError("Give both `s_score` and `g2m_score`, or neither.")
    x = as_embedding(embedding, "embedding")
    n = x.shape[0]
    lab_codes, _ = as_labels(labels, "labels", n, allow_missing=True)
    batch_codes, _ = as_labels(batch, "batch", n, allow_missing=False)
    keep = lab_codes >= 0
    if keep.sum() < _MIN_CELLS:
        raise ValueError(
            f"joint_embedding_scores needs at least {_MIN_CELLS} labelled cells, "
            f"got {int(keep.sum())}."
        )
    xl, lab, bat = x[keep], lab_codes[keep], batch_codes[keep]
    if len(np.unique(lab)) < 2:
        raise ValueError("joint_embedding_scores needs at least two distinct labels.")

    out: dict[str, float | int] = {}
    neigh = _neighbors(xl.astype(np.float32), _K_GRAPH, n_jobs)
    if clustering == "leiden":
        nmi_ari = scib_metrics.nmi_ari_cluster_labels_leiden(neigh, lab, n_jobs=n_jobs)
    else:
        nmi_ari = scib_metrics.nmi_ari_cluster_labels_kmeans(xl.astype(np.float32), lab)
    out["nmi"] = float(nmi_ari["nmi"])
    out["asw_label"] = silhouette_label(xl, lab)

    out.update(_conservation_scores(x, batch_codes, unintegrated, s_score, g2m_score, pseudotime))

    if len(np.unique(bat)) < 2:
        out["asw_batch"] = float("nan")
    else:
        out["asw_batch"] = _silhouette_batch(xl, lab, bat)
    out["graph_connectivity"] = float(scib_metrics.graph_connectivity(neigh, lab))

    available = [out[k] for k in JOINT_EMBEDDING_METRICS if np.isfinite(out[k])]
    out["overall"] = float(np.mean(available)) if available else float("nan")
    out["n_metrics"] = len(available)
    return out
