"""Contract: downstream analysis (likelihoods, posterior predictive, DE) for every model.

Models with an observation likelihood (:class:`mosaicvi.base.AnalysisMixin`) must give
numbers that beat an untrained model of the same class; a model without one must refuse each
method with an error that says why and what to use instead.
"""

from __future__ import annotations

import numpy as np
import pytest

from mosaicvi.base import AnalysisMixin


def _has_likelihood(model) -> bool:
    return isinstance(model, AnalysisMixin)


def _untrained(contract, method, mdata):
    model = contract.make_model(method, mdata)
    model.is_trained_ = True  # a random model of the same class is the baseline
    return model


@pytest.mark.parametrize(
    "call",
    [
        lambda m: m.get_elbo(),
        lambda m: m.get_reconstruction_error(),
        lambda m: m.get_marginal_ll(n_mc_samples=2),
        lambda m: m.posterior_predictive_sample(modality="rna"),
        lambda m: m.differential_expression(groupby="cell_type", modality="rna"),
    ],
    ids=["elbo", "reconstruction", "marginal_ll", "posterior_predictive", "de"],
)
def test_models_without_a_likelihood_refuse_analysis_clearly(method, trained, contract, call):
    run = trained(method, "paired")
    if _has_likelihood(run.model):
        pytest.skip(f"{method.name} has a likelihood (tested below)")
    with pytest.raises(NotImplementedError, match=contract.words("likelihood", "MultiVAE")):
        call(run.model)


def test_elbo_and_marginal_likelihood_beat_an_untrained_model(method, trained, contract):
    run = trained(method, "mosaic")
    if not _has_likelihood(run.model):
        pytest.skip(f"{method.name} has no likelihood (refusal tested above)")
    untrained = _untrained(contract, method, run.case.mdata)
    elbo, elbo_random = run.model.get_elbo(), untrained.get_elbo()
    assert np.isfinite(elbo) and elbo < 0.9 * elbo_random, (elbo, elbo_random)
    nll = run.model.get_marginal_ll(n_mc_samples=20)
    # importance sampling tightens the bound: -log p(x) below the negative ELBO (up to noise)
    assert np.isfinite(nll) and nll < elbo + 1.0, (nll, elbo)
    per_cell = run.model.get_marginal_ll(n_mc_samples=5, return_mean=False, indices=np.arange(7))
    assert per_cell.shape == (7,) and np.isfinite(per_cell).all()


def test_reconstruction_error_is_per_modality_and_beats_untrained(method, trained, contract):
    run = trained(method, "mosaic")
    if not _has_likelihood(run.model):
        pytest.skip(f"{method.name} has no likelihood")
    errors = run.model.get_reconstruction_error()
    random = _untrained(contract, method, run.case.mdata).get_reconstruction_error()
    assert set(errors) == set(run.model.modalities)
    for name in errors:
        assert np.isfinite(errors[name]) and errors[name] < random[name], (name, errors, random)


def test_posterior_predictive_samples_look_like_the_data(method, trained, contract):
    import sparse

    run = trained(method, "paired")
    if not _has_likelihood(run.model):
        pytest.skip(f"{method.name} has no likelihood")
    mdata = run.case.mdata
    for name in run.model.modalities:
        one = run.model.posterior_predictive_sample(modality=name)
        assert isinstance(one, sparse.GCXS) and one.shape == (mdata.n_obs, mdata[name].n_vars)
        draws = run.model.posterior_predictive_sample(modality=name, n_samples=3, indices=[0, 1])
        assert draws.shape == (2, mdata[name].n_vars, 3)
        values = one.todense()
        assert (values >= 0).all() and np.allclose(values, np.round(values)), name
        observed = contract.dense(mdata[name].X).mean(0)
        r = np.corrcoef(np.log1p(values.mean(0)), np.log1p(observed))[0, 1]
        assert r > 0.8, (name, r)  # feature means of the draws follow the data's


