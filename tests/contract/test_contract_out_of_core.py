"""Contract: a MuData kept on disk (backed .h5mu) trains, embeds, imputes, saves and maps queries.

The model reads the same numbers from the file as from memory, so every output of a model on the
backed MuData equals its output on the same MuData in memory.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

import mosaicvi as mv


def _digest(path) -> str:
    return hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest()


def _write(mdata, path):
    """``mdata`` written with counts in X only (a backed file serves X from disk)."""
    mdata = mdata.copy()
    for mod in mdata.mod.values():
        mod.layers.clear()
    mdata.obsm.clear()
    mdata.write(path)
    return path


def test_backed_mudata_trains_embeds_imputes_saves_and_maps(method, contract, tmp_path):
    case = contract.build("mosaic", seed=11, cell_prefix="ooc_")
    path = _write(case.mdata, tmp_path / "reference.h5mu")
    digest = _digest(path)
    backed = mv.data.read_backed(path)
    contract.setup(method, backed)
    model = contract.make_model(method, backed)
    contract.fit(model, contract.SHAPES["mosaic"]["epochs"], 32)
    assert model.data_loader_ == "out_of_core"
    assert model.trainer.train_dataloader.num_workers == 1  # the file is read in a worker

    # trained from disk, the latent separates cell types
    labels = case.mdata.obs["cell_type"].astype(str).to_numpy()
    z = model.get_latent_representation()
    accuracy = contract.knn_accuracy(z, labels)
    assert accuracy > contract.majority_rate(labels) + 0.3, accuracy
    # the same model reads the same numbers from memory
    memory = md_in_memory(case.mdata)
    contract.setup(method, memory)
    np.testing.assert_allclose(model.get_latent_representation(memory), z, atol=1e-5)

    if hasattr(model, "get_normalized_expression"):
        hidden = case.hidden("adt")
        indices = np.flatnonzero(case.mdata.obs_names.isin(hidden))
        written = model.get_normalized_expression(
            modality="adt", indices=indices, out=tmp_path / "adt.h5ad"
        )
        assert written.isbacked and written.shape == (len(hidden), case.mdata["adt"].n_vars)
        expected = model.get_normalized_expression(memory, modality="adt", indices=indices)
        np.testing.assert_allclose(np.asarray(written.X[:]), expected.to_numpy(), rtol=1e-5)

    model.save(tmp_path / "model", overwrite=True)
    loaded = method.model_class().load(tmp_path / "model", backed)
    np.testing.assert_allclose(loaded.get_latent_representation(), z, atol=1e-5)

    # an RNA-only query of a new batch, itself on disk
    query = case.truth[case.truth.obs["batch"] == "batch_2"]
    query = contract.rebuild({"rna": query["rna"].copy()}, query.obs.copy())
    query.obs["batch"] = "ooc_new_batch"
    query_backed = mv.data.read_backed(_write(query, tmp_path / "query.h5mu"))
    reference_state = {k: v.clone() for k, v in model.module.state_dict().items()}
    query_model = method.model_class().load_query_data(query_backed, model)
    contract.fit(query_model, contract.QUERY_EPOCHS["query"], 32)
    assert query_model.data_loader_ == "out_of_core"
    assert query_model.get_latent_representation().shape == (query.n_obs, z.shape[1])
    for name, value in model.module.state_dict().items():
        assert torch.equal(value, reference_state[name]), name

    backed.file.close()
    assert _digest(path) == digest  # the user's file is only read


def md_in_memory(mdata):
    """A fresh in-memory copy of ``mdata`` (what ``mdata.to_memory()`` gives for a file)."""
    return mdata.copy()


def test_soma_experiment_trains_with_an_obs_filter_and_maps_a_query(method, contract, tmp_path):
    """A SOMA Experiment (one measurement per modality) is a store like a backed file."""
    import pytest

    pytest.importorskip("tiledbsoma", reason="tiledbsoma is not installed (mosaicvi[soma])")
    case = contract.build("mosaic", seed=13, cell_prefix="soma_")
    mdata = case.mdata.copy()
    batch = mdata.obs["batch"].astype(str).to_numpy()
    new = (batch == "batch_1") & (np.arange(mdata.n_obs) % 2 == 1)
    mdata.obs["batch"] = np.where(new, "soma_new_batch", batch)
    uri = mv.data.write_soma(mdata, tmp_path / "experiment")

    reference = mv.data.read_soma(uri, obs_value_filter="batch != 'soma_new_batch'")
    assert reference.n_obs == int((~new).sum())
    for key in reference.mod:  # the values setup validates are the cells' own counts
        stored = np.concatenate(list(reference[key].X.stored_values(chunk_cells=50)))
        expected = contract.dense(mdata[key][reference[key].obs_names].X)
        np.testing.assert_allclose(stored.sum(), expected.sum(), rtol=1e-6)
        assert len(stored) == np.count_nonzero(expected)
    contract.setup(method, reference)
    model = contract.make_model(method, reference)
    contract.fit(model, contract.SHAPES["mosaic"]["epochs"], 32)
    assert model.data_loader_ == "out_of_core"
    assert model.trainer.train_dataloader.num_workers == 0  # TileDB reads in a thread
    labels = mdata.obs.loc[reference.obs_names, "cell_type"].astype(str).to_numpy()
    z = model.get_latent_representation()
    assert contract.knn_accuracy(z, labels) > contract.majority_rate(labels) + 0.3
    memory = mdata[reference.obs_names].copy()  # the same cells, read into memory
    contract.setup(method, memory)
    np.testing.assert_allclose(model.get_latent_representation(memory), z, atol=1e-5)

    # an RNA-only query of a new batch, straight from the same store
    query = mv.data.read_soma(uri, ["rna"], obs_value_filter="batch == 'soma_new_batch'")
    reference_state = {k: v.clone() for k, v in model.module.state_dict().items()}
    query_model = method.model_class().load_query_data(query, model)
    contract.fit(query_model, contract.QUERY_EPOCHS["query"], 32)
    assert query_model.get_latent_representation().shape == (int(new.sum()), z.shape[1])
    for name, value in model.module.state_dict().items():
        assert torch.equal(value, reference_state[name]), name
