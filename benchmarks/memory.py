"""Who owns the assembled data: memory before, during and after two models on one MuData.

Sets up and trains every registered mosaicvi model (by default MultiVAE, then CLUE) on one
simulated CITE-like MuData, deletes the models, and prints the process's resident memory at each
step next to whether each model's assembled AnnData is still alive. With no cache keyed by
object identity, deleting the models gives the memory back.

Usage (from the repository root)::

    .venv/bin/python benchmarks/memory.py                       # 20,000 cells, MultiVAE + CLUE
    .venv/bin/python benchmarks/memory.py --cells 50000 --models multivae clue jae
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import sys
import weakref
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import markdown_table, set_threads  # noqa: E402


def rss_mb() -> float:
    """Resident set size of this process (after a garbage collection and malloc trim)."""
    gc.collect()
    try:  # glibc keeps freed small blocks; give them back so RSS reflects live objects
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def main() -> None:
    """Run the measurement and print one markdown table."""
    import mosaicvi as mv

    names = mv.registry.names("model")
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cells", type=int, default=20_000)
    parser.add_argument("--genes", type=int, default=4_000)
    parser.add_argument("--proteins", type=int, default=200)
    parser.add_argument("--models", nargs="+", choices=names, default=["multivae", "clue"])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    set_threads(args.threads)

    mdata = mv.data.simulate(
        n_cells=args.cells, n_genes=args.genes, n_proteins=args.proteins, n_batches=2, seed=0
    )
    rows = [["MuData simulated", f"{rss_mb():.0f}", ""]]
    models, alive = [], []
    for name in args.models:
        method = mv.registry.get(name)
        cls = method.model_class()
        extra = {"labels_key": "cell_type"} if "labels_key" in _setup_args(cls) else {}
        cls.setup_mudata(mdata, modalities=["rna", "adt"], batch_key="batch", **extra)
        model = cls(mdata)
        model.train(max_epochs=args.epochs, enable_progress_bar=False, early_stopping=False)
        model.get_latent_representation()
        models.append(model)
        alive.append((method.display_name, weakref.ref(model.adata)))
        rows.append([f"{method.display_name} set up and trained", f"{rss_mb():.0f}", _alive(alive)])
    del model
    models.clear()
    rows.append(["models deleted", f"{rss_mb():.0f}", _alive(alive)])
    x = mdata.mod["rna"].X
    input_mb = (x.data.nbytes + x.indices.nbytes + x.indptr.nbytes) / 2**20
    print(
        f"{args.cells} cells x ({args.genes} genes + {args.proteins} proteins); sparse RNA input "
        f"{input_mb:.0f} MB; {args.epochs} epoch(s) per model\n"
    )
    print(markdown_table(["step", "RSS MB", "assembled data alive"], rows))


def _setup_args(cls) -> set[str]:
    import inspect

    return set(inspect.signature(cls.setup_mudata).parameters)


def _alive(refs) -> str:
    return ", ".join(f"{name}: {'yes' if ref() is not None else 'no'}" for name, ref in refs)


if __name__ == "__main__":
    main()