def test_latent_distribution_and_feature_subsets(method, trained, contract):
    run = trained(method, "paired")
    model = run.model
    if _has_likelihood(model):
        mean, var = model.get_latent_representation(return_dist=True)
        np.testing.assert_allclose(mean, model.get_latent_representation(), rtol=1e-5, atol=1e-6)
        assert var.shape == mean.shape and (var > 0).all()
    else:
        with pytest.raises(ValueError, match=contract.words("deterministic", "return_dist")):
            model.get_latent_representation(return_dist=True)
    genes = list(model.modality_var_names("rna")[[4, 0, 7]])
    subset = model.get_normalized_expression(modality="rna", features=genes)
    full = model.get_normalized_expression(modality="rna")
    assert list(subset.columns) == genes
    np.testing.assert_allclose(subset.to_numpy(), full[genes].to_numpy(), rtol=1e-5, atol=1e-8)
    with pytest.raises(KeyError, match=contract.words("not_a_gene", "'rna'")):
        model.get_normalized_expression(modality="rna", features=["not_a_gene"])


def test_differential_expression_follows_the_data_in_a_mosaic(method, trained, contract):
    run = trained(method, "mosaic")  # batch_2 lacks protein: its cells are imputed
    if not _has_likelihood(run.model):
        pytest.skip(f"{method.name} has no likelihood")
    mdata = run.case.mdata
    groups = list(mdata.obs["cell_type"].astype(str).value_counts().index[:2])
    result = run.model.differential_expression(
        groupby="cell_type", group1=groups, modality="adt", n_samples_overall=500
    )
    for column in ("proba_de", "bayes_factor", "lfc_mean", "lfc_std", "is_de_fdr_0.05"):
        assert column in result, column
    assert set(result["group1"]) == set(groups) and set(result["group2"]) == {"Rest"}
    truth = run.case.truth  # every cell's protein, including those hidden from the model
    counts = contract.dense(truth["adt"][mdata.obs_names].X)
    normalised = counts / counts.sum(1, keepdims=True)
    labels = mdata.obs["cell_type"].astype(str).to_numpy()
    for group in groups:
        rows = result[result["group1"] == group]
        assert len(rows) == mdata["adt"].n_vars and rows.index.is_unique
        true_lfc = np.log2(
            normalised[labels == group].mean(0) / normalised[labels != group].mean(0)
        )
        r = np.corrcoef(rows.loc[truth["adt"].var_names, "lfc_mean"], true_lfc)[0, 1]
        assert r > 0.4, (group, r)  # the model's fold changes follow the true ones
    one_vs_one = run.model.differential_expression(
        idx1=np.flatnonzero(mdata.obs["cell_type"] == groups[0]),
        idx2=np.flatnonzero(mdata.obs["cell_type"] == groups[1]),
        modality="rna",
        mode="vanilla",
        n_samples_overall=200,
    )
    assert len(one_vs_one) == mdata["rna"].n_vars and "bayes_factor" in one_vs_one
    with pytest.raises(ValueError, match=contract.words("batch_2", "'adt'")):
        run.model.differential_expression(
            groupby="cell_type", group1=groups[0], modality="adt", batch_correction=True
        )
    with pytest.raises(KeyError, match=contract.words("no_such_column")):
        run.model.differential_expression(groupby="no_such_column", modality="adt")


def test_importance_weights_and_the_modality_view_of_the_data(method, trained, contract):
    from scvi import REGISTRY_KEYS

    from mosaicvi.base import _compat

    run = trained(method, "paired")
    if not _has_likelihood(run.model):
        pytest.skip(f"{method.name} has no likelihood")
    model = run.model
    loader = model._make_data_loader(adata=model.adata, indices=np.arange(10), batch_size=10)
    log_w = model.module.importance_log_weights(next(iter(loader)), 4)
    assert log_w.shape == (4, 10) and bool(log_w.isfinite().all())
    # what scvi-tools' DE reads as X: the tested modality's columns only
    columns = np.flatnonzero(model.adata.var["modality"].to_numpy() == "adt")
    view = _compat._ModalityView(model.adata_manager, columns)
    assert view.get_from_registry(REGISTRY_KEYS.X_KEY).shape == (model.adata.n_obs, len(columns))
    assert view.adata is model.adata_manager.adata  # everything else is the model's manager
