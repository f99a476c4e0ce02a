"""``query.py`` workers of the scvi-tools peers (TOTALVI, MULTIVI), with their own query APIs.

Each peer has a ``map`` worker (reference, then the three query forms) and a ``scratch`` worker
(reference + query trained together, timed); :data:`PEER_WORKERS` finds them by registry name.
"""

from __future__ import annotations

import traceback
import warnings

import numpy as np
import pandas as pd
from _common import Prepared, Timer, epochs_run
from _query_data import (
    NO_ADT_ONLY,
    TOTALVI_ARCHES,
    TOTALVI_N_SAMPLES,
    _mod,
    _obs,
    _split,
    protocols,
)


# ============================================================================ TOTALVI
def _totalvi_adata(prep: Prepared, idx: np.ndarray, zero_protein: np.ndarray | None = None):
    """RNA AnnData with proteins in ``obsm`` (rows in ``zero_protein`` set to 0 = missing)."""
    adata = _mod(prep, "rna", idx)
    adata.obs = _obs(prep, idx)
    adt = prep.mdata["adt"]
    pro = np.array(adt.X[idx], dtype=np.float32)
    if zero_protein is not None:
        pro[zero_protein] = 0.0
    adata.obsm["protein_expression"] = pd.DataFrame(
        pro, index=adata.obs_names, columns=adt.var_names
    )
    return adata


def _totalvi_setup(adata):
    import scvi

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        scvi.model.TOTALVI.setup_anndata(
            adata, protein_expression_obsm_key="protein_expression", batch_key="batch"
        )


def _map_totalvi(prep: Prepared, ref_epochs: int, query_epochs: int):
    import scvi

    key = prep.spec.key
    ref_idx, q_idx = _split(prep)
    ref_ad = _totalvi_adata(prep, ref_idx)
    _totalvi_setup(ref_ad)
    ref = scvi.model.TOTALVI(ref_ad, **TOTALVI_ARCHES)
    print(ref, flush=True)
    with Timer() as t:
        ref.train(max_epochs=ref_epochs, early_stopping=False, enable_progress_bar=False)
    ref_batches = list(ref_ad.obs["batch"].cat.categories)
    out: dict = {}
    meta: dict = {
        "ref_train_s": t.seconds,
        "ref_epochs_run": epochs_run(ref, ref_epochs),
        "protocols": {},
    }
    for name, mods in protocols(key):
        pm: dict = {}
        meta["protocols"][name] = pm
        if "rna" not in mods:
            pm["not_supported"] = NO_ADT_ONLY
            continue
        try:
            zero = None if "adt" in mods else np.arange(len(q_idx))
            query_ad = _totalvi_adata(prep, q_idx, zero_protein=zero)
            scvi.model.TOTALVI.prepare_query_anndata(query_ad, ref)
            with warnings.catch_warnings(), Timer() as t_load:
                warnings.filterwarnings("ignore", message="Some proteins have all 0 counts")
                query = scvi.model.TOTALVI.load_query_data(query_ad, ref)
            with Timer() as t_train:
                query.train(
                    max_epochs=query_epochs,
                    early_stopping=False,
                    enable_progress_bar=False,
                    plan_kwargs={"weight_decay": 0.0},
                )
            out[f"z_q__{name}"] = query.get_latent_representation()
            try:  # scvi-tools' tutorial embeds reference + query with the query model
                out[f"z_ref__{name}"] = query.get_latent_representation(ref_ad.copy())
                pm["z_ref"] = "query model on the reference cells"
            except Exception as err:  # noqa: BLE001
                out[f"z_ref__{name}"] = ref.get_latent_representation()
                pm["z_ref"] = f"reference model (query model failed: {err!r})"
            if "adt" not in mods:
                kw = {"n_samples": TOTALVI_N_SAMPLES, "return_mean": True}
                kw["include_protein_background"] = True
                _, pro = query.get_normalized_expression(transform_batch=ref_batches, **kw)
                _, alt = query.get_normalized_expression(**kw)
                for label, df in (("imputed", pro), ("imputed_alt", alt)):
                    assert list(df.columns) == list(prep.mdata["adt"].var_names)
                    out[f"{label}__{name}"] = np.asarray(df, dtype=np.float32)
                pm["imputation_call"] = (
                    f"get_normalized_expression(transform_batch=<reference batches>, "
                    f"n_samples={TOTALVI_N_SAMPLES}, include_protein_background=True)[1] "
                    "(expected protein counts)"
                )
                pm["imputation_alt_call"] = "same with the query's own batch"
            pm.update(
                load_s=t_load.seconds,
                train_s=t_train.seconds,
                map_s=t_load.seconds + t_train.seconds,
                epochs_run=epochs_run(query, query_epochs),
                protein_batch_mask=getattr(query.module, "protein_batch_mask", None) is not None,
            )
        except Exception as err:  # noqa: BLE001
            traceback.print_exc()
            pm["error"] = repr(err)
    return out, meta


