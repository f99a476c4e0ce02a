"""Shared pieces of ``query.py``: budgets, the three query forms, and the data for the workers."""

from __future__ import annotations

import numpy as np
import pandas as pd
from _common import DATASETS, Prepared

SEED = 0
K_NN = 15
SPEEDUP_TARGET = 5.0
QUICK_EPOCHS = 2
QUICK_SUBSAMPLE = {"snare_cortex": 1500}
# the query = the last batch(es) in sorted order (DATASETS[key].n_hidden_batches): s1d2 for
# CITE, libraries 09J-09L for SNARE-seq; the reference = all other batches.
QUERY_DATASETS = ("bmmc_cite", "snare_cortex")
# Equal budgets for all methods. SNARE-seq: 15 reference / 10 query epochs (half of
# integration.py's 30, same 3:2 ratio as 30/20) so that the whole run, including three
# from-scratch trainings per method on 10k cells, stays under ~40 min on 2 CPU cores.
REF_EPOCHS = {"bmmc_cite": 200, "snare_cortex": 15}  # also the from-scratch epochs
QUERY_EPOCHS = {"bmmc_cite": 100, "snare_cortex": 10}
TASKS = ("map", "scratch")
MOD_LABEL = {"rna": "RNA", "adt": "ADT", "atac": "ATAC"}
# scvi-tools' scArches tutorial trains the TOTALVI reference with these (layer norm instead of
# batch norm, so that query training does not shift normalisation statistics)
TOTALVI_ARCHES = {"use_layer_norm": "both", "use_batch_norm": "none"}
TOTALVI_N_SAMPLES = 25  # protein imputation as in scvi-tools' TOTALVI query tutorial
NO_ADT_ONLY = (
    "TOTALVI: ADT-only queries are not supported (its encoder needs RNA for every cell; "
    "scvi-tools documents only zero-filled proteins, i.e. RNA-only queries)"
)


def protocols(key: str) -> list[tuple[str, tuple[str, ...]]]:
    """(name, modalities the query has) for the three query forms of a dataset."""
    second = DATASETS[key].second
    return [
        ("paired", ("rna", second)),
        ("RNA-only", ("rna",)),
        (f"{MOD_LABEL[second]}-only", (second,)),
    ]


def missing_modality(key: str, mods: tuple[str, ...]) -> str | None:
    missing = [m for m in ("rna", DATASETS[key].second) if m not in mods]
    return missing[0] if missing else None


def _split(prep: Prepared) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the reference and the query cells."""
    return np.flatnonzero(~prep.hidden), np.flatnonzero(prep.hidden)


def _obs(prep: Prepared, idx: np.ndarray) -> pd.DataFrame:
    """``batch`` of those cells with only the categories they use (unused ones count, trap 6)."""
    obs = prep.mdata.obs.iloc[idx][["batch"]].copy()
    obs["batch"] = obs["batch"].astype(str).astype("category")
    return obs


def _mod(prep: Prepared, name: str, idx: np.ndarray, zero: bool = False):
    """AnnData of one modality for those cells (optionally all zeros: a peer's 'missing')."""
    import anndata as ad
    import scipy.sparse as sp

    a = prep.mdata[name]
    x = a.X[idx]
    if zero:
        x = sp.csr_matrix(x.shape, dtype=np.float32) if sp.issparse(x) else np.zeros_like(x)
    else:
        x = x.copy()
    return ad.AnnData(
        X=x, obs=pd.DataFrame(index=a.obs_names[idx]), var=pd.DataFrame(index=a.var_names)
    )


def _ordered(values, index, expected: pd.Index) -> np.ndarray:
    """Rows of ``values`` (labelled by ``index``) in the order of ``expected``."""
    pos = pd.Index(index).get_indexer(expected)
    if (pos < 0).any():
        raise RuntimeError("a model's output lacks some query cells")
    return np.asarray(values, dtype=np.float32)[pos]
