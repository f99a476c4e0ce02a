"""Gathering per-minibatch outputs in memory, or streaming them to disk with bounded memory."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd


def collect_rows(
    blocks: Iterable[np.ndarray],
    obs_names: pd.Index,
    var_names: pd.Index,
    out: str | os.PathLike | None = None,
) -> pd.DataFrame | ad.AnnData:
    """Stack ``(cells, features)`` blocks, in cell order, into a DataFrame or an ``.h5ad`` file.

    With ``out`` the blocks are written one by one into ``out`` (an ``.h5ad`` file whose ``X``
    is a chunked float32 HDF5 dataset), so memory holds one minibatch at a time, and the file is
    returned opened as a backed (read-only) AnnData.
    """
    if out is None:
        return pd.DataFrame(np.concatenate(list(blocks)), index=obs_names, columns=var_names)
    import h5py

    try:
        from anndata.io import write_elem
    except ImportError:  # anndata < 0.11
        from anndata.experimental import write_elem

    path = Path(out)
    if path.suffix != ".h5ad":
        raise ValueError(f"out must be an .h5ad path, got {str(out)!r}.")
    n_obs, n_vars = len(obs_names), len(var_names)
    with h5py.File(path, "w") as fh:
        fh.attrs["encoding-type"] = "anndata"
        fh.attrs["encoding-version"] = "0.1.0"
        write_elem(fh, "obs", pd.DataFrame(index=pd.Index(obs_names, dtype=str)))
        write_elem(fh, "var", pd.DataFrame(index=pd.Index(var_names, dtype=str)))
        for group in ("obsm", "varm", "obsp", "varp", "layers", "uns"):
            write_elem(fh, group, {})
        x = fh.create_dataset(
            "X", shape=(n_obs, n_vars), dtype="float32", chunks=(min(n_obs, 1024), n_vars)
        )
        x.attrs["encoding-type"] = "array"
        x.attrs["encoding-version"] = "0.2.0"
        start = 0
        for block in blocks:
            x[start : start + len(block)] = block.astype(np.float32, copy=False)
            start += len(block)
        if start != n_obs:
            raise RuntimeError(f"wrote {start} rows for {n_obs} cells")
    return ad.read_h5ad(path, backed="r")
