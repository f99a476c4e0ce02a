"""Aligning a query MuData to a trained reference model."""

from __future__ import annotations

import warnings
from typing import Protocol

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
from mudata import MuData

from ._backed import is_backed
from ._mosaic import ModalitySpec, modality_matrix, validate_features

MIN_FEATURE_OVERLAP = 0.5


class _Reference(Protocol):
    modality_specs: list[ModalitySpec]

    def modality_var_names(self, modality: str) -> pd.Index: ...


def _aligned_matrix(matrix, given: pd.Index, expected: pd.Index, name: str):
    """Columns of ``matrix`` reordered to ``expected``; absent features become zero columns."""
    positions = given.get_indexer(expected)
    present = positions >= 0
    if present.all() and np.array_equal(positions, np.arange(len(given))):
        return matrix
    if is_backed(matrix):
        raise ValueError(
            f"The query's {name!r} features differ from the reference's (order or set), and "
            "its X is on disk (a backed MuData), where mosaicvi does not reorder columns. Write "
            f"the query with the reference's features (`model.modality_var_names({name!r})`, "
            "absent ones as zero columns), or read it into memory (`query.to_memory()`)."
        )
    matrix = sp.csc_matrix(matrix, dtype=np.float32)
    selector = sp.csr_matrix(
        (
            np.ones(int(present.sum()), dtype=np.float32),
            (positions[present], np.flatnonzero(present)),
        ),
        shape=(len(given), len(expected)),
    )
    return (matrix @ selector).tocsr()


def prepare_query(
    query: MuData, reference: _Reference, min_overlap: float = MIN_FEATURE_OVERLAP
) -> MuData:
    """Align a query MuData to a reference model's modalities and features.

    For every modality of the reference: features are put in the reference's order; features
    the query lacks are added as empty columns (with a warning giving their number;
    ``load_query_data`` marks them unmeasured); extra features are
    dropped (with a warning). A reference modality absent from the query is added with no cells,
    i.e. unobserved everywhere. Query modalities the reference does not know are dropped (with a
    warning). ``query`` itself is not modified.

    Parameters
    ----------
    query
        The new data: a MuData whose ``obs`` holds the reference's batch/covariate columns.
    reference
        A trained mosaicvi model.
    min_overlap
        Smallest accepted fraction of a modality's reference features present in the query.

    Returns
    -------
    A new MuData with the reference's modality keys, features and layers.
    """
    if not isinstance(query, MuData):
        raise TypeError(f"Expected a mudata.MuData query, got {type(query).__name__}.")
    if query.n_obs == 0:
        raise ValueError("The query MuData has no cells (query.n_obs == 0); nothing to map.")
    specs = reference.modality_specs
    known = {spec.mod_key for spec in specs}
    if not known & set(query.mod):
        raise ValueError(
            f"The query has none of the reference's modalities {sorted(known)} (it has "
            f"{list(query.mod)}). Rename its modalities to the reference's keys."
        )
    extra = sorted(set(query.mod) - known)
    if extra:
        warnings.warn(
            f"Dropping query modalities {extra} that the reference does not model.", stacklevel=2
        )
    mods = {}
    for spec in specs:
        expected = reference.modality_var_names(spec.name)
        layer = spec.layer
        if spec.mod_key not in query.mod:
            mods[spec.mod_key] = ad.AnnData(
                sp.csr_matrix((0, len(expected)), dtype=np.float32),
                var=pd.DataFrame(index=expected),
                layers={layer: sp.csr_matrix((0, len(expected)), dtype=np.float32)}
                if layer
                else None,
            )
            continue
        mod = query.mod[spec.mod_key]
        given = mod.var_names
        validate_features(spec.name, spec.mod_key, given)
        n_shared = int(given.isin(expected).sum())
        if n_shared < min_overlap * len(expected):
            raise ValueError(
                f"Only {n_shared} of the reference's {len(expected)} {spec.name!r} features are in "
                f"the query (below {min_overlap:.0%}). Check that both use the same feature "
                "names (e.g. gene symbols vs Ensembl IDs, peak coordinates)."
            )
        n_missing, n_extra = len(expected) - n_shared, len(given) - n_shared
        if n_missing:
            warnings.warn(
                f"{n_missing} of {len(expected)} reference {spec.name!r} features are missing from "
                "the query; they are added as empty columns (a mapped query treats them as "
                "unmeasured in its batches).",
                stacklevel=2,
            )
        if n_extra:
            warnings.warn(
                f"Dropping {n_extra} query {spec.name!r} features unknown to the reference.",
                stacklevel=2,
            )
        matrix = _aligned_matrix(
            modality_matrix(query, spec.mod_key, layer), given, expected, spec.name
        )
        mods[spec.mod_key] = ad.AnnData(
            X=matrix,
            obs=pd.DataFrame(index=mod.obs_names),
            var=pd.DataFrame(index=expected),
            layers={layer: matrix} if layer else None,
        )
    aligned = MuData(mods, obs=pd.DataFrame(index=query.obs_names))
    for column in query.obs.columns:
        aligned.obs[column] = query.obs[column].to_numpy()
    return aligned