def _scratch_totalvi(prep: Prepared, ref_epochs: int, query_epochs: int):
    import scvi

    key = prep.spec.key
    _, q_idx = _split(prep)
    meta: dict = {"protocols": {}}
    for name, mods in protocols(key):
        pm: dict = {}
        meta["protocols"][name] = pm
        if "rna" not in mods:
            pm["not_supported"] = NO_ADT_ONLY
            continue
        try:
            adata = _totalvi_adata(
                prep, np.arange(prep.mdata.n_obs), None if "adt" in mods else q_idx
            )
            with warnings.catch_warnings(), Timer() as t:
                warnings.filterwarnings("ignore", message="Some proteins have all 0 counts")
                _totalvi_setup(adata)
                model = scvi.model.TOTALVI(adata, **TOTALVI_ARCHES)
                model.train(max_epochs=ref_epochs, early_stopping=False, enable_progress_bar=False)
            pm.update(scratch_s=t.seconds, epochs_run=epochs_run(model, ref_epochs))
        except Exception as err:  # noqa: BLE001
            traceback.print_exc()
            pm["error"] = repr(err)
    return {}, meta


# ============================================================================ MULTIVI
def _multivi_mudata(prep: Prepared, idx: np.ndarray, zero: dict[str, np.ndarray]):
    """Paired MuData, RNA first (MULTIVI's setup crashes when reordering, trap 4); rows listed
    in ``zero[mod]`` are all-zero, which is how MULTIVI marks a cell's modality as missing."""
    import mudata as md
    import scipy.sparse as sp

    mods = {}
    for m in ("rna", "atac"):
        a = _mod(prep, m, idx)
        if m in zero and len(zero[m]):
            keep = np.ones(len(idx), dtype=np.float32)
            keep[zero[m]] = 0.0
            x = sp.csr_matrix(sp.diags(keep) @ a.X)
            x.eliminate_zeros()
            a.X = x
        mods[m] = a
    mdata = md.MuData(mods)
    mdata.obs = _obs(prep, idx)
    return mdata


def _multivi_setup(mdata):
    import scvi

    scvi.model.MULTIVI.setup_mudata(
        mdata, modalities={"rna_layer": "rna", "atac_layer": "atac"}, batch_key="batch"
    )


