"""Command-line interface: ``mosaicvi demo | fit | benchmark``.

``mosaicvi demo`` simulates a small mosaic CITE-seq-like dataset (one batch without protein), trains
:class:`mosaicvi.model.MultiVAE` on it and writes the latent space, a UMAP figure and metrics.
``mosaicvi fit`` does the same on a user's ``.h5mu`` file. The input file is never modified: results
go to a new folder.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

LATENT_KEY = "X_mosaicvi"
DEFAULT_DEMO_OUT = "mosaicvi_demo"
DEFAULT_FIT_OUT = "mosaicvi_output"
DEFAULT_BENCHMARK_OUT = "mosaicvi_benchmark"


class CLIError(Exception):
    """A user-facing error: printed as ``error: ...`` and turned into exit code 2."""


def _say(msg: str) -> None:
    print(f"[mosaicvi] {msg}", flush=True)


# --------------------------------------------------------------------------------------------------
# argument parsing
# --------------------------------------------------------------------------------------------------


def _parse_likelihoods(items: Sequence[str] | None) -> dict[str, str] | None:
    """Turn ``["adt=nb", "rna=zinb"]`` into ``{"adt": "nb", "rna": "zinb"}``."""
    if not items:
        return None
    out: dict[str, str] = {}
    for item in items:
        name, sep, lik = item.partition("=")
        if not sep or not name or not lik:
            raise CLIError(f"--likelihood expects MODALITY=NAME (e.g. adt=nb), got {item!r}")
        out[name.strip()] = lik.strip()
    return out


def _add_training_args(p: argparse.ArgumentParser, *, epochs: int, threads: int) -> None:
    p.add_argument("--epochs", type=int, default=epochs, help=f"training epochs (default {epochs})")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument(
        "--n-latent", type=int, default=None, help="latent dimensions (default: the model's, 16)"
    )
    p.add_argument(
        "--batch-size", type=int, default=None, help="minibatch size (default: the model's)"
    )
    p.add_argument(
        "--accelerator",
        default="auto",
        help="Lightning accelerator: auto (GPU when present), cpu, gpu, ... (default auto)",
    )
    p.add_argument(
        "--mmd-weight",
        type=float,
        default=None,
        help="weight of the MMD batch-integration penalty (default: the model's default)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=threads,
        help=f"CPU threads for torch (default {threads})",
    )


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser of the ``mosaicvi`` command."""
    from mosaicvi import __version__

    parser = argparse.ArgumentParser(
        prog="mosaicvi",
        description="Probabilistic models for paired and mosaic multimodal single-cell data.",
    )
    parser.add_argument("--version", action="version", version=f"mosaicvi {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser(
        "demo",
        help="simulate a mosaic CITE-seq-like dataset, train MultiVAE, write results",
        description=(
            "Simulate a CITE-seq-like dataset with 3 batches where batch_2 has RNA only, train "
            "MultiVAE, and write latent.h5mu, umap.png and metrics.json to --out."
        ),
    )
    demo.add_argument(
        "--out", default=DEFAULT_DEMO_OUT, help=f"output folder (default ./{DEFAULT_DEMO_OUT})"
    )
    # one thread: this small model gains nothing from more, and loses up to 10x on a busy machine
    _add_training_args(demo, epochs=80, threads=1)
    # small values keep the test-suite fast; not advertised in --help
    demo.add_argument("--n-cells", type=int, default=1500, help=argparse.SUPPRESS)
    demo.set_defaults(func=_cmd_demo)

    fit = sub.add_parser(
        "fit",
        help="train MultiVAE on your .h5mu file and write results",
        description=(
            "Train MultiVAE on a MuData file (modalities may cover different cells: a mosaic). "
            "The input file is not modified; results go to --out."
        ),
    )
    fit.add_argument("--data", required=True, help="input MuData file (.h5mu)")
    fit.add_argument(
        "--modalities",
        nargs="+",
        default=None,
        metavar="MOD",
        help="modalities of the file to use (default: all of them)",
    )
    fit.add_argument(
        "--batch-key",
        default=None,
        help="column of mdata.obs with the batch (default 'batch' when present)",
    )
    fit.add_argument(
        "--label-key",
        default=None,
        help="column of mdata.obs with cell types, used for metrics and the figure only "
        "(default 'cell_type' when present)",
    )
    fit.add_argument(
        "--layer",
        default=None,
        help="layer with the raw counts, in every modality (default: 'counts' where a modality "
        "has it, else .X); pass X to use .X",
    )
    fit.add_argument(
        "--likelihood",
        nargs="+",
        default=None,
        metavar="MOD=NAME",
        help="likelihood per modality, e.g. adt=nb atac=bernoulli (default: the model's choice)",
    )
    fit.add_argument(
        "--out", default=DEFAULT_FIT_OUT, help=f"output folder (default ./{DEFAULT_FIT_OUT})"
    )
    fit.add_argument(
        "--early-stopping",
        action="store_true",
        help="stop when the validation loss stops improving",
    )
    _add_training_args(fit, epochs=100, threads=max(1, min(2, os.cpu_count() or 1)))
    fit.set_defaults(func=_cmd_fit)

    bench = sub.add_parser(
        "benchmark",
        help="compare mosaicvi's models with scvi-tools peers on your data; write a report",
        description=(
            "Train several methods on the paired cells of a MuData file (RNA + adt or RNA + atac) "
            "with the second modality hidden in held-out cells, then score integration "
            "(scIB metrics) and imputation of the hidden modality. Writes report.md, "
            "scores.csv and figures (UMAPs, metric bars, imputed vs measured) to --out. "
            "The input file is not modified."
        ),
    )
    bench.add_argument("--data", required=True, help="input MuData file (.h5mu)")
    bench.add_argument(
        "--models",
        default=None,
        help="comma-separated methods: multivae, clue, jae, totalvi (RNA+adt), multivi "
        "(RNA+atac), peer (whichever fits); an RNA PCA baseline is always added "
        "(default: multivae,clue,jae,peer)",
    )
    bench.add_argument(
        "--second", default=None, help="modality paired with rna: adt or atac (default: detected)"
    )
    bench.add_argument(
        "--batch-key", default=None, help="column of mdata.obs with the batch (default 'batch')"
    )
    bench.add_argument(
        "--label-key",
        default=None,
        help="column of mdata.obs with cell types (default 'cell_type' when present)",
    )
    bench.add_argument(
        "--layer",
        default=None,
        help="layer with raw counts (default: 'counts' where present, else .X); X for .X",
    )
    bench.add_argument(
        "--holdout-batch",
        default=None,
        help="batch whose second modality is hidden and imputed (default: the smallest batch; "
        "a random 20%% of cells when there is one batch)",
    )
    bench.add_argument(
        "--max-cells", type=int, default=None, help="subsample to at most this many cells"
    )
    bench.add_argument("--out", default=DEFAULT_BENCHMARK_OUT, help="output folder")
    bench.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="epochs for every neural method (default: 40,000 / cells, between 20 and 200)",
    )
    bench.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    bench.add_argument(
        "--threads",
        type=int,
        default=max(1, min(2, os.cpu_count() or 1)),
        help="CPU threads for torch",
    )
    bench.set_defaults(func=_cmd_benchmark)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``mosaicvi`` command line and return its exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2
    if args.command is None:
        parser.print_help()
        return 1
    try:
        return int(args.func(args) or 0)
    except CLIError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


