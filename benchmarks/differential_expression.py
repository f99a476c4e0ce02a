"""Differential expression: do the top DE proteins of each cell type recover its known markers?

On ``neurips2021_bmmc_cite_600`` (CITE-seq bone marrow, 134 proteins) the cells are pooled into
four coarse groups (B, monocytes, NK, T). Every registered model with a likelihood and
scvi-tools' TOTALVI are trained on the same data with the same seeds, each runs its
differential expression of proteins (one group against the rest, ``mode="change"``), and the
five proteins most probably up-regulated in each group (``lfc_mean > 0``, by ``proba_de``) are
compared with textbook surface markers of that group.

Usage::

    .venv/bin/python benchmarks/differential_expression.py              # 3 seeds (~5 min)
    .venv/bin/python benchmarks/differential_expression.py --quick      # 1 seed, few epochs

Prints a table: markers among the top 5 per group (mean over seeds) and their total, per method.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import pandas as pd
from _common import DATA_DIR, RESULTS_DIR, add_methods_argument, resolve_methods, set_threads

FILE = "neurips2021_bmmc_cite_600.h5mu"
TOP = 5

#: Surface markers of each coarse group among the file's 134 proteins (textbook immunology).
MARKERS = {
    "B": {"CD19", "CD20", "CD79b", "IgD", "IgM", "CD22", "CD72", "CD21", "CD24", "CD268", "CD185"},
    "monocytes": {
        "CD14", "CD33", "CD11b", "CD64", "CD36", "CD13", "CD172a", "CD163", "CD11c", "CD88",
        "CD115", "CD93", "LOX-1", "CD16", "CX3CR1", "CD32", "CD192",
    },
    "NK": {
        "CD56", "CD335", "CD94", "CD158", "CD158b", "CD158e1", "CD16", "CD57", "CD122", "CD244",
        "CD314", "KLRG1", "CD49b", "CD85j", "CD7", "CD2",
    },
    "T": {
        "CD3", "TCR", "CD5", "CD2", "CD4", "CD8", "CD28", "CD27", "CD7", "CD127", "TCRVa7.2",
        "TCRVd2", "CD278", "CD6",
    },
}  # fmt: skip


def coarse_group(cell_type: str) -> str:
    """The coarse group of a fine NeurIPS 2021 label (``other`` outside the four groups)."""
    if "Mono" in cell_type:
        return "monocytes"
    if cell_type.startswith("NK"):
        return "NK"
    if cell_type.endswith(" B") or " B " in cell_type or cell_type.startswith("B1 B"):
        return "B"
    if " T " in f" {cell_type} " or cell_type.startswith(("gdT", "MAIT", "T reg")):
        return "T"
    return "other"


def load(path: Path):
    import mudata as md

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mdata = md.read_h5mu(path)
    mdata.obs["coarse"] = [coarse_group(str(t)) for t in mdata.obs["cell_type"]]
    return mdata


def top_up(de: pd.DataFrame, group: str, proteins: pd.Index) -> list[str]:
    """The ``TOP`` proteins most probably up in ``group`` (scvi-tools' DE columns)."""
    rows = de[(de["group1"] == group) & de.index.isin(proteins) & (de["lfc_mean"] > 0)]
    rows = rows.sort_values(["proba_de", "lfc_mean"], ascending=False)
    return list(rows.index[:TOP])


def run_mosaicvi(name: str, mdata, groups, epochs: int, seed: int) -> pd.DataFrame:
    import scvi

    from mosaicvi import registry

    scvi.settings.seed = seed
    cls = registry.get(name).model_class()
    cls.setup_mudata(mdata, layers={"rna": "counts", "adt": "counts"}, batch_key="batch")
    model = cls(mdata)
    model.train(max_epochs=epochs, enable_progress_bar=False, enable_model_summary=False)
    return model.differential_expression(groupby="coarse", group1=groups, modality="adt")


def run_totalvi(mdata, groups, epochs: int, seed: int) -> pd.DataFrame:
    import scvi

    scvi.settings.seed = seed
    scvi.model.TOTALVI.setup_mudata(
        mdata,
        rna_layer="counts",
        protein_layer="counts",
        batch_key="batch",
        modalities={"rna_layer": "rna", "protein_layer": "adt"},
    )
    model = scvi.model.TOTALVI(mdata)
    model.train(max_epochs=epochs, enable_progress_bar=False, enable_model_summary=False)
    de = model.differential_expression(groupby="coarse", group1=groups, silent=True)
    # TOTALVI tests genes and proteins together; its protein rows are named "<protein>_protein"
    proteins = de.index.str.endswith("_protein")
    de = de[proteins].copy()
    de.index = de.index.str.removesuffix("_protein")
    return de


def _testable(methods) -> list[str]:
    """Registry names of the methods that run DE here (models with a likelihood, TOTALVI)."""
    from mosaicvi.base import AnalysisMixin

    names = []
    for method in methods:
        if method.kind == "peer" and method.name == "totalvi":
            names.append(method.name)
        elif method.kind == "model" and issubclass(method.model_class(), AnalysisMixin):
            names.append(method.name)
        else:
            print(f"{method.display_name}: no differential expression to compare (skipped)")
    return names


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_methods_argument(p, "model", "peer", note="models with a likelihood and the peer; ")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=200)
    p.add_argument("--quick", action="store_true", help="1 seed, 20 epochs (smoke run)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(RESULTS_DIR / "differential_expression"))
    args = p.parse_args()
    set_threads(args.threads)
    seeds = range(1 if args.quick else args.seeds)
    epochs = 20 if args.quick else args.epochs
    path = DATA_DIR / FILE
    if not path.exists():
        raise SystemExit(f"{path} is absent: set MOSAICVI_DATA_DIR to the shared data folder.")
    groups = list(MARKERS)
    records = []
    for method in _testable(resolve_methods(args.methods, second="adt")):
        for seed in seeds:
            mdata = load(path)  # a fresh copy per run: each model registers its own
            proteins = mdata["adt"].var_names
            start = time.perf_counter()
            if method == "totalvi":
                de = run_totalvi(mdata, groups, epochs, seed)
            else:
                de = run_mosaicvi(method, mdata, groups, epochs, seed)
            seconds = time.perf_counter() - start
            for group in groups:
                top = top_up(de, group, proteins)
                hits = sorted(set(top) & MARKERS[group])
                records.append(
                    dict(method=method, seed=seed, group=group, hits=len(hits), top=top,
                         markers_found=hits, seconds=seconds)
                )  # fmt: skip
            print(f"{method} seed {seed}: {seconds:.0f} s", flush=True)
    table = pd.DataFrame(records)
    summary = table.pivot_table(index="method", columns="group", values="hits", aggfunc="mean")
    summary = summary[groups]
    summary["total"] = summary.sum(1)
    print(f"\nMarkers among the top {TOP} up-regulated proteins per group (mean over seeds), "
          f"{FILE}, {epochs} epochs, seeds {list(seeds)}:\n")  # fmt: skip
    print(summary.round(2).to_string())
    last = table[table["seed"] == 0].set_index(["method", "group"])["top"]
    print("\nTop proteins, seed 0:\n")
    print(last.map(", ".join).to_string())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "differential_expression.json").write_text(
        json.dumps({"epochs": epochs, "records": records}, indent=1)
    )
    print(f"\nwritten: {out / 'differential_expression.json'}")


if __name__ == "__main__":
    main()
