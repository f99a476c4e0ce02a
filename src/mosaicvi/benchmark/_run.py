"""Run several methods on one paired dataset and score them the same way."""

from __future__ import annotations

import logging
import time
import traceback
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from mosaicvi import registry

from ._methods import RNA, BenchmarkTask, MethodOutput, is_semi_supervised

logger = logging.getLogger("mosaicvi")

MIN_HOLDOUT_BATCH_CELLS = 20
LIBRARY_TARGET = 1e4
MAX_AUROC_ENTRIES = 2_000_000
# how error messages name a second modality
MODALITY_NAMES = {"adt": "protein (adt)", "atac": "ATAC"}


@dataclass
class BenchmarkResult:
    """Everything a benchmark run measured.

    Attributes
    ----------
    scores
        One row per method: integration metrics (``nmi``, ``ari``, ``silhouette_label``,
        ``silhouette_batch``, ``ilisi``, ``graph_connectivity``, ``bio``, ``batch``,
        ``total``), imputation (``impute_pearson``, ``impute_spearman``: means over features;
        ``impute_auroc`` for ATAC: open vs closed peaks over all held-out entries),
        ``train_seconds`` and ``epochs``. Metrics a method or the data cannot give are NaN.
    latents
        Latent representation of every cell, per method.
    feature_correlations
        Per-feature Pearson correlation of imputed vs measured values, per method.
    imputed
        Imputed values of the held-out cells (library-normalised), per method.
    observed
        Measured values of the held-out cells (library-normalised), the imputation truth.
    obs
        Cell annotations used (batch, labels, ``held_out``, ``scored``).
    notes
        Per-method remarks (what was not computable and why, failures).
    protocol
        Plain-language description of the protocol (data, hold-out, epochs, fairness rules).
    """

    scores: pd.DataFrame
    latents: dict[str, np.ndarray]
    feature_correlations: dict[str, pd.Series]
    imputed: dict[str, pd.DataFrame]
    observed: pd.DataFrame | None
    obs: pd.DataFrame
    notes: dict[str, list[str]]
    protocol: dict[str, Any] = field(default_factory=dict)


def default_epochs(n_cells: int) -> int:
    """Epochs for every neural method: about 40,000 cell visits, between 20 and 200 epochs."""
    return int(np.clip(round(40_000 / max(n_cells, 1)), 20, 200))


def second_modalities() -> list[str]:
    """Modalities a benchmark can pair with RNA: those a registered peer models."""
    found: list[str] = []
    for peer in registry.methods("peer"):
        found += [m for m in peer.second_modalities or () if m not in found]
    return found


def default_methods(second: str) -> list[str]:
    """Every registered model, the peer for RNA + ``second`` and the baselines."""
    names = registry.names("model")
    peer = registry.peer_for(second)
    if peer is not None:
        names.append(peer.name)
    return names + [m.name for m in registry.methods("baseline") if m.handles(second)]


def _needs(method: registry.Method) -> str:
    mods = method.second_modalities or ()
    return " or ".join(MODALITY_NAMES.get(m, m) for m in mods)


def resolve_methods(names: Sequence[str] | str | None, second: str) -> list[str]:
    """Validate method names (registry keys or display names, or ``"peer"``).

    ``None`` means every registered model, the peer for ``second`` and the baselines; the
    baselines (RNA PCA) are always added.
    """
    if names is None:
        return default_methods(second)
    if isinstance(names, str):
        names = [n for n in names.split(",") if n.strip()]
    resolved = []
    for name in names:
        key = name.strip().lower()
        if key == "peer":
            peer = registry.peer_for(second)
            if peer is None:
                raise ValueError(f"no registered peer models RNA + {second}")
            key = peer.name
        try:
            method = registry.get(key)
        except KeyError:
            raise ValueError(
                f"unknown method {name!r}; choose from {', '.join(registry.names())} (or 'peer')"
            ) from None
        if not method.handles(second):
            raise ValueError(
                f"{method.display_name} needs RNA + {_needs(method)}; this data has RNA + {second}"
            )
        if method.name not in resolved:
            resolved.append(method.name)
    for baseline in registry.methods("baseline"):  # the unintegrated reference line
        if baseline.handles(second) and baseline.name not in resolved:
            resolved.append(baseline.name)
    return resolved


