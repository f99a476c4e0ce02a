"""Scoring and the markdown report of ``integration.py``'s mosaic task."""

from __future__ import annotations

import time
import warnings

from _common import Prepared, fmt, markdown_table, met, ratio, registry, source_note
from _integration_workers import K_NN, N_PCS, SEED

HEADER = [
    "dataset",
    "method",
    "bio",
    "batch",
    "total",
    "imput. Pearson",
    "RNA→joint 15-NN",
    "2nd→joint 15-NN",
    "s/epoch",
    "epochs",
    "peak MB",
    "Δ train MB",
]


def score(prep: Prepared, arrays: dict, meta: dict, threads: int) -> dict:
    """scIB scores of the latent, imputation of the hidden cells and unimodal 15-NN overlaps."""
    from mosaicvi.metrics import imputation_scores, integration_scores, knn_overlap

    obs = prep.mdata.obs
    if meta["obs_names"] != list(prep.mdata.obs_names):
        raise RuntimeError("worker cells are not in the parent's order")
    res: dict = {}
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scib = integration_scores(
            arrays["z"], labels=obs["cell_type"], batch=obs["batch"], n_jobs=threads
        )
    res["scib"] = scib
    truth = prep.mdata[prep.second].X[prep.hidden]
    res["imputation"] = imputation_scores(arrays["imputed"], truth)
    if "imputed_alt" in arrays:
        res["imputation_alt"] = imputation_scores(arrays["imputed_alt"], truth)
    if "z_rna_paired" in arrays:
        res["knn_rna"] = knn_overlap(arrays["z_rna_paired"], arrays["z_joint_paired"], k=K_NN)
        res["knn_second"] = knn_overlap(arrays["z_second_paired"], arrays["z_joint_paired"], k=K_NN)
    res["score_s"] = time.perf_counter() - t0
    return res


def _row(key: str, method: str, res: dict | None, meta: dict) -> list[str]:
    if res is None:
        return [key, method, *(["error"] * 10)]
    s = res["scib"]
    return [
        key,
        method,
        fmt(s["bio"]),
        fmt(s["batch"]),
        fmt(s["total"]),
        fmt(res["imputation"]["pearson"]),
        fmt(res.get("knn_rna")),
        fmt(res.get("knn_second")),
        fmt(meta.get("s_per_epoch")),
        fmt(meta.get("epochs_run")),
        fmt(meta.get("process_peak_mb"), 0),
        fmt(meta.get("train_delta_mb"), 0),
    ]


def _is_model(name: str) -> bool:
    try:
        return registry().get(name).kind == "model"
    except KeyError:  # a method no longer registered (re-rendering an old JSON)
        return False


def _scored(entry: dict | None) -> bool:
    return bool(entry and entry["scores"])


def render(results: dict, run: dict) -> str:
    """The markdown report: one row per dataset and method, ratios to the peer, targets, notes."""
    rows, ratio_rows, targets, models = [], [], [], []
    for key, r in results.items():
        for name, m in r["methods"].items():
            rows.append(_row(key, name, m["scores"], m["meta"]))
        peer = r["methods"].get(r["peer"])
        for name in filter(_is_model, r["methods"]):
            models += [name] if name not in models else []
            mv = r["methods"][name]
            if not (_scored(mv) and _scored(peer)):
                continue
            tot = ratio(mv["scores"]["scib"]["total"], peer["scores"]["scib"]["total"])
            pear = ratio(
                mv["scores"]["imputation"]["pearson"], peer["scores"]["imputation"]["pearson"]
            )
            spe = ratio(mv["meta"].get("s_per_epoch"), peer["meta"].get("s_per_epoch"))
            ratio_rows.append([key, f"{name} / {r['peer']}", fmt(tot), fmt(pear), fmt(spe)])
            targets.append((key, name, r["peer"], mv, peer))

    lines = [f"## Integration benchmark{' (QUICK smoke run)' if run['quick'] else ''}", ""]
    lines.append(markdown_table(HEADER, rows))
    lines += ["", f"### Ratios {', '.join(models) or 'model'} / peer", ""]
    lines.append(
        markdown_table(["dataset", "ratio", "total", "imput. Pearson", "s/epoch"], ratio_rows)
    )
    lines += ["", "### Targets (from the issue)", ""]
    lines += _targets(targets)
    lines += ["", "### Protocol and notes", ""]
    lines += _notes(results, run)
    return "\n".join(lines)


def _targets(targets) -> list[str]:
    out = []
    for key, name, peer_name, mv, peer in targets:
        mt, pt = mv["scores"]["scib"]["total"], peer["scores"]["scib"]["total"]
        mp, pp = mv["scores"]["imputation"]["pearson"], peer["scores"]["imputation"]["pearson"]
        knn = mv["scores"].get("knn_rna")
        ms, ps = mv["meta"].get("s_per_epoch"), peer["meta"].get("s_per_epoch")
        out.append(
            f"- {key}, {name}: total ≥ {peer_name}: {met(mt >= pt)} ({mt:.4f} vs {pt:.4f}); "
            f"imputation Pearson ≥ {peer_name}: {met(mp >= pp)} ({mp:.4f} vs {pp:.4f}); "
            f"RNA-only 15-NN overlap ≥ 0.7: {met(None if knn is None else knn >= 0.7)} "
            f"({fmt(knn, 4)}); "
            + (
                f"s/epoch ≤ TOTALVI: {met(ms <= ps)} ({ms:.4f} vs {ps:.4f})"
                if peer_name == "TOTALVI" and ms and ps
                else f"s/epoch vs {peer_name} (informative; target is stated vs TOTALVI): "
                f"{fmt(ms)} vs {fmt(ps)}"
            )
        )
    return out