# --------------------------------------------------------------------------------------------------
# commands
# --------------------------------------------------------------------------------------------------


def _cmd_benchmark(args: argparse.Namespace) -> int:
    t_start = time.perf_counter()
    path = _check_h5mu_path(Path(args.data), "mosaicvi benchmark")
    out = Path(args.out)
    args.accelerator = "auto"
    _configure_runtime(args)
    from mosaicvi import benchmark

    mdata = _read_mudata(path)
    batch_key = _resolve_obs_key(mdata, args.batch_key, "batch", "--batch-key")
    label_key = _resolve_obs_key(mdata, args.label_key, "cell_type", "--label-key")
    try:
        task, protocol = benchmark.prepare_task(
            mdata,
            second=args.second,
            batch_key=batch_key,
            labels_key=label_key,
            layer=args.layer,
            holdout_batch=args.holdout_batch,
            epochs=args.epochs,
            max_cells=args.max_cells,
            seed=args.seed,
        )
        methods = benchmark.resolve_methods(args.models, task.second)
    except (ValueError, KeyError) as exc:
        raise CLIError(_clean_message(exc)) from exc
    protocol = {"data": str(path), **protocol}
    _say(
        f"{protocol['cells']} paired cells, {protocol['modalities']}; {protocol['holdout']}; "
        f"methods: {', '.join(methods)}"
    )
    result = benchmark.run_benchmark(task, methods, protocol=protocol, progress=_say)
    command = "mosaicvi " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv else None
    report = benchmark.write_report(
        result, out, title=f"mosaicvi benchmark: {path.name}", command=command, seed=args.seed
    )
    print()
    print(result.scores.round(3).to_string())
    print()
    failed = [m for m, notes in result.notes.items() if any(n.startswith("failed") for n in notes)]
    _say(f"report: {report.resolve()} ({time.perf_counter() - t_start:.0f} s)")
    if failed:
        _say(f"failed methods: {', '.join(failed)} (see the report's notes)")
    return 1 if len(failed) == len(methods) else 0


