"""MultiVAE behaviour on simulated data: posteriors, outputs, training, save/load."""

import numpy as np
import pandas as pd
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from sklearn.neighbors import KNeighborsClassifier

import mosaicvi as mv
from _simulated import trimodal_mosaic_with_covariates
from mosaicvi.model import MultiVAE

SMALL = {"n_hidden": 32, "n_latent": 8}


@pytest.fixture(scope="module")
def mosaic():
    return mv.data.simulate(
        n_cells=300, n_genes=80, n_proteins=15, n_batches=3, missing={"batch_2": ["adt"]}, seed=1
    )


@pytest.fixture(scope="module")
def trained(mosaic):
    MultiVAE.setup_mudata(mosaic, modalities=["rna", "adt"], batch_key="batch")
    model = MultiVAE(mosaic, **SMALL)
    model.train(max_epochs=60, batch_size=64, enable_progress_bar=False)
    return model


def test_cell_without_adt_gets_exactly_its_rna_only_posterior(trained, mosaic):
    lacks_adt = np.flatnonzero(~mosaic.obs_names.isin(mosaic["adt"].obs_names))
    paired = np.flatnonzero(mosaic.obs_names.isin(mosaic["adt"].obs_names))
    joint = trained.get_latent_representation(indices=lacks_adt)
    rna_only = trained.get_latent_representation(indices=lacks_adt, modality="rna")
    np.testing.assert_array_equal(joint, rna_only)
    # for paired cells the ADT expert does change the joint posterior
    assert not np.allclose(
        trained.get_latent_representation(indices=paired),
        trained.get_latent_representation(indices=paired, modality="rna"),
    )


def test_unobserved_modality_cannot_be_embedded_alone(trained, mosaic):
    with pytest.raises(ValueError, match="have none of the modalities"):
        trained.get_latent_representation(modality="adt")


def test_trained_latent_beats_untrained_and_chance(trained, mosaic):
    labels = mosaic.obs["cell_type"].to_numpy()

    def knn_accuracy(z):
        train = np.arange(len(z)) % 2 == 0
        clf = KNeighborsClassifier(15).fit(z[train], labels[train])
        return clf.score(z[~train], labels[~train])

    untrained = MultiVAE(mosaic, **SMALL)
    untrained.is_trained_ = True  # its random latent is the baseline (outputs need this flag)
    acc_trained = knn_accuracy(trained.get_latent_representation())
    acc_untrained = knn_accuracy(untrained.get_latent_representation())
    chance = pd.Series(labels).value_counts(normalize=True).max()
    assert acc_trained > 0.8
    assert acc_trained > chance + 0.3
    # a random network's latent is a random projection, which keeps much of the structure of
    # these simulated cell types (outputs run without dropout, so it is not blurred either);
    # how much training adds depends on the RNG state left by earlier tests (0.84-0.94 seen)
    assert acc_trained > acc_untrained
    history = trained.history["validation_loss"]["validation_loss"]
    assert history.iloc[-1] < 0.9 * history.iloc[0]


def test_each_loss_term_is_logged_by_name(trained):
    for key in [
        "reconstruction_loss_rna_train",
        "reconstruction_loss_adt_train",
        "kl_joint_train",
        "unimodal_loss_train",
        "mmd_train",
        "elbo_train",
        "validation_loss",
        "reconstruction_loss_adt_validation",
    ]:
        assert key in trained.history, key
        assert np.isfinite(trained.history[key].to_numpy(dtype=float)).all()
    assert (trained.history["mmd_train"].to_numpy(dtype=float) > 0).all()


class _ModeRecorder(Callback):
    def __init__(self):
        self.modes = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.modes.append(pl_module.module.training)


def test_second_train_call_runs_in_train_mode(mosaic):
    MultiVAE.setup_mudata(mosaic, modalities=["rna", "adt"], batch_key="batch")
    model = MultiVAE(mosaic, **SMALL)
    model.train(max_epochs=1, batch_size=128, enable_progress_bar=False)
    model.get_latent_representation()  # leaves the module in eval mode
    assert not model.module.training
    recorder = _ModeRecorder()
    model.train(max_epochs=1, batch_size=128, enable_progress_bar=False, callbacks=[recorder])
    assert recorder.modes and all(recorder.modes)


