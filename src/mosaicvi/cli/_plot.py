"""The UMAP figure of ``mosaicvi fit`` and ``mosaicvi demo``."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any


def plot_umap(
    z: Any,
    colour_by: dict[str, Any],
    path: Path,
    seed: int,
    title: str,
) -> Any:
    """UMAP of ``z``, one panel per ``{column name: values}`` of ``colour_by``; returns the xy.

    ``title`` prefixes each panel's title (e.g. ``"MultiVAE latent"``).
    """
    import anndata as ad
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import pandas as pd
    import scanpy as sc

    from mosaicvi.benchmark import umap_coordinates

    adata = ad.AnnData(X=np.asarray(z, dtype=np.float32))
    colours = []
    for key, values in colour_by.items():
        if values is not None and key:
            adata.obs[key] = pd.Categorical(values)
            colours.append(key)
    adata.obsm["X_umap"] = umap_coordinates(z, seed)

    ncols = max(1, len(colours))
    fig, axes = plt.subplots(1, ncols, figsize=(6 * ncols, 5), squeeze=False)
    if not colours:
        axes[0, 0].scatter(*adata.obsm["X_umap"].T, s=4)
        axes[0, 0].set_title(title)
    for ax, key in zip(axes[0], colours):
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
                title=f"{title}: {key}",
            )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return np.asarray(adata.obsm["X_umap"])
