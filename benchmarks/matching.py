"""Cross-modal matching of paired cells: the mosaicvi models vs scglue's CLUE, plus CLUE ablations.

The models are those of :mod:`mosaicvi.registry` (MultiVAE, CLUE, JAE; ``--methods`` chooses),
compared with scglue's published CLUE. For every paired dataset each method is trained on all
cells (both modalities), then every cell
is embedded twice, from RNA alone and from the second modality alone, and the two embeddings are
compared: FOSCTTM (lower is better, random 0.5) and the matching score of a row-normalised
10-NN matching matrix RNA -> second modality (higher is better, random 1/N).

Same cells and features for every method: RNA of ``reapseq_pbmc_7488`` restricted to 2,000 HVGs
(scanpy ``seurat`` flavour on log-normalised counts), ATAC of ``snareseq_mouse_cortex_10k`` to the
5,000 most frequently open peaks. Equal epochs per dataset for all methods, early stopping off.

Usage (from the repository root)::

    .venv/bin/python benchmarks/matching.py                 # full run, ~25 min on 2 cores
    .venv/bin/python benchmarks/matching.py --quick         # smoke run (2 epochs)
    nohup .venv/bin/python benchmarks/matching.py > benchmarks/results/matching.log 2>&1 &
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import traceback
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    DATA_DIR,
    RESULTS_DIR,
    add_methods_argument,
    fmt,
    label,
    markdown_table,
    registry,
    resolve_methods,
    set_threads,
    setup_model,
)

DATASETS = {
    # key: (file, second modality, epochs)
    "bmmc_cite": ("neurips2021_bmmc_cite_600.h5mu", "adt", 100),
    "bmmc_multiome": ("neurips2021_bmmc_multiome_500.h5mu", "atac", 100),
    "reapseq_pbmc": ("reapseq_pbmc_7488.h5mu", "adt", 12),
    "snare_cortex": ("snareseq_mouse_cortex_10k.h5mu", "atac", 12),
}
SCGLUE = "scglue CLUE"  # the peer (not in mosaicvi's registry): --methods scglue
N_HVG = 2000
N_PEAKS = 5000
ABLATION_DATASET = "bmmc_cite"
ABLATIONS = {
    "full (defaults)": {},
    "- adversarial": {"adversarial_weight": 0.0},
    "- alignment (MSE)": {"alignment_weight": 0.0},
    "- cross ELBO": {"cross_weight": 0.0},
    "- adversarial - alignment": {"adversarial_weight": 0.0, "alignment_weight": 0.0},
    "combine=mean, cosine": {"combine": "mean", "alignment": "cosine"},
}


def load(key: str):
    """Paired MuData with raw counts, ``batch`` in ``obs``, shared feature selection."""
    import anndata as ad
    import mudata as md
    import scanpy as sc
    import scipy.sparse as sp

    file, second, _ = DATASETS[key]
    md.set_options(pull_on_update=False)
    raw = md.read_h5mu(DATA_DIR / file)
    cells = raw.obs_names
    for name in ("rna", second):
        cells = cells.intersection(raw.mod[name].obs_names, sort=False)
    mods = {}
    for name in ("rna", second):
        a = raw.mod[name][cells]
        x = a.layers["counts"] if "counts" in a.layers else a.X
        x = sp.csr_matrix(x, dtype=np.float32) if sp.issparse(x) else np.asarray(x, np.float32)
        mods[name] = ad.AnnData(X=x, obs=a.obs[[]].copy(), var=a.var[[]].copy())
    notes = []
    rna = mods["rna"]
    if rna.n_vars > 4000:
        tmp = rna.copy()
        sc.pp.normalize_total(tmp, target_sum=1e4)
        sc.pp.log1p(tmp)
        sc.pp.highly_variable_genes(tmp, n_top_genes=N_HVG, flavor="seurat")
        mods["rna"] = rna[:, tmp.var["highly_variable"].to_numpy()].copy()
        notes.append(f"{key}: RNA restricted to {N_HVG} HVGs of {rna.n_vars}")
    if second == "atac" and mods[second].n_vars > N_PEAKS:
        x = mods[second].X
        n_open = np.asarray((x > 0).sum(0)).ravel()
        keep = np.sort(np.argsort(-n_open, kind="stable")[:N_PEAKS])
        notes.append(f"{key}: ATAC restricted to the {N_PEAKS} most open of {x.shape[1]} peaks")
        mods[second] = mods[second][:, keep].copy()
    for a in mods.values():  # drop features never seen and cells that became empty
        a.obs_names = a.obs_names.astype(str)
    keep_cells = np.ones(len(cells), dtype=bool)
    for a in mods.values():
        keep_cells &= np.asarray(a.X.sum(1)).ravel() > 0
    mods = {k: a[keep_cells].copy() for k, a in mods.items()}
    mdata = md.MuData(mods)
    batch = raw.obs.loc[mods["rna"].obs_names, "batch"].astype(str).to_numpy()
    mdata.obs["batch"] = batch
    return mdata, second, notes


def matching(z_rna: np.ndarray, z_second: np.ndarray) -> dict:
    from mosaicvi.metrics import foscttm, knn_matching_matrix, matching_score

    return {
        "foscttm": float(foscttm(z_rna, z_second)),
        "matching": float(matching_score(knn_matching_matrix(z_rna, z_second, k=10))),
    }


def run_mosaicvi(cls, mdata, second, epochs, **kwargs) -> dict:
    import scvi

    scvi.settings.seed = 0
    setup_model(cls, mdata, ["rna", second])  # unsupervised: no labels for any model
    model = cls(mdata, **kwargs)
    start = time.perf_counter()
    model.train(max_epochs=epochs, early_stopping=False, enable_progress_bar=False)
    seconds = time.perf_counter() - start
    z_rna = model.get_latent_representation(modality="rna")
    z_second = model.get_latent_representation(modality=second)
    return {**matching(z_rna, z_second), "s_per_epoch": seconds / epochs, "dims": z_rna.shape[1]}


def run_scglue(mdata, second, epochs) -> dict:
    import scglue
    import torch

    torch.manual_seed(0)
    adatas = {}
    for name in ("rna", second):
        a = mdata[name].copy()
        a.obs["batch"] = mdata.obs.loc[a.obs_names, "batch"].to_numpy()
        a.layers["counts"] = a.X.copy()
        scglue.models.configure_dataset(
            a,
            "NB",
            use_highly_variable=False,
            use_layer="counts",
            use_batch="batch",
            use_obs_names=True,
        )
        adatas[name] = a
    model = scglue.models.SCCLUEModel(adatas, random_seed=0)
    model.compile()
    start = time.perf_counter()
    model.fit(adatas, max_epochs=epochs, patience=None, reduce_lr_patience=None)
    seconds = time.perf_counter() - start
    z_rna = model.encode_data("rna", adatas["rna"])
    z_second = model.encode_data(second, adatas[second])
    return {**matching(z_rna, z_second), "s_per_epoch": seconds / epochs, "dims": z_rna.shape[1]}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS))
    add_methods_argument(parser, "model", extra=("scglue",))
    parser.add_argument("--quick", action="store_true", help="2 epochs: code paths only")
    parser.add_argument("--no-ablation", action="store_true")
    parser.add_argument("--ablation-epochs", type=int, default=60)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(RESULTS_DIR / "matching.md"))
    return parser.parse_args(argv)


def _scglue_version() -> str | None:
    try:
        import scglue

        return scglue.__version__
    except Exception as err:  # noqa: BLE001
        print(f"scglue unavailable: {err}", flush=True)
        return None


def _method_names(tokens) -> list[str]:
    """Row labels of the chosen methods: registered models in the order given, then scglue."""
    models = [label(m) for m in resolve_methods([t for t in tokens if t != "scglue"])]
    return models + ([SCGLUE] if "scglue" in tokens else [])


def run_methods(args, names: list[str], scglue_version: str | None) -> tuple[dict, dict, list]:
    """Every method on every dataset: ``{(dataset, method): result or reason}``."""
    results: dict[tuple[str, str], dict | str] = {}
    notes: list[str] = []
    data_cache = {}
    for key in args.datasets:
        mdata, second, ds_notes = load(key)
        data_cache[key] = (mdata, second)
        notes += ds_notes
        epochs = 2 if args.quick else DATASETS[key][2]
        for method in names:
            if method == SCGLUE and not scglue_version:
                results[(key, method)] = "not installed"
                continue
            print(f"[{time.strftime('%H:%M:%S')}] {key} {method} ({epochs} epochs)", flush=True)
            try:
                if method == SCGLUE:
                    r = run_scglue(mdata, second, epochs)
                else:
                    cls = registry().get(method).model_class()
                    r = run_mosaicvi(cls, mdata, second, epochs)
                results[(key, method)] = {**r, "epochs": epochs, "cells": mdata.n_obs}
            except Exception as err:  # noqa: BLE001
                traceback.print_exc()
                results[(key, method)] = f"failed: {type(err).__name__}"
            print(f"    {results[(key, method)]}", flush=True)
    return results, data_cache, notes


def run_ablation(args, data_cache: dict) -> dict:
    """CLUE variants (its own loss weights and options) on the ablation dataset."""
    if args.no_ablation or ABLATION_DATASET not in data_cache:
        return {}
    clue = registry().get("clue").model_class()
    mdata, second = data_cache[ABLATION_DATASET]
    epochs = 2 if args.quick else args.ablation_epochs
    ablation = {}
    for name, kwargs in ABLATIONS.items():
        print(f"[{time.strftime('%H:%M:%S')}] ablation {name}", flush=True)
        ablation[name] = run_mosaicvi(clue, mdata, second, epochs, **kwargs)
        print(f"    {ablation[name]}", flush=True)
    return ablation


def _results_table(args, names: list[str], results: dict) -> str:
    rows = []
    for key in args.datasets:
        for method in names:
            r = results[(key, method)]
            if isinstance(r, str):
                rows.append([key, method, r, "n/a", "n/a", "n/a", "n/a"])
            else:
                rows.append(
                    [
                        key,
                        method,
                        fmt(r["foscttm"], 4),
                        fmt(r["matching"], 4),
                        fmt(r["s_per_epoch"], 2),
                        str(r["dims"]),
                        str(r["epochs"]),
                    ]
                )
    return markdown_table(
        ["dataset", "method", "FOSCTTM ↓", "matching score ↑", "s/epoch", "dims", "epochs"], rows
    )


def _ratio_table(args, names: list[str], results: dict) -> str:
    """CLUE against scglue's CLUE (the published model it re-implements) and the other models."""
    clue = registry().get("clue").display_name
    if clue not in names:
        return "(CLUE not run)"
    others = [m for m in names if m not in (clue, SCGLUE)]
    ratio_rows = []
    for key in args.datasets:
        c, g = results[(key, clue)], results.get((key, SCGLUE))
        if not isinstance(c, dict):
            continue
        row = [
            key,
            fmt(c["foscttm"] / g["foscttm"], 2) if isinstance(g, dict) else "n/a",
            fmt(c["s_per_epoch"] / g["s_per_epoch"], 2) if isinstance(g, dict) else "n/a",
        ]
        for other in others:
            m = results[(key, other)]
            row.append(fmt(c["foscttm"] / m["foscttm"], 2) if isinstance(m, dict) else "n/a")
        ratio_rows.append(row)
    return markdown_table(
        [
            "dataset",
            f"FOSCTTM {clue} / scglue (target ≤ 1)",
            f"s/epoch {clue} / scglue (target ≤ 0.5)",
            *[f"FOSCTTM {clue} / {other}" for other in others],
        ],
        ratio_rows,
    )