def test_imputation_output_shapes_and_library(trained, mosaic):
    proportions = trained.get_normalized_expression(modality="adt")
    assert list(proportions.columns) == list(mosaic["adt"].var_names)
    assert list(proportions.index) == list(mosaic.obs_names)
    np.testing.assert_allclose(proportions.sum(1), 1.0, rtol=1e-4)

    counts = trained.get_normalized_expression(modality="adt", library_size="latent")
    paired = mosaic["adt"].obs_names
    observed_totals = np.asarray(mosaic["adt"].X.sum(1)).ravel()
    np.testing.assert_allclose(counts.loc[paired].sum(1), observed_totals, rtol=1e-3)
    lacks = ~mosaic.obs_names.isin(paired)
    assert np.isfinite(counts[lacks].to_numpy()).all() and (counts[lacks].sum(1) > 0).all()

    scaled = trained.get_normalized_expression(modality="adt", library_size=1e4)
    np.testing.assert_allclose(scaled.to_numpy(), proportions.to_numpy() * 1e4, rtol=1e-4)

    samples = trained.get_normalized_expression(
        modality="adt", n_samples=3, return_mean=False, indices=np.arange(10)
    )
    assert samples.shape == (3, 10, mosaic["adt"].n_vars)
    assert not np.allclose(samples[0], samples[1])

    in_batch_0 = trained.get_normalized_expression(modality="rna", transform_batch="batch_0")
    own_batch = trained.get_normalized_expression(modality="rna")
    assert in_batch_0.shape == own_batch.shape
    assert not np.allclose(in_batch_0.to_numpy(), own_batch.to_numpy())
    with pytest.raises(ValueError, match="Pass `modality=`"):
        trained.get_normalized_expression()


def test_batch_that_never_measured_a_modality_is_decoded_with_the_measured_batches(trained, mosaic):
    # batch_2 has no protein: its cells' protein comes from the decoders of batch_0/batch_1
    batch = mosaic.obs["batch"].astype(str).to_numpy()
    in_2, in_0 = np.flatnonzero(batch == "batch_2"), np.flatnonzero(batch == "batch_0")
    default = trained.get_normalized_expression(modality="adt")
    measured = trained.get_normalized_expression(
        modality="adt", transform_batch=["batch_0", "batch_1"]
    )
    np.testing.assert_allclose(default.iloc[in_2], measured.iloc[in_2], rtol=1e-5, atol=1e-7)
    # cells of measured batches keep their own batch's decoder
    own = trained.get_normalized_expression(modality="adt", transform_batch="batch_0")
    np.testing.assert_allclose(default.iloc[in_0], own.iloc[in_0], rtol=1e-5, atol=1e-7)
    assert not np.allclose(default.iloc[in_2], own.iloc[in_2])
    # RNA was measured in every batch: nothing is substituted
    rna_default = trained.get_normalized_expression(modality="rna", indices=in_2)
    rna_own = trained.get_normalized_expression(
        modality="rna", indices=in_2, transform_batch="batch_2"
    )
    np.testing.assert_allclose(rna_default, rna_own, rtol=1e-5, atol=1e-7)


def test_save_load_round_trip_gives_identical_latents(trained, mosaic, tmp_path):
    trained.save(tmp_path / "model", overwrite=True)
    loaded = MultiVAE.load(tmp_path / "model", mosaic)
    np.testing.assert_array_equal(
        loaded.get_latent_representation(), trained.get_latent_representation()
    )
    np.testing.assert_array_equal(
        loaded.get_normalized_expression(modality="adt").to_numpy(),
        trained.get_normalized_expression(modality="adt").to_numpy(),
    )
    assert loaded.modality_specs == trained.modality_specs


def test_new_mudata_with_other_features_is_rejected(trained, mosaic):
    other = mosaic.copy()
    other.mod["adt"] = other["adt"][:, ::-1].copy()
    other.update()
    with pytest.raises(ValueError, match=r"features of modality 'adt'.*differ"):
        trained.get_latent_representation(other)


