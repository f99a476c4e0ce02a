"""Sample-size robustness: how many cells does each model need for a good joint embedding?

The design of the review among our reference papers, on two real paired datasets: subsample
500, 1,000, 2,500, 5,000 and 10,000 cells (or all cells, when a dataset has fewer), several
random subsamples per size, train every model on each subsample and score its joint embedding.

Datasets (prepared once per run, the same for every method):

- ``snare``: SNARE-seq mouse cortex (RNA + ATAC, 10,309 cells, 15 annotated cell types, 12
  libraries as batches). RNA: all 1,677 genes; ATAC: the 2,000 most frequently open peaks.
- ``reapseq``: REAP-seq PBMC (RNA + 48 proteins, 7,488 cells, 2 batches s4/s5). It has no
  annotation, so cells are labelled by protein marker gating (see :func:`gate_pbmc`). It
  replaces ``pbmc10k_cite_6855``, which has a single batch (no batch metrics) and 14 proteins.
  RNA: the 2,000 most variable genes (scanpy, ``seurat`` flavour, on all cells).

Methods: MultiVAE, CLUE, JAE (package defaults), the scvi-tools peer (MULTIVI for RNA+ATAC,
TOTALVI for CITE-seq; their defaults) and PCA of log-normalised RNA (30 components).

Labels and scoring. In every subsample a random half of the cells is *labelled*: JAE (the only
method that uses labels) sees those labels; every metric is computed on the other half only,
for every method, so no model was shown the labels it is scored with. Metrics
(:func:`mosaicvi.metrics.joint_embedding_scores`, k-means NMI for speed): biology = NMI,
cell-type ASW; batch removal = batch ASW, graph connectivity; ``overall`` = their mean.
Trajectory conservation and site ASW of the review are not computable here (no pseudotime or
lineage in cortex or PBMC, no site column); cell-cycle conservation is not part of this design.

Epoch budget: ``epochs(n) = clip(round(40,000 / n), 10, 80)`` for every neural method, i.e. about
the same number of cells seen (40k passes) at every size up to 4,000 cells, and 10 epochs above.

Usage::

    .venv/bin/python benchmarks/sample_size.py                  # 5 subsamples per size, < 1 h
    .venv/bin/python benchmarks/sample_size.py --subsamples 10  # the review's 10
    .venv/bin/python benchmarks/sample_size.py --quick          # CI smoke run (~1 min)

Outputs in ``--out`` (default ``benchmarks/results/sample_size``): ``sample_size.md`` (table of
mean ± sd), ``sample_size.json`` (every run), ``sample_size_<dataset>.png`` (one panel per
metric against the number of cells, one line per model with the spread across subsamples).
Runs are cached in ``<out>/runs/`` so an interrupted run resumes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DATA_DIR, RESULTS_DIR, fmt, markdown_table, set_threads  # noqa: E402

SIZES = (500, 1000, 2500, 5000, 10000)
QUICK_SIZES = (150, 300)
METHODS = ("MultiVAE", "CLUE", "JAE", "peer", "PCA")
DATASETS = {
    "snare": {
        "file": "snareseq_mouse_cortex_10k.h5mu",
        "second": "atac",
        "peer": "MULTIVI",
        "n_second": 2000,
        "n_genes": None,
    },
    "reapseq": {
        "file": "reapseq_pbmc_7488.h5mu",
        "second": "adt",
        "peer": "TOTALVI",
        "n_second": None,
        "n_genes": 2000,
    },
}
METRICS = (
    ("nmi", "NMI"),
    ("asw_label", "cell-type ASW"),
    ("asw_batch", "batch ASW"),
    ("graph_connectivity", "graph connectivity"),
    ("overall", "overall"),
    ("train_s", "training seconds"),
)
PASSES, MIN_EPOCHS, MAX_EPOCHS = 40_000, 10, 80
N_PCS = 30

#: Protein-marker gating of PBMC cell types (REAP-seq marker names, clones summed).
GATES = {
    "CD4 T": {"CD3": True, "CD4": True, "CD8": False},
    "CD8 T": {"CD3": True, "CD8": True, "CD4": False},
    "B": {"CD3": False, "CD19": True},
    "NK": {"CD3": False, "CD56": True, "CD19": False, "CD14": False},
    "Monocyte": {"CD3": False, "CD14": True, "CD19": False, "CD56": False},
}


def epochs_for(n_cells: int) -> int:
    """The epoch budget for ``n_cells`` (about ``PASSES`` cells seen, clipped)."""
    return int(np.clip(round(PASSES / n_cells), MIN_EPOCHS, MAX_EPOCHS))


# ============================================================================ data
def gate_pbmc(adt) -> np.ndarray:
    """Cell types from protein counts by marker gating; NaN for unassigned or ambiguous cells.

    Proteins are summed over clones of the same marker (name before ``_``), CLR-normalised per
    cell, and a marker is *positive* where a two-component Gaussian mixture on its CLR values
    puts the cell in the higher component. A cell gets a type when it matches exactly one
    gate of :data:`GATES` (e.g. CD4 T = CD3+ CD4+ CD8-).
    """
    import pandas as pd
    from sklearn.mixture import GaussianMixture

    x = adt.X.toarray() if hasattr(adt.X, "toarray") else np.asarray(adt.X)
    markers = pd.Index([name.split("_")[0] for name in adt.var_names])
    needed = sorted({m for gate in GATES.values() for m in gate})
    summed = np.stack([x[:, markers == m].sum(1) for m in needed], axis=1)
    logged = np.log1p(x)
    clr = np.log1p(summed) - logged.mean(1, keepdims=True)
    positive = {}
    for j, marker in enumerate(needed):
        values = clr[:, [j]]
        gmm = GaussianMixture(2, random_state=0).fit(values)
        high = int(np.argmax(gmm.means_.ravel()))
        positive[marker] = gmm.predict(values) == high
    labels = np.full(x.shape[0], np.nan, dtype=object)
    n_matches = np.zeros(x.shape[0], dtype=int)
    for name, gate in GATES.items():
        match = np.ones(x.shape[0], dtype=bool)
        for marker, wanted in gate.items():
            match &= positive[marker] == wanted
        labels[match] = name
        n_matches += match
    labels[n_matches != 1] = np.nan
    return labels


def prepare(key: str, quick: bool, out: Path) -> Path:
    """Preprocess a dataset once (features, labels, batch) and save it for the workers."""
    import anndata as ad
    import mudata as md
    import pandas as pd
    import scanpy as sc
    import scipy.sparse as sp

    spec = DATASETS[key]
    path = out / f"{key}{'_quick' if quick else ''}.h5mu"
    if path.exists():
        return path
    md.set_options(pull_on_update=False)
    raw = md.read_h5mu(DATA_DIR / spec["file"])
    rna, second = raw["rna"], raw[spec["second"]]
    cells = raw.obs_names.intersection(rna.obs_names).intersection(second.obs_names)
    rna, second = rna[cells], second[cells]
    x_rna = sp.csr_matrix(rna.X, dtype=np.float32)
    n_genes = 300 if quick else spec["n_genes"]
    if n_genes is not None and rna.n_vars > n_genes:
        tmp = ad.AnnData(x_rna.copy())
        sc.pp.normalize_total(tmp, target_sum=1e4)
        sc.pp.log1p(tmp)
        sc.pp.highly_variable_genes(tmp, n_top_genes=n_genes, flavor="seurat")
        keep_genes = np.flatnonzero(tmp.var["highly_variable"].to_numpy())
    else:
        keep_genes = np.arange(rna.n_vars)
    x_second = second.X
    x_second = sp.csr_matrix(x_second, dtype=np.float32) if sp.issparse(x_second) else x_second
    n_second = 300 if quick and spec["n_second"] else spec["n_second"]
    keep_second = np.arange(second.n_vars)
    if n_second is not None and second.n_vars > n_second:
        n_open = np.asarray((x_second > 0).sum(0)).ravel()
        keep_second = np.sort(np.argsort(-n_open, kind="stable")[:n_second])
    if key == "reapseq":
        labels = gate_pbmc(second)
    else:
        labels = raw.obs.loc[cells, "cell_type"].astype(object).to_numpy()
    obs = raw.obs.loc[cells, ["batch"]].astype(str).copy()
    obs["label"] = labels
    obs["label"] = obs["label"].astype(str).replace("nan", "")  # h5mu-friendly
    index = pd.DataFrame(index=cells.astype(str))
    second_x = x_second[:, keep_second]
    mdata = md.MuData(
        {
            "rna": ad.AnnData(
                x_rna[:, keep_genes], obs=index.copy(), var=rna.var[[]].iloc[keep_genes].copy()
            ),
            spec["second"]: ad.AnnData(
                second_x if sp.issparse(second_x) else np.asarray(second_x, dtype=np.float32),
                obs=index.copy(),
                var=second.var[[]].iloc[keep_second].copy(),
            ),
        }
    )
    mdata.obs = obs.loc[mdata.obs_names]
    mdata.write(path)
    return path


def _subsample(n_total: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Cells of one subsample and which of them are labelled (half, at random)."""
    rng = np.random.default_rng(1000 * seed + size)
    cells = np.sort(rng.choice(n_total, size=min(size, n_total), replace=False))
    labelled = np.zeros(len(cells), dtype=bool)
    labelled[rng.choice(len(cells), size=len(cells) // 2, replace=False)] = True
    return cells, labelled


# ============================================================================ worker
def _fit(method: str, spec: dict, mdata, epochs: int) -> np.ndarray:
    import scanpy as sc
    import scvi

    import mosaicvi as mv

    second = spec["second"]
    train = {"max_epochs": epochs, "early_stopping": False, "enable_progress_bar": False}
    if method == "PCA":
        rna = mdata["rna"].copy()
        sc.pp.normalize_total(rna, target_sum=1e4)
        sc.pp.log1p(rna)
        n_comps = min(N_PCS, rna.n_vars - 1, rna.n_obs - 1)
        sc.pp.pca(rna, n_comps=n_comps, random_state=0)
        return np.asarray(rna.obsm["X_pca"])
    if method == "MULTIVI":
        scvi.model.MULTIVI.setup_mudata(
            mdata, modalities={"rna_layer": "rna", "atac_layer": "atac"}, batch_key="batch"
        )
        model = scvi.model.MULTIVI(mdata)
    elif method == "TOTALVI":
        scvi.model.TOTALVI.setup_mudata(
            mdata, modalities={"rna_layer": "rna", "protein_layer": "adt"}, batch_key="batch"
        )
        model = scvi.model.TOTALVI(mdata)
    elif method == "JAE":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # few cell-cycle genes: the phase slice is untrained
            mv.model.JAE.setup_mudata(
                mdata, modalities=["rna", second], batch_key="batch", labels_key="train_label"
            )
        model = mv.model.JAE(mdata)
    else:
        cls = getattr(mv.model, method)
        cls.setup_mudata(mdata, modalities=["rna", second], batch_key="batch")
        model = cls(mdata)
    model.train(**train)
    return model.get_latent_representation()


def run_worker(args: argparse.Namespace) -> None:
    """Train one method on every subsample size for one seed; score and save the results."""
    import mudata as md
    import scvi

    from mosaicvi.metrics import joint_embedding_scores

    set_threads(1)
    key, method, seed = args.worker[0], args.worker[1], int(args.worker[2])
    spec = DATASETS[key]
    md.set_options(pull_on_update=False)
    full = md.read_h5mu(args.data)
    labels_all = full.obs["label"].astype(str).replace("", np.nan).to_numpy(dtype=object)
    records = []
    for size in args.sizes:
        cells, labelled = _subsample(full.n_obs, size, seed)
        sub = full[cells].copy()
        sub.obs["train_label"] = np.where(labelled, labels_all[cells], np.nan)
        scvi.settings.seed = seed
        epochs = 2 if args.quick else epochs_for(len(cells))
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            z = _fit(method, spec, sub, epochs)
        train_s = time.perf_counter() - t0
        scored = ~labelled
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scores = joint_embedding_scores(
                z[scored],
                labels_all[cells][scored],
                sub.obs["batch"].to_numpy()[scored],
                clustering="kmeans",
            )
        records.append(
            {
                "dataset": key,
                "method": method,
                "seed": seed,
                "n_cells": int(len(cells)),
                "epochs": None if method == "PCA" else epochs,
                "train_s": train_s,
                **{k: float(v) for k, v in scores.items()},
            }
        )
        print(json.dumps(records[-1]), flush=True)
    Path(args.result).write_text(json.dumps(records, indent=1))


# ============================================================================ parent
def _tasks(keys, methods, seeds) -> list[tuple[str, str, int]]:
    # slowest first, so the two worker slots finish together
    cost = {"CLUE": 4, "MultiVAE": 3, "MULTIVI": 3, "TOTALVI": 2, "JAE": 1, "PCA": 0}
    tasks = [
        (k, DATASETS[k]["peer"] if m == "peer" else m, s)
        for k in keys
        for m in methods
        for s in seeds
    ]
    return sorted(tasks, key=lambda t: (-cost[t[1]], t[2]))


def run_all(args: argparse.Namespace) -> list[dict]:
    out = Path(args.out)
    runs = out / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    sizes = QUICK_SIZES if args.quick else SIZES
    seeds = range(1 if args.quick else args.subsamples)
    data = {key: prepare(key, args.quick, out) for key in args.datasets}
    pending = []
    for key, method, seed in _tasks(args.datasets, args.methods, seeds):
        result = runs / f"{key}__{method}__{seed}{'_quick' if args.quick else ''}.json"
        if not result.exists():
            pending.append((key, method, seed, result))
    args.n_cached = len(list(_tasks(args.datasets, args.methods, seeds))) - len(pending)
    print(f"{len(pending)} runs to do ({args.jobs} at a time), results in {runs}", flush=True)
    running: list = []
    t_start = time.perf_counter()
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    while pending or running:
        while pending and len(running) < args.jobs:
            key, method, seed, result = pending.pop(0)
            cmd = [
                sys.executable,
                str(Path(__file__).resolve()),
                "--worker",
                key,
                method,
                str(seed),
                "--data",
                str(data[key]),
                "--result",
                str(result),
                "--sizes",
                *map(str, sizes),
            ] + (["--quick"] if args.quick else [])
            log = open(result.with_suffix(".log"), "w")  # noqa: SIM115 - closed when it ends
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
            running.append((proc, log, key, method, seed, result))
        time.sleep(0.5)
        for item in list(running):
            proc, log, key, method, seed, result = item
            if proc.poll() is None:
                continue
            log.close()
            running.remove(item)
            status = "ok" if proc.returncode == 0 else f"FAILED (exit {proc.returncode})"
            elapsed = time.perf_counter() - t_start
            print(f"[{elapsed:6.0f}s] {key} {method} seed {seed}: {status}", flush=True)
            if proc.returncode != 0:
                print(result.with_suffix(".log").read_text()[-2000:], flush=True)
    records = []
    for key, method, seed in _tasks(args.datasets, args.methods, seeds):
        result = runs / f"{key}__{method}__{seed}{'_quick' if args.quick else ''}.json"
        if result.exists():
            records += json.loads(result.read_text())
    return records


def summarise(records: list[dict]) -> dict:
    """``{dataset: {method: {n_cells: {metric: (mean, sd, n)}}}}``."""
    table: dict = {}
    for r in records:
        cell = table.setdefault(r["dataset"], {}).setdefault(r["method"], {})
        cell.setdefault(r["n_cells"], []).append(r)
    summary: dict = {}
    for key, methods in table.items():
        for method, by_size in methods.items():
            for n, rs in sorted(by_size.items()):
                stats = {}
                for metric, _ in METRICS:
                    values = np.array([r[metric] for r in rs], dtype=float)
                    values = values[np.isfinite(values)]
                    stats[metric] = (
                        (float(values.mean()), float(values.std()), int(values.size))
                        if values.size
                        else (float("nan"), float("nan"), 0)
                    )
                summary.setdefault(key, {}).setdefault(method, {})[n] = stats
    return summary


def plot(summary: dict, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for key, methods in summary.items():
        fig, axes = plt.subplots(2, 3, figsize=(13, 7.5))
        for ax, (metric, title) in zip(axes.ravel(), METRICS):
            for method, by_size in methods.items():
                sizes = np.array(sorted(by_size))
                mean = np.array([by_size[n][metric][0] for n in sizes])
                sd = np.array([by_size[n][metric][1] for n in sizes])
                if not np.isfinite(mean).any():
                    continue
                (line,) = ax.plot(sizes, mean, marker="o", label=method)
                ax.fill_between(sizes, mean - sd, mean + sd, alpha=0.2, color=line.get_color())
            ax.set_xscale("log")
            all_sizes = sorted({n for by_size in methods.values() for n in by_size})
            ax.set_xticks(all_sizes, [f"{n:,}" for n in all_sizes], fontsize=8)
            ax.minorticks_off()
            if metric == "train_s":
                ax.set_yscale("log")
            ax.set_title(title)
            ax.set_xlabel("number of cells")
            ax.grid(alpha=0.3)
        axes[0, 0].legend(fontsize=8)
        spec = DATASETS[key]
        fig.suptitle(
            f"{spec['file']}: mean ± sd over subsamples "
            "(metrics on cells whose labels no model saw)"
        )
        fig.tight_layout()
        path = out / f"sample_size_{key}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def render(summary: dict, run: dict) -> str:
    lines = [f"## Sample-size robustness{' (QUICK smoke run)' if run['quick'] else ''}", ""]
    for key, methods in summary.items():
        lines += [f"### {key} ({DATASETS[key]['file']})", ""]
        header = ["method", "cells", *[name for _, name in METRICS], "runs"]
        rows = []
        for method, by_size in methods.items():
            for n, stats in sorted(by_size.items()):
                cells = [
                    f"{fmt(stats[m][0], 1 if m == 'train_s' else 3)} ± "
                    f"{fmt(stats[m][1], 1 if m == 'train_s' else 3)}"
                    if stats[m][2]
                    else "n/a"
                    for m, _ in METRICS
                ]
                rows.append([method, str(n), *cells, str(stats["train_s"][2])])
        lines += [markdown_table(header, rows), ""]
    lines += [
        "- Each row: mean ± sd over random subsamples of that many cells. Metrics on the half of "
        "each subsample whose labels no model saw (JAE trains on the other half's labels): NMI "
        "(k-means, k = number of types) and cell-type ASW (biology), batch ASW and graph "
        "connectivity (batch removal), overall = mean of the four "
        "(`mosaicvi.metrics.joint_embedding_scores`). Not computable on these data: trajectory "
        "conservation, site ASW.",
        f"- Epochs: clip(round({PASSES:,} / cells), {MIN_EPOCHS}, {MAX_EPOCHS}) for every "
        "neural method; package/peer defaults otherwise; early stopping off. Training seconds: "
        "wall time of `train()` on 1 torch thread, 2 runs in parallel on the 2-core machine.",
        f"- This invocation: {run['total_s'] / 60:.1f} min for {run['n_runs']} trainings, "
        f"{run['n_cached']} task(s) of them reused from `runs/` (cached earlier).",
        "- REAP-seq labels come from protein gating (`gate_pbmc`: CD4 T, CD8 T, B, NK, "
        "monocytes; ambiguous cells unlabelled and left out of the label metrics).",
    ]
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", nargs="+", choices=list(DATASETS), default=list(DATASETS))
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--subsamples", type=int, default=5, help="random subsamples per size")
    p.add_argument("--jobs", type=int, default=2, help="trainings run in parallel (1 thread each)")
    p.add_argument("--quick", action="store_true", help="CI smoke run: 1 subsample, tiny sizes")
    p.add_argument("--out", default=str(RESULTS_DIR / "sample_size"))
    p.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    p.add_argument("--sizes", nargs="+", type=int, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.worker:
        run_worker(args)
        return
    if not DATA_DIR.is_dir():
        sys.exit(f"real data folder {DATA_DIR} not found (set MOSAICVI_DATA_DIR)")
    t0 = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    records = run_all(args)
    summary = summarise(records)
    run = {
        "quick": args.quick,
        "total_s": time.perf_counter() - t0,
        "n_runs": len(records),
        "n_cached": args.n_cached,
    }
    (out / "sample_size.json").write_text(json.dumps({"run": run, "records": records}, indent=1))
    figures = plot(summary, out)
    report = render(summary, run)
    (out / "sample_size.md").write_text(report + "\n")
    print("\n" + report)
    print(f"\nwritten: {out / 'sample_size.md'}, " + ", ".join(str(f) for f in figures))


if __name__ == "__main__":
    main()
