"""Modalities kept on disk: an assembled matrix whose rows are read on demand.

A MuData opened with ``mudata.read_h5mu(path, backed=True)`` (or a zarr store opened with
:func:`read_backed`) holds each modality's ``X`` as an on-disk array. Its assembly keeps only
per-cell fields in memory; the features of all modalities side by side are a
:class:`MosaicRows`, which reads the requested cells from every modality's file and returns them
as one CSR block. Reads of consecutive cells are one slice per run, which is what keeps HDF5 and
zarr reads fast (see :mod:`mosaicvi.dataloaders` for the sampling that produces such runs).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import anndata as ad
import numpy as np
import scipy.sparse as sp
from mudata import MuData

from ._constants import ROWS_UNS_KEY

#: stored values read at a time when a backed matrix is validated
_VALUE_CHUNK = 1 << 24
#: rows read at a time when a backed matrix is scanned whole (library sizes, validation)
SCAN_ROWS = 20_000
#: consecutive cells the loader reads together from an on-disk matrix, at least and at most;
#: 256-cell blocks train as well as 64-cell ones (``benchmarks/out_of_core.py --quality``)
MIN_BLOCK_CELLS, MAX_BLOCK_CELLS = 64, 256


def is_backed(matrix) -> bool:
    """Whether ``matrix`` is an on-disk array (anything but a numpy array or scipy matrix)."""
    return matrix is not None and not (isinstance(matrix, np.ndarray) or sp.issparse(matrix))


def _csr(block) -> sp.csr_matrix:
    if isinstance(block, sp.csr_matrix) and block.dtype == np.float32:
        return block
    return sp.csr_matrix(block, dtype=np.float32)


class _ReopenedNode:
    """An HDF5 or zarr node (group or array) that a process other than its opener reopens.

    The node is remembered by file name and path and opened again in any other process (a
    DataLoader worker, a DDP process) and after pickling: HDF5 handles must not cross a
    fork. Such a reader sets :attr:`reads_in_worker_process`: h5py and zarr hold the
    interpreter lock while they read and decompress, so reads from a thread stall training.
    """

    def __init__(self, node):
        self._where = _file_location(node)
        self.reads_in_worker_process = self._where is not None
        self._node, self._pid = node, os.getpid()

    def _open(self):
        if self._node is None or self._pid != os.getpid():
            kind, location, name = self._where
            if kind == "hdf5":
                import h5py

                self._node = h5py.File(location, "r")[name]
            else:
                import zarr

                self._node = zarr.open(location, mode="r")[name]
            self._pid = os.getpid()
        return self._node

    def __getstate__(self) -> dict:
        if self._where is None:
            raise TypeError(
                "This on-disk matrix cannot be opened again from another process (its store "
                "is neither an HDF5 file nor a local zarr folder); read it with num_workers=0."
            )
        return {**self.__dict__, "_node": None, "_pid": None}


class DiskCSR(_ReopenedNode):
    """An on-disk CSR matrix whose rows are read straight from its ``data`` and ``indices``.

    ``indptr`` (one integer per cell) is read into memory once; a run of consecutive rows is
    then two slice reads. anndata's backed dataset costs about 2.5 ms per slice call (it
    re-reads ``indptr`` and builds a matrix for each), 30 times more than the reads themselves
    for 64-cell blocks (measured on a 20,000-cell CITE-like file).
    """

    format = "csr"

    def __init__(self, matrix):
        super().__init__(matrix.group)
        self.indptr = np.asarray(matrix.group["indptr"][:], dtype=np.int64)
        self.shape = tuple(int(n) for n in matrix.shape)
        self.block_cells = _block_cells(matrix.group["data"], self.indptr)

    @property
    def data(self):
        return self._open()["data"]

    @property
    def indices(self):
        return self._open()["indices"]

    def runs(self, starts: np.ndarray, stops: np.ndarray) -> sp.csr_matrix:
        """Rows ``starts[i]:stops[i]`` of every run, stacked."""
        lows, highs = self.indptr[starts], self.indptr[stops]
        data_array, index_array = self.data, self.indices
        data = [np.asarray(data_array[lo:hi], dtype=np.float32) for lo, hi in zip(lows, highs)]
        indices = [np.asarray(index_array[lo:hi]) for lo, hi in zip(lows, highs)]
        row_nnz = np.concatenate([np.diff(self.indptr[a : b + 1]) for a, b in zip(starts, stops)])
        indptr = np.zeros(len(row_nnz) + 1, dtype=np.int64)
        np.cumsum(row_nnz, out=indptr[1:])
        return sp.csr_matrix(
            (np.concatenate(data), np.concatenate(indices), indptr),
            shape=(len(row_nnz), self.shape[1]),
        )

    def __getitem__(self, key: slice) -> sp.csr_matrix:
        start, stop, _ = key.indices(self.shape[0])
        return self.runs(np.array([start]), np.array([stop]))


def _block_cells(data, indptr: np.ndarray) -> int:
    """Cells per read block so that a block spans about one storage chunk of ``data``.

    HDF5 and zarr read (and decompress) whole chunks: on a Multiome-like file with 1 MB
    chunks, a 64-cell block of ATAC (~0.3 MB) read 4 to 5 times the bytes it used. Blocks are
    a power of two between :data:`MIN_BLOCK_CELLS` and :data:`MAX_BLOCK_CELLS`; an
    unchunked (contiguous) array keeps the smallest.
    """
    chunks = getattr(data, "chunks", None)
    n_rows = len(indptr) - 1
    if not chunks or n_rows == 0 or indptr[-1] == 0:
        return MIN_BLOCK_CELLS
    cells_per_chunk = chunks[0] / (indptr[-1] / n_rows)
    wanted = 2 ** int(np.ceil(np.log2(max(cells_per_chunk, 1.0))))
    return int(min(MAX_BLOCK_CELLS, max(MIN_BLOCK_CELLS, wanted)))


class DiskDense(_ReopenedNode):
    """A dense on-disk array (HDF5 dataset or zarr array) read as slices of rows."""

    def __init__(self, array):
        super().__init__(array)
        self.shape = tuple(int(n) for n in array.shape)

    def runs(self, starts: np.ndarray, stops: np.ndarray) -> sp.csr_matrix:
        """Rows ``starts[i]:stops[i]`` of every run, stacked, as float32 CSR."""
        array = self._open()
        blocks = [
            sp.csr_matrix(np.asarray(array[a:b], dtype=np.float32)) for a, b in zip(starts, stops)
        ]
        return sp.vstack(blocks, format="csr", dtype=np.float32)

    def __getitem__(self, key: slice) -> np.ndarray:
        return np.asarray(self._open()[key])


def _file_location(node) -> tuple[str, str, str] | None:
    """``(kind, file or folder, path inside)`` of an HDF5 or local zarr node, if it has one."""
    file = getattr(node, "file", None)
    if file is not None and getattr(file, "filename", None):
        return "hdf5", str(file.filename), str(node.name)
    store = getattr(node, "store", None)
    root = getattr(store, "root", None) or getattr(store, "path", None)  # zarr 3 / zarr 2
    if root is not None and os.path.isdir(str(root)):
        return "zarr", str(root), str(node.path)
    return None


def row_reader(matrix, name: str = "modality"):
    """What rows of ``matrix`` are read through: itself, or a :class:`DiskCSR` for on-disk CSR."""
    if not is_backed(matrix):
        return matrix
    group = getattr(matrix, "group", None)
    if getattr(matrix, "format", None) == "csc":
        raise ValueError(
            f"The X of {name} is stored on disk as CSC (by feature), from which a block of cells "
            "is one read per feature. Store it as CSR (by cell): read it into memory and "
            "`adata.X = scipy.sparse.csr_matrix(adata.X)`, then write the file again."
        )
    if group is not None and {"data", "indices", "indptr"} <= set(group.keys()):
        return DiskCSR(matrix)
    if group is None and getattr(matrix, "ndim", 0) == 2 and _file_location(matrix):
        return DiskDense(matrix)  # a dense HDF5 dataset or zarr array
    return matrix


def read_rows(matrix, rows: np.ndarray) -> sp.csr_matrix:
    """Rows of ``matrix`` at sorted, unique positions ``rows``, as a float32 CSR matrix.

    An on-disk matrix is read one slice per run of consecutive rows: HDF5 and zarr serve a
    slice in one request, while a fancy index costs one request per row.
    """
    rows = np.asarray(rows, dtype=np.int64)
    if not is_backed(matrix):
        return _csr(matrix[rows])
    if len(rows) == 0:
        return sp.csr_matrix((0, matrix.shape[1]), dtype=np.float32)
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    starts = rows[np.concatenate([[0], breaks])]
    stops = rows[np.concatenate([breaks, [len(rows)]]) - 1] + 1
    if hasattr(matrix, "runs"):  # DiskCSR, SomaRows: all runs in one go
        return matrix.runs(starts, stops)
    blocks = [_csr(matrix[a:b]) for a, b in zip(starts, stops)]
    return blocks[0] if len(blocks) == 1 else sp.vstack(blocks, format="csr", dtype=np.float32)


def row_spans(n_rows: int, chunk_rows: int = SCAN_ROWS) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` of consecutive pieces of ``n_rows`` rows."""
    for start in range(0, n_rows, chunk_rows):
        yield start, min(start + chunk_rows, n_rows)


