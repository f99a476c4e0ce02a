"""CLUE: loss composition and ablations, outputs, save/load, query mapping, real-data matching."""

import mudata as md
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback

import mosaicvi as mv
from _simulated import trimodal_mosaic_with_covariates
from mosaicvi.metrics import foscttm
from mosaicvi.model import CLUE, MultiVAE

SMALL = {"n_hidden": 32, "n_latent": 6}
TERMS = {
    "self_weight": "self_elbo",
    "cross_weight": "cross_elbo",
    "alignment_weight": "alignment_loss",
    "adversarial_weight": "adversarial_loss",
}


@pytest.fixture(scope="module")
def mosaic():
    return mv.data.simulate(
        n_cells=300, n_genes=60, n_proteins=12, n_batches=3, missing={"batch_2": ["adt"]}, seed=1
    )


@pytest.fixture(scope="module")
def trained(mosaic):
    CLUE.setup_mudata(mosaic, modalities=["rna", "adt"], batch_key="batch")
    model = CLUE(mosaic, **SMALL)
    model.train(max_epochs=15, batch_size=64, enable_progress_bar=False)
    return model


def _batch(model, indices=None):
    loader = model._make_data_loader(adata=model.adata, indices=indices, batch_size=400)
    return next(iter(loader))


def _loss(module, batch, seed=0):
    torch.manual_seed(seed)
    with torch.no_grad():
        _, _, out = module(batch, loss_kwargs={"kl_weight": 0.5})
    return out.loss.item(), {k: float(v) for k, v in out.extra_metrics.items()}


# ---------------------------------------------------------------- loss composition


def test_loss_is_the_weighted_sum_of_the_logged_terms(trained):
    module = trained.module
    module.eval()
    loss, terms = _loss(module, _batch(trained))
    weights = {name: getattr(module, name) for name in TERMS}
    assert all(w > 0 for w in weights.values())
    expected = sum(weights[w] * terms[t] for w, t in TERMS.items()) + terms["library_loss"]
    assert loss == pytest.approx(expected, rel=1e-5)
    for term in TERMS.values():
        assert terms[term] != 0.0, term


def test_discriminator_terms_equal_selecting_the_observed_latents(trained):
    # the mask-weighted (sync-free) form equals cross-entropy over the observed latents only
    import torch.nn.functional as F

    module = trained.module
    module.eval()
    batch = _batch(trained)
    with torch.no_grad():
        inference = module.inference(**module._get_inference_input(batch))
        loss, accuracy = module.discriminator_loss(inference)
        observed = inference["observed"]
        cells, modality = observed.nonzero(as_tuple=True)
        logits = module.discriminator(inference["modality_z"][modality, cells])
    assert observed.sum() < observed.numel()  # the batch holds cells without protein
    torch.testing.assert_close(loss, F.cross_entropy(logits, modality))
    torch.testing.assert_close(accuracy, (logits.argmax(-1) == modality).float().mean())


@pytest.mark.parametrize("weight", list(TERMS))
def test_each_term_can_be_switched_off(trained, weight):
    module = trained.module
    module.eval()
    batch = _batch(trained)
    full_loss, full = _loss(module, batch)
    original = getattr(module, weight)
    try:
        setattr(module, weight, 0.0)
        loss, terms = _loss(module, batch)  # same seed: same latent samples
    finally:
        setattr(module, weight, original)
    assert terms[TERMS[weight]] == 0.0
    assert loss == pytest.approx(full_loss - original * full[TERMS[weight]], rel=1e-5)
    for other in set(TERMS.values()) - {TERMS[weight]}:  # the other terms are unchanged
        assert terms[other] == pytest.approx(full[other], rel=1e-5, abs=1e-6), other


def test_cross_and_alignment_terms_use_paired_cells_only(trained, mosaic):
    lacks_adt = np.flatnonzero(~mosaic.obs_names.isin(mosaic["adt"].obs_names))
    trained.module.eval()
    _, terms = _loss(trained.module, _batch(trained, lacks_adt))
    assert terms["cross_elbo"] == 0.0 and terms["alignment_loss"] == 0.0
    assert terms["self_elbo"] > 0 and terms["reconstruction_loss_adt"] == 0.0


