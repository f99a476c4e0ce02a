"""The methods a benchmark compares: mosaicvi's models, scvi-tools peers and an RNA PCA baseline.

Every runner gets the same :class:`BenchmarkTask` (paired cells, one modality hidden in the
held-out cells) and returns a :class:`MethodOutput`: a latent for every cell and, where the
method can, the hidden modality predicted for the held-out cells.
"""

from __future__ import annotations

import inspect
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

RNA = "rna"
N_PCS = 20
K_IMPUTE = 15


@dataclass
class BenchmarkTask:
    """What every method is trained and scored on.

    Attributes
    ----------
    mdata
        Paired MuData (every cell has both modalities), raw counts in ``X``; RNA first.
    second
        Name of the non-RNA modality (``"adt"`` or ``"atac"``), the one hidden and imputed.
    hidden
        Boolean array over cells: the second modality of these cells is hidden in training.
    batch_key
        Column of ``mdata.obs`` with the batch (always present; one category if the data has
        no batches).
    labels_key
        Column of ``mdata.obs`` with cell types, or ``None``.
    labels_seen
        Boolean array: cells whose label a semi-supervised method (JAE) may train on.
    epochs
        Epochs for every neural method.
    seed
        Random seed.
    """

    mdata: Any
    second: str
    hidden: np.ndarray
    batch_key: str
    labels_key: str | None
    labels_seen: np.ndarray
    epochs: int
    seed: int = 0

    @property
    def n_batches(self) -> int:
        """Number of batches."""
        return int(self.mdata.obs[self.batch_key].nunique())

    @property
    def hidden_idx(self) -> np.ndarray:
        """Integer positions of the held-out cells."""
        return np.flatnonzero(self.hidden)


@dataclass
class MethodOutput:
    """What one method produced."""

    latent: np.ndarray
    imputed: pd.DataFrame | None
    train_seconds: float
    epochs: int | None
    notes: list[str] = field(default_factory=list)


def hide_second_modality(task: BenchmarkTask) -> Any:
    """The task's data as a mosaic: the held-out cells are absent from the second modality.

    ``task`` is anything with ``mdata``, ``second`` and ``hidden`` (the benchmark scripts pass
    their own prepared datasets).
    """
    import mudata as md

    full = task.mdata
    mods = {RNA: full[RNA].copy(), task.second: full[task.second][~task.hidden].copy()}
    mosaic = md.MuData(mods)
    mosaic = (
        mosaic[full.obs_names].copy() if not mosaic.obs_names.equals(full.obs_names) else mosaic
    )
    mosaic.obs = full.obs.loc[mosaic.obs_names].copy()
    return mosaic


def zero_second_modality(task: BenchmarkTask) -> Any:
    """The task's data with the held-out cells' second modality set to zero (scvi-tools peers).

    ``task`` as for :func:`hide_second_modality`.
    """
    import anndata as ad
    import mudata as md

    full = task.mdata
    x = sp.csr_matrix(full[task.second].X, dtype=np.float32)
    x = sp.csr_matrix(sp.diags((~task.hidden).astype(np.float32)) @ x)
    x.eliminate_zeros()
    if task.second == "adt":  # TOTALVI reads proteins as a dense matrix
        x = x.toarray()
    second = ad.AnnData(X=x, obs=full[task.second].obs.copy(), var=full[task.second].var.copy())
    mdata = md.MuData({RNA: full[RNA].copy(), task.second: second})  # RNA first for MULTIVI
    mdata.obs = full.obs.loc[mdata.obs_names].copy()
    return mdata


