"""Query-mapping benchmark: MultiVAE scArches-style mapping vs TOTALVI / MULTIVI.

For each dataset a reference model is trained on the reference batches (paired modalities),
then the held-out query batches are mapped onto it three times: as (a) paired cells, (b) RNA
only, (c) second modality only (ADT or ATAC). Every method maps with its own query API
(MultiVAE: ``load_query_data``; TOTALVI / MULTIVI: ``prepare_query_anndata`` /
``prepare_query_mudata`` + ``load_query_data``). Per protocol and method it measures

- label transfer: k-NN (:func:`mosaicvi.tools.label_transfer`, k = 15) from the reference
  cells' ``cell_type`` to the query cells in each method's latent space; accuracy overall and
  macro (mean per-class recall over the classes present in the query);
- integration of query vs reference: :func:`mosaicvi.metrics.integration_scores` of the
  concatenated reference + query latents, batch = "reference"/"query", labels ``cell_type``;
- imputation of the modality the query lacks (RNA-only: ADT/ATAC; ADT/ATAC-only: RNA) against
  the held-out truth: mean per-feature Pearson of log1p values
  (:func:`mosaicvi.metrics.imputation_scores`);
- seconds to map the query (``load_query_data`` + query training) vs seconds to train the same
  model from scratch on reference + query (in the protocol's form, reference epochs), and
  their ratio.

Usage::

    .venv/bin/python benchmarks/query.py --quick     # smoke run (2 epochs, SNARE-seq subsampled)
    .venv/bin/python benchmarks/query.py             # full run (~35 min on 2 CPU cores)
    .venv/bin/python benchmarks/query.py --from-json benchmarks/results/query.json

Each (task, method, dataset) runs in a fresh subprocess (``--worker TASK METHOD DATASET``,
task ``map`` or ``scratch``) with mosaicvi imported from a frozen copy of the source; the
parent scores every output with the same code.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    DATASETS,
    RESULTS_DIR,
    Prepared,
    Timer,
    epochs_run,
    fmt,
    launch_worker,
    markdown_table,
    met,
    prepare_dataset,
    ratio,
    set_threads,
    snapshot_source,
    source_note,
)

SEED = 0
K_NN = 15
SPEEDUP_TARGET = 5.0
QUICK_EPOCHS = 2
QUICK_SUBSAMPLE = {"snare_cortex": 1500}
# the query = the last batch(es) in sorted order (DATASETS[key].n_hidden_batches): s1d2 for
# CITE, libraries 09J-09L for SNARE-seq; the reference = all other batches.
QUERY_DATASETS = ("bmmc_cite", "snare_cortex")
# Equal budgets for all methods. SNARE-seq: 15 reference / 10 query epochs (half of
# integration.py's 30, same 3:2 ratio as 30/20) so that the whole run, including three
# from-scratch trainings per method on 10k cells, stays under ~40 min on 2 CPU cores.
REF_EPOCHS = {"bmmc_cite": 200, "snare_cortex": 15}  # also the from-scratch epochs
QUERY_EPOCHS = {"bmmc_cite": 100, "snare_cortex": 10}
METHODS = ("MultiVAE", "peer")
TASKS = ("map", "scratch")
MOD_LABEL = {"rna": "RNA", "adt": "ADT", "atac": "ATAC"}
# scvi-tools' scArches tutorial trains the TOTALVI reference with these (layer norm instead of
# batch norm, so that query training does not shift normalisation statistics)
TOTALVI_ARCHES = {"use_layer_norm": "both", "use_batch_norm": "none"}
TOTALVI_N_SAMPLES = 25  # protein imputation as in scvi-tools' TOTALVI query tutorial
NO_ADT_ONLY = (
    "TOTALVI: ADT-only queries are not supported (its encoder needs RNA for every cell; "
    "scvi-tools documents only zero-filled proteins, i.e. RNA-only queries)"
)


def protocols(key: str) -> list[tuple[str, tuple[str, ...]]]:
    """(name, modalities the query has) for the three query forms of a dataset."""
    second = DATASETS[key].second
    return [
        ("paired", ("rna", second)),
        ("RNA-only", ("rna",)),
        (f"{MOD_LABEL[second]}-only", (second,)),
    ]


def missing_modality(key: str, mods: tuple[str, ...]) -> str | None:
    missing = [m for m in ("rna", DATASETS[key].second) if m not in mods]
    return missing[0] if missing else None


# ============================================================================ data for workers
def _split(prep: Prepared) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the reference and the query cells."""
    return np.flatnonzero(~prep.hidden), np.flatnonzero(prep.hidden)


