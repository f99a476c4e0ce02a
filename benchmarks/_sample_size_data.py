"""Data of ``sample_size.py``: the two datasets, PBMC protein gating, subsamples, epoch budget."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from _common import DATA_DIR

SIZES = (500, 1000, 2500, 5000, 10000)
QUICK_SIZES = (150, 300)
DATASETS = {
    "snare": {
        "file": "snareseq_mouse_cortex_10k.h5mu",
        "second": "atac",
        "n_second": 2000,
        "n_genes": None,
    },
    "reapseq": {
        "file": "reapseq_pbmc_7488.h5mu",
        "second": "adt",
        "n_second": None,
        "n_genes": 2000,
    },
}
PASSES, MIN_EPOCHS, MAX_EPOCHS = 40_000, 10, 80

#: Protein-marker gating of PBMC cell types (REAP-seq marker names, clones summed).
GATES = {
    "CD4 T": {"CD3": True, "CD4": True, "CD8": False},
    "CD8 T": {"CD3": True, "CD8": True, "CD4": False},
    "B": {"CD3": False, "CD19": True},
    "NK": {"CD3": False, "CD56": True, "CD19": False, "CD14": False},
    "Monocyte": {"CD3": False, "CD14": True, "CD19": False, "CD56": False},
}


def epochs_for(n_cells: int) -> int:
    """The epoch budget for ``n_cells`` (about ``PASSES`` cells seen, clipped)."""
    return int(np.clip(round(PASSES / n_cells), MIN_EPOCHS, MAX_EPOCHS))


def gate_pbmc(adt) -> np.ndarray:
    """Cell types from protein counts by marker gating; NaN for unassigned or ambiguous cells.

    Proteins are summed over clones of the same marker (name before ``_``), CLR-normalised per
    cell, and a marker is *positive* where a two-component Gaussian mixture on its CLR values
    puts the cell in the higher component. A cell gets a type when it matches exactly one
    gate of :data:`GATES` (e.g. CD4 T = CD3+ CD4+ CD8-).
    """
    import pandas as pd
    from sklearn.mixture import GaussianMixture

    x = adt.X.toarray() if hasattr(adt.X, "toarray") else np.asarray(adt.X)
    markers = pd.Index([name.split("_")[0] for name in adt.var_names])
    needed = sorted({m for gate in GATES.values() for m in gate})
    summed = np.stack([x[:, markers == m].sum(1) for m in needed], axis=1)
    logged = np.log1p(x)
    clr = np.log1p(summed) - logged.mean(1, keepdims=True)
    positive = {}
    for j, marker in enumerate(needed):
        values = clr[:, [j]]
        gmm = GaussianMixture(2, random_state=0).fit(values)
        high = int(np.argmax(gmm.means_.ravel()))
        positive[marker] = gmm.predict(values) == high
    labels = np.full(x.shape[0], np.nan, dtype=object)
    n_matches = np.zeros(x.shape[0], dtype=int)
    for name, gate in GATES.items():
        match = np.ones(x.shape[0], dtype=bool)
        for marker, wanted in gate.items():
            match &= positive[marker] == wanted
        labels[match] = name
        n_matches += match
    labels[n_matches != 1] = np.nan
    return labels


def prepare(key: str, quick: bool, out: Path) -> Path:
    """Preprocess a dataset once (features, labels, batch) and save it for the workers."""
    import anndata as ad
    import mudata as md
    import pandas as pd
    import scanpy as sc
    import scipy.sparse as sp

    spec = DATASETS[key]
    path = out / f"{key}{'_quick' if quick else ''}.h5mu"
    if path.exists():
        return path
    md.set_options(pull_on_update=False)
    raw = md.read_h5mu(DATA_DIR / spec["file"])
    rna, second = raw["rna"], raw[spec["second"]]
    cells = raw.obs_names.intersection(rna.obs_names).intersection(second.obs_names)
    rna, second = rna[cells], second[cells]
    x_rna = sp.csr_matrix(rna.X, dtype=np.float32)
    n_genes = 300 if quick else spec["n_genes"]
    if n_genes is not None and rna.n_vars > n_genes:
        tmp = ad.AnnData(x_rna.copy())
        sc.pp.normalize_total(tmp, target_sum=1e4)
        sc.pp.log1p(tmp)
        sc.pp.highly_variable_genes(tmp, n_top_genes=n_genes, flavor="seurat")
        keep_genes = np.flatnonzero(tmp.var["highly_variable"].to_numpy())
    else:
        keep_genes = np.arange(rna.n_vars)
    x_second = second.X
    x_second = sp.csr_matrix(x_second, dtype=np.float32) if sp.issparse(x_second) else x_second
    n_second = 300 if quick and spec["n_second"] else spec["n_second"]
    keep_second = np.arange(second.n_vars)
    if n_second is not None and second.n_vars > n_second:
        n_open = np.asarray((x_second > 0).sum(0)).ravel()
        keep_second = np.sort(np.argsort(-n_open, kind="stable")[:n_second])
    if key == "reapseq":
        labels = gate_pbmc(second)
    else:
        labels = raw.obs.loc[cells, "cell_type"].astype(object).to_numpy()
    obs = raw.obs.loc[cells, ["batch"]].astype(str).copy()
    obs["label"] = labels
    obs["label"] = obs["label"].astype(str).replace("nan", "")  # h5mu-friendly
    index = pd.DataFrame(index=cells.astype(str))
    second_x = x_second[:, keep_second]
    mdata = md.MuData(
        {
            "rna": ad.AnnData(
                x_rna[:, keep_genes], obs=index.copy(), var=rna.var[[]].iloc[keep_genes].copy()
            ),
            spec["second"]: ad.AnnData(
                second_x if sp.issparse(second_x) else np.asarray(second_x, dtype=np.float32),
                obs=index.copy(),
                var=second.var[[]].iloc[keep_second].copy(),
            ),
        }
    )
    mdata.obs = obs.loc[mdata.obs_names]
    mdata.write(path)
    return path


def subsample(n_total: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Cells of one subsample and which of them are labelled (half, at random)."""
    rng = np.random.default_rng(1000 * seed + size)
    cells = np.sort(rng.choice(n_total, size=min(size, n_total), replace=False))
    labelled = np.zeros(len(cells), dtype=bool)
    labelled[rng.choice(len(cells), size=len(cells) // 2, replace=False)] = True
    return cells, labelled