def stored_values(matrix, chunk_size: int = _VALUE_CHUNK) -> Iterator[np.ndarray]:
    """The stored values of a dense, sparse or on-disk matrix, piece by piece.

    In memory the pieces are views; on disk a sparse matrix's ``data`` array is read in
    slices and a dense one row block by row block, so memory holds one piece at a time.
    """
    if sp.issparse(matrix) or isinstance(matrix, np.ndarray):
        values = np.asarray(matrix.data if sp.issparse(matrix) else matrix).ravel()
        for start in range(0, values.size, chunk_size):
            yield values[start : start + chunk_size]
        return
    if hasattr(matrix, "stored_values"):  # a store that reads its values itself (SomaRows)
        yield from matrix.stored_values()
        return
    group = getattr(matrix, "group", None)
    if group is not None and "data" in group:  # anndata's backed CSR/CSC dataset
        data = group["data"]
        for start in range(0, data.shape[0], chunk_size):
            yield np.asarray(data[start : start + chunk_size])
        return
    rows_per_chunk = max(1, chunk_size // max(1, matrix.shape[1]))
    for start, stop in row_spans(matrix.shape[0], rows_per_chunk):
        yield np.asarray(matrix[start:stop]).ravel()


def row_pieces(
    matrix, max_values: int = _VALUE_CHUNK
) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
    """``(start, stop, stored values, values per row)`` of consecutive rows, piece by piece.

    An on-disk CSR matrix is read as slices of its ``data`` array alone (the column indices
    are not needed), each of at most ``max_values`` values; any other matrix row block by row
    block. Row sums and value checks need nothing more, so setup reads a file once.
    """
    reader = row_reader(matrix)
    n_rows = int(reader.shape[0])
    if isinstance(reader, DiskCSR):
        indptr, data, start = reader.indptr, reader.data, 0
        while start < n_rows:
            stop = int(np.searchsorted(indptr, indptr[start] + max_values, side="right")) - 1
            stop = min(max(stop, start + 1), n_rows)  # at least one row per piece
            values = np.asarray(data[indptr[start] : indptr[stop]])
            yield start, stop, values, np.diff(indptr[start : stop + 1])
            start = stop
        return
    rows_per_piece = max(1, max_values // max(1, int(reader.shape[1])))
    for start, stop in row_spans(n_rows, rows_per_piece):
        block = reader[start:stop]
        block = sp.csr_matrix(block if sp.issparse(block) else np.asarray(block))
        yield start, stop, block.data, np.diff(block.indptr)


def segment_sums(values: np.ndarray, per_row: np.ndarray) -> np.ndarray:
    """Sums (float64) of consecutive segments of ``values``, ``per_row[i]`` values in row i."""
    ends = np.cumsum(per_row)
    totals = np.concatenate([[0.0], np.cumsum(values, dtype=np.float64)])
    return totals[ends] - totals[ends - per_row]


def row_sums(matrix, inspect: Callable[[np.ndarray], None] | None = None) -> np.ndarray:
    """Sum of each row (float64), reading an on-disk matrix piece by piece.

    ``inspect``, if given, is called with the stored values of every piece of an on-disk
    matrix, so checks of the values share the one pass over the file.
    """
    if not is_backed(matrix):
        return np.asarray(matrix.sum(1), dtype=np.float64).ravel()
    cached = getattr(matrix, "row_sums", None)  # computed by the scan that opened it
    if cached is not None and inspect is None:
        return cached
    sums = np.zeros(matrix.shape[0])
    for start, stop, values, per_row in row_pieces(matrix):
        if inspect is not None:
            inspect(values)
        sums[start:stop] = segment_sums(values, per_row)
    return sums


class MosaicRows:
    """The assembled ``cells x features`` matrix of modalities that stay on disk.

    Parameters
    ----------
    sources
        One matrix per modality (on disk or in memory), rows in that modality's cell order.
    rows_in_source
        Per modality, for each assembled cell its row in the source, ``-1`` where the cell
        lacks the modality; ``None`` where the source has every cell in assembled order.
    n_obs
        Number of assembled cells.
    """

    format = "csr"  # what rows come back as; lets chunked readers take the sparse path
    dtype = np.dtype(np.float32)
    ndim = 2

    def __init__(self, sources: Sequence, rows_in_source: Sequence[np.ndarray | None], n_obs: int):
        self.sources = [row_reader(source) for source in sources]
        self.rows_in_source = [
            None if r is None else np.asarray(r, dtype=np.int64) for r in rows_in_source
        ]
        # the largest block of consecutive cells any store asks to be read in (SOMA: tiles)
        self.block_cells = max(int(getattr(s, "block_cells", 1)) for s in self.sources)
        # a worker process can read only if every on-disk source can be opened again there
        on_disk = [s for s in self.sources if is_backed(s)]
        self.reads_in_worker_process = bool(on_disk) and all(
            getattr(s, "reads_in_worker_process", False) for s in on_disk
        )
        widths = [int(s.shape[1]) for s in self.sources]
        self.offsets = np.concatenate([[0], np.cumsum(widths)]).astype(int)
        self.shape = (int(n_obs), int(self.offsets[-1]))

    def __repr__(self) -> str:
        kinds = ", ".join(type(s).__name__ for s in self.sources)
        return f"MosaicRows({self.shape[0]} cells x {self.shape[1]} features from {kinds})"

    def read(self, rows) -> sp.csr_matrix:
        """The assembled rows ``rows`` (any order, repeats allowed) as float32 CSR."""
        rows = np.asarray(rows, dtype=np.int64)
        blocks = [self._modality_rows(k, rows) for k in range(len(self.sources))]
        return sp.hstack(blocks, format="csr", dtype=np.float32)

    def _modality_rows(self, k: int, rows: np.ndarray) -> sp.csr_matrix:
        source, mapping = self.sources[k], self.rows_in_source[k]
        in_source = rows if mapping is None else mapping[rows]
        present = np.flatnonzero(in_source >= 0)
        wanted, order = np.unique(in_source[present], return_inverse=True)
        block = read_rows(source, wanted)[order]
        if len(present) == len(rows):
            return block
        # place the cells that have the modality; the others stay empty rows
        selector = sp.csr_matrix(
            (np.ones(len(present), dtype=np.float32), (present, np.arange(len(present)))),
            shape=(len(rows), len(present)),
        )
        return (selector @ block).tocsr()

    def __getitem__(self, key) -> sp.csr_matrix:
        rows, columns = row_key(key, self.shape[0])
        block = self.read(rows)
        return block if columns is None else block[:, columns]


def row_key(key, n_rows: int) -> tuple[np.ndarray, object]:
    """``matrix[key]`` of a row reader as (row positions, column key or ``None``)."""
    columns = None
    if isinstance(key, tuple):
        key, columns = key
    if isinstance(key, slice):
        key = np.arange(*key.indices(n_rows))
    key = np.atleast_1d(np.asarray(key))
    return (np.flatnonzero(key) if key.dtype == bool else key), columns


def assembled_matrix(adata: ad.AnnData):
    """The features of an assembled AnnData: its ``X``, or the on-disk :class:`MosaicRows`."""
    if adata.X is None and ROWS_UNS_KEY in adata.uns:
        return adata.uns[ROWS_UNS_KEY]
    return adata.X


def is_out_of_core(adata: ad.AnnData) -> bool:
    """Whether an assembled AnnData reads its features from disk."""
    return adata.X is None and ROWS_UNS_KEY in adata.uns


def read_backed(path: str | os.PathLike) -> MuData:
    """Open an ``.h5mu`` file or a MuData zarr store with every modality's ``X`` left on disk.

    ``.obs``, ``.var`` and the other annotations are read into memory; each modality's ``X``
    stays an on-disk array (HDF5 or zarr) that models read cell block by cell block. Layers are
    read into memory by ``mudata`` (only ``X`` is backed), so store raw counts in ``X``.

    Parameters
    ----------
    path
        A ``.h5mu`` file (opened with ``mudata.read_h5mu(path, backed="r")``) or a ``.zarr``
        folder written by ``mdata.write_zarr``.
    """
    import mudata

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist. Pass an .h5mu file or a .zarr store.")
    if path.suffix == ".h5mu" or path.is_file():
        return mudata.read_h5mu(path, backed="r")
    return _read_zarr_backed(path)


def _read_zarr_backed(path: Path) -> MuData:
    import zarr

    try:
        from anndata.io import read_elem, sparse_dataset
    except ImportError:  # anndata < 0.11
        from anndata.experimental import read_elem, sparse_dataset

    root = zarr.open(str(path), mode="r")
    if "mod" not in root:
        raise ValueError(
            f"{path} is not a MuData zarr store (it has no 'mod' group). Write one with "
            "`mdata.write_zarr(path)`."
        )
    mods = {}
    order = list(root["mod"].attrs.get("mod-order", [])) or sorted(root["mod"])
    for name in order:
        group = root["mod"][name]
        x = group["X"]
        matrix = sparse_dataset(x) if isinstance(x, zarr.Group) else x
        annotations = {
            key: read_elem(group[key])
            for key in ("obs", "var", "obsm", "varm", "layers", "uns")
            if key in group
        }
        mods[name] = ad.AnnData(X=matrix, **annotations)
    mdata = MuData(mods)
    if "obs" in root:
        obs = read_elem(root["obs"])
        own = [c for c in obs.columns if c not in mdata.obs.columns]
        for column in own:
            mdata.obs[column] = obs[column].reindex(mdata.obs_names)
    return mdata