def _obs(prep: Prepared, idx: np.ndarray) -> pd.DataFrame:
    """``batch`` of those cells with only the categories they use (unused ones count, trap 6)."""
    obs = prep.mdata.obs.iloc[idx][["batch"]].copy()
    obs["batch"] = obs["batch"].astype(str).astype("category")
    return obs


def _mod(prep: Prepared, name: str, idx: np.ndarray, zero: bool = False):
    """AnnData of one modality for those cells (optionally all zeros: a peer's 'missing')."""
    import anndata as ad
    import scipy.sparse as sp

    a = prep.mdata[name]
    x = a.X[idx]
    if zero:
        x = sp.csr_matrix(x.shape, dtype=np.float32) if sp.issparse(x) else np.zeros_like(x)
    else:
        x = x.copy()
    return ad.AnnData(
        X=x, obs=pd.DataFrame(index=a.obs_names[idx]), var=pd.DataFrame(index=a.var_names)
    )


def _ordered(values, index, expected: pd.Index) -> np.ndarray:
    """Rows of ``values`` (labelled by ``index``) in the order of ``expected``."""
    pos = pd.Index(index).get_indexer(expected)
    if (pos < 0).any():
        raise RuntimeError("a model's output lacks some query cells")
    return np.asarray(values, dtype=np.float32)[pos]


# ============================================================================ MultiVAE
def _multivae_mudata(prep: Prepared, idx_by_mod: dict[str, np.ndarray], idx: np.ndarray):
    import mudata as md

    mdata = md.MuData({m: _mod(prep, m, i) for m, i in idx_by_mod.items()})
    names = prep.mdata.obs_names[idx]
    if not mdata.obs_names.equals(names):
        mdata = mdata[names].copy()
    mdata.obs = _obs(prep, idx)
    return mdata


def _map_multivae(prep: Prepared, ref_epochs: int, query_epochs: int):
    import mosaicvi as mv

    key, second = prep.spec.key, prep.second
    ref_idx, q_idx = _split(prep)
    q_names = prep.mdata.obs_names[q_idx]
    ref_md = _multivae_mudata(prep, {"rna": ref_idx, second: ref_idx}, ref_idx)
    mv.model.MultiVAE.setup_mudata(
        ref_md, modalities={"rna": "rna", second: second}, batch_key="batch"
    )
    ref = mv.model.MultiVAE(ref_md)
    print(ref, flush=True)
    with Timer() as t:
        ref.train(max_epochs=ref_epochs, early_stopping=False, enable_progress_bar=False)
    ref_batches = list(ref_md.obs["batch"].cat.categories)
    out = {"z_ref": ref.get_latent_representation()}
    meta: dict = {
        "ref_train_s": t.seconds,
        "ref_epochs_run": epochs_run(ref, ref_epochs),
        "z_ref": "reference model (weights bit-identical in the query model)",
        "protocols": {},
    }
    for name, mods in protocols(key):
        pm: dict = {}
        meta["protocols"][name] = pm
        try:
            query_md = _multivae_mudata(prep, {m: q_idx for m in mods}, q_idx)
            with Timer() as t_load:
                query = mv.model.MultiVAE.load_query_data(query_md, ref)
            with Timer() as t_train:
                query.train(
                    max_epochs=query_epochs, early_stopping=False, enable_progress_bar=False
                )
            names = query.adata.obs_names
            out[f"z_q__{name}"] = _ordered(query.get_latent_representation(), names, q_names)
            missing = missing_modality(key, mods)
            if missing is not None:
                pred = query.get_normalized_expression(modality=missing, library_size="latent")
                alt = query.get_normalized_expression(
                    modality=missing, library_size="latent", transform_batch=ref_batches
                )
                for label, df in (("imputed", pred), ("imputed_alt", alt)):
                    assert list(df.columns) == list(prep.mdata[missing].var_names)
                    out[f"{label}__{name}"] = _ordered(df.to_numpy(), df.index, q_names)
                pm["imputation_call"] = (
                    f"get_normalized_expression(modality={missing!r}, library_size='latent')"
                )
                pm["imputation_alt_call"] = "same with transform_batch=<reference batches>"
            pm.update(
                load_s=t_load.seconds,
                train_s=t_train.seconds,
                map_s=t_load.seconds + t_train.seconds,
                epochs_run=epochs_run(query, query_epochs),
            )
        except Exception as err:  # noqa: BLE001 - report and continue with the next protocol
            traceback.print_exc()
            pm["error"] = repr(err)
    return out, meta


