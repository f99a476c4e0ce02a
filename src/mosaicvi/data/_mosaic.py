"""The MuData contract: validation, observed masks and assembly of a mosaic.

A user's MuData may hold modalities that cover different cells (an RNA-only batch next to a
CITE-seq batch). scvi-tools requires paired modalities, so the models work on an *assembled*
AnnData: one row per cell of ``mdata.obs_names``, the modalities' features side by side (sparse,
absent modalities as empty rows), and an explicit observed mask in ``obsm``. The user's MuData is
only read.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
from mudata import MuData

from mosaicvi.distributions import LIKELIHOODS, get_likelihood

from ._backed import (
    MosaicRows,
    is_backed,
    row_reader,
    row_sums,
    stored_values,
)
from ._constants import (
    BATCH_COLUMN,
    DEFAULT_LIKELIHOOD_BY_NAME,
    LIBRARY_OBSM_KEY,
    MODALITY_VAR_COLUMN,
    OBSERVED_OBSM_KEY,
    ROWS_UNS_KEY,
)
from ._feature_masks import UnmeasuredFeatures, drop_unmeasured_values, measured_matrix
from ._normalise import CHUNK_ROWS, row_chunks

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModalitySpec:
    """How one modality of a MuData enters a model."""

    name: str
    mod_key: str
    layer: str | None
    likelihood: str
    n_vars: int

    def to_dict(self) -> dict:
        """Plain-dict form, for registries and saving."""
        return asdict(self)


def _as_name_mapping(
    value: Mapping[str, str | None] | None, names: Sequence[str], what: str
) -> dict[str, str | None]:
    value = dict(value or {})
    unknown = sorted(set(value) - set(names))
    if unknown:
        raise ValueError(
            f"{what} names modalities {unknown} that are not among the registered modalities "
            f"{list(names)}. Use the names given in `modalities`."
        )
    return {name: value.get(name) for name in names}


def resolve_modalities(
    mdata: MuData, modalities: Mapping[str, str] | Sequence[str] | None
) -> dict[str, str]:
    """Map model modality names to keys of ``mdata.mod``, checking that they exist.

    Parameters
    ----------
    mdata
        The user's MuData.
    modalities
        ``{name: mod_key}``, a list of mod keys (used as names), or ``None`` for all modalities.
    """
    if not isinstance(mdata, MuData):
        raise TypeError(
            f"Expected a mudata.MuData, got {type(mdata).__name__}. Wrap your modalities with "
            "`mudata.MuData({'rna': rna, 'adt': adt})`."
        )
    if modalities is None:
        mapping = {key: key for key in mdata.mod}
    elif isinstance(modalities, Mapping):
        mapping = dict(modalities)
    else:
        mapping = {key: key for key in modalities}
    missing = [key for key in mapping.values() if key not in mdata.mod]
    if missing:
        raise KeyError(
            f"Modalities {missing} are not in the MuData, which has {list(mdata.mod)}. "
            "Pass `modalities={name: key}` with keys of `mdata.mod`."
        )
    if len(mapping) < 2:
        raise ValueError(
            f"At least two modalities are needed, got {list(mapping)}. For a single modality use "
            "scvi-tools' SCVI (RNA) or PEAKVI (ATAC) instead."
        )
    if len(set(mapping.values())) != len(mapping):
        raise ValueError(f"Each modality must map to a different key of mdata.mod: {mapping}.")
    return mapping


def modality_matrix(mdata: MuData, mod_key: str, layer: str | None):
    """The matrix of one modality (``X`` or a layer), with a clear error for a missing layer."""
    mod = mdata.mod[mod_key]
    if layer is None:
        return mod.X
    if layer not in mod.layers:
        raise KeyError(
            f"Layer {layer!r} is not in mdata.mod[{mod_key!r}].layers (it has "
            f"{list(mod.layers)}). Pass `layers={{...}}` with an existing layer, or None for X."
        )
    return mod.layers[layer]


def _count_in_chunks(matrix, is_bad, chunk_size: int = 1 << 24) -> int:
    """Number of stored values where ``is_bad(piece)`` holds; temporaries stay piece-sized."""
    return sum(int(is_bad(piece).sum()) for piece in stored_values(matrix, chunk_size))


def _is_integer_valued(matrix) -> bool:
    return _count_in_chunks(matrix, lambda v: (v < 0) | (np.mod(v, 1) != 0)) == 0


def default_likelihood(name: str, matrix) -> str:
    """Likelihood by modality name, else by data type (counts: ``nb``; other values: ``normal``)."""
    by_name = DEFAULT_LIKELIHOOD_BY_NAME.get(name.lower())
    if by_name is not None:
        return by_name
    return "nb" if _is_integer_valued(matrix) else "normal"


def validate_features(name: str, mod_key: str, var_names: pd.Index) -> None:
    """A modality needs at least one feature and unique feature names."""
    if len(var_names) == 0:
        raise ValueError(
            f"Modality {name!r} (mdata.mod[{mod_key!r}]) has no features. Drop it from "
            "`modalities`, or check the subsetting that emptied it."
        )
    if not var_names.is_unique:
        repeated = var_names[var_names.duplicated()].unique()
        shown = ", ".join(map(repr, list(repeated[:5]))) + (" ..." if len(repeated) > 5 else "")
        raise ValueError(
            f"Modality {name!r} (mdata.mod[{mod_key!r}]) has {len(repeated)} duplicated feature "
            f"names ({shown}). Make them unique first, e.g. "
            f"`mdata.mod[{mod_key!r}].var_names_make_unique()` followed by `mdata.update()`, or "
            "aggregate the duplicated features."
        )


def _value_problems(values: np.ndarray) -> np.ndarray:
    """Numbers of non-finite, negative and non-integer values among ``values``."""
    return np.array(
        [(~np.isfinite(values)).sum(), (values < 0).sum(), (np.mod(values, 1) != 0).sum()],
        dtype=np.int64,
    )


def validate_matrix(name: str, matrix, likelihood: str) -> None:
    """Reject NaN/Inf everywhere and negative or non-integer values under count likelihoods.

    The stored values are read once (a backed or SOMA matrix is one pass over the store).
    """
    problems = sum((_value_problems(v) for v in stored_values(matrix)), np.zeros(3, np.int64))
    _raise_for_values(name, likelihood, *problems)


def checked_row_sums(name: str, matrix, likelihood: str) -> np.ndarray:
    """:func:`validate_matrix` and the row sums of an on-disk matrix, in one pass over it."""
    if getattr(matrix, "row_sums", None) is not None:  # summed when the store was opened
        validate_matrix(name, matrix, likelihood)
        return matrix.row_sums
    problems = np.zeros(3, np.int64)
    sums = row_sums(
        matrix, inspect=lambda values: np.add(problems, _value_problems(values), out=problems)
    )
    _raise_for_values(name, likelihood, *problems)
    return sums


def _raise_for_values(
    name: str, likelihood: str, n_bad: int, n_negative: int, n_fractional: int
) -> None:
    if n_bad:
        raise ValueError(
            f"Modality {name!r} contains {n_bad} NaN or infinite values. Remove or impute them "
            "before setup (e.g. `np.nan_to_num`), or drop the affected cells/features."
        )
    lik = get_likelihood(likelihood)
    if (lik.requires_counts or lik.name == "bernoulli") and n_negative:
        raise ValueError(
            f"Modality {name!r} has {n_negative} negative values, which the {likelihood!r} "
            "likelihood cannot model. Pass raw counts (e.g. `layers={...: 'counts'}`) or use "
            "`likelihoods={...: 'normal'}` for transformed data."
        )
    if lik.requires_counts and n_fractional:
        raise ValueError(
            f"Modality {name!r} has {n_fractional} non-integer values but the {likelihood!r} "
            "likelihood expects raw counts. Point `layers` at raw counts, round the data "
            "(`np.round`), use `likelihoods={...: 'bernoulli'}` for binary accessibility, or "
            "`'normal'` for normalised data."
        )


def observed_mask(mdata: MuData, mod_keys: Sequence[str]) -> np.ndarray:
    """Boolean ``(n_cells, K)`` mask: cell i is observed in modality k if it is in its obs."""
    mask = np.zeros((mdata.n_obs, len(mod_keys)), dtype=bool)
    for k, key in enumerate(mod_keys):
        mod_obs = mdata.mod[key].obs_names
        if not mod_obs.is_unique:
            raise ValueError(
                f"mdata.mod[{key!r}] has duplicated obs_names. Make them unique "
                "(`.obs_names_make_unique()`) before setup."
            )
        positions = mdata.obs_names.get_indexer(mod_obs)
        if (positions < 0).any():
            raise ValueError(
                f"{int((positions < 0).sum())} cells of mdata.mod[{key!r}] are not in "
                "mdata.obs_names. Call `mdata.update()` after changing a modality."
            )
        mask[positions, k] = True
    return mask


def _padded_rows(matrix, positions: np.ndarray, n_cells: int) -> sp.csr_matrix:
    """Place the rows of ``matrix`` at ``positions`` of an otherwise empty sparse matrix."""
    matrix = sp.csr_matrix(matrix, dtype=np.float32)
    if len(positions) == n_cells and np.array_equal(positions, np.arange(n_cells)):
        return matrix  # every cell, in order: no product (saves a copy of the data at setup)
    selector = sp.csr_matrix(
        (np.ones(len(positions), dtype=np.float32), (positions, np.arange(len(positions)))),
        shape=(n_cells, len(positions)),
    )
    return (selector @ matrix).tocsr()


def _hstack_rows(blocks: Sequence[sp.csr_matrix], chunk_rows: int = CHUNK_ROWS) -> sp.csr_matrix:
    """``scipy.sparse.hstack(blocks, format="csr", dtype=float32)`` built chunk by chunk of rows.

    scipy concatenates every block's arrays before writing the result, which doubles the peak
    memory of a large set-up; here the result's arrays are allocated once and each chunk of
    rows is stacked into them.
    """
    n_rows = blocks[0].shape[0]
    row_nnz = sum(np.diff(block.indptr).astype(np.int64) for block in blocks)
    indptr = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(row_nnz, out=indptr[1:])
    if indptr[-1] <= np.iinfo(np.int32).max:
        indptr = indptr.astype(np.int32)
    data = np.empty(indptr[-1], dtype=np.float32)
    indices = np.empty(indptr[-1], dtype=np.int32)
    for rows in row_chunks(np.arange(n_rows), chunk_rows):
        start, stop = rows[0], rows[-1] + 1
        chunk = sp.hstack([block[start:stop] for block in blocks], format="csr")
        span = slice(indptr[start], indptr[stop])
        data[span], indices[span] = chunk.data, chunk.indices
    n_columns = sum(block.shape[1] for block in blocks)
    return sp.csr_matrix((data, indices, indptr), shape=(n_rows, n_columns))


def categorical_column(mdata: MuData, key: str, what: str) -> pd.Categorical:
    column = _obs_column(mdata, key, what)
    if column.isna().any():
        raise ValueError(
            f"{what} {key!r} has {int(column.isna().sum())} missing values in mdata.obs. Fill "
            "them (e.g. with 'unknown') before setup."
        )
    # fresh categories: unused pandas categories would otherwise count as batches
    return pd.Categorical(column.astype(str).to_numpy())


def _obs_column(mdata: MuData, key: str, what: str) -> pd.Series:
    if key in mdata.obs.columns:
        return mdata.obs[key]
    holders = [name for name, mod in mdata.mod.items() if key in mod.obs.columns]
    if holders:
        raise KeyError(
            f"{what} {key!r} is in the obs of modality {holders[0]!r} but must be in mdata.obs "
            f"(covariates are read per cell from the MuData). Copy it with "
            f"`mdata.pull_obs([{key!r}], mods={holders[0]!r})` or "
            f"`mdata.obs[{key!r}] = mdata.mod[{holders[0]!r}].obs[{key!r}]`."
        )
    raise KeyError(
        f"{what} {key!r} is not a column of mdata.obs (columns: {list(mdata.obs.columns)})."
    )


def build_specs(
    mdata: MuData,
    modalities: Mapping[str, str] | Sequence[str] | None,
    layers: Mapping[str, str | None] | None,
    likelihoods: Mapping[str, str] | None,
) -> list[ModalitySpec]:
    """Resolve modality names, layers and likelihoods, validating each modality's data.

    Values kept on disk are checked by :func:`assemble_mosaic`, in the pass that sums them.
    """
    mapping = resolve_modalities(mdata, modalities)
    if mdata.n_obs == 0:
        raise ValueError("The MuData has no cells (mdata.n_obs == 0).")
    names = list(mapping)
    layer_of = _as_name_mapping(layers, names, "`layers`")
    likelihood_of = _as_name_mapping(likelihoods, names, "`likelihoods`")
    specs = []
    for name, key in mapping.items():
        validate_features(name, key, mdata.mod[key].var_names)
        matrix = modality_matrix(mdata, key, layer_of[name])
        likelihood = likelihood_of[name] or default_likelihood(name, matrix)
        if likelihood not in LIKELIHOODS:
            get_likelihood(likelihood)  # raises with the valid names
        if not is_backed(matrix):  # on disk: checked in the one pass of the assembly
            validate_matrix(name, matrix, likelihood)
        specs.append(ModalitySpec(name, key, layer_of[name], likelihood, matrix.shape[1]))
    return specs


def assemble_mosaic(
    mdata: MuData,
    specs: Sequence[ModalitySpec],
    batch_key: str | None = None,
    categorical_covariate_keys: Sequence[str] | None = None,
    continuous_covariate_keys: Sequence[str] | None = None,
    require_observed: bool = True,
    feature_masks: UnmeasuredFeatures | None = None,
) -> ad.AnnData:
    """Assemble the model-facing AnnData of a (possibly unpaired) MuData.

    Parameters
    ----------
    mdata
        The user's MuData (only read).
    specs
        Modalities from :func:`build_specs`.
    batch_key, categorical_covariate_keys, continuous_covariate_keys
        Columns of ``mdata.obs``.
    require_observed
        Reject modalities observed in no cell (right for training a model; a query may lack
        whole modalities).
    feature_masks
        Unmeasured features per modality and batch (the form of
        :func:`~mosaicvi.data._feature_masks.resolve_feature_masks`). Their values are left out
        of the assembled matrix and of the library sizes (in memory; a modality on disk is
        masked per minibatch by the model).

    Returns
    -------
    AnnData with one row per cell of ``mdata.obs_names``, features of all modalities side by side
    as a sparse float32 matrix (``var["modality"]`` says which), the observed mask in
    ``obsm["_mosaicvi_observed"]`` and the covariates in ``obs``.
    """
    mask = observed_mask(mdata, [spec.mod_key for spec in specs])
    never_observed = [spec.name for spec, seen in zip(specs, mask.any(0)) if not seen]
    if never_observed and require_observed:
        raise ValueError(
            f"Modalities {never_observed} are observed in no cell. Remove them from `modalities`."
        )
    n_unobserved = int((~mask.any(1)).sum())
    if n_unobserved:
        raise ValueError(
            f"{n_unobserved} cells of mdata.obs are observed in none of the registered "
            "modalities. Subset the MuData to cells with data, e.g. `mdata[cells].copy()`."
        )

    feature_masks = feature_masks or {}
    batches = categorical_column(mdata, batch_key, "batch_key") if batch_key else None
    matrices = [modality_matrix(mdata, spec.mod_key, spec.layer) for spec in specs]
    out_of_core = any(is_backed(matrix) for matrix in matrices)
    if out_of_core:
        matrices = [
            row_reader(matrix, f"modality {spec.name!r} (mdata.mod[{spec.mod_key!r}])")
            for spec, matrix in zip(specs, matrices)
        ]
    blocks, sources, var_frames = [], [], []
    library = np.zeros((mdata.n_obs, len(specs)), dtype=np.float32)
    totals = np.zeros(mdata.n_obs)
    for k, (spec, matrix) in enumerate(zip(specs, matrices)):
        mod = mdata.mod[spec.mod_key]
        positions = mdata.obs_names.get_indexer(mod.obs_names)
        if out_of_core:  # keep the data where it is; read it once to check and sum it
            sources.append(_rows_in_source(positions, mdata.n_obs))
            library[positions, k] = (
                checked_row_sums(spec.name, matrix, spec.likelihood)
                if is_backed(matrix)
                else row_sums(matrix)
            )
        else:
            block = _padded_rows(matrix, positions, mdata.n_obs)
            if spec.name in feature_masks:
                user_data = getattr(matrix, "data", None)
                if isinstance(user_data, np.ndarray) and np.may_share_memory(block.data, user_data):
                    block = block.copy()  # never edit the user's matrix
                _drop_unmeasured(block, spec, feature_masks[spec.name], batches, mod.var_names)
            library[:, k] = np.asarray(block.sum(1)).ravel()
            blocks.append(block)
        if get_likelihood(spec.likelihood).uses_library:
            totals += library[:, k]
        else:
            totals[positions] += 1.0  # continuous or binary data always carries information
        var_frames.append(
            pd.DataFrame(
                {MODALITY_VAR_COLUMN: spec.name, "feature": mod.var_names.astype(str)},
                index=[f"{spec.name}:{v}" for v in mod.var_names],
            )
        )
    n_empty = int((totals == 0).sum())
    if n_empty:
        raise ValueError(
            f"{n_empty} cells have zero counts in every observed modality. Filter them first, "
            "e.g. with `scanpy.pp.filter_cells(adata, min_counts=1)` on each modality."
        )

    obs = pd.DataFrame(index=mdata.obs_names.astype(str))
    if batch_key is not None:
        obs[BATCH_COLUMN] = batches
    for key in categorical_covariate_keys or []:
        obs[key] = categorical_column(mdata, key, "Categorical covariate")
    for key in continuous_covariate_keys or []:
        column = pd.to_numeric(_obs_column(mdata, key, "Continuous covariate"), errors="coerce")
        if not np.isfinite(column.to_numpy(dtype=float)).all():
            raise ValueError(
                f"Continuous covariate {key!r} has non-numeric, NaN or infinite values."
            )
        obs[key] = column.to_numpy(dtype=np.float32)

    assembled = ad.AnnData(
        X=None if out_of_core else _hstack_rows(blocks),
        obs=obs,
        var=pd.concat(var_frames),
    )
    if out_of_core:
        assembled.uns[ROWS_UNS_KEY] = MosaicRows(matrices, sources, mdata.n_obs)
    assembled.obsm[OBSERVED_OBSM_KEY] = mask.astype(np.float32)
    assembled.obsm[LIBRARY_OBSM_KEY] = library
    return assembled


def _drop_unmeasured(
    block: sp.csr_matrix,
    spec: ModalitySpec,
    unmeasured: dict,
    batches: pd.Categorical,
    var_names: pd.Index,
) -> None:
    """Zero the values of features a cell's batch did not measure, in the assembled block."""
    measured = measured_matrix(unmeasured, list(batches.categories), var_names)
    n_dropped = drop_unmeasured_values(block, np.asarray(batches.codes), measured)
    if n_dropped:
        logger.info(
            "%s: %d non-zero values lie in features their batch did not measure "
            "(feature_masks); the model ignores them.",
            spec.name,
            n_dropped,
        )


def _rows_in_source(positions: np.ndarray, n_cells: int) -> np.ndarray | None:
    """For each assembled cell its row in a modality (``-1``: absent); ``None``: identity."""
    if len(positions) == n_cells and np.array_equal(positions, np.arange(n_cells)):
        return None
    rows = np.full(n_cells, -1, dtype=np.int64)
    rows[positions] = np.arange(len(positions))
    return rows
