"""Simulated CITE-like and Multiome-like ``.h5mu`` files of any size, written chunk by chunk.

Memory holds one chunk of cells at a time: the MuData skeleton (obs, var, empty ``X``) is written
with mudata, then each modality's ``X`` is replaced by a CSR group (anndata's on-disk encoding)
appended chunk by chunk with h5py. Counts come from a few cell types with their own feature
profiles, so a model has something to learn; the files are for throughput and memory, not for
biology.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

CHUNK_CELLS = 20_000
N_TYPES = 8
N_BATCHES = 4


@dataclass(frozen=True)
class ModalityLayout:
    name: str
    n_features: int
    nnz_per_cell: int  # mean number of non-zero features of a cell


KINDS: dict[str, tuple[ModalityLayout, ...]] = {
    # RNA ~9% non-zero, every protein measured: ~550 stored values a cell, ~4.4 GB per 1M cells
    "cite": (ModalityLayout("rna", 4_000, 350), ModalityLayout("adt", 200, 200)),
    # ATAC 2.4% of 50,000 peaks open
    "multiome": (ModalityLayout("rna", 4_000, 350), ModalityLayout("atac", 50_000, 1_200)),
}


def _profiles(rng: np.random.Generator, n_features: int) -> np.ndarray:
    """Per cell type, the probability of each feature among a cell's non-zero ones."""
    weights = rng.lognormal(0.0, 1.0, size=(N_TYPES, n_features))
    return weights / weights.sum(1, keepdims=True)


def _chunk(rng, layout: ModalityLayout, types: np.ndarray, profiles: np.ndarray):
    import scipy.sparse as sp

    n = len(types)
    if layout.nnz_per_cell >= layout.n_features:  # every feature measured (proteins)
        means = profiles[types] * layout.n_features * 20.0
        return sp.csr_matrix(rng.poisson(means).astype(np.float32) + 1.0)
    per_cell = rng.poisson(layout.nnz_per_cell, size=n)
    rows = np.repeat(np.arange(n), per_cell)
    columns = np.empty(len(rows), dtype=np.int64)
    for t in range(N_TYPES):  # draw each cell type's features from its profile
        where = np.flatnonzero(types[rows] == t)
        columns[where] = rng.choice(layout.n_features, size=len(where), p=profiles[t])
    values = (1 + rng.poisson(0.6, size=len(rows))).astype(np.float32)
    matrix = sp.csr_matrix((values, (rows, columns)), shape=(n, layout.n_features))
    matrix.sum_duplicates()
    return matrix


def write_simulated(path: Path, kind: str, n_cells: int, seed: int = 0) -> Path:
    """Write (or keep, if it exists with this many cells) a simulated ``.h5mu`` of ``kind``."""
    import anndata as ad
    import h5py
    import mudata as md
    import pandas as pd
    import scipy.sparse as sp

    path = Path(path)
    layouts = KINDS[kind]
    if path.exists():
        with h5py.File(path, "r") as fh:
            if all(
                fh[f"mod/{layout.name}/X"].attrs.get("shape", [0])[0] == n_cells
                for layout in layouts
            ):
                return path
        path.unlink()
    # written under a temporary name and renamed at the end: an interrupted write never
    # leaves a file that the check above would take for a finished one
    final, path = path, path.with_name(path.name + ".partial")
    rng = np.random.default_rng(seed)
    types = rng.integers(0, N_TYPES, size=n_cells)
    batches = rng.integers(0, N_BATCHES, size=n_cells)
    names = pd.Index([f"cell_{i:08d}" for i in range(n_cells)])
    obs = pd.DataFrame(
        {
            "batch": pd.Categorical([f"batch_{b}" for b in batches]),
            "cell_type": pd.Categorical([f"type_{t}" for t in types]),
        },
        index=names,
    )
    mods = {
        layout.name: ad.AnnData(
            X=sp.csr_matrix((n_cells, layout.n_features), dtype=np.float32),
            obs=pd.DataFrame(index=names),
            var=pd.DataFrame(index=[f"{layout.name}_{j}" for j in range(layout.n_features)]),
        )
        for layout in layouts
    }
    mdata = md.MuData(mods)
    mdata.obs = obs
    mdata.write(path)
    del mdata, mods
    profiles = {layout.name: _profiles(rng, layout.n_features) for layout in layouts}
    with h5py.File(path, "r+") as fh:
        for layout in layouts:
            del fh[f"mod/{layout.name}/X"]
            group = fh.create_group(f"mod/{layout.name}/X")
            group.attrs.update(
                {
                    "encoding-type": "csr_matrix",
                    "encoding-version": "0.1.0",
                    "shape": (n_cells, layout.n_features),
                }
            )
            data = group.create_dataset(
                "data", shape=(0,), maxshape=(None,), chunks=(1 << 18,), dtype="float32"
            )
            indices = group.create_dataset(
                "indices", shape=(0,), maxshape=(None,), chunks=(1 << 18,), dtype="int32"
            )
            indptr = np.zeros(n_cells + 1, dtype=np.int64)
            for start in range(0, n_cells, CHUNK_CELLS):
                stop = min(start + CHUNK_CELLS, n_cells)
                block = _chunk(rng, layout, types[start:stop], profiles[layout.name])
                offset = data.shape[0]
                data.resize((offset + block.nnz,))
                indices.resize((offset + block.nnz,))
                data[offset:], indices[offset:] = block.data, block.indices
                # int64: a Multiome-like 2M-cell ATAC matrix holds more than 2**31 values
                indptr[start + 1 : stop + 1] = offset + block.indptr[1:].astype(np.int64)
            group.create_dataset("indptr", data=indptr)
    path.rename(final)
    return final


def write_simulated_soma(h5mu: Path) -> Path:
    """The simulated ``.h5mu`` as a SOMA Experiment next to it (written once, then reused)."""
    import tiledbsoma

    import mosaicvi as mv

    uri = h5mu.with_suffix(".soma")
    if not tiledbsoma.Experiment.exists(str(uri)):
        mv.data.write_soma(mv.data.read_backed(h5mu), str(uri))
    return uri
