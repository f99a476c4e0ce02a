"""Scores for imputed / predicted feature values against observed counts."""

from __future__ import annotations

import re
import textwrap
import warnings
from collections.abc import Callable, Iterator
from typing import Any, Literal, TypeVar

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.stats import rankdata

_F = TypeVar("_F", bound=Callable[..., Any])

# Number of features densified and processed at once (bounds memory for sparse inputs).
_FEATURE_BLOCK = 512


class _Matrix:
    """Read-only view of a cells x features matrix given as numpy, sparse or DataFrame."""

    def __init__(self, x: Any, name: str):
        self.name = name
        self.index: pd.Index | None = None
        self.columns: pd.Index | None = None
        if isinstance(x, pd.DataFrame):
            self.index, self.columns = x.index, x.columns
            if any(isinstance(dt, pd.SparseDtype) for dt in x.dtypes):
                x = sp.csr_matrix(x.sparse.to_coo())
            else:
                x = x.to_numpy()
        if sp.issparse(x):
            self.data = sp.csc_matrix(x, dtype=np.float64)
            values = self.data.data
        else:
            try:
                self.data = np.asarray(x, dtype=np.float64)
            except (TypeError, ValueError) as err:
                raise ValueError(f"`{name}` must be numeric: {err}") from err
            values = self.data
        if self.data.ndim != 2:
            raise ValueError(
                f"`{name}` must be 2-D (cells x features), got shape {self.data.shape}."
            )
        if self.data.shape[0] == 0 or self.data.shape[1] == 0:
            raise ValueError(f"`{name}` is empty (shape {self.data.shape}).")
        if not np.all(np.isfinite(values)):
            raise ValueError(f"`{name}` contains NaN or infinite values.")
        self.min = float(values.min()) if values.size else 0.0
        if sp.issparse(self.data) and values.size < self.data.shape[0] * self.data.shape[1]:
            self.min = min(self.min, 0.0)

    @property
    def shape(self) -> tuple[int, int]:
        return self.data.shape

    def block(self, start: int, stop: int) -> np.ndarray:
        """Dense float64 copy of features ``start:stop``."""
        if sp.issparse(self.data):
            return self.data[:, start:stop].toarray()
        return np.array(self.data[:, start:stop], dtype=np.float64)


def _prepare(predicted: Any, observed: Any, log1p: bool) -> tuple[_Matrix, _Matrix, pd.Index]:
    pred = _Matrix(predicted, "predicted")
    obs = _Matrix(observed, "observed")
    if pred.shape != obs.shape:
        raise ValueError(
            f"`predicted` and `observed` must have the same shape, got {pred.shape} and "
            f"{obs.shape}."
        )
    for m in (pred, obs):
        if m.columns is not None and m.columns.has_duplicates:
            raise ValueError(f"`{m.name}` has duplicated column (feature) names.")
    if (
        pred.columns is not None
        and obs.columns is not None
        and not pred.columns.equals(obs.columns)
    ):
        raise ValueError(
            "`predicted` and `observed` DataFrames must have the same columns in the same order."
        )
    if pred.index is not None and obs.index is not None and not pred.index.equals(obs.index):
        raise ValueError(
            "`predicted` and `observed` DataFrames must have the same index (cells) in the "
            "same order."
        )
    if log1p:
        for m in (pred, obs):
            if m.min < 0:
                raise ValueError(
                    f"`{m.name}` has negative values (min {m.min:g}); log1p=True expects "
                    "non-negative counts / expected counts. Pass log1p=False for data that is "
                    "already transformed."
                )
    if pred.columns is not None:
        features = pred.columns
    elif obs.columns is not None:
        features = obs.columns
    else:
        features = pd.RangeIndex(pred.shape[1])
    return pred, obs, features


def _blocks(
    pred: _Matrix, obs: _Matrix, log1p: bool
) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
    n_features = pred.shape[1]
    for start in range(0, n_features, _FEATURE_BLOCK):
        stop = min(start + _FEATURE_BLOCK, n_features)
        p, o = pred.block(start, stop), obs.block(start, stop)
        if log1p:
            np.log1p(p, out=p)
            np.log1p(o, out=o)
        yield start, stop, p, o


def _constant_columns(a: np.ndarray) -> np.ndarray:
    return np.all(a == a[:1], axis=0)