@pytest.mark.parametrize("off", list(TERMS))
def test_ablated_model_trains_and_logs_zero_for_the_term(mosaic, off):
    CLUE.setup_mudata(mosaic, modalities=["rna", "adt"], batch_key="batch")
    model = CLUE(mosaic, **SMALL, **{off: 0.0})
    model.train(max_epochs=2, batch_size=128, enable_progress_bar=False)
    assert (model.history[f"{TERMS[off]}_train"].to_numpy(dtype=float) == 0).all()
    assert np.isfinite(model.get_latent_representation()).all()


def test_invalid_options_are_rejected(mosaic):
    CLUE.setup_mudata(mosaic, modalities=["rna", "adt"], batch_key="batch")
    with pytest.raises(ValueError, match="combine"):
        CLUE(mosaic, combine="sum")
    with pytest.raises(ValueError, match="alignment"):
        CLUE(mosaic, alignment="l1")
    with pytest.raises(ValueError, match=">= 0"):
        CLUE(mosaic, cross_weight=-1.0)


# ---------------------------------------------------------------- outputs


def test_embedding_has_one_subspace_per_modality(trained, mosaic):
    z = trained.get_latent_representation()
    assert z.shape == (mosaic.n_obs, 2 * SMALL["n_latent"])
    lacks_adt = np.flatnonzero(~mosaic.obs_names.isin(mosaic["adt"].obs_names))
    np.testing.assert_array_equal(
        trained.get_latent_representation(indices=lacks_adt),
        trained.get_latent_representation(indices=lacks_adt, modality="rna"),
    )
    paired = np.flatnonzero(mosaic.obs_names.isin(mosaic["adt"].obs_names))
    z_adt = trained.get_latent_representation(indices=paired, modality="adt")
    assert z_adt.shape == (len(paired), 2 * SMALL["n_latent"])
    assert not np.allclose(z_adt, trained.get_latent_representation(indices=paired))
    with pytest.raises(ValueError, match="have none of the modalities"):
        trained.get_latent_representation(modality="adt")


def test_history_has_every_term_and_discriminator_metrics(trained):
    for key in [
        "train_loss",
        "validation_loss",
        "elbo_train",
        "elbo_validation",
        "self_elbo_train",
        "cross_elbo_train",
        "alignment_loss_train",
        "adversarial_loss_validation",
        "reconstruction_loss_rna_train",
        "cross_reconstruction_adt_train",
        "discriminator_accuracy_train",
        "discriminator_step_loss_train",
    ]:
        assert key in trained.history, key
        assert np.isfinite(trained.history[key].to_numpy(dtype=float)).all(), key


def test_imputation_with_observed_and_predicted_library(trained, mosaic):
    proportions = trained.get_normalized_expression(modality="adt")
    assert list(proportions.columns) == list(mosaic["adt"].var_names)
    np.testing.assert_allclose(proportions.sum(1), 1.0, rtol=1e-4)
    counts = trained.get_normalized_expression(modality="adt", library_size="latent")
    paired = mosaic["adt"].obs_names
    np.testing.assert_allclose(
        counts.loc[paired].sum(1), np.asarray(mosaic["adt"].X.sum(1)).ravel(), rtol=1e-3
    )
    lacks = ~mosaic.obs_names.isin(paired)
    assert np.isfinite(counts[lacks].to_numpy()).all() and (counts[lacks].sum(1) > 0).all()
    samples = trained.get_normalized_expression(
        modality="rna", n_samples=3, return_mean=False, indices=np.arange(10)
    )
    assert samples.shape == (3, 10, mosaic["rna"].n_vars)
    from_rna = trained.get_normalized_expression(
        modality="adt", indices=np.flatnonzero(~lacks), from_modalities="rna"
    )
    assert from_rna.shape == (int((~lacks).sum()), mosaic["adt"].n_vars)