def _read_mudata(path: Path) -> Any:
    import mudata

    _say(f"reading {path}")
    try:
        return mudata.read_h5mu(path)
    except Exception as exc:  # any read failure is the user's file
        raise CLIError(f"could not read {path} as MuData: {exc}") from exc


def _check_h5mu_path(path: Path, command: str) -> Path:
    if not path.exists():
        raise CLIError(f"data file not found: {path}")
    if path.is_dir():
        raise CLIError(f"--data must be a .h5mu file, got a folder: {path}")
    if path.suffix == ".h5ad":
        raise CLIError(
            f"{path} is an AnnData file; `{command}` needs a MuData file (.h5mu) with one "
            "modality per assay, e.g. built with mudata.MuData({'rna': rna, 'adt': adt})"
        )
    return path


def _cmd_demo(args: argparse.Namespace) -> int:
    t_start = time.perf_counter()
    _configure_runtime(args)
    if args.n_cells < 60:
        raise CLIError("--n-cells must be at least 60")
    import mosaicvi.data as mv_data

    _say(
        f"simulating a mosaic CITE-seq-like dataset: {args.n_cells} cells, RNA + protein (ADT), "
        "3 batches; batch_2 has RNA only"
    )
    mdata = mv_data.simulate(
        n_cells=args.n_cells,
        modalities=("rna", "adt"),
        n_batches=3,
        missing={"batch_2": ["adt"]},
        seed=args.seed,
    )
    summary = _run_pipeline(
        mdata,
        modalities=["rna", "adt"],
        layer="counts",
        batch_key="batch",
        label_key="cell_type",
        likelihoods=None,
        out=Path(args.out),
        args=args,
        early_stopping=False,
        dataset="simulated (mosaicvi.data.simulate)",
    )
    _say(f"done in {time.perf_counter() - t_start:.1f} s; results in {Path(args.out).resolve()}")
    return 0 if summary else 1


