"""Contract: latent representations and imputation of every registered model; output errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

# Margins over the majority-class rate of a 15-NN classifier on the latent. Measured (MultiVAE,
# CLUE, JAE; seed 0): joint latent 0.77-1.00 vs majority 0.26-0.30; one modality 0.56-0.99.
JOINT_MARGIN = 0.25
MODALITY_MARGIN = 0.15
# Imputation of held-out cells: pseudo-bulk correlation with the truth (see
# ``pseudobulk_correlation`` in conftest.py). Measured: trained 0.34 (MultiVAE, ATAC) to 0.93,
# untrained (random) models of the same classes -0.08 to 0.21.
MIN_IMPUTATION_R = 0.25
MIN_GAIN_OVER_UNTRAINED = 0.15


def _labels(mdata, positions=None) -> np.ndarray:
    labels = mdata.obs["cell_type"].astype(str).to_numpy()
    return labels if positions is None else labels[positions]


# ------------------------------------------------------------------ latent
def test_latent_joint_and_per_modality_shapes_are_finite(method, trained, shape):
    run = trained(method, shape)
    model, case = run.model, run.case
    z = model.get_latent_representation()
    assert isinstance(z, np.ndarray) and z.ndim == 2
    assert z.shape[0] == case.mdata.n_obs and z.shape[1] > 0
    assert np.isfinite(z).all()
    subset = np.arange(0, case.mdata.n_obs, 7)
    np.testing.assert_allclose(
        model.get_latent_representation(indices=subset), z[subset], atol=1e-5
    )
    for name in case.mdata.mod:
        has = case.observed_positions(name)
        z_mod = model.get_latent_representation(indices=has, modality=name)
        assert z_mod.shape == (len(has), z.shape[1]), name
        assert np.isfinite(z_mod).all(), name
    # the joint embedding of a cell with several modalities uses more than one of them
    observed = np.stack(
        [case.mdata.obs_names.isin(case.mdata[m].obs_names) for m in case.mdata.mod], 1
    )
    for k, name in enumerate(case.mdata.mod):
        several = np.flatnonzero(observed[:, k] & (observed.sum(1) > 1))
        assert len(several), name
        assert not np.allclose(
            model.get_latent_representation(indices=several),
            model.get_latent_representation(indices=several, modality=name),
        ), name


def test_trained_latent_separates_cell_types(method, trained, contract, shape):
    run = trained(method, shape)
    model, mdata = run.model, run.case.mdata
    labels = _labels(mdata)
    accuracy = contract.knn_accuracy(model.get_latent_representation(), labels)
    chance = contract.majority_rate(labels)
    print(f"{method.name} {shape} joint: kNN {accuracy:.2f} (majority {chance:.2f})")
    assert accuracy > chance + JOINT_MARGIN, f"joint kNN {accuracy:.2f}, majority {chance:.2f}"
    for name in mdata.mod:
        has = run.case.observed_positions(name)
        z = model.get_latent_representation(indices=has, modality=name)
        accuracy = contract.knn_accuracy(z, labels[has])
        chance = contract.majority_rate(labels[has])
        print(f"{method.name} {shape} {name}: kNN {accuracy:.2f} (majority {chance:.2f})")
        assert accuracy > chance + MODALITY_MARGIN, (
            f"{name}-only kNN {accuracy:.2f}, majority {chance:.2f}"
        )


# ------------------------------------------------------------------ imputation
def test_every_modality_is_imputed_for_every_cell(method, trained, contract, shape):
    run = trained(method, shape)
    model, mdata = run.model, run.case.mdata
    likelihoods = {spec.name: spec.likelihood for spec in model.modality_specs}
    for name in mdata.mod:
        values = model.get_normalized_expression(modality=name)
        assert isinstance(values, pd.DataFrame), name
        assert list(values.columns) == list(mdata[name].var_names), name
        assert list(values.index) == list(mdata.obs_names), name  # cells lacking it included
        x = values.to_numpy()
        assert np.isfinite(x).all(), name
        if likelihoods[name] in contract.COUNT_LIKELIHOODS:
            assert (x >= 0).all(), name
            scaled = model.get_normalized_expression(modality=name, library_size=1e4)
            np.testing.assert_allclose(scaled.to_numpy(), 1e4 * x, rtol=1e-4, atol=1e-6)


def test_imputation_of_hidden_cells_follows_the_held_out_truth(
    method, trained, contract, mosaic_shape
):
    shape = mosaic_shape
    run = trained(method, shape)
    model, case = run.model, run.case
    contract.setup(method, case.mdata)  # other tests may have set up many MuData since
    untrained = contract.make_model(method, case.mdata)  # a random model of the same class
    untrained.is_trained_ = True  # its random outputs are the baseline (outputs need this flag)
    checked = []
    for name in case.mdata.mod:
        hidden = case.hidden(name)
        if len(hidden) == 0:
            continue
        truth = contract.dense(case.truth[name][hidden].X)
        groups = case.truth.obs.loc[hidden, "cell_type"].astype(str).to_numpy()
        r = {}
        for label, m in (("trained", model), ("untrained", untrained)):
            predicted = m.get_normalized_expression(modality=name).loc[hidden].to_numpy()
            r[label] = contract.pseudobulk_correlation(predicted, truth, groups)
        print(
            f"{method.name} {shape} {name}: r {r['trained']:.2f} (untrained {r['untrained']:.2f})"
        )
        assert r["trained"] > MIN_IMPUTATION_R, (name, r)
        assert r["trained"] > r["untrained"] + MIN_GAIN_OVER_UNTRAINED, (name, r)
        checked.append(name)
    hidden_modalities = {m for mods in contract.SHAPES[shape]["hide"].values() for m in mods}
    assert set(checked) == hidden_modalities


# ------------------------------------------------------------------ output errors
def test_unknown_modality_is_named_in_the_error(method, trained, contract):
    model = trained(method, "mosaic").model
    with pytest.raises((KeyError, ValueError), match=contract.words("bogus", "modalit")):
        model.get_latent_representation(modality="bogus")
    with pytest.raises((KeyError, ValueError), match=contract.words("bogus", "modalit")):
        model.get_normalized_expression(modality="bogus")


def test_a_modality_cannot_embed_cells_that_lack_it(method, trained, contract):
    run = trained(method, "mosaic")
    with pytest.raises(ValueError, match=contract.words("adt", "cells")):
        run.model.get_latent_representation(modality="adt")


def test_mudata_with_other_features_is_rejected(method, trained, contract):
    run = trained(method, "mosaic")
    reordered = run.case.mdata.copy()
    reordered.mod["adt"] = reordered["adt"][:, ::-1].copy()
    reordered.update()
    with pytest.raises(ValueError, match=contract.words("adt", "feature")):
        run.model.get_latent_representation(reordered)
    fewer = run.case.mdata.copy()
    fewer.mod["rna"] = fewer["rna"][:, 5:].copy()
    fewer.update()
    with pytest.raises(ValueError, match=contract.words("rna", "feature")):
        run.model.get_latent_representation(fewer)
    lacking = contract.rebuild({"rna": run.case.mdata["rna"].copy()}, run.case.mdata.obs)
    with pytest.raises((KeyError, ValueError), match=contract.words("adt")):
        run.model.get_latent_representation(lacking)


def test_outputs_run_in_evaluation_mode_whatever_mode_the_module_was_left_in(
    method, trained, contract
):
    model = trained(method, "mosaic").model
    cells = np.arange(40)
    expected = model.get_latent_representation(indices=cells)
    model.module.train()  # e.g. a user's own training loop left it there
    try:
        # dropout (and the models' random training-time estimators) must not leak into outputs
        np.testing.assert_array_equal(model.get_latent_representation(indices=cells), expected)
        assert model.module.training  # the mode the user chose is given back
    finally:
        model.module.eval()
