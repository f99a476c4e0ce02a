"""Figures and a markdown report from a :class:`~mosaicvi.benchmark.BenchmarkResult`."""

from __future__ import annotations

import math
import platform
import warnings
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ._run import BenchmarkResult

INTEGRATION_COLUMNS = [
    "nmi",
    "ari",
    "silhouette_label",
    "silhouette_batch",
    "ilisi",
    "graph_connectivity",
    "bio",
    "batch",
    "total",
]
IMPUTATION_COLUMNS = ["impute_pearson", "impute_spearman", "impute_auroc"]
METRIC_LABELS = {
    "nmi": "NMI",
    "ari": "ARI",
    "silhouette_label": "cell-type ASW",
    "silhouette_batch": "batch ASW",
    "ilisi": "iLISI",
    "graph_connectivity": "graph conn.",
    "bio": "bio",
    "batch": "batch",
    "total": "total",
    "impute_pearson": "imputation r",
    "impute_spearman": "imputation ρ",
    "impute_auroc": "open-peak AUROC",
    "train_seconds": "train s",
    "epochs": "epochs",
}
MAX_SCATTER_POINTS = 20_000


def umap_coordinates(latent: Any, seed: int = 0) -> np.ndarray:
    """2-D UMAP of an embedding (scanpy, 15 nearest neighbours or fewer for tiny data)."""
    import anndata as ad
    import scanpy as sc

    adata = ad.AnnData(np.asarray(latent, dtype=np.float32))
    n_neighbors = int(min(15, max(2, adata.n_obs - 1)))
    sc.pp.neighbors(adata, use_rep="X", n_neighbors=n_neighbors, random_state=seed)
    sc.tl.umap(adata, random_state=seed)
    return np.asarray(adata.obsm["X_umap"])


def _category_colors(values: pd.Series) -> tuple[np.ndarray, list[tuple[str, Any]]]:
    import matplotlib.pyplot as plt

    cats = pd.Categorical(values.astype(object).where(values.notna(), "unlabelled"))
    cmap = plt.get_cmap("tab20" if len(cats.categories) > 10 else "tab10")
    palette = [cmap(i % cmap.N) for i in range(len(cats.categories))]
    colors = np.array([palette[c] for c in cats.codes])
    return colors, list(zip(map(str, cats.categories), palette))