def _cmd_fit(args: argparse.Namespace) -> int:
    t_start = time.perf_counter()
    path = _check_h5mu_path(Path(args.data), "mosaicvi fit")
    out = Path(args.out)
    if out.resolve() == path.resolve().parent and path.name == "latent.h5mu":
        raise CLIError("--out would overwrite the input file; choose another folder")
    likelihoods = _parse_likelihoods(args.likelihood)
    _configure_runtime(args)
    mdata = _read_mudata(path)

    available = list(mdata.mod)
    modalities = list(args.modalities) if args.modalities else available
    missing = [m for m in modalities if m not in mdata.mod]
    if missing:
        raise CLIError(
            f"modality {', '.join(map(repr, missing))} not found in {path.name}; "
            f"available modalities: {', '.join(available)}"
        )
    if len(modalities) < 2:
        raise CLIError(f"MultiVAE needs at least two modalities, got {modalities}")
    if likelihoods:
        unknown = [m for m in likelihoods if m not in modalities]
        if unknown:
            raise CLIError(
                f"--likelihood names modality {', '.join(map(repr, unknown))}, which is not among "
                f"the modalities used ({', '.join(modalities)})"
            )
    batch_key = _resolve_obs_key(mdata, args.batch_key, "batch", "--batch-key")
    label_key = _resolve_obs_key(mdata, args.label_key, "cell_type", "--label-key")

    _run_pipeline(
        mdata,
        modalities=modalities,
        layer=args.layer,
        batch_key=batch_key,
        label_key=label_key,
        likelihoods=likelihoods,
        out=out,
        args=args,
        early_stopping=args.early_stopping,
        dataset=str(path),
    )
    _say(f"done in {time.perf_counter() - t_start:.1f} s; results in {out.resolve()}")
    return 0


# --------------------------------------------------------------------------------------------------
# shared pipeline
# --------------------------------------------------------------------------------------------------


def _configure_runtime(args: argparse.Namespace) -> None:
    """Threads, seeds, quiet logging, non-interactive plotting."""
    import logging

    import matplotlib

    matplotlib.use("Agg")
    import torch

    torch.set_num_threads(max(1, args.threads))
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=".*does not have many mdataers.*")
    warnings.filterwarnings("ignore", message=".*GPU available but not used.*")
    warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")
    warnings.filterwarnings("ignore", message=".*Cannot join columns with the same name.*")

    import scvi

    scvi.settings.seed = args.seed
    scvi.settings.verbosity = logging.WARNING


def _resolve_obs_key(mdata: Any, given: str | None, default: str, flag: str) -> str | None:
    """Use ``given`` (must exist) or ``default`` when present in ``mdata.obs``, else ``None``."""
    if given is not None:
        if given not in mdata.obs.columns:
            raise CLIError(
                f"{flag} {given!r} is not a column of mdata.obs; columns: "
                f"{', '.join(map(str, mdata.obs.columns)) or '(none)'}"
            )
        return given
    return default if default in mdata.obs.columns else None


def _layers_for(mdata: Any, modalities: Sequence[str], layer: str | None) -> dict[str, str | None]:
    """Layer per modality: an explicit ``layer`` must exist everywhere; by default 'counts'."""
    layers: dict[str, str | None] = {}
    for m in modalities:
        available = list(mdata.mod[m].layers)
        if layer is None:
            layers[m] = "counts" if "counts" in available else None
            if layers[m] is None:
                _say(f"modality {m!r} has no 'counts' layer; using .X")
        elif layer == "X":
            layers[m] = None
        elif layer in available:
            layers[m] = layer
        else:
            raise CLIError(
                f"modality {m!r} has no layer {layer!r} (its layers: "
                f"{', '.join(available) or 'none'}); pass --layer X to use .X"
            )
    return layers


def _observed_masks(mdata: Any, modalities: Sequence[str]) -> dict[str, Any]:
    """Per-modality boolean arrays (in ``mdata.obs_names`` order): which cells have the modality."""
    import numpy as np

    from mosaicvi.data import observed_mask

    mask = np.asarray(observed_mask(mdata, list(modalities)), dtype=bool)
    return {m: mask[:, k] for k, m in enumerate(modalities)}