def semi_supervised(methods: Sequence[str]) -> list[str]:
    """Display names of the methods among ``methods`` that train on cell-type labels."""
    found = []
    for key in methods:
        method = registry.get(key)
        if method.kind == "model" and is_semi_supervised(method.model_class()):
            found.append(method.display_name)
    return found


def _check_task_inputs(
    mdata: Any, second: str | None, batch_key: str | None, labels_key: str | None
) -> str:
    """Validate the modalities and obs columns :func:`prepare_task` uses; returns ``second``."""
    if RNA not in mdata.mod:
        raise ValueError(
            f"the benchmark needs an 'rna' modality; this MuData has {', '.join(mdata.mod)}. "
            "Rename the RNA modality to 'rna'."
        )
    candidates = second_modalities()
    allowed = " or ".join(map(repr, candidates))
    others = [m for m in mdata.mod if m != RNA and m in candidates]
    if second is None:
        if len(others) != 1:
            raise ValueError(
                f"cannot tell which modality to pair with RNA among {', '.join(mdata.mod)}; "
                f"pass second= {allowed} (--second on the command line)"
            )
        second = others[0]
    if second not in mdata.mod:
        raise ValueError(f"modality {second!r} not found; this MuData has {', '.join(mdata.mod)}")
    if second not in candidates:
        raise ValueError(f"the second modality must be {allowed}, got {second!r}")
    for key, what in ((batch_key, "batch_key"), (labels_key, "labels_key")):
        if key is not None and key not in mdata.obs.columns:
            raise ValueError(
                f"{what} {key!r} is not a column of mdata.obs (columns: "
                f"{', '.join(map(str, mdata.obs.columns)) or 'none'}); labels and batches must "
                "live in mdata.obs, not in a modality's obs"
            )
    return second


def _paired_cells(
    mdata: Any, second: str, max_cells: int | None, rng: np.random.Generator
) -> tuple[pd.Index, int]:
    """Cells with both RNA and ``second`` (at most ``max_cells``), and the number without."""
    paired = mdata.mod[RNA].obs_names.intersection(mdata.mod[second].obs_names, sort=False)
    paired = mdata.obs_names[mdata.obs_names.isin(paired)]
    n_unpaired = mdata.n_obs - len(paired)
    if len(paired) < 50:
        raise ValueError(
            f"only {len(paired)} cells have both {RNA} and {second}; the benchmark needs at "
            "least 50 paired cells (it hides one modality in some of them and imputes it)"
        )
    if max_cells is not None and len(paired) > max_cells:
        paired = paired[np.sort(rng.choice(len(paired), size=max_cells, replace=False))]
    return paired, n_unpaired


def _task_mudata(
    mdata: Any,
    second: str,
    paired: pd.Index,
    batch_key: str | None,
    labels_key: str | None,
    layer: str | None,
) -> tuple[Any, pd.DataFrame]:
    """A new MuData of the paired cells' counts, with ``batch`` and ``cell_type`` in obs."""
    import anndata as ad
    import mudata as md

    mods = {}
    for name in (RNA, second):
        adata = mdata.mod[name]
        if layer is None:
            use_layer = "counts" if "counts" in adata.layers else None
        elif layer == "X":
            use_layer = None
        elif layer in adata.layers:
            use_layer = layer
        else:
            raise ValueError(
                f"modality {name!r} has no layer {layer!r} (its layers: "
                f"{', '.join(adata.layers) or 'none'}); use layer='X' for .X"
            )
        sub = adata[paired]
        x = sp.csr_matrix(sub.X if use_layer is None else sub.layers[use_layer], dtype=np.float32)
        mods[name] = ad.AnnData(X=x, obs=pd.DataFrame(index=paired), var=adata.var[[]].copy())
    obs = pd.DataFrame(index=paired)
    obs["batch"] = (
        mdata.obs.loc[paired, batch_key].astype(str).to_numpy() if batch_key else "all cells"
    )
    if labels_key is not None:
        labels = mdata.obs.loc[paired, labels_key]
        obs["cell_type"] = labels.astype(object).where(labels.notna(), np.nan).to_numpy()
    data = md.MuData(mods)
    data.obs = obs.copy()
    return data, obs


