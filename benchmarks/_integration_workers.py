"""Workers of ``integration.py``'s mosaic task: one model trained on data with a hidden modality.

Every registered mosaicvi model runs through :func:`model_worker` (the model class comes from
:mod:`mosaicvi.registry`); the peers and the baseline have their own functions, looked up by
registry name in :data:`PEER_WORKERS` and :data:`BASELINE_WORKERS`. Each returns
``(arrays, meta)``: ``z`` (latent of all cells), ``imputed`` (hidden modality of the hidden
cells) and, where the method has them, unimodal embeddings of the paired cells.
"""

from __future__ import annotations

import inspect
import warnings

import numpy as np
from _common import Prepared, Timer, epochs_run, impute, paired_cell_types, setup_model

SEED = 0
K_NN = 15
N_PCS = 16


def _fit(model, epochs: int) -> Timer:
    print(model, flush=True)
    with Timer() as t:  # package / peer defaults otherwise (no tuning here)
        model.train(max_epochs=epochs, early_stopping=False, enable_progress_bar=False)
    return t


def model_worker(method, prep: Prepared, epochs: int) -> tuple[dict, dict]:
    """A registered mosaicvi model on the mosaic (hidden cells absent from the second modality).

    Semi-supervised models (``setup_mudata`` takes ``labels_key``) see the cell types of the
    paired cells only.
    """
    from mosaicvi.benchmark import hide_second_modality

    cls = method.model_class()
    full, second = prep.mdata, prep.second
    paired, hidden = np.flatnonzero(~prep.hidden), np.flatnonzero(prep.hidden)
    mosaic = hide_second_modality(prep)
    seen = paired_cell_types(prep)
    labelled = setup_model(cls, mosaic, {"rna": "rna", second: second}, labels=seen)
    model = cls(mosaic)
    t = _fit(model, epochs)
    batch_size = inspect.signature(model.train).parameters["batch_size"].default
    out = {
        "z": model.get_latent_representation(),
        "z_joint_paired": model.get_latent_representation(indices=paired),
        "z_rna_paired": model.get_latent_representation(indices=paired, modality="rna"),
        "z_second_paired": model.get_latent_representation(indices=paired, modality=second),
    }
    library = float(np.median(np.asarray(full[second].X[paired].sum(1)).ravel()))
    pred, call = impute(model, second, library, indices=hidden)
    assert list(pred.index) == list(full.obs_names[hidden])
    assert list(pred.columns) == list(full[second].var_names)
    out["imputed"] = pred.to_numpy(dtype=np.float32)
    meta = {
        "train_s": t.seconds,
        "epochs_run": epochs_run(model, epochs),
        "imputation_call": call,
        "config": f"package defaults ({model.module.__class__.__name__}; train batch size "
        f"{batch_size})" + ("; cell types of the paired cells" if labelled else ""),
        "summary": str(model),
        "labelled": labelled,
    }
    return out, meta


