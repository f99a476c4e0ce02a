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

Methods (from :mod:`mosaicvi.registry`): every registered model (MultiVAE, CLUE, JAE; package
defaults), the registered scvi-tools peer of the data (MULTIVI for RNA+ATAC, TOTALVI for
CITE-seq; their defaults) and the RNA PCA baseline (30 components).

Labels and scoring. In every subsample a random half of the cells is *labelled*: the
semi-supervised models (those whose ``setup_mudata`` takes ``labels_key``: JAE) see those
labels; every metric is computed on the other half only, for every method, so no model was
shown the labels it is scored with. Metrics
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
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    DATA_DIR,
    RESULTS_DIR,
    add_methods_argument,
    label,
    registry,
    resolve_methods,
    run_in_parallel,
    set_threads,
    setup_model,
)
from _sample_size_data import (  # noqa: E402
    DATASETS,
    QUICK_SIZES,
    SIZES,
    epochs_for,
    prepare,
    subsample,
)
from _sample_size_report import plot, render, summarise  # noqa: E402

N_PCS = 30


# ============================================================================ worker
def _setup_totalvi(mdata):
    import scvi

    scvi.model.TOTALVI.setup_mudata(
        mdata, modalities={"rna_layer": "rna", "protein_layer": "adt"}, batch_key="batch"
    )
    return scvi.model.TOTALVI(mdata)


def _setup_multivi(mdata):
    import scvi

    scvi.model.MULTIVI.setup_mudata(
        mdata, modalities={"rna_layer": "rna", "atac_layer": "atac"}, batch_key="batch"
    )
    return scvi.model.MULTIVI(mdata)


#: Peers by registry name: set-up and construction with their defaults.
PEERS = {"totalvi": _setup_totalvi, "multivi": _setup_multivi}


def _fit(method, spec: dict, mdata, epochs: int) -> np.ndarray:
    """The latent of every cell of ``mdata`` from one registered method."""
    if method.kind == "baseline":
        if method.name != "pca":
            raise NotImplementedError(f"sample_size.py has no runner for {method.display_name}")
        from mosaicvi.benchmark._baselines import rna_pca

        return rna_pca(mdata["rna"].X, n_comps=N_PCS, seed=0)
    if method.kind == "peer":
        model = PEERS[method.name](mdata)
    else:  # a mosaicvi model; semi-supervised ones get the labelled half's labels
        cls = method.model_class()
        setup_model(cls, mdata, ["rna", spec["second"]], labels="train_label")
        model = cls(mdata)
    model.train(max_epochs=epochs, early_stopping=False, enable_progress_bar=False)
    return model.get_latent_representation()


def run_worker(args: argparse.Namespace) -> None:
    """Train one method on every subsample size for one seed; score and save the results."""
    import mudata as md
    import scvi

    from mosaicvi.metrics import joint_embedding_scores

    set_threads(1)
    key, name, seed = args.worker[0], args.worker[1], int(args.worker[2])
    method = registry().get(name)
    spec = DATASETS[key]
    md.set_options(pull_on_update=False)
    full = md.read_h5mu(args.data)
    labels_all = full.obs["label"].astype(str).replace("", np.nan).to_numpy(dtype=object)
    records = []
    for size in args.sizes:
        cells, labelled = subsample(full.n_obs, size, seed)
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
                "method": name,
                "seed": seed,
                "n_cells": int(len(cells)),
                "epochs": None if method.kind == "baseline" else epochs,
                "train_s": train_s,
                **{k: float(v) for k, v in scores.items()},
            }
        )
        print(json.dumps(records[-1]), flush=True)
    Path(args.result).write_text(json.dumps(records, indent=1))


# ============================================================================ parent
def _tasks(keys, methods, seeds) -> list[tuple[str, str, int]]:
    """(dataset, method label, seed) of every run, in report order (registry order)."""
    return [
        (k, label(m), s)
        for k in keys
        for m in resolve_methods(methods, DATASETS[k]["second"])
        for s in seeds
    ]


def _schedule(tasks: list[tuple[str, str, int]]) -> list[tuple[str, str, int]]:
    """Trained methods before baselines (seconds), lower seeds first: slots finish together."""
    trained = {label(m) for m in registry().methods() if m.kind != "baseline"}
    return sorted(tasks, key=lambda t: (t[1] not in trained, t[2]))


def _result_path(runs: Path, task: tuple[str, str, int], quick: bool) -> Path:
    key, method, seed = task
    return runs / f"{key}__{method}__{seed}{'_quick' if quick else ''}.json"


def _command(task, result: Path, data: Path, sizes, quick: bool) -> list[str]:
    key, method, seed = task
    return [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        key,
        method,
        str(seed),
        "--data",
        str(data),
        "--result",
        str(result),
        "--sizes",
        *map(str, sizes),
    ] + (["--quick"] if quick else [])


def run_all(args: argparse.Namespace) -> list[dict]:
    """Every (dataset, method, seed) not cached yet, ``args.jobs`` at a time; all records."""
    runs = Path(args.out) / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    sizes = QUICK_SIZES if args.quick else SIZES
    seeds = range(1 if args.quick else args.subsamples)
    data = {key: prepare(key, args.quick, Path(args.out)) for key in args.datasets}
    tasks = _tasks(args.datasets, args.methods, seeds)
    pending = [t for t in _schedule(tasks) if not _result_path(runs, t, args.quick).exists()]
    args.n_cached = len(tasks) - len(pending)
    print(f"{len(pending)} runs to do ({args.jobs} at a time), results in {runs}", flush=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    runs_to_do = []
    for task in pending:
        result = _result_path(runs, task, args.quick)
        cmd = _command(task, result, data[task[0]], sizes, args.quick)
        key, method, seed = task
        runs_to_do.append((f"{key} {method} seed {seed}", cmd, result.with_suffix(".log")))
    run_in_parallel(runs_to_do, env, args.jobs)
    records = []
    for task in tasks:
        result = _result_path(runs, task, args.quick)
        if result.exists():
            records += json.loads(result.read_text())
    return records


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", nargs="+", choices=list(DATASETS), default=list(DATASETS))
    add_methods_argument(p, "model", "peer", "baseline")
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
