"""Out-of-core training: memory, throughput and scaling from backed ``.h5mu`` files.

Two parts, each run in fresh subprocesses (peak memory is the process's own):

**Scale** (simulated files, written chunk by chunk into ``--workdir`` and kept for later runs):
``cite`` is RNA 4,000 genes + ADT 200 proteins (~4.4 GB per million cells), ``multiome`` RNA
4,000 + ATAC 50,000 peaks. For every size the model is set up on the file opened with
:func:`mosaicvi.data.read_backed`, trained for ``--steps`` minibatches of 128 and asked for the
latent of ``--latent-cells`` cells. At the smallest size the same model is also trained from
the file read into memory, which gives the throughput ratio; with ``--soma`` also from the
file written as a TileDB-SOMA Experiment (:func:`mosaicvi.data.write_soma`), read with an
``obs`` value filter. Reported: setup time, training
cells/s (after a 10-step warm-up), time per cell against the smallest size, latent time and
peak RSS.

**Quality** (``--quality``; real data from ``../shared/data``): MultiVAE on the mosaic of a
dataset of ``benchmarks/integration.py`` (the second modality of the last batches hidden),
trained in memory (cells fully shuffled each epoch) and from its backed file with the default
chunked shuffling, on the file in its own order and sorted by cell type (the worst case for
block sampling), and with block shuffling alone (``blocks_per_chunk=1``); scIB totals over two
seeds give the seed noise.

Usage::

    .venv/bin/python benchmarks/out_of_core.py --kinds cite --sizes 100000 1000000
    .venv/bin/python benchmarks/out_of_core.py --kinds multiome --sizes 100000 --steps 300
    .venv/bin/python benchmarks/out_of_core.py --quality --no-scale
    .venv/bin/python benchmarks/out_of_core.py --sizes 100000 --soma   # + a SOMA Experiment
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
    DATASETS,
    RESULTS_DIR,
    ChildrenPeakRSS,
    accepted,
    fmt,
    launch_worker,
    markdown_table,
    peak_rss_mb,
    prepare_dataset,
    set_threads,
    snapshot_source,
    source_note,
    step_timer,
    takes_labels,
)
from _out_of_core_data import KINDS, write_simulated, write_simulated_soma  # noqa: E402

N_HIDDEN, N_LATENT, BATCH_SIZE = 128, 16, 128
#: Targets of issue 17 (checked in the report, not as tests).
RSS_TARGET_GB, RSS_TARGET_CELLS = 3.0, 1_000_000
RATIO_TARGET, FLAT_TARGET = 0.7, 0.2
#: sampling label -> (worker key, data splitter arguments; None: in memory)
SAMPLERS = {
    "in memory": ("memory", None),
    "chunks": ("chunks", {}),
    "chunks of 256-cell blocks (SOMA)": ("chunks256", {"block_size": 256}),
    "blocks": ("blocks", {"blocks_per_chunk": 1}),
}
QUALITY_RUNS = [  # (layout, sampler); the last one runs with the first seed only
    ("as is", "in memory"),
    ("as is", "chunks"),
    ("sorted by cell type", "chunks"),
    ("sorted by cell type", "chunks of 256-cell blocks (SOMA)"),
    ("sorted by cell type", "blocks"),
]


def _model_class(name: str):
    import mosaicvi as mv

    return mv.registry.get(name).model_class()


# ============================================================================ workers
def scale_worker(args) -> tuple[dict, dict]:
    import warnings

    import mudata as md

    import mosaicvi as mv

    warnings.filterwarnings("ignore")
    set_threads(args.threads)
    path, mode = Path(args.path), args.mode
    readers = ChildrenPeakRSS().start()  # the loader's reader process, if any
    t0 = time.perf_counter()
    if mode == "soma":  # a SOMA Experiment, cells chosen by a value filter on obs
        mdata = mv.data.read_soma(str(path), obs_value_filter=args.soma_filter)
    else:
        mdata = mv.data.read_backed(path) if mode == "backed" else md.read_h5mu(path)
    cls = _model_class(args.method)
    setup = {"labels_key": "cell_type"} if takes_labels(cls) else {}
    cls.setup_mudata(mdata, batch_key="batch", **setup)
    model = cls(mdata, **accepted(cls.__init__, n_hidden=N_HIDDEN, n_latent=N_LATENT, n_layers=1))
    setup_s = time.perf_counter() - t0
    timer = step_timer()
    n_epochs = -(-args.steps * BATCH_SIZE // mdata.n_obs) + 1
    t1 = time.perf_counter()
    model.train(
        max_epochs=n_epochs,
        max_steps=args.steps,
        batch_size=BATCH_SIZE,
        train_size=1.0,
        early_stopping=False,
        enable_progress_bar=False,
        callbacks=[timer],
    )
    train_s = time.perf_counter() - t1
    cells = np.arange(min(args.latent_cells, mdata.n_obs))
    t2 = time.perf_counter()
    z = model.get_latent_representation(indices=cells)
    latent_s = time.perf_counter() - t2
    meta = {
        "mode": mode,
        "data_loader": model.data_loader_,
        "n_cells": int(mdata.n_obs),
        "file_gb": _size_gb(path),
        "setup_s": setup_s,
        "train_s": train_s,
        "steps": int(model.trainer.global_step),
        "cells_per_s": timer.n_cells / (timer.t1 - timer.t0),
        "latent_cells": len(cells),
        "latent_s": latent_s,
        "reader_processes": getattr(model.trainer.train_dataloader, "num_workers", 0),
    }
    reader_mb = readers.stop()
    # the training process plus its reader: an upper bound (pages they share count twice)
    meta["reader_rss_gb"] = reader_mb / 1024
    meta["peak_rss_gb"] = (peak_rss_mb() + reader_mb) / 1024
    return {"z_head": z[:1000]}, meta


def _size_gb(path: Path) -> float:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) / 1e9


def quality_worker(args) -> tuple[dict, dict]:
    import warnings

    import scvi

    import mosaicvi as mv
    from mosaicvi.benchmark import hide_second_modality

    warnings.filterwarnings("ignore")
    set_threads(args.threads)
    scvi.settings.seed = args.seed
    prep = prepare_dataset(args.dataset)
    mosaic = hide_second_modality(prep)
    if args.layout == "sorted":
        order = np.argsort(mosaic.obs["cell_type"].astype(str).to_numpy(), kind="stable")
        mosaic = mosaic[mosaic.obs_names[order]].copy()
    kwargs = {}
    splitter = {key: value for key, value in SAMPLERS.values()}[args.sampler]
    if splitter is not None:
        path = Path(args.workdir) / f"{args.dataset}_{args.layout}.h5mu"
        mosaic.write(path)
        mosaic = mv.data.read_backed(path)
        if splitter:
            kwargs["datasplitter_kwargs"] = splitter
    cls = _model_class("multivae")
    cls.setup_mudata(mosaic, batch_key="batch")
    model = cls(mosaic)
    t0 = time.perf_counter()
    model.train(
        max_epochs=prep.spec.epochs, early_stopping=False, enable_progress_bar=False, **kwargs
    )
    z = model.get_latent_representation()
    scores = mv.metrics.integration_scores(
        z, mosaic.obs["cell_type"].astype(str).to_numpy(), mosaic.obs["batch"].astype(str)
    )
    meta = {
        "data_loader": model.data_loader_,
        "train_s": time.perf_counter() - t0,
        **{k: float(scores[k]) for k in ("total", "bio", "batch")},
    }
    return {"z": z}, meta


def run_worker(args) -> None:
    arrays, meta = (scale_worker if args.worker == "scale" else quality_worker)(args)
    np.savez(args.result + ".npz", **arrays)
    Path(args.result + ".json").write_text(json.dumps(meta))


# ============================================================================ report
def _launch(args, source, workdir: Path, stem: str, worker_args: list[str]) -> dict:
    _, meta = launch_worker(
        Path(__file__).resolve(),
        ["--worker", *worker_args, "--threads", str(args.threads)],
        workdir / stem,
        workdir / f"{stem}.log",
        args.threads,
        source["path"],
        label=stem,
    )
    return meta


def run_scale(args, source, workdir: Path, say) -> list[dict]:
    rows = []
    for kind in args.kinds:
        for n_cells in sorted(args.sizes):
            say(f"{kind} {n_cells:,}: writing / checking the file")
            path = write_simulated(workdir / f"sim_{kind}_{n_cells}.h5mu", kind, n_cells)
            modes = ["memory", "backed"] if n_cells == min(args.sizes) else ["backed"]
            if args.soma and n_cells == min(args.sizes):
                modes.append("soma")
            for mode in modes:
                say(f"{kind} {n_cells:,} {mode}")
                where = path
                if mode == "soma":
                    say("    writing / checking the SOMA Experiment")
                    where = write_simulated_soma(path)
                common = ["--path", str(where), "--steps", str(args.steps)]
                common += ["--soma-filter", args.soma_filter]
                common += ["--latent-cells", str(args.latent_cells), "--method", args.method]
                meta = _launch(
                    args,
                    source,
                    workdir,
                    f"{kind}_{n_cells}_{mode}",
                    ["scale", "--mode", mode, *common],
                )
                rows.append({"kind": kind, "n_cells": n_cells, "mode": mode, **meta})
                if "cells_per_s" in meta:
                    say(
                        f"    {meta['cells_per_s']:,.0f} cells/s, peak {meta['peak_rss_gb']:.2f} GB"
                    )
            if not args.keep_files and n_cells != min(args.sizes):
                path.unlink()
    return rows


def render_scale(rows: list[dict]) -> list[str]:
    lines = ["## Scale (simulated files)", ""]
    header = [
        "data",
        "cells",
        "source",
        "file GB",
        "setup s",
        "setup µs/cell",
        "cells/s",
        "vs in-memory",
        "time per cell vs smallest",
        "latent s (cells)",
        "peak RSS GB (reader)",
    ]
    table, checks = [], []
    for kind in dict.fromkeys(r["kind"] for r in rows):
        mine = [r for r in rows if r["kind"] == kind and "cells_per_s" in r]
        memory = next((r for r in mine if r["mode"] == "memory"), None)
        backed = [r for r in mine if r["mode"] == "backed"]
        soma = next((r for r in mine if r["mode"] == "soma"), None)
        base = backed[0] if backed else None
        for r in mine:
            vs_memory = r["cells_per_s"] / memory["cells_per_s"] if memory else None
            label = {"memory": "in memory", "backed": "backed", "soma": "SOMA (obs filter)"}
            per_cell = (
                base["cells_per_s"] / r["cells_per_s"] if base and r["mode"] == "backed" else None
            )
            table.append(
                [
                    kind,
                    f"{r['n_cells']:,}",
                    label[r["mode"]],
                    fmt(r["file_gb"], 2),
                    fmt(r["setup_s"], 1),
                    fmt(1e6 * r["setup_s"] / r["n_cells"], 1),
                    f"{r['cells_per_s']:,.0f}",
                    fmt(vs_memory, 2) if r["mode"] != "memory" else "1",
                    fmt(per_cell, 2),
                    f"{fmt(r['latent_s'], 1)} ({r['latent_cells']:,})",
                    f"{fmt(r['peak_rss_gb'], 2)} ({fmt(r.get('reader_rss_gb', 0.0), 2)})",
                ]
            )
        if memory and base:
            ratio = base["cells_per_s"] / memory["cells_per_s"]
            checks.append(
                f"- {kind}: backed throughput {ratio:.2f}x in-memory at "
                f"{base['n_cells']:,} cells (target >= {RATIO_TARGET}): "
                f"{'MET' if ratio >= RATIO_TARGET else 'NOT MET'}"
            )
        if memory and soma:
            ratio = soma["cells_per_s"] / memory["cells_per_s"]
            checks.append(
                f"- {kind}: SOMA throughput {ratio:.2f}x in-memory ({soma['n_cells']:,} cells "
                f"pass the obs filter; no target in the issue)"
            )
        for r in backed[1:]:
            drift = base["cells_per_s"] / r["cells_per_s"] - 1
            checks.append(
                f"- {kind}: time per training cell at {r['n_cells']:,} vs "
                f"{base['n_cells']:,}: {drift:+.0%} (target within ±{FLAT_TARGET:.0%}): "
                f"{'MET' if abs(drift) <= FLAT_TARGET else 'NOT MET'}"
            )
            if kind == "cite" and r["n_cells"] == RSS_TARGET_CELLS:
                ok = r["peak_rss_gb"] < RSS_TARGET_GB
                checks.append(
                    f"- cite 1M cells: peak RSS {r['peak_rss_gb']:.2f} GB (target < "
                    f"{RSS_TARGET_GB} GB): {'MET' if ok else 'NOT MET'}"
                )
    failed = [r for r in rows if "cells_per_s" not in r]
    lines += [markdown_table(header, table), "", *checks]
    lines += [f"- FAILED: {r['kind']} {r['n_cells']} {r['mode']}: {r.get('error')}" for r in failed]
    return lines + [""]


def run_quality(args, source, workdir: Path, say) -> list[dict]:
    rows = []
    for dataset in args.datasets:
        for layout, sampler in QUALITY_RUNS:
            for seed in args.seeds if (layout, sampler) != QUALITY_RUNS[-1] else args.seeds[:1]:
                say(f"quality {dataset} {layout} {sampler} seed {seed}")
                key = SAMPLERS[sampler][0]
                stem = f"q_{dataset}_{layout.split()[0]}_{key}_{seed}"
                meta = _launch(
                    args,
                    source,
                    workdir,
                    stem,
                    [
                        "quality",
                        "--dataset",
                        dataset,
                        "--layout",
                        layout.split()[0],
                        "--sampler",
                        key,
                        "--seed",
                        str(seed),
                        "--workdir",
                        str(workdir),
                    ],
                )
                rows.append(
                    {"dataset": dataset, "layout": layout, "sampler": sampler, "seed": seed, **meta}
                )
    return rows


def render_quality(rows: list[dict]) -> list[str]:
    lines = ["## Quality: trained from the backed file vs in memory (MultiVAE, real data)", ""]
    header = ["dataset", "file order", "sampling", "seeds", "total", "bio", "batch", "train s"]
    table = []
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        for layout, sampler in QUALITY_RUNS:
            group = [
                r
                for r in rows
                if r["dataset"] == dataset
                and r["layout"] == layout
                and r["sampler"] == sampler
                and "total" in r
            ]
            if not group:
                continue

            def cell(key, group=group):
                return " / ".join(fmt(r[key]) for r in group)

            table.append(
                [
                    dataset,
                    layout,
                    sampler,
                    " / ".join(str(r["seed"]) for r in group),
                    cell("total"),
                    cell("bio"),
                    cell("batch"),
                    fmt(np.mean([r["train_s"] for r in group]), 0),
                ]
            )
    lines += [markdown_table(header, table), ""]
    lines += [
        "- sampling: *in memory* shuffles every cell each epoch; *chunks* (the default "
        "out-of-core sampling) shuffles blocks of 64 consecutive cells and mixes 64 blocks "
        "per chunk; *chunks of 256-cell blocks* is what a SOMA store gets (16 blocks of 256 "
        "per chunk); *blocks* shuffles blocks only (`blocks_per_chunk=1`).",
        "",
    ]
    return lines


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--kinds", nargs="+", choices=list(KINDS), default=["cite"])
    p.add_argument("--sizes", nargs="+", type=int, default=[100_000, 1_000_000])
    p.add_argument("--steps", type=int, default=2000, help="training minibatches per run")
    p.add_argument("--latent-cells", type=int, default=100_000)
    p.add_argument("--method", default="multivae", help="registered mosaicvi model")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--workdir", default=None, help="where the simulated files go")
    p.add_argument("--keep-files", action="store_true", help="keep files above the smallest")
    p.add_argument("--no-scale", action="store_true", help="skip the simulated-file part")
    p.add_argument(
        "--soma", action="store_true", help="also train from a SOMA Experiment at the smallest size"
    )
    p.add_argument("--soma-filter", default="batch != 'batch_0'", help="obs value filter (SOMA)")
    p.add_argument("--quality", action="store_true", help="run the real-data quality part")
    p.add_argument(
        "--datasets", nargs="+", choices=list(DATASETS), default=["bmmc_cite", "snare_cortex"]
    )
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--source", choices=["head", "worktree"], default="worktree")
    p.add_argument("--out", default=str(RESULTS_DIR / "out_of_core.md"))
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    for name in ("--path", "--mode", "--dataset", "--layout", "--sampler"):
        p.add_argument(name, help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.worker:
        run_worker(args)
        return
    out = Path(args.out)
    workdir = Path(args.workdir) if args.workdir else out.parent / (out.stem + "_work")
    workdir.mkdir(parents=True, exist_ok=True)
    source = snapshot_source(args.source, workdir)
    t_start = time.perf_counter()

    def say(message: str) -> None:
        print(f"[{time.perf_counter() - t_start:6.0f}s] {message}", flush=True)

    run = {"n_cpu": os.cpu_count(), "threads": args.threads, "load": os.getloadavg()[0]}
    scale = [] if args.no_scale else run_scale(args, source, workdir, say)
    quality = run_quality(args, source, workdir, say) if args.quality else []
    lines = ["# Out-of-core training", ""]
    lines += [
        f"- {run['n_cpu']} CPUs, {args.threads} threads, load {run['load']:.1f} at start, "
        f"total {time.perf_counter() - t_start:.0f} s."
        + (
            f" Scale: model {args.method} (1 hidden layer of {N_HIDDEN}, latent {N_LATENT}), "
            f"batch size {BATCH_SIZE}, {args.steps} steps per run."
            if scale
            else ""
        )
        + (" Quality: MultiVAE with its defaults." if quality else ""),
        source_note(source),
        "",
    ]
    if scale:
        lines += render_scale(scale)
    if quality:
        lines += render_quality(quality)
    report = "\n".join(lines)
    out.write_text(report + "\n")
    out.with_suffix(".json").write_text(json.dumps({"scale": scale, "quality": quality}, indent=1))
    print("\n" + report)


if __name__ == "__main__":
    main()
