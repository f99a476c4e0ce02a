"""Seconds per epoch of the mosaicvi models and TOTALVI at equal data and equal batch size.

The integration benchmark trains every method at its own default batch size (MultiVAE 128,
TOTALVI 256). This script times every registered model (:mod:`mosaicvi.registry`) and the peer
at the same batch sizes, on the same paired CITE-seq data, interleaving repeats so that machine
load affects all alike.

    python benchmarks/epoch_time.py [--epochs 40] [--repeats 3] [--batch-sizes 128 256]
    python benchmarks/epoch_time.py --methods multivae peer     # MultiVAE vs TOTALVI only
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    DATA_DIR,
    add_methods_argument,
    label,
    resolve_methods,
    setup_model,
)


def _totalvi(full):
    import scvi

    rna = full["rna"].copy()
    rna.obs["batch"] = full.obs["batch"].to_numpy()
    rna.obsm["protein"] = np.asarray(full["adt"].X)
    scvi.model.TOTALVI.setup_anndata(rna, protein_expression_obsm_key="protein", batch_key="batch")
    return lambda: scvi.model.TOTALVI(rna)


#: Peers by registry name: set up once, return a constructor.
PEERS = {"totalvi": _totalvi}


def _models(path: Path, methods) -> dict:
    """``{display name: constructor}``: each method set up once on its own copy of the data."""
    import mudata as md

    full = md.read_h5mu(path)
    builders = {}
    for method in methods:
        if method.kind == "peer":
            if method.name not in PEERS:
                raise NotImplementedError(f"epoch_time.py has no set-up for {method.display_name}")
            builders[label(method)] = PEERS[method.name](full)
            continue
        cls, mdata = method.model_class(), full.copy()
        setup_model(cls, mdata, ["rna", "adt"], labels="cell_type")  # labels: if it takes them
        builders[label(method)] = lambda cls=cls, mdata=mdata: cls(mdata)
    return builders


def _time(models: dict, args) -> dict:
    """Seconds per epoch of every (model, batch size), repeats interleaved."""
    seconds = {(m, b): [] for b in args.batch_sizes for m in models}
    for _ in range(args.repeats):
        for batch_size in args.batch_sizes:
            for name, build in models.items():
                model = build()
                start = time.perf_counter()
                model.train(
                    max_epochs=args.epochs,
                    batch_size=batch_size,
                    early_stopping=False,
                    enable_progress_bar=False,
                    train_size=0.9,
                )
                seconds[name, batch_size].append((time.perf_counter() - start) / args.epochs)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="neurips2021_bmmc_cite_600.h5mu")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--threads", type=int, default=1)
    add_methods_argument(parser, "model", "peer")
    args = parser.parse_args()
    import scvi
    import torch

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    for name in ("lightning.pytorch", "mosaicvi", "scvi"):
        logging.getLogger(name).setLevel(logging.ERROR)
    scvi.settings.seed = 0

    methods = resolve_methods(args.methods, "adt")
    models = _models(DATA_DIR / args.data, methods)
    seconds = _time(models, args)
    peer = next((label(m) for m in methods if m.kind == "peer"), None)
    ours = [label(m) for m in methods if m.kind != "peer"]
    print(
        f"{args.data}, {args.epochs} epochs, {args.repeats} interleaved repeats, "
        f"{args.threads} torch thread(s); median seconds per epoch\n"
    )
    header = ["batch size", *[f"{m} s/epoch" for m in models]]
    header += [f"{m} / {peer}" for m in ours] if peer else []
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for batch_size in args.batch_sizes:
        median = {m: float(np.median(seconds[m, batch_size])) for m in models}
        cells = [f"{median[m]:.3f}" for m in models]
        cells += [f"{median[m] / median[peer]:.2f}" for m in ours] if peer else []
        print(f"| {batch_size} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
