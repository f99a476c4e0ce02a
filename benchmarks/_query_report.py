"""Scoring and the markdown report of ``query.py``."""

from __future__ import annotations

import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from _common import (
    Prepared,
    fmt,
    markdown_table,
    met,
    prepare_dataset,
    ratio,
    registry,
    set_threads,
    source_note,
)
from _query_data import (
    K_NN,
    MOD_LABEL,
    NO_ADT_ONLY,
    QUICK_SUBSAMPLE,
    SPEEDUP_TARGET,
    TOTALVI_ARCHES,
    TOTALVI_N_SAMPLES,
    _split,
    missing_modality,
    protocols,
)


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


def _is_model(name: str) -> bool:
    try:
        return registry().get(name).kind == "model"
    except KeyError:  # no longer registered (re-rendering an old JSON)
        return False


def _targets(key: str, r: dict, proto: str, missing: str | None) -> list[str]:
    """One line per mosaicvi model: accuracy and imputation vs the peer, mapping speed-up."""
    peer = r["peer"]
    pv = _proto_values(r, peer, proto) if peer in r["methods"] else None
    lines = []
    for name in filter(_is_model, r["methods"]):
        mv = _proto_values(r, name, proto)
        parts = []
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
            f"{name} mapping ≥ {SPEEDUP_TARGET:.0f}x faster than from scratch: "
            f"{met(None if sp is None else sp >= SPEEDUP_TARGET)} ({fmt(sp, 1)}x)"
        )
        lines.append(f"- {key} / {proto} / {name}: " + "; ".join(parts))
    return lines


def _protocol_notes(run: dict, models: list[str], labelled: list[str]) -> list[str]:
    return [
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
        f"- mosaicvi models ({', '.join(models) or 'none run'}): package defaults; query: "
        "`<Model>.load_query_data(query_mdata, ref)` with a MuData holding only the query's "
        "modalities; reference latent from the reference model (its weights stay bit-identical "
        "in the query model). Imputation: `get_normalized_expression(modality=..., "
        "library_size='latent')` (the query cells' own batch; a model that predicts no library "
        "sizes: proportions times the median reference library); the same with "
        "`transform_batch=<reference batches>` is in the JSON as `imputation_alt`"
        + (
            f". {', '.join(labelled)} (semi-supervised): the reference cells' cell types, the "
            "query unlabelled."
            if labelled
            else "."
        ),
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


def _notes(results: dict, run: dict) -> list[str]:
    entries = [(n, m) for r in results.values() for n, m in r["methods"].items()]
    models = list(dict.fromkeys(n for n, _ in entries if _is_model(n)))
    labelled = list(
        dict.fromkeys(n for n, m in entries if m["meta"].get("map", {}).get("labelled"))
    )
    notes = _protocol_notes(run, models, labelled)
    for key, r in results.items():
        notes += _dataset_notes(key, r)
    return notes


def _dataset_notes(key: str, r: dict) -> list[str]:
    extra = "; ".join(r["notes"])
    notes = [
        f"- {key}: reference = batches {', '.join(r['reference_batches'])} "
        f"({r['n_reference']} cells), query = {', '.join(r['query_batches'])} "
        f"({r['n_query']} cells); epochs reference/scratch {r['ref_epochs']}, query "
        f"{r['query_epochs']}; {r['n_query_unseen_type']} query cells have a cell type "
        f"absent from the reference ({', '.join(r['unseen_types']) or 'none'})"
        + (f"; {extra}" if extra else "")
    ]
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