def _hidden_cells(
    batches: pd.Series,
    second: str,
    holdout_batch: str | None,
    holdout_fraction: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, str]:
    """Which cells lose their second modality, and a sentence saying so."""
    counts = batches.value_counts()
    if holdout_batch is not None:
        if holdout_batch not in counts.index:
            raise ValueError(
                f"holdout batch {holdout_batch!r} not found; batches: {', '.join(counts.index)}"
            )
        hidden = (batches == holdout_batch).to_numpy()
        return hidden, (
            f"the {second} of batch {holdout_batch!r} ({int(hidden.sum())} cells) is hidden"
        )
    if len(counts) >= 2 and (counts >= MIN_HOLDOUT_BATCH_CELLS).sum() >= 2:
        holdout_batch = str(counts[counts >= MIN_HOLDOUT_BATCH_CELLS].index[-1])
        hidden = (batches == holdout_batch).to_numpy()
        return hidden, (
            f"the {second} of the smallest batch, {holdout_batch!r} ({int(hidden.sum())} cells), "
            "is hidden"
        )
    if not 0 < holdout_fraction < 1:
        raise ValueError(f"holdout_fraction must be in (0, 1), got {holdout_fraction}")
    hidden = np.zeros(len(batches), dtype=bool)
    n_hidden = max(1, round(holdout_fraction * len(batches)))
    hidden[rng.choice(len(batches), size=n_hidden, replace=False)] = True
    return hidden, f"the {second} of a random {holdout_fraction:.0%} of the cells is hidden"


def prepare_task(
    mdata: Any,
    *,
    second: str | None = None,
    batch_key: str | None = "batch",
    labels_key: str | None = "cell_type",
    layer: str | None = None,
    holdout_batch: str | None = None,
    holdout_fraction: float = 0.2,
    label_fraction: float = 0.5,
    epochs: int | None = None,
    max_cells: int | None = None,
    seed: int = 0,
) -> tuple[BenchmarkTask, dict[str, Any]]:
    """Build the benchmark task from a user's MuData (which is only read).

    The cells measured in both RNA and ``second`` are used. Their ``second`` modality is
    hidden in one batch (``holdout_batch``; by default the smallest batch with at least 20
    cells when there are two or more batches) or, with a single batch, in a random
    ``holdout_fraction`` of the cells.

    Parameters
    ----------
    mdata
        MuData with an ``rna`` modality and ``adt`` or ``atac``; raw counts.
    second
        The modality paired with RNA (detected when there is one candidate).
    batch_key, labels_key
        Columns of ``mdata.obs`` (``None``: no batches / no labels).
    layer
        Layer with the raw counts: ``None`` uses ``"counts"`` where a modality has it and
        ``.X`` otherwise; ``"X"`` forces ``.X``.
    holdout_batch, holdout_fraction
        Which cells lose their second modality (see above).
    label_fraction
        Fraction of cells whose labels a semi-supervised method (JAE) may train on; the
        bio-conservation metrics are computed on the others.
    epochs
        Epochs for every neural method (default :func:`default_epochs`).
    max_cells
        Subsample to at most this many paired cells.
    seed
        Seed of the hold-out, label split and subsample.

    Returns
    -------
    The task and a protocol dict describing the choices made.
    """
    rng = np.random.default_rng(seed)
    second = _check_task_inputs(mdata, second, batch_key, labels_key)
    paired, n_unpaired = _paired_cells(mdata, second, max_cells, rng)
    data, obs = _task_mudata(mdata, second, paired, batch_key, labels_key, layer)
    hidden, how = _hidden_cells(obs["batch"], second, holdout_batch, holdout_fraction, rng)

    labels_seen = np.zeros(len(paired), dtype=bool)
    if labels_key is not None:
        labels_seen[rng.random(len(paired)) < label_fraction] = True
    if epochs is None:
        epochs = default_epochs(len(paired))
    task = BenchmarkTask(
        mdata=data,
        second=second,
        hidden=hidden,
        batch_key="batch",
        labels_key="cell_type" if labels_key is not None else None,
        labels_seen=labels_seen,
        epochs=int(epochs),
        seed=seed,
    )
    protocol = {
        "cells": len(paired),
        "cells_left_out": n_unpaired,
        "modalities": f"{RNA} ({data[RNA].n_vars} features) + {second} ({data[second].n_vars})",
        "batches": obs["batch"].nunique(),
        "holdout": how,
        "epochs": int(epochs),
        "seed": seed,
        "labels": labels_key,
        "label_fraction": label_fraction if labels_key is not None else None,
    }
    if max_cells is not None:
        protocol["max_cells"] = max_cells
    return task, protocol