def _map_multivi(prep: Prepared, ref_epochs: int, query_epochs: int):
    import scvi

    key = prep.spec.key
    ref_idx, q_idx = _split(prep)
    ref_md = _multivi_mudata(prep, ref_idx, {})
    _multivi_setup(ref_md)
    ref = scvi.model.MULTIVI(ref_md)
    print(ref, flush=True)
    with Timer() as t:
        ref.train(max_epochs=ref_epochs, early_stopping=False, enable_progress_bar=False)
    # px_scale (proportions) -> counts scale for the RNA imputation: median reference library
    rna_library = float(np.median(np.asarray(prep.mdata["rna"].X[ref_idx].sum(1)).ravel()))
    n_zero_atac = int((np.asarray(prep.mdata["atac"].X.sum(1)).ravel() == 0).sum())
    out: dict = {}
    meta: dict = {
        "ref_train_s": t.seconds,
        "ref_epochs_run": epochs_run(ref, ref_epochs),
        "rna_library_scale": rna_library,
        "cells_with_zero_atac": n_zero_atac,
        "protocols": {},
    }
    all_q = np.arange(len(q_idx))
    for name, mods in protocols(key):
        pm: dict = {}
        meta["protocols"][name] = pm
        try:
            zero = {m: all_q for m in ("rna", "atac") if m not in mods}
            query_md = _multivi_mudata(prep, q_idx, zero)
            scvi.model.MULTIVI.prepare_query_mudata(query_md, ref)
            with Timer() as t_load:
                query = scvi.model.MULTIVI.load_query_data(query_md, ref)
            with Timer() as t_train:
                query.train(
                    max_epochs=query_epochs,
                    early_stopping=False,
                    enable_progress_bar=False,
                    weight_decay=0.0,
                )
            out[f"z_q__{name}"] = query.get_latent_representation()
            try:
                out[f"z_ref__{name}"] = query.get_latent_representation(ref_md.copy())
                pm["z_ref"] = "query model on the reference cells"
            except Exception as err:  # noqa: BLE001
                out[f"z_ref__{name}"] = ref.get_latent_representation()
                pm["z_ref"] = f"reference model (query model failed: {err!r})"
            if "atac" not in mods:
                acc = query.get_normalized_accessibility()
                assert list(acc.columns) == list(prep.mdata["atac"].var_names)
                out[f"imputed__{name}"] = np.asarray(acc, dtype=np.float32)
                pm["imputation_call"] = "get_normalized_accessibility() (probabilities)"
            elif "rna" not in mods:
                expr = query.get_normalized_expression()
                assert list(expr.columns) == list(prep.mdata["rna"].var_names)
                out[f"imputed__{name}"] = np.asarray(expr, dtype=np.float32) * rna_library
                pm["imputation_call"] = (
                    "get_normalized_expression() x median reference RNA library "
                    f"({rna_library:.0f})"
                )
            pm.update(
                load_s=t_load.seconds,
                train_s=t_train.seconds,
                map_s=t_load.seconds + t_train.seconds,
                epochs_run=epochs_run(query, query_epochs),
            )
        except Exception as err:  # noqa: BLE001
            traceback.print_exc()
            pm["error"] = repr(err)
    return out, meta


def _scratch_multivi(prep: Prepared, ref_epochs: int, query_epochs: int):
    import scvi

    key = prep.spec.key
    _, q_idx = _split(prep)
    meta: dict = {"protocols": {}}
    for name, mods in protocols(key):
        pm: dict = {}
        meta["protocols"][name] = pm
        try:
            zero = {m: q_idx for m in ("rna", "atac") if m not in mods}
            mdata = _multivi_mudata(prep, np.arange(prep.mdata.n_obs), zero)
            with Timer() as t:
                _multivi_setup(mdata)
                model = scvi.model.MULTIVI(mdata)
                model.train(max_epochs=ref_epochs, early_stopping=False, enable_progress_bar=False)
            pm.update(scratch_s=t.seconds, epochs_run=epochs_run(model, ref_epochs))
        except Exception as err:  # noqa: BLE001
            traceback.print_exc()
            pm["error"] = repr(err)
    return {}, meta


#: Peers by registry name (``mosaicvi.registry``): their map and scratch workers.
PEER_WORKERS = {
    "totalvi": {"map": _map_totalvi, "scratch": _scratch_totalvi},
    "multivi": {"map": _map_multivi, "scratch": _scratch_multivi},
}
