"""``mosaicvi demo``: simulate a mosaic CITE-seq-like dataset and fit a model on it."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ._common import CLIError, configure_runtime, prepare_out_dir, say


def run(args: argparse.Namespace) -> int:
    """Run the command."""
    t_start = time.perf_counter()
    if args.n_cells < 60:
        raise CLIError("--n-cells must be at least 60")
    prepare_out_dir(args.out)
    configure_runtime(args)
    import mosaicvi.data as mv_data

    from ._pipeline import FitSpec, run_pipeline

    say(
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
    spec = FitSpec(
        mdata=mdata,
        model=args.model,
        modalities=["rna", "adt"],
        layer="counts",
        batch_key="batch",
        label_key="cell_type",
        likelihoods=None,
        dataset="simulated (mosaicvi.data.simulate)",
    )
    summary = run_pipeline(spec, Path(args.out), args, early_stopping=False)
    say(f"done in {time.perf_counter() - t_start:.1f} s; results in {Path(args.out).resolve()}")
    return 0 if summary else 1
