"""Integration, imputation, unimodal-vs-joint and cost benchmark: mosaicvi models vs peers.

For each dataset (CITE-seq: peer TOTALVI; RNA+ATAC: peer MULTIVI) and each method (every model of
:mod:`mosaicvi.registry`, the registered peer for the data and the RNA PCA baseline; ``--methods``
chooses) this script trains one model on a *mosaic* version of the data:
the second modality (ADT or ATAC) of the last batch(es) in sorted order is hidden during
training. From that one run per method it measures

- scIB integration scores (bio, batch, total = 0.6 bio + 0.4 batch) of the joint embedding of
  ALL cells (hidden-modality cells are embedded from RNA alone), labels ``cell_type``, batches
  ``batch`` (:func:`mosaicvi.metrics.integration_scores`);
- imputation of the hidden modality for the hidden cells: mean per-feature Pearson of log1p
  values against the held-out counts (:func:`mosaicvi.metrics.imputation_scores`);
- 15-NN overlap between the RNA-only (and second-modality-only) embedding and the joint
  embedding of the paired cells (:func:`mosaicvi.metrics.knn_overlap`);
- seconds per epoch and peak memory, each method in its own fresh subprocess.

A second task (``--task joint``, run by default too) trains every registered model on the fully
paired NeurIPS 2021 CITE-seq and Multiome sets and scores their joint embeddings with the
NeurIPS 2021 joint-embedding score (see ``_joint.py``).

Usage::

    .venv/bin/python benchmarks/integration.py                 # full run (< 45 min, 2 cores)
    .venv/bin/python benchmarks/integration.py --task joint    # joint-embedding table only
    .venv/bin/python benchmarks/integration.py --quick         # smoke run (2 epochs, small)
    .venv/bin/python benchmarks/integration.py --datasets bmmc_cite sln_cite --epochs 50
    .venv/bin/python benchmarks/integration.py --methods multivae peer pca   # one model only

Internally the script re-invokes itself as ``--worker METHOD DATASET`` for each method; the
worker (``_integration_workers.py``) writes embeddings / predictions to ``.npz`` and its timings
to ``.json``; the parent scores everything with the same code (``_integration_report.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _joint  # noqa: E402
from _common import (  # noqa: E402
    DATASETS,
    RESULTS_DIR,
    add_methods_argument,
    auto_threads,
    fmt,
    label,
    launch_worker,
    peak_rss_mb,
    prepare_dataset,
    registry,
    reset_peak_rss,
    resolve_methods,
    rss_mb,
    set_threads,
    snapshot_source,
)
from _integration_report import render, score  # noqa: E402
from _integration_workers import SEED, run_method  # noqa: E402

QUICK_EPOCHS = 2
QUICK_SUBSAMPLE = {"snare_cortex": 1500}


# ============================================================================ worker
def run_worker(args: argparse.Namespace) -> None:
    """One method on one dataset in this fresh process; arrays to ``.npz``, meta to ``.json``."""
    name, key = args.worker
    threads = set_threads(args.threads)
    import scvi

    scvi.settings.seed = SEED
    # import every library any method needs, so all workers pay the same base memory
    import mudata  # noqa: F401
    import scanpy  # noqa: F401

    import mosaicvi

    print(
        f"worker {name} {key}: torch threads {threads}, mosaicvi from {mosaicvi.__file__}",
        flush=True,
    )
    method = registry().get(name)
    t0 = time.perf_counter()
    prep = prepare_dataset(key, subsample=args.subsample)
    rss_before = rss_mb()
    peak_loading = peak_rss_mb()  # VmHWM: this process only (ru_maxrss can carry the parent's)
    reset_ok = reset_peak_rss()
    if args.task == "joint":
        out, meta = _joint.worker(method, prep, args.epochs)
    else:
        out, meta = run_method(method, prep, args.epochs)
    meta.update(
        method=name,
        dataset=key,
        threads=threads,
        mosaicvi_file=mosaicvi.__file__,
        epochs_requested=args.epochs if meta.get("epochs_run") is not None else None,
        peak_rss_mb=peak_rss_mb() if reset_ok else None,
        rss_before_mb=rss_before,
        process_peak_mb=max(peak_loading, peak_rss_mb()),
        total_s=time.perf_counter() - t0,
        obs_names=list(prep.mdata.obs_names),
    )
    if meta["peak_rss_mb"] is not None and rss_before is not None:
        meta["train_delta_mb"] = meta["peak_rss_mb"] - rss_before
    if meta.get("epochs_run"):
        meta["s_per_epoch"] = meta["train_s"] / meta["epochs_run"]
    np.savez(args.result + ".npz", **out)
    with open(args.result + ".json", "w") as fh:
        json.dump(meta, fh, indent=1)


# ============================================================================ parent
def launch(
    method: str,
    key: str,
    epochs: int,
    threads: int,
    subsample,
    workdir: Path,
    source_path,
    task: str = "mosaic",
):
    """Run one method in a fresh subprocess; returns (arrays, meta) or (None, error meta)."""
    worker_args = ["--worker", method, key, "--epochs", str(epochs), "--threads", str(threads)]
    worker_args += ["--task", task]
    if subsample:
        worker_args += ["--subsample", str(subsample)]
    result = workdir / f"{task}__{key}__{method}"
    log = workdir / f"{task}__{key}__{method}.log"
    return launch_worker(
        Path(__file__).resolve(),
        worker_args,
        result,
        log,
        threads,
        source_path,
        label=f"{method} on {key}",
    )


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--datasets",
        nargs="+",
        choices=list(DATASETS),
        default=None,
        help="subset of datasets (default: all)",
    )
    p.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="override the per-dataset epoch budget (same for every trained method)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke run: {QUICK_EPOCHS} epochs, SNARE-seq subsampled",
    )
    p.add_argument("--out", default=str(RESULTS_DIR / "integration.md"), help="markdown output")
    p.add_argument(
        "--task",
        choices=["all", "mosaic", "joint"],
        default="all",
        help="mosaic: the models vs peers with a hidden modality; joint: every registered model, "
        "NeurIPS 2021 joint-embedding score on paired data; all (default): both",
    )
    add_methods_argument(p, "model", "peer", "baseline", note="mosaic task: ")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads per worker (default: 2 on an idle machine, else 1)",
    )
    p.add_argument(
        "--source",
        choices=["head", "worktree"],
        default="head",
        help="mosaicvi code to benchmark, frozen at start: the last commit (default) or the "
        "working tree",
    )
    p.add_argument(
        "--from-json",
        default=None,
        help="only re-render the markdown (to --out) from a JSON written by an earlier run",
    )
    # internal
    p.add_argument("--worker", nargs=2, metavar=("METHOD", "DATASET"), help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    p.add_argument("--subsample", type=int, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.worker:
        run_worker(args)
        return
    if args.from_json:
        with open(args.from_json) as fh:
            saved = json.load(fh)
        write_report(saved["run"], saved["datasets"], Path(args.out), saved.get("joint"))
        return

    keys = args.datasets or list(DATASETS)
    threads = args.threads or auto_threads()
    set_threads(threads)
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    workdir = out_path.parent / (out_path.stem + "_work")
    workdir.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()
    source = snapshot_source(args.source, workdir)
    sys.path.insert(0, source["path"])  # the parent's scoring uses the same frozen copy
    print(
        f"mosaicvi source frozen for this run: {source['mode']} (commit {source['commit']}, "
        f"uncommitted changes in src/mosaicvi: {source['dirty_src']}) -> {source['path']}",
        flush=True,
    )
    print(
        f"integration benchmark: task {args.task}, datasets {keys}, methods {args.methods} "
        f"(joint task: {[label(m) for m in _joint.joint_methods()]}), quick={args.quick}, "
        f"torch threads per worker {threads} (load average {load[0]:.2f} on "
        f"{os.cpu_count()} cores), seed {SEED}",
        flush=True,
    )
    t_start = time.perf_counter()
    ctx = {"threads": threads, "workdir": workdir, "source_path": source["path"], "t0": t_start}
    results: dict = {}
    for key in keys if args.task in ("all", "mosaic") else []:
        results[key] = run_mosaic(args, key, ctx)
    joint: dict = {}
    if args.task in ("all", "joint"):
        joint = run_joint(args, keys, threads, workdir, source["path"], t_start)
    run = {
        "quick": args.quick,
        "threads": threads,
        "load_average": load[0],
        "n_cpu": os.cpu_count(),
        "total_s": time.perf_counter() - t_start,
        "source": source,
    }
    with open(out_path.with_suffix(".json"), "w") as fh:
        json.dump({"run": run, "datasets": results, "joint": joint}, fh, indent=1, default=float)
    write_report(run, results, out_path, joint)


def run_mosaic(args, key: str, ctx: dict) -> dict:
    """The mosaic task on one dataset: every chosen method in its worker, scored here."""
    spec = DATASETS[key]
    epochs = QUICK_EPOCHS if args.quick else (args.epochs or spec.epochs)
    subsample = QUICK_SUBSAMPLE.get(key) if args.quick else None
    prep = prepare_dataset(key, subsample=subsample)
    result = {
        "epochs": epochs,
        "peer": spec.peer,
        "n_cells": prep.mdata.n_obs,
        "n_hidden": int(prep.hidden.sum()),
        "hidden_batches": prep.hidden_batches,
        "notes": prep.notes,
        "methods": {},
    }
    threads = ctx["threads"]
    for method in resolve_methods(args.methods, spec.second):
        name = label(method)
        print(f"[{time.perf_counter() - ctx['t0']:7.0f}s] {key}: {name} ...", flush=True)
        arrays, meta = launch(
            name, key, epochs, threads, subsample, ctx["workdir"], ctx["source_path"]
        )
        res = None
        if arrays is not None:
            try:
                res = score(prep, arrays, meta, threads)
            except Exception as err:  # noqa: BLE001 - report and continue
                print(f"  !! scoring {name} on {key} failed: {err!r}", flush=True)
                meta["error"] = f"scoring: {err!r}"
        meta.pop("obs_names", None)
        result["methods"][name] = {"meta": meta, "scores": res}
        if res is not None:
            print(
                f"    total {res['scib']['total']:.3f}, pearson "
                f"{res['imputation']['pearson']:.3f}, s/epoch "
                f"{fmt(meta.get('s_per_epoch'))}, worker wall {meta['wall_s']:.0f}s, "
                f"scoring {res['score_s']:.0f}s",
                flush=True,
            )
    return result


def run_joint(args, keys, threads: int, workdir: Path, source_path, t_start: float) -> dict:
    """The joint-embedding task: every registered model on the paired data, scored the same."""
    joint: dict = {}
    for key in [k for k in keys if k in _joint.JOINT_DATASETS]:
        epochs = QUICK_EPOCHS if args.quick else (args.epochs or DATASETS[key].epochs)
        prep = prepare_dataset(key)
        inputs = _joint.reference_inputs(prep)
        joint[key] = {
            "epochs": epochs,
            "n_cells": prep.mdata.n_obs,
            "hidden_batches": prep.hidden_batches,
            "cell_cycle_genes": inputs["cell_cycle_genes"],
            "n_trajectory_cells": inputs["n_trajectory_cells"],
            "methods": {},
        }
        for method in map(label, _joint.joint_methods()):
            print(f"[{time.perf_counter() - t_start:7.0f}s] joint {key}: {method} ...", flush=True)
            arrays, meta = launch(
                method, key, epochs, threads, None, workdir, source_path, task="joint"
            )
            scores = None
            if arrays is not None:
                scores = _joint.score(prep, arrays["z"], inputs, threads)
                print(f"    overall {scores['overall']:.3f}", flush=True)
            meta.pop("obs_names", None)
            joint[key]["methods"][method] = {"meta": meta, "scores": scores}
        pca = _joint.score(prep, inputs["unintegrated"], inputs, threads)
        joint[key]["methods"]["PCA"] = {"meta": {}, "scores": pca}
    return joint


def write_report(run: dict, results: dict, out_path: Path, joint: dict | None = None) -> None:
    report = render(results, run) if results else f"Run: {run['total_s'] / 60:.1f} min."
    if joint:
        report += "\n\n" + "\n".join(_joint.render(joint))
    print("\n" + report, flush=True)
    out_path.write_text(report + "\n")
    print(f"\nwritten: {out_path} (raw metrics: {out_path.with_suffix('.json')})", flush=True)


if __name__ == "__main__":
    main()
