"""Content fingerprints of a MuData: which setup it had, and whether it was edited since.

A model never stores the user's MuData in a cache keyed by object identity: ``setup_mudata``
records the fingerprint of what it registered, and a model (or a later call) compares the
fingerprint of the MuData it is given. A MuData edited after setup (values, cells, features or
covariate columns) has another fingerprint, so it is never read through a stale copy.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping

import numpy as np
import pandas as pd
import scipy.sparse as sp
from mudata import MuData

#: Values sampled (evenly spaced) into the digest on top of exact sums over all values.
_SAMPLE = 4096


def _index_digest(h, index: pd.Index) -> None:
    h.update(str(len(index)).encode())
    h.update(pd.util.hash_pandas_object(index, index=False).to_numpy().tobytes())


def _values_digest(h, values: np.ndarray) -> None:
    values = np.asarray(values).ravel()
    h.update(str(values.size).encode())
    if values.size == 0:
        return
    # exact float64 sums catch edits anywhere; the strided sample catches moved values
    h.update(np.float64(values.sum(dtype=np.float64)).tobytes())
    h.update(np.float64(np.dot(values, values)).tobytes())
    step = max(1, values.size // _SAMPLE)
    h.update(np.ascontiguousarray(values[::step]).tobytes())


def _matrix_digest(h, matrix) -> None:
    h.update(str(getattr(matrix, "shape", None)).encode())
    if sp.issparse(matrix):
        _values_digest(h, matrix.data)
        _values_digest(h, matrix.indices)
    elif isinstance(matrix, np.ndarray):
        _values_digest(h, matrix)
    else:  # backed or lazy arrays: shape only (reading them whole is what backing avoids)
        h.update(type(matrix).__name__.encode())


def _obs_keys(setup_args: Mapping) -> Iterable[str]:
    for value in setup_args.values():
        if isinstance(value, str):
            yield value
        elif isinstance(value, list | tuple):
            yield from (v for v in value if isinstance(v, str))


def structure_fingerprint(mdata: MuData, mod_keys: Iterable[str]) -> str:
    """Cells and features of ``mod_keys`` (what a model's shapes depend on)."""
    h = hashlib.blake2b(digest_size=16)
    _index_digest(h, mdata.obs_names)
    for key in mod_keys:
        h.update(key.encode())
        if key not in mdata.mod:
            h.update(b"absent")
            continue
        _index_digest(h, mdata.mod[key].obs_names)
        _index_digest(h, mdata.mod[key].var_names)
    return h.hexdigest()


def content_fingerprint(mdata: MuData, setup_args: Mapping) -> str:
    """Everything setup with ``setup_args`` reads: cells, features, values, obs columns."""
    modalities = dict(setup_args["modalities"])
    layers = dict(setup_args.get("layers") or {})
    h = hashlib.blake2b(digest_size=16)
    h.update(structure_fingerprint(mdata, modalities.values()).encode())
    for name, key in modalities.items():
        if key not in mdata.mod:
            continue
        mod = mdata.mod[key]
        layer = layers.get(name)
        _matrix_digest(h, mod.X if layer is None else mod.layers.get(layer))
    for column in sorted(set(_obs_keys(setup_args)) & set(map(str, mdata.obs.columns))):
        h.update(column.encode())
        h.update(pd.util.hash_pandas_object(mdata.obs[column], index=False).to_numpy().tobytes())
    return h.hexdigest()
