"""``query.py`` workers of the mosaicvi models: one generic path for every registered model.

The model class comes from :mod:`mosaicvi.registry`; the reference is trained on the paired
reference cells and the query is mapped with the class's ``load_query_data``. Semi-supervised
models (``setup_mudata`` takes ``labels_key``) get the reference cells' cell types, the query's
as unlabelled.
"""

from __future__ import annotations

import traceback

import numpy as np
from _common import Prepared, Timer, epochs_run, impute, setup_model
from _query_data import _mod, _obs, _ordered, _split, missing_modality, protocols

LABELS = "benchmark_label"  # the obs column setup_model writes labels to


def _mudata(prep: Prepared, idx_by_mod: dict[str, np.ndarray], idx: np.ndarray):
    """MuData of the cells ``idx`` holding each modality only for the cells ``idx_by_mod[m]``."""
    import mudata as md

    mdata = md.MuData({m: _mod(prep, m, i) for m, i in idx_by_mod.items()})
    names = prep.mdata.obs_names[idx]
    if not mdata.obs_names.equals(names):
        mdata = mdata[names].copy()
    mdata.obs = _obs(prep, idx)
    return mdata


def _reference_labels(prep: Prepared, idx: np.ndarray) -> np.ndarray:
    """Cell types of the reference cells among ``idx``, NaN for the query cells."""
    labels = prep.mdata.obs["cell_type"].astype(object).to_numpy()[idx]
    return np.where(prep.hidden[idx], np.nan, labels)


def _library(prep: Prepared, modality: str, idx: np.ndarray) -> float:
    return float(np.median(np.asarray(prep.mdata[modality].X[idx].sum(1)).ravel()))


def _map_form(ref, prep: Prepared, mods, name: str, query_epochs: int, out: dict, ctx: dict):
    """Map the query in one form (its modalities ``mods``) onto ``ref``; the protocol's meta."""
    _, q_idx = _split(prep)
    q_names = prep.mdata.obs_names[q_idx]
    query_md = _mudata(prep, {m: q_idx for m in mods}, q_idx)
    if ctx["labelled"]:
        query_md.obs[LABELS] = np.nan  # the query's labels are unknown
    with Timer() as t_load:
        query = type(ref).load_query_data(query_md, ref)
    with Timer() as t_train:
        query.train(max_epochs=query_epochs, early_stopping=False, enable_progress_bar=False)
    names = query.adata.obs_names
    out[f"z_q__{name}"] = _ordered(query.get_latent_representation(), names, q_names)
    pm: dict = {}
    missing = missing_modality(prep.spec.key, mods)
    if missing is not None:
        library = _library(prep, missing, ctx["ref_idx"])
        pred, pm["imputation_call"] = impute(query, missing, library)
        imputed = {"imputed": pred}
        try:
            imputed["imputed_alt"], _ = impute(
                query, missing, library, transform_batch=ctx["ref_batches"]
            )
            pm["imputation_alt_call"] = "same with transform_batch=<reference batches>"
        except ValueError as err:  # a model whose decoder has no batch
            pm["imputation_alt_call"] = f"n/a ({err})"
        for label, df in imputed.items():
            assert list(df.columns) == list(prep.mdata[missing].var_names)
            out[f"{label}__{name}"] = _ordered(df.to_numpy(), df.index, q_names)
    pm.update(
        load_s=t_load.seconds,
        train_s=t_train.seconds,
        map_s=t_load.seconds + t_train.seconds,
        epochs_run=epochs_run(query, query_epochs),
    )
    return pm


def map_model(method, prep: Prepared, ref_epochs: int, query_epochs: int):
    """Reference on the reference cells, then the query mapped in each of its three forms."""
    cls = method.model_class()
    second = prep.second
    ref_idx, _ = _split(prep)
    ref_md = _mudata(prep, {"rna": ref_idx, second: ref_idx}, ref_idx)
    labels = _reference_labels(prep, ref_idx)
    labelled = setup_model(cls, ref_md, {"rna": "rna", second: second}, labels=labels)
    ref = cls(ref_md)
    print(ref, flush=True)
    with Timer() as t:
        ref.train(max_epochs=ref_epochs, early_stopping=False, enable_progress_bar=False)
    ctx = {
        "ref_idx": ref_idx,
        "ref_batches": list(ref_md.obs["batch"].cat.categories),
        "labelled": labelled,
    }
    out = {"z_ref": ref.get_latent_representation()}
    meta: dict = {
        "ref_train_s": t.seconds,
        "ref_epochs_run": epochs_run(ref, ref_epochs),
        "z_ref": "reference model (weights bit-identical in the query model)",
        "labelled": labelled,
        "protocols": {},
    }
    for name, mods in protocols(prep.spec.key):
        try:
            meta["protocols"][name] = _map_form(ref, prep, mods, name, query_epochs, out, ctx)
        except Exception as err:  # noqa: BLE001 - report and continue with the next protocol
            traceback.print_exc()
            meta["protocols"][name] = {"error": repr(err)}
    return out, meta


def scratch_model(method, prep: Prepared, ref_epochs: int, query_epochs: int):
    """The same model trained from scratch on reference + query in each query form (timed)."""
    cls = method.model_class()
    second = prep.second
    ref_idx, q_idx = _split(prep)
    all_idx = np.arange(prep.mdata.n_obs)
    labels = _reference_labels(prep, all_idx)
    meta: dict = {"protocols": {}}
    for name, mods in protocols(prep.spec.key):
        pm: dict = {}
        meta["protocols"][name] = pm
        try:
            idx_by_mod = {
                m: np.sort(np.concatenate([ref_idx, q_idx])) if m in mods else ref_idx
                for m in ("rna", second)
            }
            mdata = _mudata(prep, idx_by_mod, all_idx)
            with Timer() as t:
                setup_model(cls, mdata, {"rna": "rna", second: second}, labels=labels)
                model = cls(mdata)
                model.train(max_epochs=ref_epochs, early_stopping=False, enable_progress_bar=False)
            pm.update(scratch_s=t.seconds, epochs_run=epochs_run(model, ref_epochs))
        except Exception as err:  # noqa: BLE001
            traceback.print_exc()
            pm["error"] = repr(err)
    return {}, meta


MODEL_WORKERS = {"map": map_model, "scratch": scratch_model}
