"""Summary table and figures of ``sample_size.py``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from _common import fmt, markdown_table
from _sample_size_data import DATASETS, MAX_EPOCHS, MIN_EPOCHS, PASSES

METRICS = (
    ("nmi", "NMI"),
    ("asw_label", "cell-type ASW"),
    ("asw_batch", "batch ASW"),
    ("graph_connectivity", "graph connectivity"),
    ("overall", "overall"),
    ("train_s", "training seconds"),
)


def summarise(records: list[dict]) -> dict:
    """``{dataset: {method: {n_cells: {metric: (mean, sd, n)}}}}``."""
    table: dict = {}
    for r in records:
        cell = table.setdefault(r["dataset"], {}).setdefault(r["method"], {})
        cell.setdefault(r["n_cells"], []).append(r)
    summary: dict = {}
    for key, methods in table.items():
        for method, by_size in methods.items():
            for n, rs in sorted(by_size.items()):
                stats = {}
                for metric, _ in METRICS:
                    values = np.array([r[metric] for r in rs], dtype=float)
                    values = values[np.isfinite(values)]
                    stats[metric] = (
                        (float(values.mean()), float(values.std()), int(values.size))
                        if values.size
                        else (float("nan"), float("nan"), 0)
                    )
                summary.setdefault(key, {}).setdefault(method, {})[n] = stats
    return summary


def plot(summary: dict, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for key, methods in summary.items():
        fig, axes = plt.subplots(2, 3, figsize=(13, 7.5))
        for ax, (metric, title) in zip(axes.ravel(), METRICS):
            for method, by_size in methods.items():
                sizes = np.array(sorted(by_size))
                mean = np.array([by_size[n][metric][0] for n in sizes])
                sd = np.array([by_size[n][metric][1] for n in sizes])
                if not np.isfinite(mean).any():
                    continue
                (line,) = ax.plot(sizes, mean, marker="o", label=method)
                ax.fill_between(sizes, mean - sd, mean + sd, alpha=0.2, color=line.get_color())
            ax.set_xscale("log")
            all_sizes = sorted({n for by_size in methods.values() for n in by_size})
            ax.set_xticks(all_sizes, [f"{n:,}" for n in all_sizes], fontsize=8)
            ax.minorticks_off()
            if metric == "train_s":
                ax.set_yscale("log")
            ax.set_title(title)
            ax.set_xlabel("number of cells")
            ax.grid(alpha=0.3)
        axes[0, 0].legend(fontsize=8)
        spec = DATASETS[key]
        fig.suptitle(
            f"{spec['file']}: mean ± sd over subsamples "
            "(metrics on cells whose labels no model saw)"
        )
        fig.tight_layout()
        path = out / f"sample_size_{key}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def render(summary: dict, run: dict) -> str:
    lines = [f"## Sample-size robustness{' (QUICK smoke run)' if run['quick'] else ''}", ""]
    for key, methods in summary.items():
        lines += [f"### {key} ({DATASETS[key]['file']})", ""]
        header = ["method", "cells", *[name for _, name in METRICS], "runs"]
        rows = []
        for method, by_size in methods.items():
            for n, stats in sorted(by_size.items()):
                cells = [
                    f"{fmt(stats[m][0], 1 if m == 'train_s' else 3)} ± "
                    f"{fmt(stats[m][1], 1 if m == 'train_s' else 3)}"
                    if stats[m][2]
                    else "n/a"
                    for m, _ in METRICS
                ]
                rows.append([method, str(n), *cells, str(stats["train_s"][2])])
        lines += [markdown_table(header, rows), ""]
    lines += [
        "- Each row: mean ± sd over random subsamples of that many cells. Metrics on the half of "
        "each subsample whose labels no model saw (semi-supervised models train on the other "
        "half's labels): NMI "
        "(k-means, k = number of types) and cell-type ASW (biology), batch ASW and graph "
        "connectivity (batch removal), overall = mean of the four "
        "(`mosaicvi.metrics.joint_embedding_scores`). Not computable on these data: trajectory "
        "conservation, site ASW.",
        f"- Epochs: clip(round({PASSES:,} / cells), {MIN_EPOCHS}, {MAX_EPOCHS}) for every "
        "neural method; package/peer defaults otherwise; early stopping off. Training seconds: "
        "wall time of `train()` on 1 torch thread, 2 runs in parallel on the 2-core machine.",
        f"- This invocation: {run['total_s'] / 60:.1f} min for {run['n_runs']} trainings, "
        f"{run['n_cached']} task(s) of them reused from `runs/` (cached earlier).",
        "- REAP-seq labels come from protein gating (`gate_pbmc`: CD4 T, CD8 T, B, NK, "
        "monocytes; ambiguous cells unlabelled and left out of the label metrics).",
    ]
    return "\n".join(lines)
