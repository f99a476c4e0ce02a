"""Seconds per epoch of MultiVAE and TOTALVI at equal data and equal batch size.

The integration benchmark trains every method at its own default batch size (MultiVAE 128,
TOTALVI 256). This script times both at the same batch sizes, on the same paired CITE-seq data,
interleaving repeats so that machine load affects both alike.

    python benchmarks/epoch_time.py [--epochs 40] [--repeats 3] [--batch-sizes 128 256]
"""

from __future__ import annotations

import argparse
import logging
import time
import warnings
from pathlib import Path

import mudata as md
import numpy as np
import scvi
import torch

import mosaicvi as mv

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _models(path: Path):
    full = md.read_h5mu(path)
    rna = full["rna"].copy()
    rna.obs["batch"] = full.obs["batch"].to_numpy()
    rna.obsm["protein"] = np.asarray(full["adt"].X)
    scvi.model.TOTALVI.setup_anndata(rna, protein_expression_obsm_key="protein", batch_key="batch")
    mv.model.MultiVAE.setup_mudata(full, modalities=["rna", "adt"], batch_key="batch")
    return {"MultiVAE": lambda: mv.model.MultiVAE(full), "TOTALVI": lambda: scvi.model.TOTALVI(rna)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="neurips2021_bmmc_cite_600.h5mu")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    for name in ("lightning.pytorch", "mosaicvi", "scvi"):
        logging.getLogger(name).setLevel(logging.ERROR)
    scvi.settings.seed = 0

    models = _models(DATA / args.data)
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

    print(
        f"{args.data}, {args.epochs} epochs, {args.repeats} interleaved repeats, "
        f"{args.threads} torch thread(s); median seconds per epoch\n"
    )
    print("| batch size | MultiVAE s/epoch | TOTALVI s/epoch | MultiVAE / TOTALVI |")
    print("|---|---|---|---|")
    for batch_size in args.batch_sizes:
        ours = float(np.median(seconds["MultiVAE", batch_size]))
        peer = float(np.median(seconds["TOTALVI", batch_size]))
        print(f"| {batch_size} | {ours:.3f} | {peer:.3f} | {ours / peer:.2f} |")


if __name__ == "__main__":
    main()