def _train(model: Any, task: BenchmarkTask) -> float:
    start = time.perf_counter()
    model.train(
        max_epochs=task.epochs,
        early_stopping=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    return time.perf_counter() - start


def epochs_run_of(model: Any, default: int) -> int:
    """Epochs a trained model ran (from its history), ``default`` when it has none."""
    history = getattr(model, "history", None) or {}
    for key in ("train_loss_epoch", "elbo_train", "train_loss"):
        if key in history and len(history[key]):
            return len(history[key])
    return default


def _run_mosaicvi(
    model_cls: Any, task: BenchmarkTask, extra_obs: dict | None = None, **setup: Any
) -> MethodOutput:
    mosaic = hide_second_modality(task)
    for key, values in (extra_obs or {}).items():  # on the copy: the task's data stays as is
        mosaic.obs[key] = values
    model_cls.setup_mudata(
        mosaic,
        modalities={RNA: RNA, task.second: task.second},
        batch_key=task.batch_key,
        **setup,
    )
    model = model_cls(mosaic)
    seconds = _train(model, task)
    imputed = model.get_normalized_expression(indices=task.hidden_idx, modality=task.second)
    return MethodOutput(
        latent=np.asarray(model.get_latent_representation(), dtype=np.float32),
        imputed=imputed,
        train_seconds=seconds,
        epochs=epochs_run_of(model, task.epochs),
    )


def is_semi_supervised(model_cls: Any) -> bool:
    """Whether a model trains on cell-type labels: its ``setup_mudata`` takes ``labels_key``."""
    setup = getattr(model_cls, "setup_mudata", None)
    if setup is None:
        return False
    try:
        return "labels_key" in inspect.signature(setup).parameters
    except (TypeError, ValueError):  # no introspectable signature
        return False


def run_model(task: BenchmarkTask, model_cls: Any) -> MethodOutput:
    """A mosaicvi model with its package defaults (the runner of every registered model).

    A semi-supervised model (see :func:`is_semi_supervised`) sees only the labels of the
    ``task.labels_seen`` cells. A model class with ``imputation_is_approximate = True`` gets a
    note saying so in the report.
    """
    setup: dict[str, Any] = {}
    extra_obs, notes = {}, []
    if task.labels_key is not None and is_semi_supervised(model_cls):
        seen_key = "_mosaicvi_benchmark_labels"
        labels = task.mdata.obs[task.labels_key].astype(object).to_numpy(copy=True)
        labels[~task.labels_seen] = np.nan
        extra_obs[seen_key] = labels
        setup["labels_key"] = seen_key
        notes.append(f"trained on the labels of {int(task.labels_seen.sum())} cells")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*cell-cycle genes.*")
        out = _run_mosaicvi(model_cls, task, extra_obs, **setup)
    out.notes.extend(notes)
    if getattr(model_cls, "imputation_is_approximate", False):
        out.notes.append("imputation is an approximate back-projection (no count likelihood)")
    return out


def _hidden_aligned_with_batches(task: BenchmarkTask) -> bool:
    """Whether the held-out cells are exactly whole batches (what TOTALVI needs)."""
    batches = task.mdata.obs[task.batch_key].to_numpy()
    hidden_batches = set(batches[task.hidden])
    return not set(batches[~task.hidden]) & hidden_batches


def _peer_data(peer_cls: Any, task: BenchmarkTask, second_layer_key: str) -> Any:
    """The task's data zero-filled as the scvi-tools peers expect, set up with ``peer_cls``."""
    mdata = zero_second_modality(task)
    peer_cls.setup_mudata(
        mdata,
        modalities={"rna_layer": RNA, second_layer_key: task.second},
        batch_key=task.batch_key,
    )
    return mdata


def run_totalvi(task: BenchmarkTask) -> MethodOutput:
    """scvi-tools TOTALVI with its defaults (RNA + protein only)."""
    import scvi

    if task.second != "adt":
        raise ValueError("TOTALVI models RNA + protein (adt); this data has RNA + " + task.second)
    mdata = _peer_data(scvi.model.TOTALVI, task, "protein_layer")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Some proteins have all 0 counts")
        model = scvi.model.TOTALVI(mdata)
    seconds = _train(model, task)
    imputed, notes = None, []
    if _hidden_aligned_with_batches(task):
        _, imputed = model.get_normalized_expression(
            indices=task.hidden_idx, include_protein_background=True
        )
    else:
        notes.append(
            "no imputation score: TOTALVI treats missing proteins per batch, and the held-out "
            "cells share batches with measured ones"
        )
    return MethodOutput(
        latent=np.asarray(model.get_latent_representation(), dtype=np.float32),
        imputed=imputed,
        train_seconds=seconds,
        epochs=epochs_run_of(model, task.epochs),
        notes=notes,
    )


def run_multivi(task: BenchmarkTask) -> MethodOutput:
    """scvi-tools MULTIVI with its defaults (RNA + ATAC only)."""
    import scvi

    if task.second != "atac":
        raise ValueError("MULTIVI models RNA + ATAC; this data has RNA + " + task.second)
    model = scvi.model.MULTIVI(_peer_data(scvi.model.MULTIVI, task, "atac_layer"))
    seconds = _train(model, task)
    imputed = model.get_normalized_accessibility(indices=task.hidden_idx)
    return MethodOutput(
        latent=np.asarray(model.get_latent_representation(), dtype=np.float32),
        imputed=imputed,
        train_seconds=seconds,
        epochs=epochs_run_of(model, task.epochs),
        notes=["imputation: accessibility probabilities (get_normalized_accessibility)"],
    )


def run_pca(task: BenchmarkTask) -> MethodOutput:
    """Unintegrated baseline: PCA of log-normalised RNA; kNN regression for imputation."""
    from ._baselines import knn_impute, rna_pca

    start = time.perf_counter()
    z = rna_pca(task.mdata[RNA].X, n_comps=N_PCS, seed=task.seed)
    measured = np.flatnonzero(~task.hidden)
    counts = sp.csr_matrix(task.mdata[task.second].X, dtype=np.float32)[measured]
    imputed = knn_impute(z, measured, task.hidden_idx, counts, k=K_IMPUTE)
    frame = pd.DataFrame(
        imputed,
        index=task.mdata.obs_names[task.hidden_idx],
        columns=task.mdata[task.second].var_names,
    )
    k = int(min(K_IMPUTE, len(measured)))
    return MethodOutput(
        latent=z,
        imputed=frame,
        train_seconds=time.perf_counter() - start,
        epochs=None,
        notes=[f"RNA only: {z.shape[1]} PCs; imputation = mean of the {k} nearest measured cells"],
    )
