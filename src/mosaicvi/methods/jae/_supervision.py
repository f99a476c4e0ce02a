"""JAE's supervision: the labels and cell-cycle scores its latent slices are trained on.

Both are read from the user's MuData at setup and kept in the model's assembled data
(``obs[LABELS_COLUMN]``, ``obsm[CELL_CYCLE_OBSM_KEY]``), never written to the MuData.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence

import anndata as ad
import numpy as np
import pandas as pd
from mudata import MuData
from scvi import REGISTRY_KEYS

from mosaicvi.base import _compat
from mosaicvi.data import ModalitySpec, score_cell_cycle
from mosaicvi.data._backed import assembled_matrix
from mosaicvi.data._constants import OBSERVED_OBSM_KEY
from mosaicvi.data._mosaic import _obs_column

from ._transforms import fit_cells

logger = logging.getLogger("mosaicvi")

LABELS_COLUMN = "_mosaicvi_labels"
CELL_CYCLE_KEY = "cell_cycle"  # registry key: (S score, G2M score, has scores) per cell
CELL_CYCLE_OBSM_KEY = "_mosaicvi_cell_cycle"
#: Modality names treated as protein panels (CLR input instead of an SVD; never cell-cycle scored)
PROTEIN_NAMES = ("adt", "protein", "proteins", "prot", "cite")
_EXPRESSION_NAMES = ("rna", "gex", "gene", "genes", "expression")


def label_column(mdata: MuData, model_args: dict, source_registry: dict | None) -> pd.Categorical:
    """Cell types of ``labels_key`` (unlabelled: missing values, ``unlabeled_category``).

    With ``source_registry`` (a query or a loaded model) labels the reference does not know
    count as unlabelled.
    """
    key, unlabeled = model_args["labels_key"], model_args["unlabeled_category"]
    n = mdata.n_obs
    if key is None or (source_registry is not None and key not in mdata.obs.columns):
        return pd.Categorical([unlabeled] * n)
    column = _obs_column(mdata, key, "labels_key")
    labels = column.astype(object).where(column.notna(), unlabeled).astype(str).to_numpy()
    if source_registry is not None:  # a query: only the reference's cell types are known
        state = _compat.field_state(source_registry, REGISTRY_KEYS.LABELS_KEY)
        mapping = state["categorical_mapping"]
        unknown = ~np.isin(labels, np.asarray(mapping, dtype=str))
        if unknown.any():
            logger.warning(
                "%d cells have labels the reference does not know (%s); they count as unlabelled.",
                int(unknown.sum()),
                sorted(set(labels[unknown]))[:5],
            )
            labels = np.where(unknown, unlabeled, labels)
    elif (labels == unlabeled).all():
        warnings.warn(
            f"labels_key {key!r} has no labelled cell; the cell-type slice is not trained.",
            UserWarning,
            stacklevel=4,
        )
    return pd.Categorical(labels)


def expression_modality(specs: Sequence[ModalitySpec], model_args: dict) -> int | None:
    """Position of the gene-expression modality cell-cycle scores are computed from."""
    names = [s.name for s in specs]
    chosen = model_args["cell_cycle_modality"]
    if chosen is not None:
        if chosen not in names:
            raise KeyError(f"cell_cycle_modality {chosen!r} is not one of {names}.")
        return names.index(chosen)
    for k, spec in enumerate(specs):
        if spec.name.lower() in _EXPRESSION_NAMES:
            return k
    for k, spec in enumerate(specs):
        if spec.likelihood in ("nb", "zinb") and spec.name.lower() not in PROTEIN_NAMES:
            return k
    return None


def cell_cycle_matrix(
    assembled: ad.AnnData,
    mdata: MuData,
    specs: Sequence[ModalitySpec],
    model_args: dict,
    source_registry: dict | None,
) -> np.ndarray:
    """``(n, 3)``: S score, G2M score, and 1 where the cell has scores."""
    scores = np.zeros((assembled.n_obs, 3), dtype=np.float32)
    keys = model_args["cell_cycle_keys"]
    if keys is not None and (source_registry is None or all(k in mdata.obs for k in keys)):
        for j, key in enumerate(keys):
            values = pd.to_numeric(_obs_column(mdata, key, "cell_cycle_keys"), errors="coerce")
            scores[:, j] = values.to_numpy(dtype=np.float32)
        finite = np.isfinite(scores[:, :2]).all(1)
        scores[~finite, :2] = 0.0
        scores[:, 2] = finite
        return scores
    k = expression_modality(specs, model_args)
    if k is None:
        warnings.warn(
            "No gene-expression modality to score the cell cycle from; the cell-cycle slice "
            "is not trained. Pass `cell_cycle_modality=` or `cell_cycle_keys=`.",
            UserWarning,
            stacklevel=4,
        )
        return scores
    has = assembled.obsm[OBSERVED_OBSM_KEY][:, k].astype(bool)
    if not has.any():
        return scores
    start = sum(s.n_vars for s in specs[:k])
    # at most MAX_FIT_CELLS cells are scored (scanpy scores an in-memory copy); the others
    # have no phase target, as cells without scores always had
    rows = fit_cells(np.flatnonzero(has))
    s_score, g2m_score, info = score_cell_cycle(
        assembled_matrix(assembled),
        mdata.mod[specs[k].mod_key].var_names,
        organism=model_args["organism"],
        rows=rows,
        columns=slice(start, start + specs[k].n_vars),
    )
    if info["scored"]:  # otherwise the slice is left untrained rather than pinned to 0
        scores[rows, 0], scores[rows, 1], scores[rows, 2] = s_score, g2m_score, 1.0
    if len(rows) < int(has.sum()):
        logger.info(
            "Cell-cycle scores computed for %d of the %d cells with %s (a random sample); the "
            "others train no phase target. Pass `cell_cycle_keys=` to score every cell.",
            len(rows), int(has.sum()), specs[k].name,
        )  # fmt: skip
    return scores