def _scratch_multivae(prep: Prepared, ref_epochs: int, query_epochs: int):
    import mosaicvi as mv

    key, second = prep.spec.key, prep.second
    ref_idx, q_idx = _split(prep)
    all_idx = np.arange(prep.mdata.n_obs)
    meta: dict = {"protocols": {}}
    for name, mods in protocols(key):
        pm: dict = {}
        meta["protocols"][name] = pm
        try:
            idx_by_mod = {
                m: np.sort(np.concatenate([ref_idx, q_idx])) if m in mods else ref_idx
                for m in ("rna", second)
            }
            mdata = _multivae_mudata(prep, idx_by_mod, all_idx)
            with Timer() as t:
                mv.model.MultiVAE.setup_mudata(
                    mdata, modalities={"rna": "rna", second: second}, batch_key="batch"
                )
                model = mv.model.MultiVAE(mdata)
                model.train(max_epochs=ref_epochs, early_stopping=False, enable_progress_bar=False)
            pm.update(scratch_s=t.seconds, epochs_run=epochs_run(model, ref_epochs))
        except Exception as err:  # noqa: BLE001
            traceback.print_exc()
            pm["error"] = repr(err)
    return {}, meta


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


WORKERS = {
    ("map", "MultiVAE"): _map_multivae,
    ("scratch", "MultiVAE"): _scratch_multivae,
    ("map", "TOTALVI"): _map_totalvi,
    ("scratch", "TOTALVI"): _scratch_totalvi,
    ("map", "MULTIVI"): _map_multivi,
    ("scratch", "MULTIVI"): _scratch_multivi,
}


def run_worker(args: argparse.Namespace) -> None:
    task, method, key = args.worker
    threads = set_threads(args.threads)
    import scvi

    scvi.settings.seed = SEED
    import mosaicvi

    print(
        f"worker {task} {method} {key}: torch threads {threads}, mosaicvi from "
        f"{mosaicvi.__file__}, epochs ref {args.ref_epochs} / query {args.query_epochs}",
        flush=True,
    )
    prep = prepare_dataset(key, subsample=args.subsample)
    out, meta = WORKERS[(task, method)](prep, args.ref_epochs, args.query_epochs)
    meta.update(
        task=task,
        method=method,
        dataset=key,
        threads=threads,
        mosaicvi_file=mosaicvi.__file__,
        obs_names=list(prep.mdata.obs_names),
    )
    np.savez(args.result + ".npz", **out)
    with open(args.result + ".json", "w") as fh:
        json.dump(meta, fh, indent=1, default=str)


