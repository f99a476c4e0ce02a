"""Simulated MuData used by several test modules (import as ``from _simulated import ...``)."""

from __future__ import annotations

import numpy as np


def trimodal_mosaic_with_covariates(n_cells: int, n_genes: int, n_proteins: int, n_peaks: int):
    """RNA + protein + ATAC in 3 batches, each batch lacking one modality, with a categorical
    (``site``) and a continuous (``depth``) covariate in ``mdata.obs``."""
    import mosaicvi as mv

    mdata = mv.data.simulate(
        n_cells=n_cells,
        modalities=("rna", "adt", "atac"),
        n_genes=n_genes,
        n_proteins=n_proteins,
        n_peaks=n_peaks,
        n_batches=3,
        missing={"batch_0": ["atac"], "batch_1": ["adt"], "batch_2": ["rna"]},
        seed=4,
    )
    mdata.obs["site"] = np.where(np.arange(mdata.n_obs) % 2 == 0, "a", "b")
    mdata.obs["depth"] = np.linspace(0, 1, mdata.n_obs)
    return mdata
