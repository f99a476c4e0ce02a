"""Cross-modal matching of paired cells: CLUE vs MultiVAE vs scglue's CLUE, plus CLUE ablations.

For every paired dataset each method is trained on all cells (both modalities), then every cell
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
from _common import DATA_DIR, RESULTS_DIR, fmt, markdown_table, set_threads  # noqa: E402

DATASETS = {
    # key: (file, second modality, epochs)
    "bmmc_cite": ("neurips2021_bmmc_cite_600.h5mu", "adt", 100),
    "bmmc_multiome": ("neurips2021_bmmc_multiome_500.h5mu", "atac", 100),
    "reapseq_pbmc": ("reapseq_pbmc_7488.h5mu", "adt", 12),
    "snare_cortex": ("snareseq_mouse_cortex_10k.h5mu", "atac", 12),
}
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
    cls.setup_mudata(mdata, modalities=["rna", second], batch_key="batch")
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS))
    parser.add_argument("--quick", action="store_true", help="2 epochs: code paths only")
    parser.add_argument("--no-ablation", action="store_true")
    parser.add_argument("--ablation-epochs", type=int, default=60)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(RESULTS_DIR / "matching.md"))
    args = parser.parse_args()
    threads = set_threads(args.threads)

    import mosaicvi as mv  # noqa: F401  (after threads are set)
    from mosaicvi.model import CLUE, MultiVAE

    try:
        import scglue  # noqa: F401

        scglue_version = scglue.__version__
    except Exception as err:  # noqa: BLE001
        scglue_version = None
        print(f"scglue unavailable: {err}", flush=True)

    results: dict[tuple[str, str], dict | str] = {}
    notes: list[str] = []
    data_cache = {}
    for key in args.datasets:
        mdata, second, ds_notes = load(key)
        data_cache[key] = (mdata, second)
        notes += ds_notes
        epochs = 2 if args.quick else DATASETS[key][2]
        for method in ("CLUE", "MultiVAE", "scglue CLUE"):
            if method == "scglue CLUE" and not scglue_version:
                results[(key, method)] = "not installed"
                continue
            print(f"[{time.strftime('%H:%M:%S')}] {key} {method} ({epochs} epochs)", flush=True)
            try:
                if method == "scglue CLUE":
                    r = run_scglue(mdata, second, epochs)
                else:
                    cls = CLUE if method == "CLUE" else MultiVAE
                    r = run_mosaicvi(cls, mdata, second, epochs)
                results[(key, method)] = {**r, "epochs": epochs, "cells": mdata.n_obs}
            except Exception as err:  # noqa: BLE001
                traceback.print_exc()
                results[(key, method)] = f"failed: {type(err).__name__}"
            print(f"    {results[(key, method)]}", flush=True)

    ablation = {}
    if not args.no_ablation and ABLATION_DATASET in data_cache:
        mdata, second = data_cache[ABLATION_DATASET]
        epochs = 2 if args.quick else args.ablation_epochs
        for name, kwargs in ABLATIONS.items():
            print(f"[{time.strftime('%H:%M:%S')}] ablation {name}", flush=True)
            ablation[name] = run_mosaicvi(CLUE, mdata, second, epochs, **kwargs)
            print(f"    {ablation[name]}", flush=True)

    # ---------------------------------------------------------------- report
    methods = ["CLUE", "MultiVAE", "scglue CLUE"]
    rows = []
    for key in args.datasets:
        for method in methods:
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
    table = markdown_table(
        ["dataset", "method", "FOSCTTM ↓", "matching score ↑", "s/epoch", "dims", "epochs"], rows
    )
    ratio_rows = []
    for key in args.datasets:
        c, g = results[(key, "CLUE")], results[(key, "scglue CLUE")]
        m = results[(key, "MultiVAE")]
        if isinstance(c, dict):
            ratio_rows.append(
                [
                    key,
                    fmt(c["foscttm"] / g["foscttm"], 2) if isinstance(g, dict) else "n/a",
                    fmt(c["s_per_epoch"] / g["s_per_epoch"], 2) if isinstance(g, dict) else "n/a",
                    fmt(c["foscttm"] / m["foscttm"], 2) if isinstance(m, dict) else "n/a",
                ]
            )
    ratios = markdown_table(
        [
            "dataset",
            "FOSCTTM CLUE / scglue (target ≤ 1)",
            "s/epoch CLUE / scglue (target ≤ 0.5)",
            "FOSCTTM CLUE / MultiVAE",
        ],
        ratio_rows,
    )
    abl_table = ""
    if ablation:
        full = ablation["full (defaults)"]["matching"]
        abl_table = markdown_table(
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
    header = (
        f"# Cross-modal matching (RNA-derived vs second-modality-derived latents)\n\n"
        f"Machine: {platform.platform()}, {os.cpu_count()} CPUs, torch threads {threads}, "
        f"load average at end {os.getloadavg()[0]:.1f}; scglue {scglue_version or 'n/a'}.\n"
        f"Command: `{' '.join(['.venv/bin/python', *sys.argv])}`\n\n"
        "Each method trained once per dataset on all paired cells, equal epochs, early stopping "
        "off, package defaults otherwise (scglue: `SCCLUEModel` defaults, NB for every "
        "modality, batch as `use_batch`, early stopping and LR reduction off). FOSCTTM: "
        "`mosaicvi.metrics.foscttm`; matching score: `matching_score(knn_matching_matrix("
        "z_rna, z_second, k=10))` (random = 1/N).\n"
    )
    report = "\n".join(
        [
            header,
            table,
            "",
            "## Ratios",
            "",
            ratios,
            "",
            f"## CLUE ablation on {ABLATION_DATASET} ({args.ablation_epochs} epochs)",
            "",
            abl_table or "(not run)",
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