def totalvi_worker(prep: Prepared, epochs: int) -> tuple[dict, dict]:
    """TOTALVI with the hidden cells' proteins set to zero (a missing-protein batch)."""
    import scvi

    from mosaicvi.benchmark import zero_second_modality

    mdata = zero_second_modality(prep)
    scvi.model.TOTALVI.setup_mudata(
        mdata, modalities={"rna_layer": "rna", "protein_layer": "adt"}, batch_key="batch"
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Some proteins have all 0 counts")
        model = scvi.model.TOTALVI(mdata)
    mask = getattr(model.module, "protein_batch_mask", None)
    t = _fit(model, epochs)
    hidden = np.flatnonzero(prep.hidden)
    _, pro_mean = model.get_normalized_expression(indices=hidden, include_protein_background=True)
    _, pro_fore = model.get_normalized_expression(indices=hidden)
    assert list(pro_mean.columns) == list(prep.mdata["adt"].var_names)
    out = {
        "z": model.get_latent_representation(),
        "imputed": pro_mean.to_numpy(dtype=np.float32),
        "imputed_alt": pro_fore.to_numpy(dtype=np.float32),
    }
    meta = {
        "train_s": t.seconds,
        "epochs_run": epochs_run(model, epochs),
        "imputation_call": "get_normalized_expression(include_protein_background=True)[1] "
        "(expected protein counts: foreground + background); alt = default (foreground only)",
        "config": "defaults: n_latent 20, batch 256, lr 4e-3, reduce_lr_on_plateau (validation "
        "every epoch), adversarial classifier on when a batch lacks proteins",
        "protein_batch_mask_detected": mask is not None,
    }
    return out, meta


def multivi_worker(prep: Prepared, epochs: int) -> tuple[dict, dict]:
    """MULTIVI with the hidden cells' ATAC set to zero (its per-cell 'missing')."""
    import scvi

    from mosaicvi.benchmark import zero_second_modality

    mdata = zero_second_modality(prep)
    scvi.model.MULTIVI.setup_mudata(
        mdata, modalities={"rna_layer": "rna", "atac_layer": "atac"}, batch_key="batch"
    )
    model = scvi.model.MULTIVI(mdata)
    t = _fit(model, epochs)
    paired = np.flatnonzero(~prep.hidden)
    hidden = np.flatnonzero(prep.hidden)
    acc = model.get_normalized_accessibility(indices=hidden)
    assert list(acc.columns) == list(prep.mdata["atac"].var_names)
    out = {
        "z": model.get_latent_representation(),
        "z_joint_paired": model.get_latent_representation(indices=paired),
        "z_rna_paired": model.get_latent_representation(indices=paired, modality="expression"),
        "z_second_paired": model.get_latent_representation(
            indices=paired, modality="accessibility"
        ),
        "imputed": acc.to_numpy(dtype=np.float32),
    }
    n_zero_atac = int((np.asarray(prep.mdata["atac"].X[paired].sum(1)).ravel() == 0).sum())
    meta = {
        "train_s": t.seconds,
        "epochs_run": epochs_run(model, epochs),
        "imputation_call": "get_normalized_accessibility() (accessibility probabilities)",
        "config": "defaults: n_latent sqrt(n_hidden), batch 128, lr 1e-4, 2-layer enc/dec, "
        "adversarial mixing; missing ATAC detected from all-zero rows",
        "paired_cells_with_zero_atac": n_zero_atac,
    }
    return out, meta


def pca_worker(prep: Prepared, epochs: int) -> tuple[dict, dict]:
    """RNA PCA of all cells; imputation = mean counts of the nearest paired cells there."""
    from mosaicvi.benchmark._baselines import knn_impute, rna_pca

    full, second = prep.mdata, prep.second
    paired, hidden = np.flatnonzero(~prep.hidden), np.flatnonzero(prep.hidden)
    with Timer() as t:
        z = rna_pca(full["rna"].X, n_comps=N_PCS, seed=SEED)
        imputed = knn_impute(z, paired, hidden, full[second].X[paired], k=K_NN)
    meta = {
        "train_s": t.seconds,
        "epochs_run": None,
        "imputation_call": f"mean {second} counts of the {K_NN} nearest paired cells in RNA PCA",
        "config": f"normalize_total 1e4, log1p, PCA {N_PCS} comps (RNA only, all cells)",
    }
    return {"z": z, "imputed": imputed}, meta


#: Peers and baselines by registry name (``mosaicvi.registry``).
PEER_WORKERS = {"totalvi": totalvi_worker, "multivi": multivi_worker}
BASELINE_WORKERS = {"pca": pca_worker}


def run_method(method, prep: Prepared, epochs: int) -> tuple[dict, dict]:
    """Train (or compute) one registered method on the mosaic."""
    if method.kind == "model":
        return model_worker(method, prep, epochs)
    workers = PEER_WORKERS if method.kind == "peer" else BASELINE_WORKERS
    if method.name not in workers:
        raise NotImplementedError(
            f"integration.py has no worker for the {method.kind} {method.display_name}; add one "
            f"to {'PEER' if method.kind == 'peer' else 'BASELINE'}_WORKERS."
        )
    return workers[method.name](prep, epochs)
