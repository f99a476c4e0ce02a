"""Shared input checks for :mod:`mosaicvi.metrics`."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp


def as_embedding(x: Any, name: str, dtype: type = np.float64) -> np.ndarray:
    """Return ``x`` as a finite 2-D dense array (cells x dimensions).

    Accepts numpy arrays, array-likes, pandas DataFrames and scipy sparse matrices. The
    input is never modified (a copy is made whenever a dtype conversion is needed).
    """
    if sp.issparse(x):
        x = x.toarray()
    elif isinstance(x, pd.DataFrame):
        x = x.to_numpy()
    try:
        arr = np.asarray(x, dtype=dtype)
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"`{name}` must be numeric, could not convert it to an array: {err}"
        ) from err
    if arr.ndim == 1:
        raise ValueError(
            f"`{name}` must be 2-D (cells x dimensions), got a 1-D array of length {arr.shape[0]}; "
            "use `x.reshape(-1, 1)` for a single dimension."
        )
    if arr.ndim != 2:
        raise ValueError(f"`{name}` must be 2-D (cells x dimensions), got shape {arr.shape}.")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"`{name}` is empty (shape {arr.shape}).")
    if not np.all(np.isfinite(arr)):
        n_bad = int(np.sum(~np.isfinite(arr)))
        raise ValueError(f"`{name}` contains {n_bad} NaN or infinite value(s).")
    return arr


def as_labels(
    labels: Any, name: str, n_obs: int, allow_missing: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Turn per-cell labels into integer codes.

    Parameters
    ----------
    labels
        Array-like, pandas Series or Categorical of length ``n_obs``.
    name
        Argument name used in error messages.
    n_obs
        Expected number of cells.
    allow_missing
        Whether missing values (``NaN``/``None``) are allowed.

    Returns
    -------
    codes
        ``int64`` array of length ``n_obs``; missing entries are ``-1``.
    categories
        Array of the category values, indexed by code.
    """
    if isinstance(labels, pd.DataFrame):
        raise ValueError(f"`{name}` must be one-dimensional, got a DataFrame.")
    if isinstance(labels, pd.Series | pd.Index):
        values = labels.array
    else:
        values = np.asarray(labels)
        if values.ndim == 2 and 1 in values.shape:
            values = values.ravel()
        if values.ndim != 1:
            raise ValueError(f"`{name}` must be one-dimensional, got shape {values.shape}.")
    if len(values) != n_obs:
        raise ValueError(f"`{name}` has length {len(values)} but the embedding has {n_obs} cells.")
    cat = pd.Categorical(values)
    codes = np.asarray(cat.codes, dtype=np.int64)
    if not allow_missing and np.any(codes < 0):
        raise ValueError(
            f"`{name}` contains {int(np.sum(codes < 0))} missing value(s); missing values are "
            "not allowed here."
        )
    return codes, np.asarray(cat.categories)


def check_same_n_obs(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    """Raise if ``a`` and ``b`` do not have the same number of rows."""
    if a.shape[0] != b.shape[0]:
        raise ValueError(
            f"`{name_a}` and `{name_b}` must describe the same cells in the same order, got "
            f"{a.shape[0]} and {b.shape[0]} rows."
        )


def check_k(k: int, n_available: int, what: str = "k") -> int:
    """Validate a neighbour count against the number of candidate neighbours."""
    if isinstance(k, bool) or not isinstance(k, int | np.integer):
        raise ValueError(f"`{what}` must be an integer, got {k!r}.")
    k = int(k)
    if k < 1:
        raise ValueError(f"`{what}` must be >= 1, got {k}.")
    if k > n_available:
        raise ValueError(
            f"`{what}`={k} is larger than the number of available neighbours ({n_available})."
        )
    return k
