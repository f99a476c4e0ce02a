"""The data contract shared by every reader: validation, one modality, the assembled MuData."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import anndata as ad
import mudata
import numpy as np
import pandas as pd
import scipy.sparse as sp

logger = logging.getLogger(__name__)

MODALITIES = ("rna", "adt", "atac")
# var["feature_types"] value written for each modality (the local subsets' convention)
CONTRACT_FEATURE_TYPES = {"rna": "GEX", "adt": "ADT", "atac": "ATAC"}
_DENSE_MODALITIES = ("adt",)


def _require_file(path: str | Path, *, what: str, expected: Sequence[str], source: str) -> Path:
    path = Path(path).expanduser()
    if path.name.endswith(".gz"):
        raise ValueError(
            f"{path} is gzipped. Decompress it first (`gunzip -k {path.name}`): an HDF5 file "
            "must be uncompressed to read a subset of its cells."
        )
    if path.is_file():
        return path
    gz = path.with_name(path.name + ".gz")
    if gz.is_file():
        raise FileNotFoundError(
            f"{path} not found, but {gz.name} is there: decompress it first (`gunzip -k "
            f"{gz.name}`)."
        )
    raise FileNotFoundError(
        f"{what} not found: {path}. Expected one of {list(expected)}, from {source}."
    )


def _select_modalities(
    modalities: Sequence[str] | None,
    present: Mapping[str, str],
    *,
    found: Sequence[str],
    source: str,
    column: str,
) -> list[str]:
    """Validate the requested modalities against those present (``{modality: feature type}``)."""
    found = sorted(str(x) for x in found)
    if modalities is None:
        if "rna" not in present or len(present) < 2:
            raise ValueError(
                f"{source} has feature types {list(found)} in {column}; a multimodal read needs "
                "RNA and at least one of protein (ADT) or ATAC. Pass modalities=[...] to read "
                "only some of them (e.g. modalities=['rna'])."
            )
        return [m for m in MODALITIES if m in present]
    if isinstance(modalities, str):
        modalities = [modalities]
    modalities = list(dict.fromkeys(modalities))
    unknown = [m for m in modalities if m not in MODALITIES]
    if unknown:
        raise ValueError(f"Unknown modalities {unknown}; choose among {list(MODALITIES)}.")
    if not modalities:
        raise ValueError(f"modalities is empty; choose among {list(MODALITIES)}.")
    missing = [m for m in modalities if m not in present]
    if missing:
        raise ValueError(
            f"Modalities {missing} are not in {source}: it has feature types {list(found)} in "
            f"{column}, i.e. modalities {sorted(present)}."
        )
    return modalities


def _require_columns(frame: pd.DataFrame, columns: Sequence[str], where: str, source: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise KeyError(
            f"{source}: {where} has no column {missing}. Its columns are {list(frame.columns)}."
        )


def _check_unique_obs_names(names: pd.Index, source: str) -> None:
    if names.has_duplicates:
        dup = names[names.duplicated()].unique()
        raise ValueError(
            f"{source}: {len(dup)} cell barcodes occur more than once (e.g. {list(dup[:3])}); "
            "cells must have unique names to pair modalities."
        )


def _unique_names(names: pd.Index, mod: str, source: str) -> pd.Index:
    """``names`` with repeats suffixed ``-1``, ``-2``, ... (logged); nothing is dropped."""
    if names.is_unique:
        return names
    dup = names[names.duplicated(keep=False)].unique()
    logger.warning(
        "%s: %d %s feature names occur more than once (e.g. %s); they are made unique by "
        "appending -1, -2, ... (all features are kept).",
        source,
        len(dup),
        mod,
        list(dup[:5]),
    )
    return ad.utils.make_index_unique(names)


def _clean_obs(obs: pd.DataFrame) -> pd.DataFrame:
    """A copy with unused categories removed (so that selected batches are the only levels)."""
    obs = obs.copy()
    for column in obs.columns:
        if isinstance(obs[column].dtype, pd.CategoricalDtype):
            obs[column] = obs[column].cat.remove_unused_categories()
    return obs


def _make_modality(
    counts: sp.spmatrix, obs_names: pd.Index, var: pd.DataFrame, mod: str, source: str
) -> ad.AnnData:
    """One modality in the contract: float32 counts in X and layers['counts'], empty obs."""
    counts = sp.csr_matrix(counts, dtype=np.float32)
    counts.sum_duplicates()
    values = counts.data
    if values.size and (not np.isfinite(values).all() or values.min() < 0):
        raise ValueError(
            f"{source}: the {mod} counts have negative or non-finite values; raw counts are needed."
        )
    if values.size and not np.array_equal(values, np.round(values)):
        logger.warning(
            "%s: the %s counts are not all integers; mosaicvi's count likelihoods expect raw "
            "counts.",
            source,
            mod,
        )
    x = counts.toarray() if mod in _DENSE_MODALITIES else counts
    var = var.copy()
    var.index = _unique_names(pd.Index(var.index.astype(str)), mod, source)
    var["feature_types"] = CONTRACT_FEATURE_TYPES[mod]
    adata = ad.AnnData(X=x, obs=pd.DataFrame(index=pd.Index(obs_names, dtype=str)), var=var)
    adata.layers["counts"] = x.copy()
    return adata


def _assemble(mods: Mapping[str, ad.AnnData], labels: pd.DataFrame) -> mudata.MuData:
    """MuData of the modalities with ``labels`` (indexed by cell) as ``mdata.obs``."""
    shared = set()
    names = [set(adata.var_names) for adata in mods.values()]
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            shared |= first & second
    if shared:
        # as in the local subsets (a protein and its gene share a name): mdata.var_names repeat,
        # each modality's var_names stay unique
        logger.info(
            "%d feature names occur in several modalities (e.g. %s); each modality's var_names "
            "are unique, mdata.var_names are not.",
            len(shared),
            sorted(shared)[:3],
        )
    with mudata.set_options(pull_on_update=False), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*var_names are not unique.*")
        warnings.filterwarnings("ignore", message=".*var_names are intersecting.*")
        mdata = mudata.MuData(dict(mods), obs=pd.DataFrame(index=labels.index))
        mdata.update()
    for column in labels.columns:
        mdata.obs[column] = labels[column].reindex(mdata.obs_names).array
    return mdata
