"""Query mapping: prepare_query, load_query_data surgery, frozen reference, label transfer."""

import warnings

import mudata as md
import numpy as np
import pandas as pd
import pytest
import torch
from lightning.pytorch.callbacks import Callback

import mosaicvi as mv
from mosaicvi.base import IncompatibleReferenceError, transfer_reference_weights
from mosaicvi.model import MultiVAE

SMALL = {"n_hidden": 32, "n_latent": 8}


def _split(mdata, query_batches):
    """Reference = the other batches, query = ``query_batches``; both keep obs labels."""
    in_query = mdata.obs["batch"].isin(query_batches).to_numpy()
    return mdata[~in_query].copy(), mdata[in_query].copy()


def _only(mdata, modality):
    single = md.MuData({modality: mdata[modality].copy()})
    for column in ("batch", "cell_type"):
        single.obs[column] = mdata.obs.loc[single.obs_names, column].to_numpy()
    return single


def _accuracy(reference_model, reference, query_model, query):
    z_ref = reference_model.get_latent_representation()
    z_query = query_model.get_latent_representation()
    transferred = mv.tools.label_transfer(
        z_ref, reference.obs["cell_type"], z_query, reference_index=reference.obs_names
    )
    return float((transferred["label"].to_numpy() == query.obs["cell_type"].astype(str)).mean())


@pytest.fixture(scope="module")
def cite_sim():
    mdata = mv.data.simulate(n_cells=400, n_genes=80, n_proteins=15, n_batches=3, seed=5)
    reference, query = _split(mdata, ["batch_2"])
    MultiVAE.setup_mudata(reference, modalities=["rna", "adt"], batch_key="batch")
    model = MultiVAE(reference, **SMALL)
    model.train(max_epochs=60, batch_size=64, enable_progress_bar=False)
    return reference, query, model


def test_reference_weights_bit_identical_after_query_training(cite_sim):
    reference, query, model = cite_sim
    before = {k: v.detach().clone() for k, v in model.module.state_dict().items()}
    z_before = model.get_latent_representation()
    query_model = MultiVAE.load_query_data(query, model)
    # default optimizer settings plus weight decay: reference entries must still not move
    query_model.train(
        max_epochs=5,
        batch_size=32,
        early_stopping=False,
        enable_progress_bar=False,
        plan_kwargs={"weight_decay": 1e-2},
    )
    trained = query_model.module.state_dict()
    n_trainable = 0
    for name, old in before.items():
        new = trained[name]
        if new.shape == old.shape:
            assert torch.equal(new, old), name
        else:  # covariate columns appended: reference columns unchanged, new ones trained
            assert torch.equal(new[:, : old.shape[1]], old), name
            n_trainable += int((new[:, old.shape[1] :] != 0).sum())
    assert n_trainable > 0
    # the reference model itself is untouched and embeds its data exactly as the query model
    assert all(torch.equal(before[k], v) for k, v in model.module.state_dict().items())
    np.testing.assert_array_equal(query_model.get_latent_representation(reference), z_before)


def test_unfrozen_query_trains_reference_weights(cite_sim):
    reference, query, model = cite_sim
    query_model = MultiVAE.load_query_data(query, model, unfrozen=True)
    query_model.train(max_epochs=2, early_stopping=False, enable_progress_bar=False)
    weight = "decoders.0.head.scale.weight"
    assert not torch.equal(
        query_model.module.state_dict()[weight], model.module.state_dict()[weight]
    )


class _ModeRecorder(Callback):
    def __init__(self):
        self.modes = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.modes.append(pl_module.module.training)


def test_query_trains_in_train_mode_and_from_saved_reference(cite_sim, tmp_path):
    reference, query, model = cite_sim
    model.save(tmp_path / "reference", overwrite=True)
    query_model = MultiVAE.load_query_data(query, str(tmp_path / "reference"))
    assert not query_model.module.training
    recorder = _ModeRecorder()
    query_model.train(max_epochs=1, enable_progress_bar=False, callbacks=[recorder])
    assert recorder.modes and all(recorder.modes)
    np.testing.assert_array_equal(
        query_model.get_latent_representation(reference), model.get_latent_representation()
    )


@pytest.mark.parametrize("kept", ["rna", "adt"])
def test_unimodal_queries_map_near_their_cell_types(cite_sim, kept):
    reference, query, model = cite_sim
    single = _only(query, kept)
    query_model = MultiVAE.load_query_data(single, model)
    query_model.train(max_epochs=20, enable_progress_bar=False)
    chance = query.obs["cell_type"].value_counts(normalize=True).max()
    accuracy = _accuracy(model, reference, query_model, query)
    print(f"{kept}-only query label transfer {accuracy:.3f} (majority {chance:.3f})")
    assert accuracy > chance + (0.3 if kept == "rna" else 0.1)
    missing = "adt" if kept == "rna" else "rna"
    imputed = query_model.get_normalized_expression(modality=missing)
    assert imputed.shape == (query.n_obs, query[missing].n_vars)


def test_atac_only_query_maps_onto_multiome_reference():
    mdata = mv.data.simulate(
        n_cells=400, modalities=("rna", "atac"), n_genes=80, n_peaks=150, n_batches=3, seed=6
    )
    reference, query = _split(mdata, ["batch_2"])
    MultiVAE.setup_mudata(reference, modalities=["rna", "atac"], batch_key="batch")
    model = MultiVAE(reference, **SMALL)
    model.train(max_epochs=60, batch_size=64, enable_progress_bar=False)
    query_model = MultiVAE.load_query_data(_only(query, "atac"), model)
    query_model.train(max_epochs=20, enable_progress_bar=False)
    chance = query.obs["cell_type"].value_counts(normalize=True).max()
    accuracy = _accuracy(model, reference, query_model, query)
    print(f"ATAC-only query label transfer {accuracy:.3f} (majority {chance:.3f})")
    assert accuracy > chance + 0.15


