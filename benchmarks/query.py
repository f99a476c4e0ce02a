"""Query-mapping benchmark: mosaicvi models' scArches-style mapping vs TOTALVI / MULTIVI.

For each dataset a reference model is trained on the reference batches (paired modalities),
then the held-out query batches are mapped onto it three times: as (a) paired cells, (b) RNA
only, (c) second modality only (ADT or ATAC). The methods are those of :mod:`mosaicvi.registry`
(every model and the data's peer by default; ``--methods`` chooses). Every method maps with its
own query API (mosaicvi models: ``load_query_data``; TOTALVI / MULTIVI:
``prepare_query_anndata`` / ``prepare_query_mudata`` + ``load_query_data``). Per protocol and
method it measures

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
task ``map`` or ``scratch``) with mosaicvi imported from a frozen copy of the source
(``_query_models.py``: every registered model; ``_query_peers.py``: the peers); the parent
scores every output with the same code (``_query_report.py``).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    DATASETS,
    RESULTS_DIR,
    add_methods_argument,
    fmt,
    label,
    launch_worker,
    prepare_dataset,
    registry,
    resolve_methods,
    set_threads,
    snapshot_source,
)
from _query_data import (  # noqa: E402
    QUERY_DATASETS,
    QUERY_EPOCHS,
    QUICK_EPOCHS,
    QUICK_SUBSAMPLE,
    REF_EPOCHS,
    SEED,
    TASKS,
    _split,
    protocols,
)
from _query_models import MODEL_WORKERS  # noqa: E402
from _query_peers import PEER_WORKERS  # noqa: E402
from _query_report import evaluate, rescore, write_report  # noqa: E402


# ============================================================================ worker
def worker_for(task: str, method):
    """The ``map`` / ``scratch`` worker of a registered method."""
    if method.kind == "model":
        return functools.partial(MODEL_WORKERS[task], method)
    if method.name in PEER_WORKERS:
        return PEER_WORKERS[method.name][task]
    raise NotImplementedError(f"query.py has no {task} worker for {method.display_name}")


def run_worker(args: argparse.Namespace) -> None:
    task, name, key = args.worker
    threads = set_threads(args.threads)
    import scvi

    scvi.settings.seed = SEED
    import mosaicvi

    print(
        f"worker {task} {name} {key}: torch threads {threads}, mosaicvi from "
        f"{mosaicvi.__file__}, epochs ref {args.ref_epochs} / query {args.query_epochs}",
        flush=True,
    )
    prep = prepare_dataset(key, subsample=args.subsample)
    work = worker_for(task, registry().get(name))
    out, meta = work(prep, args.ref_epochs, args.query_epochs)
    meta.update(
        task=task,
        method=name,
        dataset=key,
        threads=threads,
        mosaicvi_file=mosaicvi.__file__,
        obs_names=list(prep.mdata.obs_names),
    )
    np.savez(args.result + ".npz", **out)
    with open(args.result + ".json", "w") as fh:
        json.dump(meta, fh, indent=1, default=str)


# ============================================================================ parent
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", nargs="+", choices=QUERY_DATASETS, default=list(QUERY_DATASETS))
    add_methods_argument(p, "model", "peer")
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
    ctx = {
        "threads": threads,
        "workdir": workdir,
        "source_path": source["path"],
        "tasks": ["map"] if args.no_scratch else list(TASKS),
        "t0": time.perf_counter(),
    }
    results = {key: run_dataset(args, key, ctx) for key in args.datasets}
    run = {
        "quick": args.quick,
        "threads": threads,
        "load_average": load[0],
        "n_cpu": os.cpu_count(),
        "total_s": time.perf_counter() - ctx["t0"],
        "source": source,
        "command": " ".join([".venv/bin/python", "benchmarks/query.py", *sys.argv[1:]]),
    }
    with open(out_path.with_suffix(".json"), "w") as fh:
        json.dump({"run": run, "datasets": results}, fh, indent=1, default=float)
    write_report(run, results, out_path)


def _dataset_info(args, key: str, prep, ref_epochs: int, query_epochs: int) -> dict:
    """What the report says about a dataset's reference / query split (methods added later)."""
    spec = DATASETS[key]
    ref_idx, q_idx = _split(prep)
    ct = prep.mdata.obs["cell_type"].astype(str)
    unseen = ~ct.iloc[q_idx].isin(set(ct.iloc[ref_idx]))
    reduced = not args.quick and ref_epochs < spec.epochs
    return {
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
            if reduced
            else []
        ),
        "methods": {},
    }


def run_dataset(args, key: str, ctx: dict) -> dict:
    """Every chosen method on one dataset: map (scored here) and scratch workers."""
    if args.quick:
        ref_epochs = query_epochs = QUICK_EPOCHS
    else:
        ref_epochs = args.ref_epochs or REF_EPOCHS[key]
        query_epochs = args.query_epochs or QUERY_EPOCHS[key]
    subsample = QUICK_SUBSAMPLE.get(key) if args.quick else None
    prep = prepare_dataset(key, subsample=subsample)
    result = _dataset_info(args, key, prep, ref_epochs, query_epochs)
    worker_args = ["--threads", str(ctx["threads"]), "--ref-epochs", str(ref_epochs)]
    worker_args += ["--query-epochs", str(query_epochs)]
    if subsample:
        worker_args += ["--subsample", str(subsample)]
    for method in resolve_methods(args.methods, prep.second):
        name = label(method)
        result["methods"][name] = run_method(prep, name, worker_args, ctx)
    return result


def run_method(prep, name: str, worker_args: list[str], ctx: dict) -> dict:
    """One method's workers (map, scratch) on one dataset; the map outputs scored."""
    key, threads = prep.spec.key, ctx["threads"]
    entry: dict = {"meta": {}, "scores": {}}
    for task in ctx["tasks"]:
        print(f"[{time.perf_counter() - ctx['t0']:7.0f}s] {key}: {name} {task} ...", flush=True)
        stem = ctx["workdir"] / f"{key}__{name}__{task}"
        arrays, meta = launch_worker(
            Path(__file__).resolve(),
            ["--worker", task, name, key, *worker_args],
            stem,
            stem.with_suffix(".log"),
            threads,
            ctx["source_path"],
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
    return entry


if __name__ == "__main__":
    main()