def _run_pipeline(
    mdata: Any,
    *,
    modalities: Sequence[str],
    layer: str | None,
    batch_key: str | None,
    label_key: str | None,
    likelihoods: dict[str, str] | None,
    out: Path,
    args: argparse.Namespace,
    early_stopping: bool,
    dataset: str,
) -> dict[str, Any]:
    import numpy as np

    import mosaicvi.data
    import mosaicvi.metrics
    import mosaicvi.model
    from mosaicvi.benchmark import epochs_run_of
    from mosaicvi.model import MultiVAE

    out.mkdir(parents=True, exist_ok=True)
    n_cells = mdata.n_obs
    try:
        masks = _observed_masks(mdata, modalities)
    except (ValueError, KeyError) as exc:
        raise CLIError(_clean_message(exc)) from exc
    desc = ", ".join(
        f"{m}: {int(masks[m].sum())} cells x {mdata.mod[m].n_vars}" for m in modalities
    )
    _say(f"data: {n_cells} cells; {desc}")
    if batch_key:
        _say(f"batches ({batch_key}): {mdata.obs[batch_key].astype(str).nunique()}")

    setup_kwargs: dict[str, Any] = {
        "modalities": {m: m for m in modalities},
        "layers": _layers_for(mdata, modalities, layer),
        "batch_key": batch_key,
    }
    if likelihoods:
        setup_kwargs["likelihoods"] = likelihoods
    try:
        MultiVAE.setup_mudata(mdata, **setup_kwargs)
        model = MultiVAE(mdata, **_given(n_latent=args.n_latent))
    except (ValueError, KeyError, TypeError) as exc:
        raise CLIError(_clean_message(exc)) from exc

    _say(
        f"training MultiVAE for {args.epochs} epochs (accelerator {args.accelerator}, "
        f"{_threads()} CPU threads)"
    )
    t0 = time.perf_counter()
    model.train(
        max_epochs=args.epochs,
        accelerator=args.accelerator,
        devices="auto",
        early_stopping=early_stopping,
        plan_kwargs=_given(mmd_weight=args.mmd_weight) or None,
        **_given(batch_size=args.batch_size),
        **_quiet_trainer_kwargs(),
    )
    train_time = time.perf_counter() - t0
    epochs_run = epochs_run_of(model, default=args.epochs)
    _say(f"trained {epochs_run} epochs in {train_time:.1f} s")

    _say("computing the joint latent representation and per-modality embeddings")
    z = np.asarray(model.get_latent_representation())
    # embedding from one modality alone, for the cells that have it (NaN rows elsewhere)
    z_single: dict[str, Any] = {}
    for m in modalities:
        z_m = np.full_like(z, np.nan)
        have = np.flatnonzero(masks[m])
        z_m[have] = np.asarray(model.get_latent_representation(indices=have, modality=m))
        z_single[m] = z_m

    metrics: dict[str, Any] = {
        "dataset": dataset,
        "n_cells": int(n_cells),
        "modalities": {m: int(masks[m].sum()) for m in modalities},
        "n_latent": int(z.shape[1]),
        "epochs": int(epochs_run),
        "max_epochs": int(args.epochs),
        "train_time_s": round(train_time, 2),
        "seed": int(args.seed),
    }
    final_loss = _final_loss(model)
    if final_loss is not None:
        metrics["final_train_loss"] = final_loss

    labels = mdata.obs[label_key].astype(str).to_numpy() if label_key else None
    batches = mdata.obs[batch_key].astype(str).to_numpy() if batch_key else None
    if labels is not None:
        keep = ~_missing_labels(labels)
        n_batches = len(set(batches[keep])) if batches is not None else 1
        if n_batches >= 2 and keep.sum() > 10:
            _say("scoring integration (bio conservation and batch correction)")
            try:
                # which modalities each cell has ("rna+adt", "rna"): scores modality mixing too
                observed_sets = np.array(
                    ["+".join(m for m in modalities if masks[m][i]) for i in range(n_cells)]
                )
                extra = {"modality": observed_sets[keep]} if len(set(observed_sets)) > 1 else {}
                scores = mosaicvi.metrics.integration_scores(
                    z[keep], labels=labels[keep], batch=batches[keep], **extra
                )
                metrics["integration"] = _jsonable(scores)
            except Exception as exc:  # metrics must not lose a trained model
                _say(f"warning: integration scores failed: {exc}")
        else:
            _say("integration scores need labels and at least two batches; skipped")

    # how close a cell's single-modality embedding lands to its joint one (paired cells only)
    paired = np.logical_and.reduce([masks[m] for m in modalities])
    overlap: dict[str, float] = {}
    k = 15
    if paired.sum() > k + 1:
        for m in modalities:
            overlap[m] = float(mosaicvi.metrics.knn_overlap(z_single[m][paired], z[paired], k=k))
        metrics[f"knn_overlap_{k}"] = {
            "description": f"{k}-NN overlap of the embedding from one modality vs the joint "
            "embedding, paired cells",
            "n_paired_cells": int(paired.sum()),
            **{f"{m}_vs_joint": round(v, 4) for m, v in overlap.items()},
        }

    # imputation of modalities absent in some cells
    imputed_files: dict[str, str] = {}
    result = mdata.copy()
    result.obsm[LATENT_KEY] = z
    for m in modalities:
        result.obsm[f"{LATENT_KEY}_{m}"] = z_single[m]
    for m in modalities:
        lacking = ~masks[m]
        if not lacking.any():
            continue
        _say(f"imputing {m} for {int(lacking.sum())} cells that lack it")
        expr = model.get_normalized_expression(modality=m, library_size="latent")
        expr = _as_frame(expr, mdata, m)
        imputed = expr.loc[np.asarray(mdata.obs_names)[lacking]]
        fname = f"imputed_{m}.csv"
        imputed.to_csv(out / fname, float_format="%.5g")
        imputed_files[m] = fname
        # expected values for every cell (denoised where observed, imputed where not)
        result.obsm[f"{LATENT_KEY}_expected_{m}"] = expr.to_numpy(dtype=np.float32)
        result.uns[f"{LATENT_KEY}_expected_{m}_var_names"] = np.asarray(expr.columns, dtype=str)
    if imputed_files:
        metrics["imputed"] = imputed_files

    _say("computing UMAP of the joint latent")
    umap_xy = _plot_umap(z, labels, batches, label_key, batch_key, out / "umap.png", args.seed)
    result.obsm["X_umap_mosaicvi"] = umap_xy

    _say(f"writing {out / 'latent.h5mu'}")
    result.uns["mosaicvi"] = {
        "model": "MultiVAE",
        "latent_key": LATENT_KEY,
        "modalities": list(modalities),
        "epochs": int(epochs_run),
    }
    result.write_h5mu(out / "latent.h5mu")

    _say(f"saving the trained model to {out / 'model'}")
    try:
        model.save(str(out / "model"), overwrite=True)
    except Exception as exc:
        _say(f"warning: could not save the model: {exc}")

    metrics["outputs"] = {
        "latent": "latent.h5mu",
        "umap": "umap.png",
        "metrics": "metrics.json",
        "model": "model/",
    }
    with open(out / "metrics.json", "w") as fh:
        json.dump(metrics, fh, indent=2)

    _print_metrics(metrics)
    _say(
        f"files: {out / 'latent.h5mu'} (.obsm['{LATENT_KEY}']), {out / 'umap.png'}, "
        f"{out / 'metrics.json'}" + "".join(f", {out / f}" for f in imputed_files.values())
    )
    return metrics