def _normalise(values: Any, index: pd.Index, columns: pd.Index) -> pd.DataFrame:
    """Rows scaled to sum LIBRARY_TARGET: compares methods whose outputs differ in scale."""
    x = values.toarray() if sp.issparse(values) else np.asarray(values, dtype=np.float64)
    x = np.clip(np.asarray(x, dtype=np.float64), 0, None)
    totals = x.sum(1, keepdims=True)
    x = np.divide(x, totals, out=np.zeros_like(x), where=totals > 0) * LIBRARY_TARGET
    return pd.DataFrame(x, index=index, columns=columns)


def _accessibility_auroc(predicted: np.ndarray, observed: np.ndarray, seed: int = 0) -> float:
    """AUROC of the predicted values for open (count > 0) vs closed peaks, over all entries."""
    from sklearn.metrics import roc_auc_score

    truth, scores = observed.ravel() > 0, predicted.ravel()
    if truth.size > MAX_AUROC_ENTRIES:  # a uniform subsample estimates it well
        pick = np.random.default_rng(seed).choice(truth.size, MAX_AUROC_ENTRIES, replace=False)
        truth, scores = truth[pick], scores[pick]
    if truth.all() or not truth.any():
        return float("nan")
    return float(roc_auc_score(truth, scores))


def _score(task: BenchmarkTask, out: MethodOutput, scored: np.ndarray, observed: Any) -> dict:
    from mosaicvi.metrics import imputation_scores, integration_scores, per_feature_correlation

    row: dict[str, Any] = {"train_seconds": out.train_seconds, "epochs": out.epochs}
    obs = task.mdata.obs
    if task.labels_key is not None and obs[task.labels_key].iloc[scored].notna().sum() >= 10:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*only one batch.*")
            row.update(
                integration_scores(
                    out.latent[scored],
                    labels=obs[task.labels_key].iloc[scored].to_numpy(),
                    batch=obs[task.batch_key].iloc[scored].to_numpy(),
                )
            )
    correlations = None
    imputed = None
    if out.imputed is not None and observed is not None:
        imputed = _normalise(out.imputed, observed.index, observed.columns)
        scores = imputation_scores(imputed, observed, log1p=True)
        row["impute_pearson"] = scores["pearson"]
        row["impute_spearman"] = scores["spearman"]
        correlations = per_feature_correlation(imputed, observed, log1p=True)
        if task.second == "atac":  # accessibility is near-binary: rank open vs closed peaks
            row["impute_auroc"] = _accessibility_auroc(imputed.to_numpy(), observed.to_numpy())
    return {"row": row, "correlations": correlations, "imputed": imputed}


