"""Trimodal mosaic from two real panels: NeurIPS 2021 BMMC CITE-seq + Multiome, with feature masks.

The two files of ``../shared/data`` are joined with :func:`mosaicvi.data.concat_mosaic`: RNA
holds the union of the two gene panels (1,000 CITE-seq genes, 600 Multiome genes, a few dozen
shared), protein comes from the CITE-seq cells only and ATAC from the Multiome cells only; no
cell has all three. Every registered model is trained on the mosaic with the feature masks
(genes outside a dataset's panel are unmeasured there) and without them (those genes are zero
counts), and compared with the obvious baseline, a PCA of the shared genes.

Score: label transfer (15-NN, :func:`mosaicvi.tools.label_transfer`) from the CITE-seq cells'
``cell_type`` to the Multiome cells and back, accuracy over the cells whose label the other
dataset has; and the mean of the two directions. JAE is supervised, so it is trained once per
direction with the labels of the source dataset only.

Usage::

    .venv/bin/python benchmarks/trimodal_mosaic.py                 # every model, 3 seeds
    .venv/bin/python benchmarks/trimodal_mosaic.py --methods multivae --seeds 0
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    DATA_DIR,
    RESULTS_DIR,
    add_methods_argument,
    fmt,
    label,
    markdown_table,
    resolve_methods,
    set_threads,
    takes_labels,
)

FILES = {"cite": "neurips2021_bmmc_cite_600.h5mu", "multiome": "neurips2021_bmmc_multiome_500.h5mu"}
DIRECTIONS = (("cite", "multiome"), ("multiome", "cite"))
N_PCS = 20
K = 15


def load_mosaic():
    """The joined MuData, its feature masks and the genes both panels measured."""
    import mudata as md

    import mosaicvi as mv

    md.set_options(pull_on_update=False)
    datasets = {}
    for name, file in FILES.items():
        path = DATA_DIR / file
        if not path.exists():
            raise FileNotFoundError(f"{path} not found (set MOSAICVI_DATA_DIR to the data folder)")
        datasets[name] = md.read_h5mu(path)
    shared = datasets["cite"]["rna"].var_names.intersection(datasets["multiome"]["rna"].var_names)
    mosaic, masks = mv.data.concat_mosaic(datasets, batch_key="batch")
    return mosaic, masks, shared


def transfer_accuracy(latent: np.ndarray, mosaic, source: str, target: str) -> float:
    """15-NN label transfer from ``source`` to ``target`` cells, on labels both datasets have."""
    from mosaicvi.tools import label_transfer

    dataset = mosaic.obs["dataset"].astype(str).to_numpy()
    labels = mosaic.obs["cell_type"].astype(str).to_numpy()
    src, tgt = dataset == source, dataset == target
    predicted = label_transfer(latent[src], labels[src], latent[tgt], k=K)["label"].to_numpy()
    scored = np.isin(labels[tgt], np.unique(labels[src]))
    return float((predicted[scored] == labels[tgt][scored]).mean())


def shared_gene_pca(mosaic, shared) -> np.ndarray:
    """PCA of log-normalised counts of the genes both panels measured."""
    import scipy.sparse as sp
    from sklearn.decomposition import PCA

    x = mosaic["rna"][mosaic.obs_names, shared].X
    x = x.toarray() if sp.issparse(x) else np.asarray(x)
    x = np.log1p(1e4 * x / np.maximum(x.sum(1, keepdims=True), 1.0))
    x = (x - x.mean(0)) / (x.std(0) + 1e-8)
    return PCA(N_PCS, random_state=0).fit_transform(x)


def train_latent(
    method, mosaic, masks, seed: int, epochs: int, labels_from: str | None, plan: dict
):
    """Latent of the whole mosaic from ``method`` (with ``masks``, or none when empty)."""
    import scvi

    data = mosaic.copy()
    cls = method.model_class()
    setup = {"batch_key": "batch", "feature_masks": masks or None}
    if takes_labels(cls):
        keep = data.obs["dataset"].astype(str) == labels_from
        data.obs["source_label"] = data.obs["cell_type"].astype(str).where(keep, "Unknown")
        setup["labels_key"] = "source_label"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cls.setup_mudata(data, modalities=["rna", "adt", "atac"], **setup)
        scvi.settings.seed = seed
        model = cls(data)
        model.train(max_epochs=epochs, enable_progress_bar=False, plan_kwargs=plan or None)
    return model.get_latent_representation()


def run(args) -> list[dict]:
    mosaic, masks, shared = load_mosaic()
    print(
        f"mosaic: {mosaic.n_obs} cells; rna {mosaic['rna'].n_vars} genes "
        f"({len(shared)} in both panels), adt {mosaic['adt'].n_obs} cells, "
        f"atac {mosaic['atac'].n_obs} cells",
        flush=True,
    )
    rows = []
    pca = shared_gene_pca(mosaic, shared)
    rows.append(
        {
            "method": "PCA (shared genes)",
            "masks": "n/a",
            "seed": 0,
            **{f"{s}->{t}": transfer_accuracy(pca, mosaic, s, t) for s, t in DIRECTIONS},
            "seconds": 0.0,
        }
    )
    for method, plan in variants(args):
        supervised = takes_labels(method.model_class())
        name = label(method) + "".join(f" ({k} {v:g})" for k, v in plan.items())
        for use_masks in (True, False):
            for seed in args.seeds:
                start = time.perf_counter()
                scores = {}
                for source, target in DIRECTIONS:
                    if supervised or not scores:
                        latent = train_latent(
                            method,
                            mosaic,
                            masks if use_masks else {},
                            seed,
                            args.epochs,
                            source if supervised else None,
                            plan,
                        )
                    scores[f"{source}->{target}"] = transfer_accuracy(
                        latent, mosaic, source, target
                    )
                row = {
                    "method": name,
                    "masks": "yes" if use_masks else "no",
                    "seed": seed,
                    **scores,
                    "seconds": time.perf_counter() - start,
                }
                print(row, flush=True)
                rows.append(row)
    return rows


def variants(args) -> list[tuple[object, dict]]:
    """(method, plan_kwargs) to run: each ``--mmd-weights`` value for models with an MMD term."""
    out = []
    for method in resolve_methods(args.methods):
        plan_cls = method.model_class()._training_plan_cls
        if "mmd_weight" in inspect.signature(plan_cls.__init__).parameters:
            out += [(method, {"mmd_weight": w}) for w in args.mmd_weights]
        else:
            out.append((method, {}))
    return out


def render(rows: list[dict], args) -> str:
    keys = [f"{s}->{t}" for s, t in DIRECTIONS]
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["method"], row["masks"]), []).append(row)
    table = []
    for (method, masks), members in groups.items():
        means = [np.mean([m[k] for m in members]) for k in keys]
        spread = [np.std([m[k] for m in members]) for k in keys]
        table.append(
            [method, masks, str(len(members))]
            + [f"{fmt(m)} ± {fmt(s)}" for m, s in zip(means, spread)]
            + [fmt(float(np.mean(means))), f"{np.mean([m['seconds'] for m in members]):.0f}"]
        )
    header = ["method", "feature masks", "seeds", "CITE -> Multiome", "Multiome -> CITE"]
    lines = [
        "# Trimodal mosaic (NeurIPS 2021 BMMC CITE-seq + Multiome)",
        "",
        f"- {args.epochs} epochs per model, seeds {args.seeds}; 15-NN label transfer accuracy "
        "on the cells whose label the other dataset has (mean ± sd over seeds). Each model's "
        "defaults, except the `mmd_weight` named in the method column.",
        "",
        markdown_table(header + ["mean", "s"], table),
    ]
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_methods_argument(p, "model")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=200)
    p.add_argument(
        "--mmd-weights",
        nargs="+",
        type=float,
        default=[1.0, 10.0],
        help="mmd_weight values for the models whose training plan has one (default 1 10)",
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(RESULTS_DIR / "trimodal_mosaic.md"))
    args = p.parse_args(argv)
    set_threads(args.threads)
    rows = run(args)
    report = render(rows, args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report + "\n")
    out.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    print("\n" + report)


if __name__ == "__main__":
    main()
