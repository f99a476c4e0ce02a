"""Joining datasets measured with different modalities and feature panels into one mosaic."""

from __future__ import annotations

from collections.abc import Mapping

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
from mudata import MuData

from ._backed import is_backed


def _columns_to(matrix, given: pd.Index, union: pd.Index) -> sp.csr_matrix:
    """``matrix`` (cells x ``given``) as cells x ``union``; features it lacks are empty."""
    positions = union.get_indexer(given)
    selector = sp.csr_matrix(
        (np.ones(len(given), dtype=np.float32), (np.arange(len(given)), positions)),
        shape=(len(given), len(union)),
    )
    return (sp.csr_matrix(matrix, dtype=np.float32) @ selector).tocsr()


def concat_mosaic(
    datasets: Mapping[str, MuData],
    batch_key: str | None = "batch",
    dataset_key: str = "dataset",
) -> tuple[MuData, dict[str, pd.DataFrame]]:
    """Join datasets with different modalities and feature panels into one mosaic MuData.

    Each modality of the result holds the union of that modality's features over the datasets
    that have it (in order of first appearance) and the cells of those datasets; a feature a
    dataset lacks is stored as an empty column and marked unmeasured for its batches in the
    returned feature masks, ready for ``setup_mudata(feature_masks=...)``. Only ``X`` and the
    layers that every dataset with the modality has are kept. The inputs are not modified.

    Parameters
    ----------
    datasets
        ``{name: MuData}``, e.g. ``{"cite": cite, "multiome": multiome}``.
    batch_key
        Column of each dataset's ``obs`` with its batches. In the result it holds
        ``"<dataset>:<batch>"`` (a batch label shared by two datasets names two panels), or
        the dataset name for a dataset without the column; ``None``: the dataset name.
    dataset_key
        Column of the result's ``obs`` with each cell's dataset.

    Returns
    -------
    The joined MuData (cell names prefixed with ``"<dataset>:"`` when they collide across
    datasets; ``obs`` is the outer join of the datasets' ``obs``) and ``{modality: DataFrame}``
    of measured features per batch, for the modalities whose panels differ.
    """
    if len(datasets) < 2:
        raise ValueError(f"concat_mosaic joins two or more datasets, got {len(datasets)}.")
    for name, mdata in datasets.items():
        if not isinstance(mdata, MuData):
            raise TypeError(f"datasets[{name!r}] must be a MuData, got {type(mdata).__name__}.")
        for key, mod in mdata.mod.items():
            if is_backed(mod.X):
                raise ValueError(
                    f"datasets[{name!r}].mod[{key!r}] is on disk (backed); read it into memory "
                    "first (`mdata.to_memory()`)."
                )
            if not mod.var_names.is_unique:
                raise ValueError(
                    f"datasets[{name!r}].mod[{key!r}] has duplicated feature names; make them "
                    "unique first (`var_names_make_unique()`)."
                )
    names = [pd.Index(m.obs_names.astype(str)) for m in datasets.values()]
    every = pd.Index(np.concatenate([n.to_numpy() for n in names]))
    prefix = not every.is_unique
    cell_names = {
        name: (f"{name}:" + index if prefix else index) for name, index in zip(datasets, names)
    }

    obs_frames = []
    for name, mdata in datasets.items():
        obs = mdata.obs.copy()
        obs.index = cell_names[name]
        has_batch = batch_key is not None and batch_key in obs
        batches = obs[batch_key].astype(str) if has_batch else pd.Series(name, index=obs.index)
        obs[dataset_key] = name
        obs[batch_key or "batch"] = f"{name}:" + batches if has_batch else batches
        obs_frames.append(obs)
    obs = pd.concat(obs_frames, join="outer")
    batch_column = batch_key or "batch"
    obs[batch_column] = obs[batch_column].astype("category")
    obs[dataset_key] = obs[dataset_key].astype("category")
    all_batches = list(obs[batch_column].cat.categories)

    mods, masks = {}, {}
    keys = list(dict.fromkeys(key for mdata in datasets.values() for key in mdata.mod))
    for key in keys:
        holders = {n: m.mod[key] for n, m in datasets.items() if key in m.mod}
        union = pd.Index(
            list(dict.fromkeys(str(v) for mod in holders.values() for v in mod.var_names))
        )
        layers = set.intersection(*(set(mod.layers) for mod in holders.values()))
        x_blocks, layer_blocks, obs_names, unmeasured = [], {k: [] for k in layers}, [], {}
        for name, mod in holders.items():
            given = pd.Index(mod.var_names.astype(str))
            x_blocks.append(_columns_to(mod.X, given, union))
            for layer in layers:
                layer_blocks[layer].append(_columns_to(mod.layers[layer], given, union))
            local = pd.Index(mod.obs_names.astype(str))
            obs_names.append(f"{name}:" + local if prefix else local)
            absent = union.difference(given, sort=False)
            if len(absent):
                unmeasured[name] = absent
        mods[key] = ad.AnnData(
            X=sp.vstack(x_blocks, format="csr"),
            obs=pd.DataFrame(index=np.concatenate([n.to_numpy() for n in obs_names])),
            var=pd.DataFrame(index=union),
            layers={k: sp.vstack(v, format="csr") for k, v in layer_blocks.items()},
        )
        if unmeasured:
            frame = pd.DataFrame(True, index=pd.Index(all_batches), columns=union)
            for name, absent in unmeasured.items():
                rows = obs.loc[obs[dataset_key] == name, batch_column].unique()
                frame.loc[list(map(str, rows)), absent] = False
            masks[key] = frame

    joined = MuData(mods)
    joined = joined[obs.index].copy() if list(joined.obs_names) != list(obs.index) else joined
    for column in obs.columns:
        joined.obs[column] = obs[column].reindex(joined.obs_names).array
    return joined, masks