def _protocol_notes(models: list[str], labelled: list[str]) -> list[str]:
    return [
        "- Protocol: ONE training run per method and dataset, on a mosaic: the second modality "
        "(ADT/ATAC) of the hidden batch(es) below is withheld during training. Integration "
        "scores use the joint embedding of ALL cells from that run (hidden cells embedded from "
        "RNA only); imputation is scored on the hidden cells against their held-out counts; "
        "15-NN overlaps use the paired (non-hidden) cells. Same protocol for every method.",
        "- scIB: `mosaicvi.metrics.integration_scores` (bio = mean of label ASW, isolated "
        "labels, k-means NMI/ARI, cLISI; batch = mean of batch ASW, iLISI, graph connectivity; "
        "total = 0.6 bio + 0.4 batch). Imputation: `imputation_scores` mean per-feature "
        "Pearson of log1p(predicted) vs log1p(observed counts), constant features skipped.",
        f"- mosaicvi models ({', '.join(models) or 'none run'}): package defaults (no tuning), "
        "`get_normalized_expression(modality=..., library_size='latent')` (a model that "
        "predicts no library sizes: proportions times the median library of the paired cells)"
        + (
            f"; {', '.join(labelled)} (semi-supervised) see the cell types of the paired cells"
            if labelled
            else ""
        )
        + ". TOTALVI: hidden cells' proteins set to 0 (detected as a "
        "missing-protein batch); imputation = expected protein counts "
        "(`include_protein_background=True`); the default foreground-only output is in the "
        "JSON as `imputation_alt`. MULTIVI: hidden cells' ATAC set to 0 (its mosaic "
        "convention); imputation = `get_normalized_accessibility()` probabilities. "
        "Peers otherwise with their defaults. Early stopping off for all; TOTALVI keeps its "
        "default reduce-LR-on-plateau, which runs a validation pass every epoch.",
        "- 15-NN overlaps for the peer: TOTALVI has no unimodal embedding (n/a); MULTIVI's "
        "`get_latent_representation(modality='expression'|'accessibility')` is used.",
        f"- PCA: log-normalised RNA (1e4, log1p), {N_PCS} PCs, all cells (RNA only, since the "
        f"second modality is missing for the hidden cells); its imputation is the mean of the "
        f"{K_NN} nearest paired cells' counts in that PCA space. No epochs.",
        "- s/epoch: wall time of `train()` / epochs run. peak MB: peak RSS of the method's "
        "fresh worker process (all workers import the same libraries and load the same data); "
        "Δ train MB: peak RSS from model setup to the end of inference minus the RSS before.",
    ]


def _notes(results: dict, run: dict) -> list[str]:
    names = [n for r in results.values() for n in r["methods"]]
    models = list(dict.fromkeys(filter(_is_model, names)))
    entries = [(n, m) for r in results.values() for n, m in r["methods"].items()]
    labelled = list(dict.fromkeys(n for n, m in entries if m["meta"].get("labelled")))
    notes = _protocol_notes(models, labelled) + [
        f"- Machine: {run['n_cpu']} CPU cores, no GPU; torch threads per worker: "
        f"{run['threads']}; 1-min load average at start {run['load_average']:.2f} (other jobs "
        f"share this machine, so timings are noisy). Seed {SEED}. Whole run: "
        f"{run['total_s'] / 60:.1f} min.",
        "- Ratios are left n/a where the peer's value is ≤ 0 (a ratio to ~0 means nothing).",
        source_note(run.get("source")),
    ]
    for key, r in results.items():
        extra = "; ".join(r["notes"])
        notes.append(
            f"- {key}: {r['n_cells']} cells, {r['epochs']} epochs for every trained method "
            f"(peer {r['peer']}); hidden batch(es) {', '.join(r['hidden_batches'])} "
            f"({r['n_hidden']} cells)" + (f"; {extra}" if extra else "")
        )
        for name, m in r["methods"].items():
            if m["meta"].get("error"):
                notes.append(f"  - {name} ERROR: {m['meta']['error']}")
            if m["meta"].get("paired_cells_with_zero_atac"):
                notes.append(
                    f"  - {name}: {m['meta']['paired_cells_with_zero_atac']} paired cells have "
                    "no ATAC counts in the kept peaks and are treated as ATAC-missing by MULTIVI"
                )
            if m["meta"].get("imputation_call", "").endswith("predicts no library sizes)"):
                notes.append(f"  - {name} imputation: {m['meta']['imputation_call']}")
    return notes
