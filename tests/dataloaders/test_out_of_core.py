"""The out-of-core loader: every cell once per epoch, blocks read as slices, DDP shards."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scvi import REGISTRY_KEYS

import mosaicvi as mv
from mosaicvi.dataloaders import OutOfCoreDataLoader
from mosaicvi.dataloaders import _out_of_core as out_of_core

warnings.filterwarnings("ignore", category=UserWarning)
N_CELLS = 1000


@pytest.fixture(scope="module")
def manager(tmp_path_factory):
    """The registered data of a backed MuData (cell i's first RNA count is unique to it)."""
    mdata = mv.data.simulate(n_cells=N_CELLS, n_genes=30, n_proteins=5, n_batches=2, seed=0)
    for name in mdata.mod:
        mdata[name].layers.clear()
    rna = mdata["rna"].X.tolil()
    rna[:, 0] = np.arange(1, N_CELLS + 1)[:, None]  # tag each cell
    mdata["rna"].X = rna.tocsr()
    path = tmp_path_factory.mktemp("ooc") / "tagged.h5mu"
    mdata.write(path)
    backed = mv.data.read_backed(path)
    mv.model.MultiVAE.setup_mudata(backed, batch_key="batch")
    return mv.model.MultiVAE(backed).adata_manager


def _cells(batches) -> list[np.ndarray]:
    return [batch[REGISTRY_KEYS.X_KEY][:, 0].numpy().astype(int) - 1 for batch in batches]


def test_training_epochs_visit_every_cell_once_in_new_orders(manager):
    indices = np.random.default_rng(0).permutation(N_CELLS)[:900]
    loader = OutOfCoreDataLoader(
        manager, indices=indices, batch_size=128, shuffle=True, block_size=16, blocks_per_chunk=4
    )
    first, second = _cells(loader), _cells(loader)
    assert len(first) == len(loader) == 8
    for epoch in (first, second):
        seen = np.concatenate(epoch)
        assert sorted(seen) == sorted(indices)
        batch = next(iter(loader))  # the other registered fields follow the same cells
        assert batch[REGISTRY_KEYS.BATCH_KEY].shape == (128, 1)
    assert not np.array_equal(np.concatenate(first), np.concatenate(second))
    # a minibatch mixes cells of several blocks of the file
    assert len(np.unique(first[0] // 16)) >= 4


def test_other_fields_belong_to_the_same_cells(manager):
    loader = OutOfCoreDataLoader(manager, batch_size=100, shuffle=True, block_size=8)
    batch_codes = manager.get_from_registry(REGISTRY_KEYS.BATCH_KEY).ravel()
    for batch in loader:
        cells = batch[REGISTRY_KEYS.X_KEY][:, 0].numpy().astype(int) - 1
        np.testing.assert_array_equal(
            batch[REGISTRY_KEYS.BATCH_KEY].numpy().ravel(), batch_codes[cells]
        )


def test_without_shuffling_cells_come_in_the_order_asked(manager):
    indices = np.random.default_rng(1).permutation(N_CELLS)[:333]
    loader = OutOfCoreDataLoader(manager, indices=indices, batch_size=50, block_size=16)
    got = _cells(loader)
    np.testing.assert_array_equal(np.concatenate(got), indices)
    assert [len(b) for b in got] == [50] * 6 + [33]
    dropped = OutOfCoreDataLoader(manager, indices=indices, batch_size=50, drop_last=True)
    assert len(dropped) == 6 and len(_cells(dropped)) == 6


@pytest.mark.parametrize("n_train", [1000, 937, 64])
def test_ddp_processes_read_disjoint_shards_of_equal_length_covering_every_cell(
    manager, monkeypatch, n_train
):
    indices = np.arange(n_train)
    shards = []
    for rank in range(3):
        monkeypatch.setattr(out_of_core, "_process_group", lambda rank=rank: (rank, 3))
        loader = OutOfCoreDataLoader(
            manager,
            indices=indices,
            batch_size=32,
            shuffle=True,
            distributed_sampler=True,
            block_size=16,
            seed=7,
        )
        batches = _cells(loader)
        assert len(batches) == len(loader)
        shards.append(np.concatenate(batches) if batches else np.zeros(0, int))
    sizes = {len(s) for s in shards}
    assert len(sizes) == 1  # lockstep: every process the same number of cells
    assert set(np.concatenate(shards)) == set(indices)  # every cell seen each epoch
    for rank, shard in enumerate(shards):  # a short process repeats its own cells only
        others = np.concatenate([s for r, s in enumerate(shards) if r != rank])
        own = np.unique(shard)
        if len(own) < n_train:
            assert not np.isin(own, others).any() or len(own) == 0
        assert len(shard) - len(own) <= 2 * 16  # at most about two blocks repeated


def test_bad_block_sizes_are_rejected(manager):
    with pytest.raises(ValueError, match="block_size"):
        OutOfCoreDataLoader(manager, block_size=0)


def test_in_memory_loading_of_backed_data_names_the_fix(manager):
    from mosaicvi.dataloaders import InMemoryDataLoader

    with pytest.raises(ValueError, match="out_of_core"):
        InMemoryDataLoader(manager)


def test_files_are_read_in_one_worker_process_with_the_same_cells_as_in_a_thread(manager):
    import pickle

    from mosaicvi.data._backed import DiskCSR, assembled_matrix

    threaded = OutOfCoreDataLoader(manager, batch_size=64, shuffle=True, seed=3, num_workers=0)
    in_worker = OutOfCoreDataLoader(manager, batch_size=64, shuffle=True, seed=3)
    assert in_worker.num_workers == 1 and in_worker.persistent_workers
    for _ in range(2):  # the worker keeps the epoch count: a new order each epoch
        for a, b in zip(threaded, in_worker, strict=True):
            for key in a:
                np.testing.assert_array_equal(a[key].numpy(), b[key].numpy())
    # a reader of an HDF5 file opens it again after pickling (DDP, spawned workers)
    rows = assembled_matrix(manager.adata)
    disk = next(s for s in rows.sources if isinstance(s, DiskCSR))
    again = pickle.loads(pickle.dumps(disk))
    np.testing.assert_array_equal(again[5:40].toarray(), disk[5:40].toarray())
    with pytest.raises(ValueError, match="num_workers must be 0 or 1"):
        OutOfCoreDataLoader(manager, num_workers=2)


def test_data_in_memory_is_read_in_this_process(manager):
    import scipy.sparse as sp

    from mosaicvi.data import MosaicRows
    from mosaicvi.data._backed import assembled_matrix

    on_disk = assembled_matrix(manager.adata)
    in_memory = sp.random(N_CELLS, 4, density=0.5, format="csr", random_state=0)
    assert on_disk.reads_in_worker_process  # CSR rna and dense adt: both reopen by name
    assert not MosaicRows([in_memory], [None], N_CELLS).reads_in_worker_process
    mixed = MosaicRows([*on_disk.sources, in_memory], [None, None, None], N_CELLS)
    assert mixed.reads_in_worker_process  # the in-memory part is inherited by the worker