def _column_correlation(p: np.ndarray, o: np.ndarray, method: str) -> np.ndarray:
    """Per-column correlation; NaN where either column is constant."""
    skip = _constant_columns(p) | _constant_columns(o)
    if method == "spearman":
        p = rankdata(p, axis=0)
        o = rankdata(o, axis=0)
    pc = p - p.mean(axis=0)
    oc = o - o.mean(axis=0)
    denom = np.sqrt((pc * pc).sum(axis=0) * (oc * oc).sum(axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (pc * oc).sum(axis=0) / denom
    r[skip] = np.nan
    return np.clip(r, -1.0, 1.0)


# The parameters ``predicted`` and ``observed`` of the scores below, for their docstrings.
_INPUTS_DOC = """\
predicted
    Predicted values, shape ``(n_cells, n_features)``: numpy array, scipy sparse matrix
    or pandas DataFrame. Typically expected counts (e.g. the mean of the likelihood).
observed
    Observed values of the same shape (typically raw counts)."""


def _document_inputs(func: _F) -> _F:
    """Put :data:`_INPUTS_DOC` in place of ``{inputs}`` in ``func``'s docstring."""
    doc = func.__doc__ or ""  # None under python -OO
    found = re.search(r"^([ \t]*)\{inputs\}", doc, re.MULTILINE)
    if found:
        func.__doc__ = doc.replace(found.group(0), textwrap.indent(_INPUTS_DOC, found.group(1)))
    return func


def _check_method(method: str) -> None:
    if method not in ("pearson", "spearman"):
        raise ValueError(f"`method` must be 'pearson' or 'spearman', got {method!r}.")


@_document_inputs
def per_feature_correlation(
    predicted: Any,
    observed: Any,
    method: Literal["pearson", "spearman"] = "pearson",
    log1p: bool = True,
) -> pd.Series:
    """Correlation between predicted and observed values of each feature across cells.

    Parameters
    ----------
    {inputs}
    method
        ``"pearson"`` or ``"spearman"`` (Pearson correlation of the ranks, ties averaged).
    log1p
        Whether to apply ``log1p`` to both matrices first (both must then be non-negative).

    Returns
    -------
    pandas.Series
        One correlation per feature, named ``method``. The index holds the feature names
        when either input is a DataFrame, else ``0 .. n_features - 1``. Features that are
        constant in ``predicted`` or in ``observed`` (zero variance, correlation undefined)
        are ``NaN``.

    Raises
    ------
    ValueError
        On shape mismatch, mismatching DataFrame labels, NaN/inf values, negative values
        with ``log1p=True`` or an unknown ``method``.
    """
    _check_method(method)
    pred, obs, features = _prepare(predicted, observed, log1p)
    out = np.empty(pred.shape[1], dtype=np.float64)
    for start, stop, p, o in _blocks(pred, obs, log1p):
        out[start:stop] = _column_correlation(p, o, method)
    return pd.Series(out, index=features, name=method)


@_document_inputs
def imputation_scores(predicted: Any, observed: Any, log1p: bool = True) -> dict[str, float]:
    """Agreement between predicted (imputed) and observed feature values.

    Parameters
    ----------
    {inputs}
        If both are DataFrames, their index and columns must be identical.
    log1p
        Whether to apply ``log1p`` to both matrices before scoring (both must then be
        non-negative). Use ``False`` for data that is already on a log scale.

    Returns
    -------
    dict
        ``"pearson"``
            Mean over scored features of the per-feature Pearson correlation across cells.
        ``"spearman"``
            Mean over scored features of the per-feature Spearman correlation.
        ``"rmse"``
            Root mean squared error over all entries (all features, including constant
            ones).
        ``"n_features_scored"``
            Number of features entering the correlation means.
        ``"n_features_skipped"``
            Number of features that are constant (zero variance) in ``predicted`` or
            ``observed`` and are therefore left out of the correlation means.

        If no feature can be scored, ``"pearson"`` and ``"spearman"`` are ``NaN`` and a
        :class:`UserWarning` is emitted.

    Raises
    ------
    ValueError
        On shape mismatch, mismatching DataFrame labels, NaN/inf values or negative values
        with ``log1p=True``.
    """
    pred, obs, _ = _prepare(predicted, observed, log1p)
    n_cells, n_features = pred.shape
    pearson = np.empty(n_features)
    spearman = np.empty(n_features)
    sq_err = 0.0
    for start, stop, p, o in _blocks(pred, obs, log1p):
        sq_err += float(np.square(p - o).sum())
        pearson[start:stop] = _column_correlation(p, o, "pearson")
        spearman[start:stop] = _column_correlation(p, o, "spearman")
    scored = ~np.isnan(pearson)
    n_scored = int(scored.sum())
    if n_scored == 0:
        warnings.warn(
            "All features are constant in `predicted` or `observed`; correlations are NaN.",
            UserWarning,
            stacklevel=2,
        )
        mean_pearson = mean_spearman = float("nan")
    else:
        mean_pearson = float(pearson[scored].mean())
        mean_spearman = float(spearman[scored].mean())
    return {
        "pearson": mean_pearson,
        "spearman": mean_spearman,
        "rmse": float(np.sqrt(sq_err / (n_cells * n_features))),
        "n_features_scored": n_scored,
        "n_features_skipped": n_features - n_scored,
    }