def _run_methods(
    task: BenchmarkTask,
    methods: Sequence[str],
    scored_idx: np.ndarray,
    observed: pd.DataFrame,
    say: Any,
) -> tuple[dict, dict, dict, dict, dict]:
    """Train and score every method: its rows, latents, correlations, imputed values, notes."""
    import torch

    # numba code (scanpy's neighbours/UMAP) can raise torch's OpenMP thread count behind our
    # back, which slows CPU training many-fold on a busy machine: restore it before each method
    threads = torch.get_num_threads()
    rows, latents, correlations, imputed, notes = {}, {}, {}, {}, {}
    for key in methods:
        torch.set_num_threads(threads)
        method = registry.get(key)
        name = method.display_name
        trains = method.kind != "baseline"
        say(f"{name}: training ({task.epochs} epochs)" if trains else f"{name}: fitting")
        start = time.perf_counter()
        try:
            out = method.run(task)
            scored_out = _score(task, out, scored_idx, observed)
        except Exception as exc:  # one failing method must not lose the others
            notes[name] = [f"failed: {type(exc).__name__}: {exc}"]
            logger.debug(traceback.format_exc())
            rows[name] = {}
            say(f"{name}: failed ({type(exc).__name__}: {exc})")
            continue
        rows[name] = scored_out["row"]
        latents[name] = out.latent
        notes[name] = out.notes
        if scored_out["correlations"] is not None:
            correlations[name] = scored_out["correlations"]
            imputed[name] = scored_out["imputed"]
        say(f"{name}: done in {time.perf_counter() - start:.0f} s")
    return rows, latents, correlations, imputed, notes


def run_benchmark(
    task: BenchmarkTask,
    methods: Sequence[str],
    protocol: dict[str, Any] | None = None,
    progress: Any = None,
) -> BenchmarkResult:
    """Train every method on ``task`` and score it.

    Bio-conservation metrics are computed on the cells whose label a semi-supervised model
    (JAE) did not see (``~task.labels_seen``) when one is among the methods, on all labelled
    cells otherwise;
    imputation on the held-out cells. A method that fails is reported in ``notes`` and its
    scores are NaN; the others still run.

    Parameters
    ----------
    task
        From :func:`prepare_task`.
    methods
        Registry keys of the methods (see :func:`resolve_methods` and :mod:`mosaicvi.registry`).
    protocol
        Description of the task (returned by :func:`prepare_task`), kept in the result.
    progress
        Optional callable receiving one-line progress messages.

    Returns
    -------
    BenchmarkResult
    """
    say = progress or (lambda msg: logger.info(msg))
    protocol = dict(protocol or {})
    scored = np.ones(task.mdata.n_obs, dtype=bool)
    supervised = semi_supervised(methods) if task.labels_key is not None else []
    if supervised:
        scored = ~task.labels_seen
        protocol["scored_cells"] = (
            f"{int(scored.sum())} cells whose label {' and '.join(supervised)} did not see "
            "(bio metrics)"
        )
    scored_idx = np.flatnonzero(scored)
    hidden = task.hidden_idx
    observed = _normalise(
        task.mdata[task.second].X[hidden],
        task.mdata.obs_names[hidden],
        task.mdata[task.second].var_names,
    )
    rows, latents, correlations, imputed, notes = _run_methods(
        task, methods, scored_idx, observed, say
    )

    scores = pd.DataFrame.from_dict(rows, orient="index")
    scores.index.name = "method"
    if "epochs" in scores:
        scores["epochs"] = scores["epochs"].astype("Int64")
    obs = task.mdata.obs.copy()
    obs["held_out"] = task.hidden
    obs["scored"] = scored
    return BenchmarkResult(
        scores=scores,
        latents=latents,
        feature_correlations=correlations,
        imputed=imputed,
        observed=observed,
        obs=obs,
        notes=notes,
        protocol=protocol,
    )