# ============================================================================ scoring
def score(prep: Prepared, z_ref, z_q, imputed, imputed_alt, missing, threads: int) -> dict:
    from mosaicvi.metrics import imputation_scores, integration_scores
    from mosaicvi.tools import label_transfer

    ref_idx, q_idx = _split(prep)
    labels = prep.mdata.obs["cell_type"]
    ref_lab, q_lab = labels.iloc[ref_idx], labels.iloc[q_idx]
    res: dict = {}
    pred = label_transfer(z_ref, ref_lab.to_numpy(), z_q, k=K_NN)["label"].to_numpy()
    known = q_lab.notna().to_numpy()
    truth = q_lab.astype(str).to_numpy()[known]
    pred = pred[known]
    recalls = {c: float(np.mean(pred[truth == c] == c)) for c in np.unique(truth)}
    res["accuracy"] = float(np.mean(pred == truth))
    res["macro_accuracy"] = float(np.mean(list(recalls.values())))
    res["recall_per_class"] = recalls
    batch = np.array(["reference"] * len(z_ref) + ["query"] * len(z_q))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res["scib"] = integration_scores(
            np.vstack([z_ref, z_q]),
            labels=pd.concat([ref_lab, q_lab]).to_numpy(),
            batch=batch,
            n_jobs=threads,
        )
    if missing is not None and imputed is not None:
        observed = prep.mdata[missing].X[q_idx]
        res["imputation"] = imputation_scores(imputed, observed)
        # how much the prediction varies between cells (median over features of the across-
        # cell coefficient of variation): near 0 = the same profile for every cell
        pred_mean = imputed.mean(0)
        cv = imputed.std(0)[pred_mean > 0] / pred_mean[pred_mean > 0]
        res["imputation"]["prediction_cv"] = float(np.median(cv)) if cv.size else float("nan")
        if imputed_alt is not None:
            res["imputation_alt"] = imputation_scores(imputed_alt, observed)
    return res


def evaluate(prep: Prepared, name: str, arrays: dict | None, meta: dict, threads: int) -> dict:
    """Scores of every protocol of one method's map worker."""
    key = prep.spec.key
    out: dict = {}
    if arrays is None:
        return out
    if meta["obs_names"] != list(prep.mdata.obs_names):
        raise RuntimeError("worker cells are not in the parent's order")
    for proto, mods in protocols(key):
        pm = meta["protocols"].get(proto, {})
        zq = arrays.get(f"z_q__{proto}")
        if zq is None or pm.get("error") or pm.get("not_supported"):
            continue
        z_ref = arrays.get(f"z_ref__{proto}", arrays.get("z_ref"))
        t0 = time.perf_counter()
        try:
            out[proto] = score(
                prep,
                z_ref,
                zq,
                arrays.get(f"imputed__{proto}"),
                arrays.get(f"imputed_alt__{proto}"),
                missing_modality(key, mods),
                threads,
            )
            out[proto]["score_s"] = time.perf_counter() - t0
        except Exception as err:  # noqa: BLE001
            print(f"  !! scoring {name} {key} {proto} failed: {err!r}", flush=True)
            pm["error"] = f"scoring: {err!r}"
    return out


