"""Integration, imputation, unimodal-vs-joint and cost benchmark: MultiVAE vs scvi-tools peers.

For each dataset (CITE-seq: peer TOTALVI; RNA+ATAC: peer MULTIVI) and each method (MultiVAE,
the peer, and a PCA baseline) this script trains one model on a *mosaic* version of the data:
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

A second task (``--task joint``, run by default too) trains JAE, MultiVAE and CLUE on the fully
paired NeurIPS 2021 CITE-seq and Multiome sets and scores their joint embeddings with the
NeurIPS 2021 joint-embedding score (see ``_joint.py``).

Usage::

    .venv/bin/python benchmarks/integration.py                 # full run (< 45 min, 2 cores)
    .venv/bin/python benchmarks/integration.py --task joint    # joint-embedding table only
    .venv/bin/python benchmarks/integration.py --quick         # smoke run (2 epochs, small)
    .venv/bin/python benchmarks/integration.py --datasets bmmc_cite sln_cite --epochs 50

Internally the script re-invokes itself as ``--worker METHOD DATASET`` for each method; the
worker writes embeddings / predictions to ``.npz`` and its timings to ``.json``; the parent
scores everything with the same code.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _joint  # noqa: E402
from _common import (  # noqa: E402
    DATASETS,
    RESULTS_DIR,
    Prepared,
    Timer,
    auto_threads,
    epochs_run,
    fmt,
    launch_worker,
    markdown_table,
    met,
    peak_rss_mb,
    prepare_dataset,
    ratio,
    reset_peak_rss,
    rss_mb,
    set_threads,
    snapshot_source,
    source_note,
)

METHODS = ("MultiVAE", "peer", "PCA")
SEED = 0
K_NN = 15
N_PCS = 16
QUICK_EPOCHS = 2
QUICK_SUBSAMPLE = {"snare_cortex": 1500}


# ============================================================================ workers
def _worker_multivae(prep: Prepared, epochs: int) -> tuple[dict, dict]:
    import mosaicvi as mv
    from mosaicvi.benchmark import hide_second_modality

    full, second = prep.mdata, prep.second
    keep = ~prep.hidden
    mosaic = hide_second_modality(prep)
    mv.model.MultiVAE.setup_mudata(
        mosaic, modalities={"rna": "rna", second: second}, batch_key="batch"
    )
    model = mv.model.MultiVAE(mosaic)
    print(model, flush=True)
    with Timer() as t:  # package defaults otherwise (no tuning here)
        model.train(max_epochs=epochs, early_stopping=False, enable_progress_bar=False)
    batch_size = inspect.signature(model.train).parameters["batch_size"].default
    paired = np.flatnonzero(keep)
    hidden = np.flatnonzero(prep.hidden)
    out = {
        "z": model.get_latent_representation(),
        "z_joint_paired": model.get_latent_representation(indices=paired),
        "z_rna_paired": model.get_latent_representation(indices=paired, modality="rna"),
        "z_second_paired": model.get_latent_representation(indices=paired, modality=second),
    }
    pred = model.get_normalized_expression(indices=hidden, modality=second, library_size="latent")
    assert list(pred.index) == list(full.obs_names[hidden])
    assert list(pred.columns) == list(full[second].var_names)
    out["imputed"] = pred.to_numpy(dtype=np.float32)
    meta = {
        "train_s": t.seconds,
        "epochs_run": epochs_run(model, epochs),
        "imputation_call": f"get_normalized_expression(modality={second!r}, library_size='latent')",
        "config": f"package defaults ({model.module.__class__.__name__}; train batch size "
        f"{batch_size})",
        "summary": str(model),
    }
    return out, meta


def _worker_totalvi(prep: Prepared, epochs: int) -> tuple[dict, dict]:
    import scvi

    from mosaicvi.benchmark import zero_second_modality

    mdata = zero_second_modality(prep)
    scvi.model.TOTALVI.setup_mudata(
        mdata, modalities={"rna_layer": "rna", "protein_layer": "adt"}, batch_key="batch"
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Some proteins have all 0 counts")
        model = scvi.model.TOTALVI(mdata)
    print(model, flush=True)
    mask = getattr(model.module, "protein_batch_mask", None)
    with Timer() as t:
        model.train(max_epochs=epochs, early_stopping=False, enable_progress_bar=False)
    hidden = np.flatnonzero(prep.hidden)
    _, pro_mean = model.get_normalized_expression(indices=hidden, include_protein_background=True)
    _, pro_fore = model.get_normalized_expression(indices=hidden)
    assert list(pro_mean.columns) == list(prep.mdata["adt"].var_names)
    out = {
        "z": model.get_latent_representation(),
        "imputed": pro_mean.to_numpy(dtype=np.float32),
        "imputed_alt": pro_fore.to_numpy(dtype=np.float32),
    }
    meta = {
        "train_s": t.seconds,
        "epochs_run": epochs_run(model, epochs),
        "imputation_call": "get_normalized_expression(include_protein_background=True)[1] "
        "(expected protein counts: foreground + background); alt = default (foreground only)",
        "config": "defaults: n_latent 20, batch 256, lr 4e-3, reduce_lr_on_plateau (validation "
        "every epoch), adversarial classifier on when a batch lacks proteins",
        "protein_batch_mask_detected": mask is not None,
    }
    return out, meta


def _worker_multivi(prep: Prepared, epochs: int) -> tuple[dict, dict]:
    import scvi

    from mosaicvi.benchmark import zero_second_modality

    mdata = zero_second_modality(prep)
    scvi.model.MULTIVI.setup_mudata(
        mdata, modalities={"rna_layer": "rna", "atac_layer": "atac"}, batch_key="batch"
    )
    model = scvi.model.MULTIVI(mdata)
    print(model, flush=True)
    with Timer() as t:
        model.train(max_epochs=epochs, early_stopping=False, enable_progress_bar=False)
    paired = np.flatnonzero(~prep.hidden)
    hidden = np.flatnonzero(prep.hidden)
    acc = model.get_normalized_accessibility(indices=hidden)
    assert list(acc.columns) == list(prep.mdata["atac"].var_names)
    out = {
        "z": model.get_latent_representation(),
        "z_joint_paired": model.get_latent_representation(indices=paired),
        "z_rna_paired": model.get_latent_representation(indices=paired, modality="expression"),
        "z_second_paired": model.get_latent_representation(
            indices=paired, modality="accessibility"
        ),
        "imputed": acc.to_numpy(dtype=np.float32),
    }
    n_zero_atac = int((np.asarray(prep.mdata["atac"].X[paired].sum(1)).ravel() == 0).sum())
    meta = {
        "train_s": t.seconds,
        "epochs_run": epochs_run(model, epochs),
        "imputation_call": "get_normalized_accessibility() (accessibility probabilities)",
        "config": "defaults: n_latent sqrt(n_hidden), batch 128, lr 1e-4, 2-layer enc/dec, "
        "adversarial mixing; missing ATAC detected from all-zero rows",
        "paired_cells_with_zero_atac": n_zero_atac,
    }
    return out, meta


def _worker_pca(prep: Prepared, epochs: int) -> tuple[dict, dict]:
    import scanpy as sc
    import scipy.sparse as sp
    from sklearn.neighbors import NearestNeighbors

    full, second = prep.mdata, prep.second
    with Timer() as t:
        rna = full["rna"].copy()
        sc.pp.normalize_total(rna, target_sum=1e4)
        sc.pp.log1p(rna)
        sc.pp.pca(rna, n_comps=N_PCS, random_state=SEED)
        z = np.asarray(rna.obsm["X_pca"], dtype=np.float32)
        # imputation baseline: mean counts of the K_NN nearest paired cells in RNA PCA space
        paired = np.flatnonzero(~prep.hidden)
        hidden = np.flatnonzero(prep.hidden)
        nn = NearestNeighbors(n_neighbors=K_NN).fit(z[paired])
        idx = nn.kneighbors(z[hidden], return_distance=False)
        weights = sp.csr_matrix(
            (np.full(idx.size, 1.0 / K_NN), idx.ravel(), np.arange(0, idx.size + 1, K_NN)),
            shape=(len(hidden), len(paired)),
        )
        imputed = weights @ full[second].X[paired]
        imputed = np.asarray(
            imputed.toarray() if sp.issparse(imputed) else imputed, dtype=np.float32
        )
    out = {"z": z, "imputed": imputed}
    meta = {
        "train_s": t.seconds,
        "epochs_run": None,
        "imputation_call": f"mean {second} counts of the {K_NN} nearest paired cells in RNA PCA",
        "config": f"normalize_total 1e4, log1p, PCA {N_PCS} comps (RNA only, all cells)",
    }
    return out, meta


WORKERS = {
    "MultiVAE": _worker_multivae,
    "TOTALVI": _worker_totalvi,
    "MULTIVI": _worker_multivi,
    "PCA": _worker_pca,
}


def run_worker(args: argparse.Namespace) -> None:
    method, key = args.worker
    threads = set_threads(args.threads)
    import scvi

    scvi.settings.seed = SEED
    # import every library any method needs, so all workers pay the same base memory
    import mudata  # noqa: F401
    import scanpy  # noqa: F401

    import mosaicvi

    print(
        f"worker {method} {key}: torch threads {threads}, mosaicvi from {mosaicvi.__file__}",
        flush=True,
    )
    t0 = time.perf_counter()
    prep = prepare_dataset(key, subsample=args.subsample)
    rss_before = rss_mb()
    peak_loading = peak_rss_mb()  # VmHWM: this process only (ru_maxrss can carry the parent's)
    reset_ok = reset_peak_rss()
    if args.task == "joint":
        out, meta = _joint.worker(method, prep, args.epochs)
    else:
        out, meta = WORKERS[method](prep, args.epochs)
    meta.update(
        method=method,
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


def score(prep: Prepared, arrays: dict, meta: dict, threads: int) -> dict:
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
        help="override the per-dataset epoch budget (same for MultiVAE and the peer)",
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
        help="mosaic: MultiVAE vs peers with a hidden modality; joint: JAE/MultiVAE/CLUE "
        "NeurIPS 2021 joint-embedding score on paired data; all (default): both",
    )
    p.add_argument(
        "--methods",
        nargs="+",
        choices=METHODS,
        default=list(METHODS),
        help="methods to run (default: all)",
    )
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
    source_path = source["path"]
    sys.path.insert(0, source_path)  # the parent's scoring uses the same frozen copy
    print(
        f"mosaicvi source frozen for this run: {source['mode']} (commit {source['commit']}, "
        f"uncommitted changes in src/mosaicvi: {source['dirty_src']}) -> {source_path}",
        flush=True,
    )
    print(
        f"integration benchmark: task {args.task}, datasets {keys}, methods {args.methods} "
        f"(joint task: {list(_joint.JOINT_METHODS)}), quick={args.quick}, "
        f"torch threads per worker {threads} (load average {load[0]:.2f} on "
        f"{os.cpu_count()} cores), seed {SEED}",
        flush=True,
    )
    t_start = time.perf_counter()
    results: dict = {}
    for key in keys if args.task in ("all", "mosaic") else []:
        spec = DATASETS[key]
        epochs = QUICK_EPOCHS if args.quick else (args.epochs or spec.epochs)
        subsample = QUICK_SUBSAMPLE.get(key) if args.quick else None
        prep = prepare_dataset(key, subsample=subsample)
        results[key] = {
            "epochs": epochs,
            "peer": spec.peer,
            "n_cells": prep.mdata.n_obs,
            "n_hidden": int(prep.hidden.sum()),
            "hidden_batches": prep.hidden_batches,
            "notes": prep.notes,
            "methods": {},
        }
        for method in args.methods:
            name = spec.peer if method == "peer" else method
            print(f"[{time.perf_counter() - t_start:7.0f}s] {key}: {name} ...", flush=True)
            arrays, meta = launch(name, key, epochs, threads, subsample, workdir, source_path)
            res = None
            if arrays is not None:
                try:
                    res = score(prep, arrays, meta, threads)
                except Exception as err:  # noqa: BLE001 - report and continue
                    print(f"  !! scoring {name} on {key} failed: {err!r}", flush=True)
                    meta["error"] = f"scoring: {err!r}"
            meta.pop("obs_names", None)
            results[key]["methods"][name] = {"meta": meta, "scores": res}
            if res is not None:
                print(
                    f"    total {res['scib']['total']:.3f}, pearson "
                    f"{res['imputation']['pearson']:.3f}, s/epoch "
                    f"{fmt(meta.get('s_per_epoch'))}, worker wall {meta['wall_s']:.0f}s, "
                    f"scoring {res['score_s']:.0f}s",
                    flush=True,
                )
    joint: dict = {}
    if args.task in ("all", "joint"):
        joint = run_joint(args, keys, threads, workdir, source_path, t_start)
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


def run_joint(args, keys, threads: int, workdir: Path, source_path, t_start: float) -> dict:
    """The joint-embedding task: every method on the paired data, scored with the same code."""
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
        for method in _joint.JOINT_METHODS:
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


def render(results: dict, run: dict) -> str:
    header = [
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
    rows, ratio_rows, targets = [], [], []
    for key, r in results.items():
        for name, m in r["methods"].items():
            rows.append(_row(key, name, m["scores"], m["meta"]))
        mv, peer = r["methods"].get("MultiVAE"), r["methods"].get(r["peer"])
        if not (mv and peer and mv["scores"] and peer["scores"]):
            continue
        tot = ratio(mv["scores"]["scib"]["total"], peer["scores"]["scib"]["total"])
        pear = ratio(mv["scores"]["imputation"]["pearson"], peer["scores"]["imputation"]["pearson"])
        spe = ratio(mv["meta"].get("s_per_epoch"), peer["meta"].get("s_per_epoch"))
        ratio_rows.append([key, f"MultiVAE / {r['peer']}", fmt(tot), fmt(pear), fmt(spe)])
        targets.append((key, r["peer"], mv, peer))

    lines = [f"## Integration benchmark{' (QUICK smoke run)' if run['quick'] else ''}", ""]
    lines.append(markdown_table(header, rows))
    lines += ["", "### Ratios MultiVAE / peer", ""]
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
    for key, peer_name, mv, peer in targets:
        mt, pt = mv["scores"]["scib"]["total"], peer["scores"]["scib"]["total"]
        mp, pp = mv["scores"]["imputation"]["pearson"], peer["scores"]["imputation"]["pearson"]
        knn = mv["scores"].get("knn_rna")
        ms, ps = mv["meta"].get("s_per_epoch"), peer["meta"].get("s_per_epoch")
        out.append(
            f"- {key}: total ≥ {peer_name}: {met(mt >= pt)} ({mt:.4f} vs {pt:.4f}); "
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


def _notes(results: dict, run: dict) -> list[str]:
    notes = [
        "- Protocol: ONE training run per method and dataset, on a mosaic: the second modality "
        "(ADT/ATAC) of the hidden batch(es) below is withheld during training. Integration "
        "scores use the joint embedding of ALL cells from that run (hidden cells embedded from "
        "RNA only); imputation is scored on the hidden cells against their held-out counts; "
        "15-NN overlaps use the paired (non-hidden) cells. Same protocol for every method.",
        "- scIB: `mosaicvi.metrics.integration_scores` (bio = mean of label ASW, isolated "
        "labels, k-means NMI/ARI, cLISI; batch = mean of batch ASW, iLISI, graph connectivity; "
        "total = 0.6 bio + 0.4 batch). Imputation: `imputation_scores` mean per-feature "
        "Pearson of log1p(predicted) vs log1p(observed counts), constant features skipped.",
        "- MultiVAE: package defaults (no tuning), `get_normalized_expression(modality=..., "
        "library_size='latent')`. TOTALVI: hidden cells' proteins set to 0 (detected as a "
        "missing-protein batch); imputation = expected protein counts "
        "(`include_protein_background=True`); the default foreground-only output is in the "
        "JSON as `imputation_alt`. MULTIVI: hidden cells' ATAC set to 0 (its mosaic "
        "convention); imputation = `get_normalized_accessibility()` probabilities. "
        "Peers otherwise with their defaults. Early stopping off for all; TOTALVI keeps its "
        "default reduce-LR-on-plateau, which runs a validation pass every epoch.",
        "- 15-NN overlaps for the peer: TOTALVI has no unimodal embedding (n/a); MULTIVI's "
        "`get_latent_representation(modality='expression'|'accessibility')` is used.",
        "- PCA: log-normalised RNA (1e4, log1p), 16 PCs, all cells (RNA only, since the second "
        f"modality is missing for the hidden cells); its imputation is the mean of the {K_NN} "
        "nearest paired cells' counts in that PCA space. No epochs.",
        "- s/epoch: wall time of `train()` / epochs run. peak MB: peak RSS of the method's "
        "fresh worker process (all workers import the same libraries and load the same data); "
        "Δ train MB: peak RSS from model setup to the end of inference minus the RSS before.",
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
            f"- {key}: {r['n_cells']} cells, {r['epochs']} epochs for MultiVAE and "
            f"{r['peer']}; hidden batch(es) {', '.join(r['hidden_batches'])} "
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
    return notes


if __name__ == "__main__":
    main()
