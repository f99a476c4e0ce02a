"""Joint-embedding task of ``integration.py`` (NeurIPS 2021 task 3): every registered model.

Every model (:func:`mosaicvi.registry.models`: MultiVAE, CLUE, JAE) trains on the fully paired
data. Semi-supervised models (those whose ``setup_mudata`` takes ``labels_key``: JAE) see the
cell types of the cells outside the last batch(es) in sorted order (the batches the mosaic task
hides), so half of the labels used for scoring were never shown to any model; the others use no
labels. The joint embedding of all cells is scored with
:func:`mosaicvi.metrics.joint_embedding_scores`.
"""

from __future__ import annotations

import warnings

import numpy as np
from _common import Prepared, Timer, epochs_run, fmt, markdown_table, registry, setup_model

JOINT_DATASETS = ("bmmc_cite", "bmmc_multiome")
N_UNINTEGRATED_PCS = 50


def joint_methods() -> list:
    """The methods of the joint task: every registered mosaicvi model."""
    return registry().models()


def _paired(prep: Prepared):
    import mudata as md

    mdata = md.MuData(
        {"rna": prep.mdata["rna"].copy(), prep.second: prep.mdata[prep.second].copy()}
    )
    mdata.obs = prep.mdata.obs.loc[mdata.obs_names, ["batch", "cell_type"]].copy()
    return mdata


def _train(model, epochs: int) -> dict:
    with Timer() as t:
        model.train(max_epochs=epochs, early_stopping=False, enable_progress_bar=False)
    return {"train_s": t.seconds, "epochs_run": epochs_run(model, epochs), "summary": str(model)}


def worker(method, prep: Prepared, epochs: int) -> tuple[dict, dict]:
    """Train one registered model on the paired data; return its joint embedding and timings."""
    cls = method.model_class()
    mdata = _paired(prep)
    seen = mdata.obs["cell_type"].astype(object).where(~prep.hidden, np.nan)
    modalities = {"rna": "rna", prep.second: prep.second}
    labelled = setup_model(cls, mdata, modalities, labels=seen)  # labels: only if it takes them
    model = cls(mdata)
    print(model, flush=True)
    meta = _train(model, epochs)
    out = {"z": model.get_latent_representation()}
    if labelled and hasattr(model, "predict"):
        predicted = model.predict()
        truth = mdata.obs["cell_type"].astype(str).to_numpy()
        meta["held_out_label_accuracy"] = float((predicted == truth)[prep.hidden].mean())
    meta["labelled"] = labelled
    meta["config"] = "package defaults" + (
        "; labels of the non-held-out batches only" if labelled else "; no labels"
    )
    return out, meta


def reference_inputs(prep: Prepared) -> dict:
    """Unintegrated RNA PCA, cell-cycle scores and erythroid pseudotime of the cells."""
    from mosaicvi.benchmark._baselines import rna_pca
    from mosaicvi.data import score_cell_cycle
    from mosaicvi.metrics import ERYTHROID_LINEAGE, lineage_pseudotime

    rna = prep.mdata["rna"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        s_score, g2m_score, info = score_cell_cycle(rna.X, rna.var_names)
    labels = prep.mdata.obs["cell_type"].astype(str).to_numpy()
    pseudotime = lineage_pseudotime(labels, ERYTHROID_LINEAGE)
    return {
        "unintegrated": rna_pca(rna.X, n_comps=N_UNINTEGRATED_PCS, seed=0),
        "s_score": s_score,
        "g2m_score": g2m_score,
        "pseudotime": pseudotime,
        "cell_cycle_genes": f"{info['n_s_genes']} S / {info['n_g2m_genes']} G2M genes"
        + (" (scores unreliable)" if caught else ""),
        "n_trajectory_cells": int(np.isfinite(pseudotime).sum()),
    }


def score(prep: Prepared, z: np.ndarray, inputs: dict, threads: int) -> dict:
    from mosaicvi.metrics import joint_embedding_scores

    obs = prep.mdata.obs
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return joint_embedding_scores(
            z,
            obs["cell_type"].astype(str).to_numpy(),
            obs["batch"].astype(str).to_numpy(),
            unintegrated=inputs["unintegrated"],
            s_score=inputs["s_score"],
            g2m_score=inputs["g2m_score"],
            pseudotime=inputs["pseudotime"],
            n_jobs=threads,
        )


METRICS = (
    ("nmi", "NMI"),
    ("asw_label", "cell-type ASW"),
    ("cell_cycle_conservation", "cell-cycle cons."),
    ("trajectory_conservation", "trajectory cons."),
    ("asw_batch", "batch ASW"),
    ("graph_connectivity", "graph conn."),
    ("overall", "overall"),
)


def _finite(value) -> bool:
    return value is not None and bool(np.isfinite(value))


def render(results: dict) -> list[str]:
    """Markdown lines of the joint-embedding table and its notes."""
    header = ["dataset", "method", *[name for _, name in METRICS], "s/epoch", "epochs"]
    rows, notes = [], []
    for key, r in results.items():
        for method, m in r["methods"].items():
            s, meta = m["scores"], m["meta"]
            if s is None:
                rows.append([key, method, *(["error"] * (len(METRICS) + 2))])
                continue
            rows.append(
                [
                    key,
                    method,
                    *[fmt(s.get(metric)) for metric, _ in METRICS],
                    fmt(meta.get("s_per_epoch")),
                    fmt(meta.get("epochs_run")),
                ]
            )
            if "held_out_label_accuracy" in meta:
                notes.append(
                    f"- {key}: {method}'s cell-type prediction (`predict()`) of the held-out "
                    f"batch's labels has accuracy {meta['held_out_label_accuracy']:.3f}."
                )
        first = next((m["scores"] for m in r["methods"].values() if m["scores"]), None) or {}
        labelled = [n for n, m in r["methods"].items() if m["meta"].get("labelled")]
        labelled = labelled or ["the semi-supervised models"]
        missing = [name for metric, name in METRICS[:-1] if not _finite(first.get(metric))]
        notes.append(
            f"- {key}: computed {6 - len(missing)} of 6 metrics"
            + (f" ({', '.join(missing)}: not computable, left out of overall)" if missing else "")
            + f"; {r['n_cells']} cells, {r['epochs']} epochs; cell cycle from "
            f"{r['cell_cycle_genes']}; trajectory = erythroid lineage "
            f"({r['n_trajectory_cells']} cells); labels hidden from {', '.join(labelled)} for "
            f"batch(es) {', '.join(r['hidden_batches'])}."
        )
    lines = ["## Joint embedding (NeurIPS 2021 task 3 score)", ""]
    lines.append(markdown_table(header, rows))
    lines += [
        "",
        "- Metrics (`mosaicvi.metrics.joint_embedding_scores`): NMI of the best Leiden "
        "clustering vs cell type, cell-type ASW, cell-cycle conservation (scIB PC regression of "
        "S/G2M scores per batch, embedding vs a 50-PC PCA of log-normalised RNA), trajectory "
        "conservation (diffusion pseudotime on the embedding vs the rank of each cell's type in "
        "the erythroid lineage HSC → MK/E prog → proerythroblast → erythroblast → normoblast → "
        "reticulocyte; these sets have no measured pseudotime), batch ASW, graph connectivity; "
        "overall = the mean of those that can be computed (cell-cycle conservation needs at least "
        "one S and one G2M gene among the features).",
        "- `PCA` is the unintegrated RNA PCA itself (its cell-cycle conservation is 1 by "
        "construction).",
        *notes,
    ]
    return lines
