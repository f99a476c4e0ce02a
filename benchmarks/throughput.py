"""Training throughput, inference time and memory at scale: mosaicvi models vs scvi-tools peers.

The methods are every model of :mod:`mosaicvi.registry` and the registered peer of each data type
(``--methods`` chooses). Simulated paired data (sparse counts, generated chunk by chunk, never
dense):

- ``cite``: RNA 4,000 genes + ADT 200 proteins; peer TOTALVI;
- ``multiome``: RNA 4,000 genes + ATAC 50,000 peaks (~2% open); peer MULTIVI;

at 10,000 and 100,000 cells (and 1,000,000 with ``--sizes``, meant for a GPU). Every method is
built at matched width and depth (1 hidden layer of 128 units, latent 16; CLUE 16 per
sub-space; JAE 1 layer of 128) and trained with batch size 128, in its own fresh subprocess
(peak memory is that process's). Reported: training cells per second over one epoch (or over
``--max-steps`` minibatches where an epoch would take too long on a CPU: the table says so),
the time per cell (must stay flat from 10k to 100k cells: linear scaling), peak RSS against the
size of the sparse input, and the time of ``get_latent_representation`` and
``get_normalized_expression`` (RNA, on 10,000 cells).

Usage::

    .venv/bin/python benchmarks/throughput.py                   # CPU: 10k and 100k cells
    .venv/bin/python benchmarks/throughput.py --quick           # 2,000 cells, smoke run
    .venv/bin/python benchmarks/throughput.py --sizes 10000 100000 1000000 --accelerator gpu
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
from _common import (  # noqa: E402
    RESULTS_DIR,
    WARMUP_STEPS,
    accepted,
    add_methods_argument,
    fmt,
    label,
    launch_worker,
    markdown_table,
    peak_rss_mb,
    ratio,
    registry,
    reset_peak_rss,
    resolve_methods,
    rss_mb,
    set_threads,
    setup_model,
    snapshot_source,
    source_note,
    step_timer,
)

CONFIGS = {
    "cite": {"second": "adt", "n_second": 200},
    "multiome": {"second": "atac", "n_second": 50_000},
}
N_GENES, N_TYPES, BATCH_SIZE, N_HIDDEN, N_LATENT = 4000, 10, 128, 128, 16
INFERENCE_CELLS = 10_000


# ============================================================================ data
def simulate_sparse(config: str, n_cells: int, seed: int = 0):
    """Paired sparse counts with cell types and 2 batches, generated in chunks of cells."""
    import anndata as ad
    import mudata as md
    import pandas as pd
    import scipy.sparse as sp

    spec = CONFIGS[config]
    rng = np.random.default_rng(seed)
    types = rng.integers(N_TYPES, size=n_cells)
    gene_profiles = rng.gamma(0.3, 1.0, size=(N_TYPES, N_GENES))
    gene_profiles /= gene_profiles.sum(1, keepdims=True)
    if spec["second"] == "atac":
        open_rate = rng.beta(0.2, 8.0, size=(N_TYPES, spec["n_second"]))  # ~2.4% open
    else:
        protein_means = rng.gamma(2.0, 30.0, size=(N_TYPES, spec["n_second"]))
    rna_chunks, second_chunks = [], []
    for start in range(0, n_cells, 2000):
        t = types[start : start + 2000]
        library = rng.lognormal(np.log(2000), 0.4, size=(len(t), 1))
        rna = rng.poisson(gene_profiles[t] * library).astype(np.float32)
        rna_chunks.append(sp.csr_matrix(rna))
        if spec["second"] == "atac":
            opened = rng.random((len(t), spec["n_second"]), dtype=np.float32) < open_rate[t]
            second_chunks.append(sp.csr_matrix(opened.astype(np.float32)))
        else:
            second_chunks.append(rng.poisson(protein_means[t]).astype(np.float32))
    rna = sp.vstack(rna_chunks, format="csr")
    second = (
        sp.vstack(second_chunks, format="csr")
        if spec["second"] == "atac"
        else np.vstack(second_chunks)
    )
    obs = pd.DataFrame(
        {
            "batch": np.where(np.arange(n_cells) % 2 == 0, "b0", "b1"),
            "cell_type": types.astype(str),
        },
        index=[f"cell{i}" for i in range(n_cells)],
    )
    mdata = md.MuData(
        {
            "rna": ad.AnnData(rna, obs=obs[[]].copy()),
            spec["second"]: ad.AnnData(second, obs=obs[[]].copy()),
        }
    )
    mdata.mod["rna"].var_names = [f"g{i}" for i in range(N_GENES)]
    mdata.mod[spec["second"]].var_names = [f"{spec['second']}{i}" for i in range(spec["n_second"])]
    mdata.update()
    mdata.obs = obs
    return mdata


def sparse_input_mb(mdata) -> float:
    """Size of the input counts as stored (CSR parts or dense arrays), MB."""
    total = 0
    for mod in mdata.mod.values():
        x = mod.X
        sparse = hasattr(x, "nnz")
        total += x.data.nbytes + x.indices.nbytes + x.indptr.nbytes if sparse else x.nbytes
    return total / 2**20


# ============================================================================ worker
def _build_totalvi(mdata, arch: dict):
    import scvi

    scvi.model.TOTALVI.setup_mudata(
        mdata, modalities={"rna_layer": "rna", "protein_layer": "adt"}, batch_key="batch"
    )
    return scvi.model.TOTALVI(mdata, n_layers_encoder=1, n_layers_decoder=1, **arch)


def _build_multivi(mdata, arch: dict):
    import scvi

    scvi.model.MULTIVI.setup_mudata(
        mdata, modalities={"rna_layer": "rna", "atac_layer": "atac"}, batch_key="batch"
    )
    return scvi.model.MULTIVI(mdata, n_layers_encoder=1, n_layers_decoder=1, **arch)


#: Peers by registry name: builder at matched architecture, ``get_normalized_expression`` options.
PEERS = {
    "totalvi": (_build_totalvi, {"return_mean": True}),
    "multivi": (_build_multivi, {}),
}


def _build(method, config: str, mdata, options: dict | None = None):
    """A registered method at matched width and depth (options its signature accepts)."""
    arch = {"n_hidden": N_HIDDEN, "n_latent": N_LATENT}
    if method.kind == "peer":
        return PEERS[method.name][0](mdata, arch)
    cls = method.model_class()  # semi-supervised models get the cell types
    second = CONFIGS[config]["second"]
    setup_model(cls, mdata, ["rna", second], labels="cell_type", cell_cycle_keys=None)
    return cls(mdata, **accepted(cls.__init__, n_layers=1, **arch, **(options or {})))


def _expression(method, model, cells) -> None:
    """``get_normalized_expression`` of RNA for ``cells`` (timed by the caller)."""
    if method.kind == "peer":
        model.get_normalized_expression(indices=cells, **PEERS[method.name][1])
    else:
        model.get_normalized_expression(indices=cells, modality="rna")


def run_worker(args: argparse.Namespace) -> None:
    import warnings

    import scvi

    threads = set_threads(args.threads)
    scvi.settings.seed = 0
    name, config, n_cells = args.worker[0], args.worker[1], int(args.worker[2])
    method = registry().get(name)
    t0 = time.perf_counter()
    mdata = simulate_sparse(config, n_cells)
    simulate_s = time.perf_counter() - t0
    input_mb = sparse_input_mb(mdata)
    rss_before = rss_mb()
    reset_peak_rss()
    warnings.simplefilter("ignore")
    t0 = time.perf_counter()
    model = _build(method, config, mdata, parse_options(args.options))
    setup_s = time.perf_counter() - t0
    steps_per_epoch = int(np.ceil(0.9 * n_cells / BATCH_SIZE))
    limit = args.max_steps if args.max_steps and args.max_steps < steps_per_epoch else None
    train = {
        "max_epochs": 1,
        "batch_size": BATCH_SIZE,
        "train_size": 0.9,
        "early_stopping": False,
        "enable_progress_bar": False,
        "accelerator": args.accelerator,
        "check_val_every_n_epoch": 10,  # no validation pass inside the timed epoch
    }
    if limit:
        train["limit_train_batches"] = limit
    timer = step_timer()
    t0 = time.perf_counter()
    model.train(callbacks=[timer], **train)
    train_s = time.perf_counter() - t0
    n_trained = (limit or steps_per_epoch) * BATCH_SIZE
    n_trained = min(n_trained, int(0.9 * n_cells))
    steady_cells_per_s = timer.n_cells / (timer.t1 - timer.t0) if timer.t0 else float("nan")
    cells = np.arange(min(INFERENCE_CELLS, n_cells))
    t0 = time.perf_counter()
    z = model.get_latent_representation(indices=cells)
    latent_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    _expression(method, model, cells)
    expression_s = time.perf_counter() - t0
    meta = {
        "method": name,
        "config": config,
        "n_cells": n_cells,
        "threads": threads,
        "accelerator": args.accelerator,
        "simulate_s": simulate_s,
        "setup_s": setup_s,
        "train_s": train_s,
        "cells_trained": n_trained,
        "partial_epoch": bool(limit),
        "cells_per_s": steady_cells_per_s,
        "train_call_cells_per_s": n_trained / train_s,
        "overhead_s": train_s - n_trained / steady_cells_per_s,
        "latent_s": latent_s,
        "expression_s": expression_s,
        "input_mb": input_mb,
        "rss_before_mb": rss_before,
        "peak_rss_mb": peak_rss_mb(),
        "latent_dims": int(z.shape[1]),
        "data_loader": getattr(model, "data_loader_", "anndata"),
    }
    np.savez(args.result + ".npz", z=z[:10])
    with open(args.result + ".json", "w") as fh:
        json.dump(meta, fh, indent=1)


def parse_options(items: list[str]) -> dict:
    """``["elbo_estimator=shared", "n_latent=8"]`` -> keyword arguments (numbers parsed)."""
    options = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--options takes NAME=VALUE, got {item!r}")
        try:
            options[name] = json.loads(value)
        except json.JSONDecodeError:
            options[name] = value
    return options


# ============================================================================ parent
def median_rows(runs: list[dict]) -> list[dict]:
    """One row per (data, cells, method): the run with the median training rate, all rates kept."""
    groups: dict[tuple, list[dict]] = {}
    for meta in runs:
        groups.setdefault((meta["config"], meta["n_cells"], meta["method"]), []).append(meta)
    rows = []
    for metas in groups.values():
        done = sorted((m for m in metas if "cells_per_s" in m), key=lambda m: m["cells_per_s"])
        if not done:
            rows.append(metas[0])
            continue
        row = dict(done[(len(done) - 1) // 2])
        row["cells_per_s_runs"] = [m["cells_per_s"] for m in done]
        rows.append(row)
    return rows


def _peer(config: str) -> str:
    return label(registry().peer_for(CONFIGS[config]["second"]))


def _is_model(name: str) -> bool:
    try:
        return registry().get(name).kind == "model"
    except KeyError:
        return False


def render(rows: list[dict], run: dict) -> str:
    header = [
        "data",
        "cells",
        "method",
        "cells/s (train)",
        "× peer",
        "train() start-up s",
        "µs per cell",
        "scaling vs smallest",
        "peak MB",
        "peak / input",
        "latent s (10k)",
        "expression s (10k)",
    ]
    table, targets = [], []
    by_key = {(r["config"], r["n_cells"], r["method"]): r for r in rows if "cells_per_s" in r}
    sizes = sorted({r["n_cells"] for r in rows})
    for r in rows:
        if "cells_per_s" not in r:
            table.append([r["config"], str(r["n_cells"]), r["method"], *(["error"] * 9)])
            continue
        peer = by_key.get((r["config"], r["n_cells"], _peer(r["config"])))
        smallest = by_key.get((r["config"], sizes[0], r["method"]))
        per_cell = 1e6 / r["cells_per_s"]
        scaling = ratio(per_cell, 1e6 / smallest["cells_per_s"]) if smallest else None
        speedup = ratio(r["cells_per_s"], peer["cells_per_s"]) if peer else None
        table.append(
            [
                r["config"],
                f"{r['n_cells']:,}",
                r["method"],
                f"{r['cells_per_s']:,.0f}" + (" *" if r["partial_epoch"] else ""),
                fmt(speedup, 2),
                fmt(r.get("overhead_s"), 1),
                f"{per_cell:,.0f}",
                fmt(scaling, 2),
                fmt(r["peak_rss_mb"], 0),
                fmt(ratio(r["peak_rss_mb"] - (r["rss_before_mb"] or 0), r["input_mb"]), 2),
                fmt(r["latent_s"], 2),
                fmt(r["expression_s"], 2),
            ]
        )
        if _is_model(r["method"]) and speedup is not None:
            targets.append(
                f"- {r['config']} {r['n_cells']:,} cells: {r['method']} trains at {speedup:.2f}x "
                f"{_peer(r['config'])}'s cells/s (target ≥ 2x: "
                f"{'MET' if speedup >= 2 else 'NOT MET'})"
            )
        if scaling is not None and r["n_cells"] != sizes[0]:
            targets.append(
                f"- {r['config']} {r['method']}: time per cell at {r['n_cells']:,} / at "
                f"{sizes[0]:,} cells = {scaling:.2f} (target within 20%: "
                f"{'MET' if abs(scaling - 1) <= 0.2 else 'NOT MET'})"
            )
    lines = ["## Throughput", "", markdown_table(header, table), "", "### Targets", ""]
    lines += targets
    lines += [
        "",
        "### Notes",
        "",
        f"- cells/s: median over {run.get('repeats', 1)} interleaved run(s) of each method "
        "(every run's rate is in the JSON as `cells_per_s_runs`) of the "
        f"training cells per second in steady state (minibatches after the first "
        f"{WARMUP_STEPS}) over one epoch (`*`: over the first `--max-steps` minibatches only, "
        "where a CPU epoch would take too long). train() start-up s: the rest of the `train()` "
        "call (building the data splitter and trainer, the warm-up minibatches, the end of the "
        "epoch). µs per cell and scaling use the steady-state rate. Matched "
        f"architecture: 1 hidden layer of {N_HIDDEN}, latent {N_LATENT} (CLUE {N_LATENT} per "
        f"sub-space), batch size {BATCH_SIZE}; validation off inside the timed epoch.",
        "- peak / input: (peak RSS of the worker during set-up, training and inference − RSS "
        "before set-up) / size of the sparse input counts.",
        "- latent / expression s: `get_latent_representation` and `get_normalized_expression` "
        f"(RNA) on {INFERENCE_CELLS:,} cells.",
        f"- Machine: {run['n_cpu']} CPU cores, accelerator {run['accelerator']}, torch threads "
        f"per worker {run['threads']}, load average at start {run['load']:.2f}. Whole run "
        f"{run['total_s'] / 60:.1f} min.",
        f"- mosaicvi model options: {' '.join(run.get('options') or []) or 'package defaults'}.",
        source_note(run.get("source")),
    ]
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    add_methods_argument(p, "model", "peer")
    p.add_argument("--sizes", nargs="+", type=int, default=[10_000, 100_000])
    p.add_argument("--max-steps", type=int, default=150, help="cap on timed minibatches")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="runs per method (interleaved); the median run is shown (the lower of two)",
    )
    p.add_argument("--accelerator", default="cpu")
    p.add_argument("--quick", action="store_true", help="2,000 cells, 20 steps")
    p.add_argument(
        "--options",
        nargs="*",
        default=[],
        metavar="NAME=VALUE",
        help="constructor options for the mosaicvi models that take them, "
        "e.g. elbo_estimator=shared",
    )
    p.add_argument("--source", choices=["head", "worktree"], default="head")
    p.add_argument("--out", default=str(RESULTS_DIR / "throughput.md"))
    p.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.worker:
        run_worker(args)
        return
    if args.quick:
        args.sizes, args.max_steps = [2000], 20
    out = Path(args.out)
    workdir = out.parent / (out.stem + "_work")
    workdir.mkdir(parents=True, exist_ok=True)
    source = snapshot_source(args.source, workdir)
    t_start = time.perf_counter()
    run = {
        "n_cpu": os.cpu_count(),
        "threads": args.threads,
        "accelerator": args.accelerator,
        "load": os.getloadavg()[0],
        "source": source,
    }
    runs = []  # every worker's result; repeats are interleaved so drifts in load hit all alike
    for repeat in range(args.repeats):
        for config in args.configs:
            for n_cells in args.sizes:
                for method in resolve_methods(args.methods, CONFIGS[config]["second"]):
                    name = label(method)
                    elapsed = time.perf_counter() - t_start
                    print(
                        f"[{elapsed:6.0f}s] {config} {n_cells} {name} (run {repeat + 1})",
                        flush=True,
                    )
                    worker_args = ["--worker", name, config, str(n_cells)]
                    worker_args += ["--threads", str(args.threads)]
                    worker_args += ["--accelerator", args.accelerator]
                    worker_args += ["--max-steps", str(args.max_steps)]
                    worker_args += ["--options", *args.options]
                    stem = f"{config}_{n_cells}_{name}_{repeat}"
                    _, meta = launch_worker(
                        Path(__file__).resolve(),
                        worker_args,
                        workdir / stem,
                        workdir / f"{stem}.log",
                        args.threads,
                        source["path"],
                    )
                    meta.setdefault("method", name)
                    meta.setdefault("config", config)
                    meta.setdefault("n_cells", n_cells)
                    runs.append(meta)
                    if "cells_per_s" in meta:
                        print(f"    {meta['cells_per_s']:,.0f} cells/s", flush=True)
    rows = median_rows(runs)
    run["repeats"] = args.repeats
    run["options"] = args.options
    run["total_s"] = time.perf_counter() - t_start
    report = render(rows, run)
    out.write_text(report + "\n")
    out.with_suffix(".json").write_text(json.dumps({"run": run, "rows": rows}, indent=1))
    print("\n" + report)


if __name__ == "__main__":
    main()
