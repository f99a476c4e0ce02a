"""In-memory minibatches: registered fields built into tensors once, sliced per batch.

scvi-tools' :class:`~scvi.dataloaders.AnnDataLoader` indexes the AnnData (pandas ``iloc`` for
``obs`` fields, scipy fancy indexing for ``X``) for every minibatch. When the data fits in
memory, :class:`InMemoryDataLoader` instead keeps every registered field as a torch tensor (``X``
as CSR parts, never densified whole) and builds each minibatch with a few tensor ops, on the CPU
or directly on the GPU.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from scvi import REGISTRY_KEYS
from scvi.data import AnnDataManager
from scvi.dataloaders import DataSplitter
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler

from mosaicvi.base._compat import BatchDistributedSampler


class _CSRRows:
    """A CSR matrix whose ``dense(rows)`` densifies only the requested rows.

    On the CPU rows are sliced with scipy (fastest there); on a GPU the CSR parts live on the
    device and rows are gathered with tensor ops, so minibatches never cross the PCIe bus.
    """

    def __init__(self, matrix: sp.spmatrix, device: torch.device, pin_memory: bool):
        if not (sp.isspmatrix_csr(matrix) or isinstance(matrix, sp.csr_array)):
            matrix = sp.csr_matrix(matrix)
        if matrix.dtype != np.float32:  # otherwise share the registered matrix, no copy
            matrix = matrix.astype(np.float32)
        self.device = device
        self.pin_memory = pin_memory
        self.n_cols = matrix.shape[1]
        self.nbytes = matrix.data.nbytes + matrix.indices.nbytes + matrix.indptr.nbytes
        if device.type == "cpu":
            self.matrix = matrix
            return
        self.indptr, self.indices, self.data = (
            torch.from_numpy(part).to(device)
            for part in (
                matrix.indptr.astype(np.int64),
                matrix.indices.astype(np.int64),
                matrix.data,
            )
        )

    def dense(self, rows: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cpu":
            out = torch.from_numpy(self.matrix[rows.numpy()].toarray())
            return out.pin_memory() if self.pin_memory else out
        starts = self.indptr[rows]
        counts = self.indptr[rows + 1] - starts
        n = len(rows)
        out = torch.zeros(n, self.n_cols, dtype=self.data.dtype, device=self.data.device)
        if n == 0:
            return out
        row_of = torch.repeat_interleave(torch.arange(n, device=rows.device), counts)
        # position of each stored entry: its row's start plus its rank within the row
        first = torch.repeat_interleave(counts.cumsum(0) - counts, counts)
        entry = torch.repeat_interleave(starts, counts) + (
            torch.arange(len(row_of), device=rows.device) - first
        )
        out[row_of, self.indices[entry]] = self.data[entry]
        return out


class TensorBank:
    """Every registered field of an :class:`~scvi.data.AnnDataManager` as tensors (float32).

    Parameters
    ----------
    adata_manager
        The manager whose ``data_registry`` says which fields to load.
    device
        Where the tensors live (``"cpu"`` or a CUDA device).
    pin_memory
        Pin CPU tensors so copies to a GPU can be asynchronous.
    skip
        Registry keys to leave out (the out-of-core loader reads ``X`` itself).
    """

    def __init__(
        self,
        adata_manager: AnnDataManager,
        device: str | torch.device = "cpu",
        pin_memory: bool = False,
        skip: tuple[str, ...] = (),
    ):
        self.device = torch.device(device)
        self.fields: dict[str, torch.Tensor | _CSRRows] = {}
        for key in adata_manager.data_registry:
            if key in skip:
                continue
            value = adata_manager.get_from_registry(key)
            if value is None and key == REGISTRY_KEYS.X_KEY:
                raise ValueError(
                    "The features of this data stay on disk (a backed MuData), so they cannot "
                    "be loaded as in-memory tensors. Train with `data_loader='out_of_core'` (or "
                    "'auto'), or read the MuData into memory first (`mdata.to_memory()`)."
                )
            if sp.issparse(value):
                self.fields[key] = _CSRRows(value, self.device, pin_memory)
                continue
            if isinstance(value, pd.DataFrame | pd.Series):
                value = value.to_numpy()
            array = np.asarray(value)
            # integer codes stay int64 (as scvi-tools' loader gives them), the rest float32
            array = array.astype(np.int64 if array.dtype.kind in "iub" else np.float32)
            if array.ndim == 1:
                array = array[:, None]
            self.fields[key] = torch.from_numpy(np.ascontiguousarray(array)).to(self.device)
        self.pin_memory = pin_memory and self.device.type == "cpu"
        self.n_obs = adata_manager.adata.n_obs

    @property
    def nbytes(self) -> int:
        """Memory held by the bank."""
        return sum(
            f.nbytes if isinstance(f, _CSRRows) else f.numel() * f.element_size()
            for f in self.fields.values()
        )

    def rows(self, indices) -> dict[str, torch.Tensor]:
        """Minibatch of the given cells: dense tensors keyed by registry key."""
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.long, device=self.device)
        batch = {}
        for key, field in self.fields.items():
            if isinstance(field, _CSRRows):
                batch[key] = field.dense(idx)
            else:
                rows = field[idx]
                batch[key] = rows.pin_memory() if self.pin_memory else rows
        return batch


_BANKS_ATTRIBUTE = "_mosaicvi_tensor_banks"


def tensor_bank(
    adata_manager: AnnDataManager, device: str | torch.device = "cpu", pin_memory: bool = False
) -> TensorBank:
    """The :class:`TensorBank` of a manager on a device, shared by its loaders.

    The bank is kept on the manager itself (one per device), so it lives exactly as long as the
    registered data it copies: the train, validation and inference loaders of one model share
    it, and it is freed with the model.
    """
    banks = adata_manager.__dict__.setdefault(_BANKS_ATTRIBUTE, {})
    key = str(torch.device(device))
    if key not in banks:
        banks[key] = TensorBank(adata_manager, device, pin_memory)
    return banks[key]


def cell_positions(indices, n_obs: int) -> np.ndarray:
    """Integer positions of the cells a loader iterates over (``None``: all; masks accepted)."""
    indices = np.arange(n_obs) if indices is None else np.asarray(indices)
    return np.flatnonzero(indices) if indices.dtype == bool else indices


class _BankDataset(Dataset):
    """``dataset[list of positions]`` -> minibatch dict, positions into ``indices``."""

    def __init__(self, bank: TensorBank, indices: np.ndarray):
        self.bank = bank
        self.indices = np.asarray(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, positions) -> dict[str, torch.Tensor]:
        return self.bank.rows(self.indices[np.asarray(positions)])


class InMemoryDataLoader(DataLoader):
    """Drop-in replacement of :class:`~scvi.dataloaders.AnnDataLoader` for in-memory data.

    Parameters
    ----------
    adata_manager
        Registered data.
    indices
        Cells to iterate over (all by default).
    batch_size, shuffle, drop_last
        As in :class:`~scvi.dataloaders.AnnDataLoader`.
    distributed_sampler
        Shard minibatches across processes (DDP) with scvi-tools' ``BatchDistributedSampler``.
    device
        Where minibatches are built: ``"cpu"`` (default) or a CUDA device holding the whole
        data (then no host-to-device copy happens during training).
    pin_memory
        Pin the CPU tensors (faster, asynchronous copies to a GPU).
    **kwargs
        Accepted for compatibility (``load_sparse_tensor``, ``data_and_attributes``, ...) and
        ignored.
    """

    def __init__(
        self,
        adata_manager: AnnDataManager,
        indices=None,
        batch_size: int = 128,
        shuffle: bool = False,
        drop_last: bool = False,
        distributed_sampler: bool = False,
        device: str | torch.device = "cpu",
        pin_memory: bool = False,
        drop_dataset_tail: bool = False,
        **kwargs,
    ):
        indices = cell_positions(indices, adata_manager.adata.n_obs)
        self.indices = indices
        bank = tensor_bank(adata_manager, device, pin_memory)
        dataset = _BankDataset(bank, indices)
        if distributed_sampler:
            sampler = BatchDistributedSampler(
                dataset,
                batch_size=batch_size,
                drop_last=drop_last,
                drop_dataset_tail=drop_dataset_tail,
                shuffle=shuffle,
            )
        else:
            order = RandomSampler(dataset) if shuffle else SequentialSampler(dataset)
            sampler = BatchSampler(order, batch_size=batch_size, drop_last=drop_last)
        # the sampler yields whole minibatches: no automatic batching, no worker processes
        super().__init__(
            dataset, sampler=sampler, batch_size=None, collate_fn=_identity, num_workers=0
        )


def _identity(batch):
    return batch


class InMemoryDataSplitter(DataSplitter):
    """scvi-tools' train/validation split with :class:`InMemoryDataLoader` loaders."""

    data_loader_cls = InMemoryDataLoader