def _ablation_table(ablation: dict) -> str:
    if not ablation:
        return ""
    full = ablation["full (defaults)"]["matching"]
    return markdown_table(
        ["CLUE variant", "FOSCTTM ↓", "matching score ↑", "matching vs full"],
        [
            [
                name,
                fmt(r["foscttm"], 4),
                fmt(r["matching"], 4),
                f"{100 * (r['matching'] / full - 1):+.0f}%",
            ]
            for name, r in ablation.items()
        ],
    )


def main() -> None:
    args = parse_args()
    threads = set_threads(args.threads)
    import mosaicvi  # noqa: F401  (after threads are set)

    scglue_version = _scglue_version()
    names = _method_names(args.methods)
    results, data_cache, notes = run_methods(args, names, scglue_version)
    ablation = run_ablation(args, data_cache)
    header = (
        f"# Cross-modal matching (RNA-derived vs second-modality-derived latents)\n\n"
        f"Machine: {platform.platform()}, {os.cpu_count()} CPUs, torch threads {threads}, "
        f"load average at end {os.getloadavg()[0]:.1f}; scglue {scglue_version or 'n/a'}.\n"
        f"Command: `{' '.join(['.venv/bin/python', *sys.argv])}`\n\n"
        "Each method trained once per dataset on all paired cells, equal epochs, early stopping "
        "off, package defaults otherwise, no labels (scglue: `SCCLUEModel` defaults, NB for "
        "every modality, batch as `use_batch`, early stopping and LR reduction off). FOSCTTM: "
        "`mosaicvi.metrics.foscttm`; matching score: `matching_score(knn_matching_matrix("
        "z_rna, z_second, k=10))` (random = 1/N).\n"
    )
    report = "\n".join(
        [
            header,
            _results_table(args, names, results),
            "",
            "## Ratios",
            "",
            _ratio_table(args, names, results),
            "",
            f"## CLUE ablation on {ABLATION_DATASET} ({args.ablation_epochs} epochs)",
            "",
            _ablation_table(ablation) or "(not run)",
            "",
            "Notes: " + ("; ".join(notes) if notes else "none"),
            "",
        ]
    )
    print(report, flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report)
    print(f"written to {out}", flush=True)


if __name__ == "__main__":
    main()