# ---------------------------------------------------------------- prepare_query


def test_prepare_query_aligns_features_and_adds_missing_modality(cite_sim):
    _, query, model = cite_sim
    rna = query["rna"][:, ::-1].copy()  # reversed order
    rna = rna[:, 5:].copy()  # 5 reference genes missing
    extra = md.MuData({"rna": rna})
    extra.obs["batch"] = query.obs.loc[extra.obs_names, "batch"].to_numpy()
    snapshot = extra.copy()
    with pytest.warns(UserWarning, match="5 of 80 reference 'rna' features are missing"):
        aligned = mv.data.prepare_query(extra, model)
    assert list(aligned["rna"].var_names) == list(model.modality_var_names("rna"))
    assert aligned["adt"].n_obs == 0 and aligned["adt"].n_vars == 15
    gene = model.modality_var_names("rna")[10]
    np.testing.assert_array_equal(
        aligned["rna"][:, gene].X.toarray().ravel(), extra["rna"][:, gene].X.toarray().ravel()
    )
    absent = model.modality_var_names("rna")[-1]  # dropped by the slicing above
    assert aligned["rna"][:, absent].X.sum() == 0
    # the user's query is untouched
    assert list(extra["rna"].var_names) == list(snapshot["rna"].var_names)
    assert list(extra.mod) == ["rna"]


def test_prepare_query_warns_on_extra_features_and_modalities(cite_sim):
    _, query, model = cite_sim
    rna = query["rna"].copy()
    rna.var_names = [*rna.var_names[:-1], "novel_gene"]
    other = md.MuData({"rna": rna, "atac": query["rna"].copy()})
    other.obs["batch"] = query.obs["batch"].to_numpy()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mv.data.prepare_query(other, model)
    messages = " ".join(str(w.message) for w in caught)
    assert "Dropping query modalities ['atac']" in messages
    assert "Dropping 1 query 'rna' features" in messages


def test_prepare_query_rejects_low_overlap_and_unknown_modalities(cite_sim):
    _, query, model = cite_sim
    renamed = query["rna"].copy()
    renamed.var_names = [f"ENSG{i}" for i in range(renamed.n_vars)]
    low = md.MuData({"rna": renamed})
    with pytest.raises(ValueError, match="Only 0 of the reference's 80 'rna' features"):
        mv.data.prepare_query(low, model)
    unknown = md.MuData({"protein": query["adt"].copy()})
    with pytest.raises(ValueError, match="none of the reference's modalities"):
        mv.data.prepare_query(unknown, model)


def test_incompatible_reference_is_rejected(cite_sim):
    _, _, model = cite_sim
    state = model.module.state_dict()
    state.pop(next(iter(state)))
    with pytest.raises(IncompatibleReferenceError, match="different mosaicvi version"):
        transfer_reference_weights(state, model.module, [2])
    with pytest.raises(TypeError, match="trained MultiVAE"):
        MultiVAE.load_query_data(cite_sim[1], object())


def test_label_transfer_uncertainty():
    rng = np.random.default_rng(0)
    reference = np.concatenate([rng.normal(0, 0.1, (50, 2)), rng.normal(5, 0.1, (50, 2))])
    labels = ["a"] * 50 + ["b"] * 50
    query = np.array([[0.0, 0.0], [5.0, 5.0], [2.5, 2.5]])
    result = mv.tools.label_transfer(reference, labels, query, k=10)
    assert list(result["label"][:2]) == ["a", "b"]
    assert result["uncertainty"].iloc[0] < 1e-6 and result["uncertainty"].iloc[1] < 1e-6
    with pytest.raises(ValueError, match="dimensions"):
        mv.tools.label_transfer(reference, labels, query[:, :1])


def test_saved_and_reloaded_query_keeps_reference_frozen(cite_sim, tmp_path):
    reference, query, model = cite_sim
    query_model = MultiVAE.load_query_data(query, model)
    query_model.save(tmp_path / "query", overwrite=True)
    reloaded = MultiVAE.load(tmp_path / "query", query_model.mdata)
    reloaded.train(
        max_epochs=2,
        early_stopping=False,
        enable_progress_bar=False,
        plan_kwargs={"weight_decay": 1e-2},
    )
    trained = reloaded.module.state_dict()
    for name, old in model.module.state_dict().items():
        assert torch.equal(trained[name][..., : old.shape[-1]], old), name


def test_label_transfer_matches_a_labels_series_by_cell_name():
    rng = np.random.default_rng(1)
    reference = np.concatenate([rng.normal(0, 0.1, (30, 2)), rng.normal(5, 0.1, (30, 2))])
    names = pd.Index([f"cell_{i}" for i in range(60)])
    labels = pd.Series(["a"] * 30 + ["b"] * 30, index=names)
    shuffled = labels.sample(frac=1.0, random_state=0)  # same labels, another order
    query = np.array([[0.0, 0.0], [5.0, 5.0]])
    by_name = mv.tools.label_transfer(reference, shuffled, query, k=10, reference_index=names)
    assert list(by_name["label"]) == ["a", "b"]
    with pytest.raises(ValueError, match="reference_index"):
        mv.tools.label_transfer(reference, shuffled, query, k=10)
    with pytest.raises(ValueError, match="no label"):
        mv.tools.label_transfer(reference, shuffled[5:], query, k=10, reference_index=names)
    positional = mv.tools.label_transfer(reference, shuffled.to_numpy(), query, k=10)
    assert len(positional) == 2  # an array is read in the latent's order, as documented