def plot_umaps(result: BenchmarkResult, path: Path, seed: int = 0) -> Path:
    """One column per method; rows coloured by cell type (if known), batch and held-out cells."""
    import matplotlib.pyplot as plt

    methods = list(result.latents)
    color_by = [k for k in ("cell_type", "batch") if k in result.obs.columns]
    color_by.append("held_out")
    fig, axes = plt.subplots(
        len(color_by),
        len(methods),
        figsize=(3.2 * len(methods) + 2.2, 3.0 * len(color_by)),
        squeeze=False,
    )
    legends = {}
    for j, method in enumerate(methods):
        xy = umap_coordinates(result.latents[method], seed)
        for i, key in enumerate(color_by):
            values = result.obs[key]
            if key == "held_out":
                values = values.map({True: "held out", False: "measured"})
            colors, legend = _category_colors(values)
            ax = axes[i, j]
            ax.scatter(xy[:, 0], xy[:, 1], c=colors, s=3, linewidths=0, rasterized=True)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(method)
            if j == 0:
                ax.set_ylabel(key.replace("_", " "))
            legends[key] = legend
    for i, key in enumerate(color_by):
        legend = legends[key]
        handles = [
            plt.Line2D([], [], marker="o", ls="", color=c, label=n, markersize=5)
            for n, c in legend[:25]
        ]
        axes[i, -1].legend(
            handles=handles,
            loc="center left",
            bbox_to_anchor=(1.02, 0.5),
            fontsize=6,
            frameon=False,
        )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_metrics(result: BenchmarkResult, path: Path) -> Path | None:
    """Grouped bars: one group per metric, one bar per method."""
    import matplotlib.pyplot as plt

    columns = [c for c in INTEGRATION_COLUMNS + IMPUTATION_COLUMNS if c in result.scores.columns]
    table = result.scores[columns].astype(float)
    table = table.loc[:, table.notna().any()]
    if table.empty:
        return None
    n_methods, n_metrics = table.shape
    width = 0.8 / n_methods
    fig, ax = plt.subplots(figsize=(min(12.0, 2.0 + 0.18 * n_metrics * n_methods), 3.6))
    cmap = plt.get_cmap("tab10")
    x = np.arange(n_metrics)
    for i, method in enumerate(table.index):
        ax.bar(
            x + (i - (n_methods - 1) / 2) * width,
            table.loc[method],
            width,
            label=method,
            color=cmap(i % 10),
        )
    ax.set_xticks(x, [METRIC_LABELS.get(c, c) for c in table.columns], rotation=30, ha="right")
    ax.set_ylabel("score (higher is better)")
    ax.set_ylim(min(0.0, float(np.nanmin(table.to_numpy())) - 0.05), 1.0)
    ax.legend(
        fontsize=7,
        ncols=min(n_methods, 6),
        loc="upper center",
        bbox_to_anchor=(0.5, 1.18),
        frameon=False,
    )
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_imputation(result: BenchmarkResult, path: Path, seed: int = 0) -> Path | None:
    """Imputed vs measured (log1p of library-normalised values), one panel per method."""
    import matplotlib.pyplot as plt

    methods = list(result.imputed)
    if not methods or result.observed is None:
        return None
    truth = np.log1p(result.observed.to_numpy()).ravel()
    rng = np.random.default_rng(seed)
    pick = rng.choice(truth.size, size=min(MAX_SCATTER_POINTS, truth.size), replace=False)
    ncols = min(len(methods), 4)
    nrows = math.ceil(len(methods) / ncols) + 1
    fig = plt.figure(figsize=(3.2 * ncols, 3.0 * nrows))
    top = truth[pick].max()
    for k, method in enumerate(methods):
        ax = fig.add_subplot(nrows, ncols, k + 1)
        pred = np.log1p(result.imputed[method].to_numpy()).ravel()[pick]
        ax.hexbin(truth[pick], pred, gridsize=40, bins="log", mincnt=1, cmap="viridis")
        ax.plot([0, top], [0, top], color="grey", lw=0.8, ls="--")
        r = result.scores.loc[method, "impute_pearson"]
        ax.set_title(f"{method}\nmean per-feature r = {r:.2f}", fontsize=9)
        ax.set_xlabel("measured, log1p", fontsize=8)
        if k % ncols == 0:
            ax.set_ylabel("imputed, log1p", fontsize=8)
    ax = fig.add_subplot(nrows, 1, nrows)
    data = [result.feature_correlations[m].dropna().to_numpy() for m in methods]
    ax.boxplot(data, vert=False, tick_labels=methods, showfliers=False)
    ax.set_xlabel("per-feature Pearson r, imputed vs measured (held-out cells)")
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _fmt(value: Any) -> str:
    if value is None or value is pd.NA or (isinstance(value, float) and not np.isfinite(value)):
        return "n/a"
    if isinstance(value, float | np.floating):
        return f"{value:.3f}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def _markdown_table(frame: pd.DataFrame) -> str:
    header = ["method", *[METRIC_LABELS.get(c, c) for c in frame.columns]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method, row in frame.iterrows():
        lines.append("| " + " | ".join([str(method), *map(_fmt, row.tolist())]) + " |")
    return "\n".join(lines)


def _versions() -> str:
    parts = []
    for dist in ("mosaicvi", "scvi-tools", "torch", "scib-metrics"):
        try:
            parts.append(f"{dist} {version(dist)}")
        except PackageNotFoundError:
            pass
    parts.append(f"Python {platform.python_version()}")
    return ", ".join(parts)


def write_report(
    result: BenchmarkResult,
    out: str | Path,
    title: str = "mosaicvi benchmark",
    command: str | None = None,
    seed: int = 0,
) -> Path:
    """Write ``report.md``, ``scores.csv`` and the figures into ``out``.

    Parameters
    ----------
    result
        From :func:`~mosaicvi.benchmark.run_benchmark`.
    out
        Output folder (created if needed).
    title
        First heading of the report.
    command
        The command line that produced it, quoted in the report.
    seed
        Seed of the UMAP layouts and the scatter subsample.

    Returns
    -------
    Path of the report.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    result.scores.to_csv(out / "scores.csv")
    for method, corr in result.feature_correlations.items():
        corr.to_frame(method).to_csv(out / f"imputation_{method.replace(' ', '_')}.csv")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        figures = {
            "umap": plot_umaps(result, out / "umap.png", seed) if result.latents else None,
            "metrics": plot_metrics(result, out / "metrics.png"),
            "imputation": plot_imputation(result, out / "imputation.png", seed),
        }

    lines = [f"# {title}", ""]
    if command:
        lines += ["```", command, "```", ""]
    lines += ["## Data and protocol", ""]
    lines += [f"- {key.replace('_', ' ')}: {value}" for key, value in result.protocol.items()]
    lines += [
        "- integration metrics: scIB definitions via scib-metrics (higher is better; "
        "total = 0.6 bio + 0.4 batch); imputation: per-feature Pearson / Spearman of "
        "log1p library-normalised values of the held-out cells, averaged over features; for "
        "ATAC also the AUROC of the imputed values for open (count > 0) vs closed peaks",
        f"- software: {_versions()}",
        "",
    ]
    integration = [c for c in INTEGRATION_COLUMNS if c in result.scores.columns]
    if integration:
        lines += ["## Integration", "", _markdown_table(result.scores[integration]), ""]
    rest = [c for c in [*IMPUTATION_COLUMNS, "train_seconds", "epochs"] if c in result.scores]
    lines += ["## Imputation and training time", "", _markdown_table(result.scores[rest]), ""]
    captions = {
        "umap": "UMAP of each method's latent space",
        "metrics": "Integration and imputation scores",
        "imputation": "Imputed vs measured values of the held-out cells",
    }
    for key, path in figures.items():
        if path is not None:
            lines += [f"## {captions[key]}", "", f"![{captions[key]}]({path.name})", ""]
    noted = {m: n for m, n in result.notes.items() if n}
    if noted:
        lines += ["## Notes", ""]
        lines += [f"- {method}: {'; '.join(n)}" for method, n in noted.items()]
        lines.append("")
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
