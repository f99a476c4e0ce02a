"""Per-batch feature masks: which features of a modality each batch measured.

Batches of a mosaic are often measured with different panels (a targeted gene panel, HVGs
chosen per study, CITE-seq next to Multiome genes). A feature a batch did not measure is not a
zero count there: the models leave it out of the likelihood and the library size, and their
encoders see it as missing. The masks are recorded in the registry in a plain form,
``{modality: {batch: [unmeasured feature names]}}`` (batches that measured everything are left
out), so that they are saved with a model and extended by query mapping.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ._normalise import CHUNK_ROWS, row_chunks

logger = logging.getLogger(__name__)

#: ``{modality: {batch: [unmeasured feature names]}}``
UnmeasuredFeatures = dict[str, dict[str, list[str]]]


def resolve_feature_masks(
    feature_masks: Mapping[str, pd.DataFrame] | None,
    var_names: Mapping[str, pd.Index],
    batches: Sequence[str] | None,
    batch_key: str | None,
    observed_batches: Mapping[str, set[str]] | None = None,
) -> UnmeasuredFeatures:
    """Check ``setup_mudata(feature_masks=...)`` and return its plain (registry) form.

    Parameters
    ----------
    feature_masks
        ``{modality: DataFrame}``, one boolean row per batch category and one column per
        feature of the modality (any order); ``True`` where the batch measured the feature.
    var_names
        Feature names of each registered modality.
    batches
        The batch categories of the MuData (``None`` without ``batch_key``).
    batch_key
        For the error messages.
    observed_batches
        Batches with cells observed in each modality (a batch with such cells must have
        measured at least one of its features).
    """
    if not feature_masks:
        return {}
    if not isinstance(feature_masks, Mapping):
        raise TypeError(
            "feature_masks must be a dict {modality: pandas.DataFrame of batches x features}, "
            f"got {type(feature_masks).__name__}."
        )
    if batches is None:
        raise ValueError(
            "feature_masks are per batch, so they need `batch_key`: pass the column of "
            "mdata.obs whose categories are the rows of the masks."
        )
    unknown = sorted(set(feature_masks) - set(var_names))
    if unknown:
        raise ValueError(
            f"feature_masks names modalities {unknown} that are not registered modalities "
            f"{list(var_names)}. Use the names given in `modalities`."
        )
    batches = pd.Index([str(b) for b in batches])
    resolved: UnmeasuredFeatures = {}
    for name, frame in feature_masks.items():
        where = f"feature_masks[{name!r}]"
        if not isinstance(frame, pd.DataFrame):
            raise TypeError(
                f"{where} must be a pandas.DataFrame (rows: batches of mdata.obs[{batch_key!r}], "
                f"columns: features of {name!r}), got {type(frame).__name__}."
            )
        rows = pd.Index(frame.index.astype(str))
        _check_labels(rows, batches, where, "batch", f"categories of mdata.obs[{batch_key!r}]")
        columns = pd.Index(frame.columns.astype(str))
        _check_labels(columns, var_names[name].astype(str), where, "feature", f"{name!r} features")
        values = frame.to_numpy()
        if values.dtype != bool:
            if frame.isna().to_numpy().any() or not np.isin(values, (0, 1)).all():
                raise ValueError(
                    f"{where} must hold True (measured) / False (not measured) only; it has "
                    "other values. Build it with `pd.DataFrame(measured, index=batches, "
                    "columns=features, dtype=bool)`."
                )
            values = values.astype(bool)
        measured = pd.DataFrame(values, index=rows, columns=columns)
        measured = measured.loc[batches, var_names[name].astype(str)]
        for batch in measured.index[~measured.to_numpy().any(1)]:
            if observed_batches is None or batch in observed_batches.get(name, set()):
                raise ValueError(
                    f"{where} marks every feature of {name!r} as unmeasured in batch {batch!r}, "
                    f"which has cells observed in {name!r}. Remove those cells from the "
                    f"modality (they have no {name!r} data) or mark the measured features True."
                )
        never = measured.columns[~measured.to_numpy().any(0)]
        if len(never):
            logger.warning(
                "%s: %d features are measured in no batch (e.g. %s); the model never sees them "
                "and their imputed values are guesses.",
                where,
                len(never),
                list(never[:3]),
            )
        unmeasured = {
            str(batch): [str(f) for f in row.index[~row.to_numpy()]]
            for batch, row in measured.iterrows()
            if not row.all()
        }
        if unmeasured:
            resolved[name] = unmeasured
    return resolved


def _check_labels(given: pd.Index, expected: pd.Index, where: str, what: str, of: str) -> None:
    if not given.is_unique:
        repeated = list(given[given.duplicated()].unique()[:5])
        raise ValueError(f"{where} has repeated {what} labels {repeated}; give each once.")
    missing, extra = expected.difference(given), given.difference(expected)
    if len(missing) or len(extra):

        def count(n: int) -> str:
            return f"{n} {what}" if n == 1 else f"{n} {what}{'es' if what == 'batch' else 's'}"

        parts = []
        if len(missing):
            parts.append(f"lacks {count(len(missing))} (e.g. {list(missing[:5])})")
        if len(extra):
            parts.append(f"has {count(len(extra))} not among the {of} (e.g. {list(extra[:5])})")
        fix = (
            "give each batch that measured every feature an all-True row"
            if what == "batch"
            else "give each feature measured by every batch an all-True column"
        )
        raise ValueError(
            f"{where} {' and '.join(parts)}. Its {what} labels must be the {of}: {fix}."
        )


def measured_matrix(
    unmeasured: Mapping[str, Sequence[str]], batches: Sequence[str], var_names: pd.Index
) -> np.ndarray:
    """``(n_batch, n_features)`` boolean: True where batch ``b`` measured feature ``j``.

    ``unmeasured`` is one modality's entry of the registry form; batches absent from it
    measured every feature.
    """
    var_names = pd.Index(var_names.astype(str))
    measured = np.ones((len(batches), len(var_names)), dtype=bool)
    for b, batch in enumerate(batches):
        names = unmeasured.get(str(batch))
        if names:
            measured[b, var_names.get_indexer(list(names))] = False
    return measured


def as_frames(
    unmeasured: UnmeasuredFeatures, batches: Sequence[str], var_names: Mapping[str, pd.Index]
) -> dict[str, pd.DataFrame]:
    """The registry form back as ``{modality: DataFrame(batches x features, bool)}``."""
    return {
        name: pd.DataFrame(
            measured_matrix(per_batch, batches, var_names[name]),
            index=pd.Index([str(b) for b in batches]),
            columns=var_names[name],
        )
        for name, per_batch in unmeasured.items()
    }


def merge_unmeasured(base: UnmeasuredFeatures, extra: UnmeasuredFeatures) -> UnmeasuredFeatures:
    """Union of two registry forms (a batch's unmeasured features in either)."""
    merged = {name: {b: list(f) for b, f in per.items()} for name, per in base.items()}
    for name, per_batch in extra.items():
        target = merged.setdefault(name, {})
        for batch, features in per_batch.items():
            known = target.get(batch, [])
            target[batch] = known + [f for f in features if f not in set(known)]
    return merged


def drop_unmeasured_values(
    matrix: sp.csr_matrix,
    batch_codes: np.ndarray,
    measured: np.ndarray,
    chunk_rows: int = CHUNK_ROWS,
) -> int:
    """Set the stored values of unmeasured entries of an assembled block to zero, in place.

    ``matrix`` is one modality's block of the model's own assembled copy (never the user's
    data); ``measured`` is ``(n_batch, n_features)`` and ``batch_codes`` the batch of each row.
    Returns how many non-zero values were dropped.
    """
    n_dropped = 0
    indptr = matrix.indptr
    for rows in row_chunks(np.arange(matrix.shape[0]), chunk_rows):
        start, stop = indptr[rows[0]], indptr[rows[-1] + 1]
        row_of_value = np.repeat(rows, np.diff(indptr[rows[0] : rows[-1] + 2]))
        keep = measured[batch_codes[row_of_value], matrix.indices[start:stop]]
        values = matrix.data[start:stop]
        n_dropped += int(np.count_nonzero(values[~keep]))
        values[~keep] = 0.0
    if n_dropped:
        matrix.eliminate_zeros()
    return n_dropped