@pytest.mark.parametrize("likelihood", ["nb", "zinb", "poisson", "bernoulli", "normal"])
@pytest.mark.parametrize("combine", ["poe", "mean"])
def test_every_likelihood_and_combination_trains_and_imputes(likelihood, combine):
    mdata = mv.data.simulate(
        n_cells=120, n_genes=30, n_proteins=8, n_batches=2, missing={"batch_1": ["adt"]}, seed=2
    )
    if likelihood == "normal":
        x = np.log1p(mdata["adt"].X)
        mdata["adt"].X = (x - x.mean(0)) / (x.std(0) + 1e-6)
    CLUE.setup_mudata(
        mdata, modalities=["rna", "adt"], batch_key="batch", likelihoods={"adt": likelihood}
    )
    model = CLUE(mdata, **SMALL, combine=combine, alignment="cosine")
    model.train(max_epochs=2, batch_size=64, enable_progress_bar=False)
    imputed = model.get_normalized_expression(modality="adt")
    assert imputed.shape == (mdata.n_obs, 8)
    assert np.isfinite(imputed.to_numpy()).all()
    if likelihood in ("nb", "poisson"):
        np.testing.assert_allclose(imputed.sum(1), 1.0, rtol=1e-4)
    if likelihood in ("nb", "zinb", "poisson"):
        counts = model.get_normalized_expression(modality="adt", library_size="latent")
        assert np.isfinite(counts.to_numpy()).all()
    if likelihood == "bernoulli":
        assert ((imputed >= 0) & (imputed <= 1)).all().all()


def test_three_modality_mosaic_with_covariates_and_clipping():
    mdata = trimodal_mosaic_with_covariates(n_cells=180, n_genes=40, n_proteins=8, n_peaks=60)
    CLUE.setup_mudata(
        mdata,
        modalities=["rna", "adt", "atac"],
        batch_key="batch",
        categorical_covariate_keys=["site"],
        continuous_covariate_keys=["depth"],
    )
    model = CLUE(mdata, n_hidden=32, n_latent=4)
    # gradient_clip_val given to the trainer is moved into the manual-optimisation plan
    model.train(max_epochs=2, batch_size=64, enable_progress_bar=False, gradient_clip_val=1.0)
    assert model.get_latent_representation().shape == (180, 12)
    lacks_atac = np.flatnonzero(~mdata.obs_names.isin(mdata["atac"].obs_names))
    atac = model.get_normalized_expression(modality="atac", indices=lacks_atac)
    assert atac.shape == (len(lacks_atac), 60) and np.isfinite(atac.to_numpy()).all()


class _ModeRecorder(Callback):
    def __init__(self):
        self.modes = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.modes.append(pl_module.module.training)


def test_second_train_call_runs_in_train_mode(trained):
    trained.get_latent_representation()
    assert not trained.module.training
    recorder = _ModeRecorder()
    before = trained.module.discriminator.net[0].weight.detach().clone()
    trained.train(max_epochs=1, batch_size=128, enable_progress_bar=False, callbacks=[recorder])
    assert recorder.modes and all(recorder.modes)
    assert not torch.equal(before, trained.module.discriminator.net[0].weight)


# ---------------------------------------------------------------- save/load and query mapping


def test_save_load_round_trip_keeps_discriminator_and_outputs(trained, mosaic, tmp_path):
    trained.save(tmp_path / "model", overwrite=True)
    loaded = CLUE.load(tmp_path / "model", mosaic)
    for name, value in trained.module.state_dict().items():
        assert torch.equal(loaded.module.state_dict()[name], value), name
    assert any(k.startswith("discriminator.") for k in loaded.module.state_dict())
    np.testing.assert_array_equal(
        loaded.get_latent_representation(modality="rna"),
        trained.get_latent_representation(modality="rna"),
    )
    np.testing.assert_array_equal(
        loaded.get_normalized_expression(modality="adt").to_numpy(),
        trained.get_normalized_expression(modality="adt").to_numpy(),
    )
    with pytest.raises(ValueError, match="not a MultiVAE"):
        MultiVAE.load(tmp_path / "model", mosaic)