def _given(**kwargs: Any) -> dict[str, Any]:
    """The keyword arguments that were set (not None): the model's defaults apply to the rest."""
    return {k: v for k, v in kwargs.items() if v is not None}


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def _quiet_trainer_kwargs() -> dict[str, Any]:
    """Trainer options that keep the terminal readable (the progress bar stays on a TTY)."""
    return {"enable_progress_bar": sys.stderr.isatty(), "enable_model_summary": False}


def _clean_message(exc: BaseException) -> str:
    msg = str(exc)
    if isinstance(exc, KeyError) and len(exc.args) == 1:
        msg = str(exc.args[0])
    return msg or exc.__class__.__name__


def _missing_labels(labels: Any) -> Any:
    import numpy as np

    low = np.char.lower(labels.astype(str))
    return np.isin(low, ["nan", "none", "", "unknown"])


def _final_loss(model: Any) -> float | None:
    hist = getattr(model, "history", None) or {}
    for key in ("train_loss_epoch", "elbo_train"):
        if key in hist and len(hist[key]):
            return round(float(hist[key].iloc[-1, 0]), 4)
    return None


def _as_frame(expr: Any, mdata: Any, modality: str) -> Any:
    import numpy as np
    import pandas as pd

    if isinstance(expr, pd.DataFrame):
        return expr
    arr = np.asarray(expr)
    return pd.DataFrame(arr, index=mdata.obs_names, columns=mdata.mod[modality].var_names)


