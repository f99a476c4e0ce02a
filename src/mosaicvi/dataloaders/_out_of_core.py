"""Minibatches of data that stay on disk: shuffled blocks of cells, read ahead in a thread.

Per-cell fields (batch, covariates, observed mask) are small and kept as tensors (a
:class:`~mosaicvi.dataloaders.TensorBank` without ``X``). The features are read from the
assembled matrix, a :class:`~mosaicvi.data.MosaicRows` over each modality's file or an
in-memory matrix, a *chunk* at a time:

- Training shuffles *blocks* of ``block_size`` consecutive cells (so each block is one slice
  read from HDF5 or zarr), groups ``blocks_per_chunk`` random blocks into a chunk and shuffles
  the cells of a chunk before cutting it into minibatches. A minibatch thus mixes cells from
  ``blocks_per_chunk`` places of the file; ``benchmarks/out_of_core.py`` measures what this
  costs against full shuffling.
- The next chunk is read ahead while the model trains on the current one. For HDF5 and zarr
  files the reading runs in a DataLoader worker process (``num_workers=1``): h5py and zarr
  hold the interpreter lock while they read and decompress, so a read from a thread of the
  training process stalls training whenever the disk is slow. The worker sends each
  minibatch's rows as CSR and the training process densifies them. Inside the reader, a
  thread reads the next chunk while the current one is cut into minibatches.
- Under DDP every process takes its own blocks (the same number of minibatches on each, a
  process with fewer cells repeating some of its own), so each process reads only its shard
  of the file.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import scipy.sparse as sp
import torch
import torch.distributed as dist
from scvi import REGISTRY_KEYS
from scvi.data import AnnDataManager
from scvi.dataloaders import DataSplitter
from torch.utils.data import DataLoader, IterableDataset

from mosaicvi.data._backed import assembled_matrix

from ._in_memory import TensorBank, _identity, cell_positions

# Lightning warns that __len__ of an IterableDataset may be wrong with several worker
# processes; this loader has at most one, where it is exact.
warnings.filterwarnings("ignore", message="Your `IterableDataset` has `__len__` defined")

#: consecutive cells read in one slice, unless the store asks for more (``block_cells``)
BLOCK_SIZE = 64
#: cells read and shuffled together as one chunk (64 blocks of 64 cells by default)
CHUNK_CELLS = 4096


def _process_group() -> tuple[int, int]:
    """``(rank, world_size)`` of this process (``(0, 1)`` outside distributed training)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _ChunkStream(IterableDataset):
    """Iterate minibatch dicts over ``indices`` of an assembled matrix, chunk by chunk."""

    def __init__(
        self,
        matrix,
        bank: TensorBank,
        indices: np.ndarray,
        batch_size: int,
        shuffle: bool,
        drop_last: bool,
        distributed: bool,
        block_size: int,
        blocks_per_chunk: int,
        seed: int,
    ):
        self.matrix, self.bank = matrix, bank
        # order matters only without shuffling (outputs follow ``indices``)
        self.indices = np.sort(indices) if shuffle else np.asarray(indices)
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last
        self.distributed = distributed
        self.block_size, self.blocks_per_chunk = block_size, blocks_per_chunk
        self.seed, self.epoch = seed, 0
        # set in the training process before a worker starts (a worker has no process group)
        self.process_group = (0, 1)

    # ---------------------------------------------------------------- the plan of an epoch
    def _cells_of_this_process(self, rng: np.random.Generator) -> np.ndarray:
        """Positions into ``indices`` this process visits this epoch, in visiting order."""
        n = len(self.indices)
        blocks = np.arange(0, n, self.block_size)
        if self.shuffle:
            blocks = rng.permutation(blocks)
        rank, world = self.process_group
        mine = blocks[rank::world]
        cells = [np.arange(b, min(b + self.block_size, n)) for b in mine]
        order = np.concatenate(cells) if cells else np.zeros(0, dtype=np.int64)
        if world > 1 and n:
            # DDP steps in lockstep, so every process gets as many cells as the most a process
            # can get; one short of that repeats its own first cells (as torch's
            # DistributedSampler pads), and every cell is still seen each epoch
            order = np.resize(
                order if len(order) else np.arange(n), self._cells_per_process(n, world)
            )
        return order

    def _cells_per_process(self, n: int, world: int) -> int:
        """Most cells any process can get: its share of blocks, rounded up, all of them full."""
        n_blocks = -(-n // self.block_size)
        return min(n, -(-n_blocks // world) * self.block_size)

    def _n_cells(self) -> int:
        n = len(self.indices)
        world = self.process_group[1]
        return n if world == 1 else self._cells_per_process(n, world)

    def __len__(self) -> int:
        n = self._n_cells()
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _chunks(self, order: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
        """Cells of each chunk, shuffled within the chunk when training."""
        chunk_cells = self.block_size * self.blocks_per_chunk
        chunks = [order[s : s + chunk_cells] for s in range(0, len(order), chunk_cells)]
        return [rng.permutation(c) for c in chunks] if self.shuffle else chunks

    # ---------------------------------------------------------------- reading
    def _read(self, positions: np.ndarray) -> sp.csr_matrix:
        return sp.csr_matrix(self.matrix[self.indices[positions]], dtype=np.float32)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        self.epoch += 1
        order = self._cells_of_this_process(rng)
        chunks = self._chunks(order, rng)
        n_batches = len(self)
        pending_rows, pending_x = np.zeros(0, dtype=np.int64), None
        emitted = 0
        with ThreadPoolExecutor(max_workers=1) as reader:
            future = reader.submit(self._read, chunks[0]) if chunks else None
            for i, chunk in enumerate(chunks):
                x = future.result()
                if i + 1 < len(chunks):  # read ahead while this chunk is trained on
                    future = reader.submit(self._read, chunks[i + 1])
                if pending_x is not None:
                    chunk = np.concatenate([pending_rows, chunk])
                    x = sp.vstack([pending_x, x], format="csr")
                n_full = len(chunk) // self.batch_size
                for b in range(n_full):
                    if emitted == n_batches:
                        return
                    span = slice(b * self.batch_size, (b + 1) * self.batch_size)
                    yield self._batch(chunk[span], x[span])
                    emitted += 1
                rest = slice(n_full * self.batch_size, None)
                pending_rows, pending_x = chunk[rest], x[rest] if len(chunk[rest]) else None
            if pending_x is not None and emitted < n_batches:
                yield self._batch(pending_rows, pending_x)

    def _batch(self, positions: np.ndarray, x: sp.csr_matrix) -> dict:
        """The minibatch's fields; its rows stay CSR (densified by the loader, see above)."""
        batch = self.bank.rows(self.indices[positions])
        batch[REGISTRY_KEYS.X_KEY] = x
        return batch


class OutOfCoreDataLoader(DataLoader):
    """Minibatches read from disk chunk by chunk (works on in-memory data too).

    Drop-in replacement of :class:`~scvi.dataloaders.AnnDataLoader` for data whose modalities
    stay on disk (a backed ``.h5mu`` or a zarr store, see :func:`mosaicvi.data.read_backed`).

    Parameters
    ----------
    adata_manager
        Registered (assembled) data.
    indices
        Cells to iterate over (all by default). Without shuffling they come in this order.
    batch_size, shuffle, drop_last
        As in :class:`~scvi.dataloaders.AnnDataLoader`.
    distributed_sampler
        Shard the cells across DDP processes, each reading only its blocks.
    block_size
        Consecutive cells read in one slice. Default: 64, or the store's ``block_cells``
        where it is larger (a SOMA array decompresses whole tiles of cells, so small blocks
        read most of their tiles in vain; see :class:`~mosaicvi.data.SomaRows`).
    blocks_per_chunk
        Blocks read together and shuffled as one chunk (1: block shuffling only). Default:
        4,096 cells' worth of blocks.
    seed
        Seed of the block order (default: torch's initial seed, the same on every DDP
        process when the run is seeded).
    num_workers
        0: read in a thread of this process; 1: in one worker process that stays up for the
        loader's lifetime. Default: 1 for HDF5 and zarr files (see above), 0 for data in
        memory and SOMA stores (TileDB reads release the interpreter lock, and its contexts
        must not cross a fork). One reader keeps ahead of training: it reads a chunk while
        the model trains on the one before.
    **kwargs
        Accepted for compatibility (``pin_memory``, ``load_sparse_tensor``, ...) and ignored.
    """

    def __init__(
        self,
        adata_manager: AnnDataManager,
        indices=None,
        batch_size: int = 128,
        shuffle: bool = False,
        drop_last: bool = False,
        distributed_sampler: bool = False,
        block_size: int | None = None,
        blocks_per_chunk: int | None = None,
        seed: int | None = None,
        num_workers: int | None = None,
        **kwargs,
    ):
        indices = cell_positions(indices, adata_manager.adata.n_obs)
        matrix = assembled_matrix(adata_manager.adata)
        if block_size is None:
            block_size = max(BLOCK_SIZE, int(getattr(matrix, "block_cells", BLOCK_SIZE)))
        if blocks_per_chunk is None:
            blocks_per_chunk = max(1, CHUNK_CELLS // max(1, block_size))
        if block_size < 1 or blocks_per_chunk < 1:
            raise ValueError(
                f"block_size and blocks_per_chunk must be >= 1, got {block_size}, "
                f"{blocks_per_chunk}."
            )
        if num_workers is None:
            num_workers = int(bool(getattr(matrix, "reads_in_worker_process", False)))
        if num_workers not in (0, 1):
            raise ValueError(
                f"num_workers must be 0 or 1, got {num_workers}: one reader process already "
                "reads ahead of training, and more would each stream the same cells."
            )
        self.indices = indices
        bank = TensorBank(adata_manager, skip=(REGISTRY_KEYS.X_KEY,))
        dataset = _ChunkStream(
            matrix,
            bank,
            indices,
            batch_size,
            shuffle,
            drop_last,
            distributed_sampler,
            block_size,
            blocks_per_chunk,
            int(torch.initial_seed() % 2**32) if seed is None else seed,
        )
        super().__init__(
            dataset,
            batch_size=None,
            collate_fn=_identity,
            num_workers=num_workers,
            persistent_workers=num_workers > 0,  # the worker keeps its epoch count
        )

    def _sync_process_group(self) -> None:
        if self.dataset.distributed:
            self.dataset.process_group = _process_group()

    def __len__(self) -> int:
        self._sync_process_group()
        return len(self.dataset)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        self._sync_process_group()
        for batch in super().__iter__():
            batch[REGISTRY_KEYS.X_KEY] = torch.from_numpy(batch[REGISTRY_KEYS.X_KEY].toarray())
            yield batch


class OutOfCoreDataSplitter(DataSplitter):
    """scvi-tools' train/validation split with :class:`OutOfCoreDataLoader` loaders."""

    data_loader_cls = OutOfCoreDataLoader