def test_query_training_keeps_reference_weights_bit_identical():
    mdata = mv.data.simulate(n_cells=300, n_genes=60, n_proteins=12, n_batches=3, seed=5)
    in_query = mdata.obs["batch"].isin(["batch_2"]).to_numpy()
    reference, query = mdata[~in_query].copy(), mdata[in_query].copy()
    rna_only = md.MuData({"rna": query["rna"].copy()})
    rna_only.obs["batch"] = query.obs["batch"].to_numpy()
    CLUE.setup_mudata(reference, modalities=["rna", "adt"], batch_key="batch")
    model = CLUE(reference, **SMALL)
    model.train(max_epochs=5, batch_size=64, enable_progress_bar=False)
    before = {k: v.detach().clone() for k, v in model.module.state_dict().items()}
    z_before = model.get_latent_representation()
    for q in (query, rna_only):
        query_model = CLUE.load_query_data(q, model)
        query_model.train(
            max_epochs=3,
            batch_size=32,
            enable_progress_bar=False,
            plan_kwargs={"weight_decay": 1e-2},
        )
        state = query_model.module.state_dict()
        n_trained = 0
        for name, old in before.items():
            new = state[name]
            if new.shape == old.shape:
                assert torch.equal(new, old), name
            else:
                assert torch.equal(new[:, : old.shape[1]], old), name
                n_trained += int((new[:, old.shape[1] :] != 0).sum())
        assert n_trained > 0
        np.testing.assert_array_equal(query_model.get_latent_representation(reference), z_before)
    imputed = query_model.get_normalized_expression(modality="adt")
    assert imputed.shape == (query.n_obs, 12)


# ---------------------------------------------------------------- real paired CITE-seq


@pytest.fixture(scope="module")
def bmmc_cite(shared_data_file):
    path = shared_data_file("neurips2021_bmmc_cite_600.h5mu")
    md.set_options(pull_on_update=False)
    mdata = md.read_h5mu(path)
    mdata.obs["batch"] = mdata.obs["batch"].astype(str)
    return mdata


@pytest.mark.slow
def test_discriminator_accuracy_moves_toward_chance(bmmc_cite):
    CLUE.setup_mudata(bmmc_cite, modalities=["rna", "adt"], batch_key="batch")
    # adversarial term alone (no alignment loss), so the discriminator has something to find
    model = CLUE(bmmc_cite, alignment_weight=0.0, adversarial_weight=2.0)
    model.train(
        max_epochs=30,
        enable_progress_bar=False,
        plan_kwargs={"n_steps_discriminator": 3},
    )
    accuracy = model.history["discriminator_accuracy_train"].to_numpy(dtype=float).ravel()
    early, late = accuracy[1:6].max(), accuracy[-5:].mean()
    print(f"discriminator accuracy: early max {early:.3f}, last 5 epochs {late:.3f}")
    assert early > 0.85
    assert late < early - 0.1
    assert abs(late - 0.5) < abs(early - 0.5)


@pytest.mark.slow
def test_rna_and_adt_latents_match_paired_cells(bmmc_cite):
    epochs = 40
    CLUE.setup_mudata(bmmc_cite, modalities=["rna", "adt"], batch_key="batch")
    clue = CLUE(bmmc_cite)
    clue.train(max_epochs=epochs, enable_progress_bar=False)
    MultiVAE.setup_mudata(bmmc_cite, modalities=["rna", "adt"], batch_key="batch")
    multivae = MultiVAE(bmmc_cite)
    multivae.train(max_epochs=epochs, enable_progress_bar=False, early_stopping=False)

    def score(model):
        return foscttm(
            model.get_latent_representation(modality="rna"),
            model.get_latent_representation(modality="adt"),
        )

    f_clue, f_multivae = score(clue), score(multivae)
    print(f"FOSCTTM CLUE {f_clue:.4f}, MultiVAE {f_multivae:.4f}")
    assert f_clue < 0.15
    assert f_clue <= 1.2 * f_multivae + 0.01