# ============================================================================ parent
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", nargs="+", choices=QUERY_DATASETS, default=list(QUERY_DATASETS))
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument(
        "--ref-epochs",
        type=int,
        default=None,
        help="reference (and from-scratch) epochs for every dataset (default: 200 CITE, 15 SNARE)",
    )
    p.add_argument(
        "--query-epochs",
        type=int,
        default=None,
        help="query epochs for every dataset (default: 100 CITE, 10 SNARE)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke run: {QUICK_EPOCHS} epochs everywhere, SNARE-seq subsampled",
    )
    p.add_argument("--no-scratch", action="store_true", help="skip the from-scratch timings")
    p.add_argument("--out", default=str(RESULTS_DIR / "query.md"), help="markdown output")
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker (default 1)")
    p.add_argument(
        "--source",
        choices=["head", "worktree"],
        default="head",
        help="mosaicvi code to benchmark, frozen at start: last commit (default) or working tree",
    )
    p.add_argument("--from-json", default=None, help="only re-render the markdown from a JSON")
    p.add_argument(
        "--rescore",
        action="store_true",
        help="with --from-json: score the saved worker outputs (<out stem>_work/) again with "
        "that run's frozen mosaicvi copy, then re-render (and rewrite the JSON)",
    )
    # internal
    p.add_argument(
        "--worker", nargs=3, metavar=("TASK", "METHOD", "DATASET"), help=argparse.SUPPRESS
    )
    p.add_argument("--result", help=argparse.SUPPRESS)
    p.add_argument("--subsample", type=int, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.worker:
        run_worker(args)
        return
    out_path = Path(args.out)
    if args.from_json:
        with open(args.from_json) as fh:
            saved = json.load(fh)
        if args.rescore:
            rescore(saved, out_path, args.threads)
        write_report(saved["run"], saved["datasets"], out_path)
        return

    threads = set_threads(args.threads)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    workdir = out_path.parent / (out_path.stem + "_work")
    workdir.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()
    source = snapshot_source(args.source, workdir)
    sys.path.insert(0, source["path"])  # the parent's scoring uses the same frozen copy
    print(
        f"mosaicvi source frozen for this run: {source['mode']} (commit {source['commit']}, "
        f"uncommitted changes in src/mosaicvi: {source['dirty_src']}) -> {source['path']}\n"
        f"query benchmark: datasets {args.datasets}, methods {args.methods}, quick={args.quick}, "
        f"torch threads per worker {threads} (load average {load[0]:.2f} on {os.cpu_count()} "
        f"cores), seed {SEED}",
        flush=True,
    )
    tasks = ["map"] if args.no_scratch else list(TASKS)
    t_start = time.perf_counter()
    results: dict = {}
    for key in args.datasets:
        spec = DATASETS[key]
        if args.quick:
            ref_epochs = query_epochs = QUICK_EPOCHS
        else:
            ref_epochs = args.ref_epochs or REF_EPOCHS[key]
            query_epochs = args.query_epochs or QUERY_EPOCHS[key]
        subsample = QUICK_SUBSAMPLE.get(key) if args.quick else None
        prep = prepare_dataset(key, subsample=subsample)
        ref_idx, q_idx = _split(prep)
        ct = prep.mdata.obs["cell_type"].astype(str)
        unseen = ~ct.iloc[q_idx].isin(set(ct.iloc[ref_idx]))
        results[key] = {
            "peer": spec.peer,
            "ref_epochs": ref_epochs,
            "query_epochs": query_epochs,
            "n_reference": len(ref_idx),
            "n_query": len(q_idx),
            "query_batches": prep.hidden_batches,
            "reference_batches": sorted(set(prep.mdata.obs["batch"].iloc[ref_idx].astype(str))),
            "n_query_unseen_type": int(unseen.sum()),
            "unseen_types": sorted(set(ct.iloc[q_idx][unseen])),
            "protocols": [p for p, _ in protocols(key)],
            "notes": prep.notes
            + (
                [
                    f"epochs reduced from integration.py's {spec.epochs} to {ref_epochs} "
                    f"(query {query_epochs}) to keep the run within its time budget"
                ]
                if not args.quick and ref_epochs < spec.epochs
                else []
            ),
            "methods": {},
        }
        for method in args.methods:
            name = spec.peer if method == "peer" else method
            entry: dict = {"meta": {}, "scores": {}}
            results[key]["methods"][name] = entry
            for task in tasks:
                print(
                    f"[{time.perf_counter() - t_start:7.0f}s] {key}: {name} {task} ...", flush=True
                )
                worker_args = ["--worker", task, name, key, "--threads", str(threads)]
                worker_args += [
                    "--ref-epochs",
                    str(ref_epochs),
                    "--query-epochs",
                    str(query_epochs),
                ]
                if subsample:
                    worker_args += ["--subsample", str(subsample)]
                stem = workdir / f"{key}__{name}__{task}"
                arrays, meta = launch_worker(
                    Path(__file__).resolve(),
                    worker_args,
                    stem,
                    stem.with_suffix(".log"),
                    threads,
                    source["path"],
                )
                if task == "map":
                    entry["scores"] = evaluate(prep, name, arrays, meta, threads)
                meta.pop("obs_names", None)
                entry["meta"][task] = meta
                print(f"    worker wall {meta['wall_s']:.0f}s", flush=True)
            for proto, s in entry["scores"].items():
                pm = entry["meta"]["map"]["protocols"][proto]
                print(
                    f"    {proto}: acc {s['accuracy']:.3f}, macro {s['macro_accuracy']:.3f}, "
                    f"total {s['scib']['total']:.3f}, pearson "
                    f"{fmt(s.get('imputation', {}).get('pearson'))}, map {pm['map_s']:.1f}s",
                    flush=True,
                )
    run = {
        "quick": args.quick,
        "threads": threads,
        "load_average": load[0],
        "n_cpu": os.cpu_count(),
        "total_s": time.perf_counter() - t_start,
        "source": source,
        "command": " ".join([".venv/bin/python", "benchmarks/query.py", *sys.argv[1:]]),
    }
    with open(out_path.with_suffix(".json"), "w") as fh:
        json.dump({"run": run, "datasets": results}, fh, indent=1, default=float)
    write_report(run, results, out_path)


# ============================================================================ report
def _proto_values(r: dict, name: str, proto: str) -> dict:
    """Everything the table needs for one (method, protocol)."""
    m = r["methods"][name]
    pmap = m["meta"].get("map", {}).get("protocols", {}).get(proto, {})
    pscr = m["meta"].get("scratch", {}).get("protocols", {}).get(proto, {})
    s = m["scores"].get(proto)
    v = {"status": None, "s": s, "map_s": pmap.get("map_s"), "scratch_s": pscr.get("scratch_s")}
    if pmap.get("not_supported"):
        v["status"] = "n/a"
    elif s is None:
        v["status"] = "error"
    v["speedup"] = ratio(v["scratch_s"], v["map_s"])
    return v


def render(results: dict, run: dict) -> str:
    header = [
        "dataset",
        "query",
        "method",
        "label acc",
        "macro acc",
        "bio",
        "batch",
        "total",
        "imputed",
        "imput. Pearson",
        "map s",
        "scratch s",
        "scratch / map",
    ]
    rows, targets = [], []
    for key, r in results.items():
        for proto, mods in protocols(key):
            missing = missing_modality(key, mods)
            imputed = MOD_LABEL[missing] if missing else "–"
            for name in r["methods"]:
                v = _proto_values(r, name, proto)
                s = v["s"]
                if v["status"]:
                    rows.append([key, proto, name, *([v["status"]] * 5), imputed, *(["n/a"] * 4)])
                    continue
                pear = s.get("imputation", {}).get("pearson") if missing else None
                rows.append(
                    [
                        key,
                        proto,
                        name,
                        fmt(s["accuracy"]),
                        fmt(s["macro_accuracy"]),
                        fmt(s["scib"]["bio"]),
                        fmt(s["scib"]["batch"]),
                        fmt(s["scib"]["total"]),
                        imputed,
                        fmt(pear) if missing else "–",
                        fmt(v["map_s"], 1),
                        fmt(v["scratch_s"], 1),
                        fmt(v["speedup"], 1),
                    ]
                )
            targets += _targets(key, r, proto, missing)
    title = "## Query-mapping benchmark" + (" (QUICK smoke run)" if run["quick"] else "")
    lines = [title, "", markdown_table(header, rows), "", "### Targets", ""]
    lines += targets
    lines += ["", "### Protocol and notes", ""]
    lines += _notes(results, run)
    return "\n".join(lines)


def _targets(key: str, r: dict, proto: str, missing: str | None) -> list[str]:
    if "MultiVAE" not in r["methods"]:
        return []
    mv = _proto_values(r, "MultiVAE", proto)
    peer = r["peer"]
    parts = []
    pv = _proto_values(r, peer, proto) if peer in r["methods"] else None
    if mv["s"] is not None and pv is not None and pv["s"] is not None:
        for label, k in (("accuracy", "accuracy"), ("macro accuracy", "macro_accuracy")):
            a, b = mv["s"][k], pv["s"][k]
            parts.append(f"{label} ≥ {peer}: {met(a >= b)} ({a:.3f} vs {b:.3f})")
        if missing:
            a = mv["s"].get("imputation", {}).get("pearson")
            b = pv["s"].get("imputation", {}).get("pearson")
            ok = None if a is None or b is None else a >= b
            parts.append(f"imputation Pearson ≥ {peer}: {met(ok)} ({fmt(a)} vs {fmt(b)})")
    elif pv is not None and pv["status"] == "n/a":
        parts.append(f"accuracy/imputation vs {peer}: n/a ({peer} cannot map this query)")
    sp = mv["speedup"]
    parts.append(
        f"MultiVAE mapping ≥ {SPEEDUP_TARGET:.0f}x faster than from scratch: "
        f"{met(None if sp is None else sp >= SPEEDUP_TARGET)} ({fmt(sp, 1)}x)"
    )
    return [f"- {key} / {proto}: " + "; ".join(parts)]


def _notes(results: dict, run: dict) -> list[str]:
    notes = [
        "- Protocol: the reference model is trained once per method on the reference batches "
        "(paired), then the query batches are mapped onto it with the method's query API in "
        "three forms: paired, RNA-only, second-modality-only. Reference epochs = from-scratch "
        "epochs; query epochs fixed; early stopping OFF everywhere (fixed budgets for the "
        "timing comparison; MultiVAE's query `train()` early-stops by default, which would "
        "shorten mapping further). `scvi.settings.seed = 0`.",
        f"- Label transfer: `mosaicvi.tools.label_transfer` (k = {K_NN}, distance-weighted "
        "votes) on each method's reference and query latents, the same for all methods. "
        "label acc = fraction of query cells labelled correctly; macro acc = mean per-class "
        "recall over the classes present in the query (classes absent from the reference count "
        "as recall 0 for every method).",
        "- bio / batch / total: `mosaicvi.metrics.integration_scores` on the concatenated "
        "reference + query latents, batch = reference/query, labels = cell_type (total = 0.6 "
        "bio + 0.4 batch). Imputation: `imputation_scores` mean per-feature Pearson of "
        "log1p(predicted) vs log1p(held-out counts), constant features skipped.",
        "- map s = `load_query_data` + query `train()` (wall time); scratch s = setup + model "
        "construction + `train()` of the same model on reference + query cells in that "
        "protocol's form (the query's missing modality absent / zero-filled) with the "
        "reference epoch budget; scratch / map = how many times faster mapping is.",
        "- MultiVAE: package defaults; query: `MultiVAE.load_query_data(query_mdata, ref)` "
        "with a MuData holding only the query's modalities; reference latent from the "
        "reference model (its weights stay bit-identical in the query model). Imputation: "
        "`get_normalized_expression(modality=..., library_size='latent')` (the query cells' "
        "own batch); the same with `transform_batch=<reference batches>` is in the JSON as "
        "`imputation_alt`.",
        "- TOTALVI: AnnData with proteins in `obsm`, reference trained with the scArches "
        f"settings of scvi-tools' tutorial ({TOTALVI_ARCHES}; also for the from-scratch "
        "model), otherwise defaults (reduce-LR-on-plateau on, so a validation pass per "
        "epoch). Query: `prepare_query_anndata` + `load_query_data`, RNA-only queries with "
        "proteins set to 0 (its documented way; detected as a missing-protein batch, "
        "adversarial classifier on), `train(plan_kwargs={'weight_decay': 0.0})` as in the "
        "tutorial. Reference + query latents from the query model. Imputed proteins: "
        "expected counts (`include_protein_background=True`), "
        f"`transform_batch=<reference batches>`, n_samples={TOTALVI_N_SAMPLES} (the "
        "tutorial's call; the query's own batch is in the JSON as `imputation_alt`). "
        + NO_ADT_ONLY
        + ".",
        "- MULTIVI: paired MuData with RNA first (its setup crashes when it has to reorder "
        "modalities) and the query's missing modality zero-filled (MULTIVI treats all-zero "
        "rows as missing; `prepare_query_mudata` rejects a query that lacks a modality). "
        "Query: `prepare_query_mudata` + `load_query_data`, `train(weight_decay=0.0)` "
        "(otherwise AdamW's decay moves the frozen reference weights). Reference + query "
        "latents from the query model. Imputation: `get_normalized_accessibility()` "
        "probabilities for ATAC; `get_normalized_expression()` proportions times the median "
        "reference RNA library for RNA. MULTIVI's own defaults are lr 1e-4 and up to 500 "
        "epochs, so at the equal budgets here it is far less trained than the others.",
        f"- Machine: {run['n_cpu']} CPU cores, no GPU; torch threads per worker: "
        f"{run['threads']}; 1-min load average at start {run['load_average']:.2f} (shared "
        f"machine: timings are noisy, compare within the run). Whole run: "
        f"{run['total_s'] / 60:.1f} min. Command: `{run.get('command', '')}`.",
        source_note(run.get("source")),
    ]
    for key, r in results.items():
        extra = "; ".join(r["notes"])
        notes.append(
            f"- {key}: reference = batches {', '.join(r['reference_batches'])} "
            f"({r['n_reference']} cells), query = {', '.join(r['query_batches'])} "
            f"({r['n_query']} cells); epochs reference/scratch {r['ref_epochs']}, query "
            f"{r['query_epochs']}; {r['n_query_unseen_type']} query cells have a cell type "
            f"absent from the reference ({', '.join(r['unseen_types']) or 'none'})"
            + (f"; {extra}" if extra else "")
        )
        for name, m in r["methods"].items():
            for task, meta in m["meta"].items():
                if meta.get("error"):
                    notes.append(f"  - {name} {task} worker ERROR: {meta['error']}")
                for proto, pm in meta.get("protocols", {}).items():
                    if pm.get("error"):
                        notes.append(f"  - {name} {task} {proto} ERROR: {pm['error']}")
            if m["meta"].get("map", {}).get("cells_with_zero_atac"):
                notes.append(
                    f"  - {name}: {m['meta']['map']['cells_with_zero_atac']} cells have no ATAC "
                    "counts in the kept peaks (MULTIVI treats them as ATAC-missing)"
                )
            alts = [
                f"{proto} {s['imputation_alt']['pearson']:.3f}"
                for proto, s in m["scores"].items()
                if s.get("imputation_alt")
            ]
            if alts:
                notes.append(f"  - {name} imputation_alt Pearson: {', '.join(alts)}")
            cvs = [
                f"{proto} {s['imputation']['prediction_cv']:.3f}"
                for proto, s in m["scores"].items()
                if "prediction_cv" in s.get("imputation", {})
            ]
            if cvs:
                notes.append(
                    f"  - {name} imputed values, median across-cell CV per feature (≈0: nearly "
                    f"the same profile for every cell): {', '.join(cvs)}"
                )
    return notes


def rescore(saved: dict, out_path: Path, threads: int) -> None:
    """Score the saved map-worker outputs of an earlier run again (no training)."""
    set_threads(threads)
    workdir = out_path.parent / (out_path.stem + "_work")
    sys.path.insert(0, str(workdir / "source" / "src"))
    subsample = QUICK_SUBSAMPLE if saved["run"]["quick"] else {}
    for key, r in saved["datasets"].items():
        prep = prepare_dataset(key, subsample=subsample.get(key))
        for name, entry in r["methods"].items():
            stem = workdir / f"{key}__{name}__map"
            with np.load(str(stem) + ".npz") as npz:
                arrays = {k: npz[k] for k in npz.files}
            with open(str(stem) + ".json") as fh:
                meta = json.load(fh)
            entry["scores"] = evaluate(prep, name, arrays, meta, threads)
            print(f"rescored {key} {name}", flush=True)
    with open(out_path.with_suffix(".json"), "w") as fh:
        json.dump(saved, fh, indent=1, default=float)


def write_report(run: dict, results: dict, out_path: Path) -> None:
    report = render(results, run)
    print("\n" + report, flush=True)
    out_path.write_text(report + "\n")
    print(f"\nwritten: {out_path} (raw metrics: {out_path.with_suffix('.json')})", flush=True)


if __name__ == "__main__":
    main()