@pytest.mark.parametrize("likelihood", ["nb", "zinb", "poisson", "bernoulli", "normal"])
def test_every_likelihood_trains_and_imputes(likelihood):
    mdata = mv.data.simulate(
        n_cells=150, n_genes=40, n_proteins=10, n_batches=2, missing={"batch_1": ["adt"]}, seed=2
    )
    if likelihood == "normal":
        x = np.log1p(mdata["adt"].X)
        mdata["adt"].X = (x - x.mean(0)) / (x.std(0) + 1e-6)
    MultiVAE.setup_mudata(
        mdata, modalities=["rna", "adt"], batch_key="batch", likelihoods={"adt": likelihood}
    )
    model = MultiVAE(mdata, **SMALL)
    model.train(max_epochs=3, batch_size=64, enable_progress_bar=False)
    imputed = model.get_normalized_expression(modality="adt")
    assert imputed.shape == (mdata.n_obs, 10)
    assert np.isfinite(imputed.to_numpy()).all()
    if likelihood in ("nb", "poisson"):
        np.testing.assert_allclose(imputed.sum(1), 1.0, rtol=1e-4)
    if likelihood == "zinb":  # expected value (1 - pi) * proportion: below 1 in total
        assert (imputed.sum(1) < 1.0).all() and (imputed.sum(1) > 0).all()
    if likelihood == "bernoulli":
        assert ((imputed >= 0) & (imputed <= 1)).all().all()
    else:
        with pytest.raises(ValueError, match="library_size"):
            if likelihood == "normal":
                model.get_normalized_expression(modality="adt", library_size="latent")
            else:
                model.get_normalized_expression(modality="adt", library_size="bad")


@pytest.mark.parametrize(
    "options",
    [{"mixing": "moe"}, {"integration_loss": "marginal"}, {"integration_loss": None}],
)
def test_model_options_train(options, mosaic):
    MultiVAE.setup_mudata(mosaic, modalities=["rna", "adt"], batch_key="batch")
    model = MultiVAE(mosaic, **SMALL, **options)
    model.train(max_epochs=2, batch_size=128, enable_progress_bar=False)
    assert np.isfinite(model.get_latent_representation()).all()
    mmd = model.history["mmd_train"].to_numpy(dtype=float)
    assert (
        (mmd == 0).all() if options.get("integration_loss", "latent") is None else (mmd > 0).all()
    )


def test_three_modality_mosaic_with_covariates():
    mdata = trimodal_mosaic_with_covariates(n_cells=240, n_genes=50, n_proteins=10, n_peaks=80)
    MultiVAE.setup_mudata(
        mdata,
        modalities=["rna", "adt", "atac"],
        batch_key="batch",
        categorical_covariate_keys=["site"],
        continuous_covariate_keys=["depth"],
    )
    model = MultiVAE(mdata, **SMALL)
    model.train(max_epochs=2, batch_size=64, enable_progress_bar=False)
    assert model.get_latent_representation().shape == (240, 8)
    lacks_atac = np.flatnonzero(~mdata.obs_names.isin(mdata["atac"].obs_names))
    atac = model.get_normalized_expression(modality="atac", indices=lacks_atac)
    assert atac.shape == (len(lacks_atac), 80)
    assert torch.isfinite(torch.as_tensor(atac.to_numpy())).all()


def test_new_mudata_with_same_features_is_embedded_like_the_training_data(trained, mosaic):
    copy = mosaic.copy()
    np.testing.assert_allclose(
        trained.get_latent_representation(copy), trained.get_latent_representation(), atol=1e-5
    )
    separately_registered = mosaic.copy()
    separately_registered.mod["adt"] = separately_registered["adt"][:, ::-1].copy()
    separately_registered.update()
    MultiVAE.setup_mudata(separately_registered, modalities=["rna", "adt"], batch_key="batch")
    with pytest.raises(ValueError, match=r"features of modality 'adt'.*differ"):
        trained.get_latent_representation(separately_registered)