def _jsonable(obj: Any) -> Any:
    import numpy as np
    import pandas as pd

    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, pd.Series):
        return _jsonable(obj.to_dict())
    if isinstance(obj, pd.DataFrame):
        return _jsonable(obj.to_dict())
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float):
        return round(obj, 4) if np.isfinite(obj) else None
    return obj


def _plot_umap(
    z: Any,
    labels: Any,
    batches: Any,
    label_key: str | None,
    batch_key: str | None,
    path: Path,
    seed: int,
) -> Any:
    import anndata as ad
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import pandas as pd
    import scanpy as sc

    from mosaicvi.benchmark import umap_coordinates

    adata = ad.AnnData(X=np.asarray(z, dtype=np.float32))
    colors = []
    if labels is not None:
        adata.obs[label_key] = pd.Categorical(labels)
        colors.append(label_key)
    if batches is not None:
        adata.obs[batch_key] = pd.Categorical(batches)
        colors.append(batch_key)
    adata.obsm["X_umap"] = umap_coordinates(z, seed)

    ncols = max(1, len(colors))
    fig, axes = plt.subplots(1, ncols, figsize=(6 * ncols, 5), squeeze=False)
    if not colors:
        axes[0, 0].scatter(*adata.obsm["X_umap"].T, s=4)
        axes[0, 0].set_title("MultiVAE latent")
    for ax, key in zip(axes[0], colors):
        many = adata.obs[key].nunique() > 20
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PendingDeprecationWarning)
            sc.pl.umap(
                adata,
                color=key,
                ax=ax,
                show=False,
                frameon=False,
                legend_loc="on data" if many else "right margin",
                legend_fontsize=6 if many else 8,
                title=f"MultiVAE latent: {key}",
            )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return np.asarray(adata.obsm["X_umap"])


def _print_metrics(metrics: dict[str, Any]) -> None:
    print()
    print("metrics")
    print("-------")
    print(f"cells {metrics['n_cells']}, epochs {metrics['epochs']}, ", end="")
    print(f"training time {metrics['train_time_s']:.1f} s")
    integ = metrics.get("integration")
    if isinstance(integ, dict):
        parts = [f"{k} {v:.3f}" for k, v in integ.items() if isinstance(v, int | float)]
        print("integration (scib-metrics, higher is better): " + ", ".join(parts))
    for key, val in metrics.items():
        if key.startswith("knn_overlap_") and isinstance(val, dict):
            parts = [f"{k} {v:.3f}" for k, v in val.items() if k.endswith("_vs_joint")]
            print(
                f"{key.removeprefix('knn_overlap_')}-NN overlap with the joint embedding "
                f"({val['n_paired_cells']} paired cells): " + ", ".join(parts)
            )
    print()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
