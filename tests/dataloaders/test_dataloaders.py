"""In-memory minibatches, the fast NB log-density and the data-path choice."""

import numpy as np
import pytest
import torch
from scvi.dataloaders import AnnDataLoader
from scvi.distributions import NegativeBinomial

import mosaicvi as mv
from mosaicvi.dataloaders import InMemoryDataLoader, TensorBank
from mosaicvi.distributions._likelihoods import FeatureDispersionNB

QUIET = {"enable_progress_bar": False}


@pytest.fixture(scope="module")
def mosaic():
    mdata = mv.data.simulate(
        n_cells=300, n_genes=60, n_proteins=10, n_batches=3, missing={"batch_2": ["adt"]}, seed=1
    )
    mv.model.MultiVAE.setup_mudata(mdata, batch_key="batch")
    return mdata


def test_in_memory_batches_equal_anndata_batches(mosaic):
    model = mv.model.MultiVAE(mosaic, n_hidden=16)
    manager = model.adata_manager
    indices = np.arange(0, mosaic.n_obs, 2)[::-1]
    reference = list(AnnDataLoader(manager, indices=indices, batch_size=32))
    fast = list(InMemoryDataLoader(manager, indices=indices, batch_size=32))
    assert len(reference) == len(fast)
    for a, b in zip(reference, fast):
        assert set(a) == set(b)
        for key in a:
            assert torch.as_tensor(a[key]).dtype == b[key].dtype, key
            assert torch.equal(torch.as_tensor(a[key]), b[key]), key


def test_sparse_rows_are_densified_per_batch_only(mosaic):
    model = mv.model.MultiVAE(mosaic, n_hidden=16)
    bank = TensorBank(model.adata_manager)
    x = model.adata.X
    assert bank.nbytes < x.data.nbytes + x.indices.nbytes + x.indptr.nbytes + 300 * 8 * 8
    rows = bank.rows([5, 0, 7])["X"]
    np.testing.assert_array_equal(rows.numpy(), x[[5, 0, 7]].toarray())


def test_training_is_identical_on_both_data_paths(mosaic):
    histories = {}
    for path in ("anndata", "in_memory"):
        import scvi

        scvi.settings.seed = 0
        model = mv.model.MultiVAE(mosaic, n_hidden=16)
        model.train(max_epochs=3, batch_size=64, data_loader=path, **QUIET)
        assert model.data_loader_ == path
        histories[path] = model.history["train_loss"].to_numpy(dtype=float)
        z = model.get_latent_representation()
        assert z.shape == (mosaic.n_obs, 16)
    np.testing.assert_allclose(histories["anndata"], histories["in_memory"], rtol=1e-5)
    with pytest.raises(ValueError, match="data_loader"):
        model.train(max_epochs=1, data_loader="fast")


def test_feature_dispersion_nb_matches_scvi_tools():
    torch.manual_seed(0)
    mu = torch.rand(32, 50) * 30 + 1e-3
    log_theta = torch.randn(50, requires_grad=True)
    x = torch.poisson(mu)
    expected = NegativeBinomial(mu=mu, theta=log_theta.exp().expand_as(mu)).log_prob(x)
    got = FeatureDispersionNB(mu=mu, theta=log_theta.exp().expand_as(mu)).log_prob(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-4)
    (g_expected,) = torch.autograd.grad(expected.sum(), log_theta)
    (g_got,) = torch.autograd.grad(got.sum(), log_theta)
    torch.testing.assert_close(g_got, g_expected, rtol=1e-4, atol=1e-3)


def test_nb_gamma_terms_dense_path_equals_sparse_path():
    # the dense path (accelerators: no nonzero(), no host sync) gives the same values/gradients
    from mosaicvi.distributions._likelihoods import _add_gamma_terms

    torch.manual_seed(1)
    x = torch.poisson(torch.rand(30, 40) * 3)
    theta = (torch.randn(40) * 0.5).exp().requires_grad_(True)
    dense = torch.zeros(30, 40)
    sparse_out = _add_gamma_terms(dense, x, theta.expand_as(x), sparse=True)
    dense_out = _add_gamma_terms(dense, x, theta.expand_as(x), sparse=False)
    torch.testing.assert_close(dense_out, sparse_out, rtol=1e-5, atol=1e-5)
    (g_sparse,) = torch.autograd.grad(sparse_out.sum(), theta)
    (g_dense,) = torch.autograd.grad(dense_out.sum(), theta)
    torch.testing.assert_close(g_dense, g_sparse, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("sparse", [True, False])
def test_nb_per_cell_log_likelihood_matches_scvi_tools(sparse):
    # per-cell sums (theta terms once per feature) equal scvi-tools' elementwise log-density
    torch.manual_seed(2)
    log_mu = (torch.randn(40, 60) * 1.5).requires_grad_(True)
    log_theta = (torch.randn(60) * 0.7).requires_grad_(True)
    x = torch.poisson(log_mu.detach().exp())
    x[:, :5] = 0  # features with no count in the minibatch
    x[3] = 0  # a cell with no count

    def both():
        mu, theta = log_mu.exp(), log_theta.exp().expand(40, 60)
        expected = NegativeBinomial(mu=mu, theta=theta).log_prob(x).sum(-1)
        got = FeatureDispersionNB(mu=mu, theta=theta).log_prob_per_cell(x, sparse=sparse)
        return expected, got

    expected, got = both()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-3)
    weights = torch.rand(40)  # any per-cell weighting, e.g. the observed mask
    grads_expected = torch.autograd.grad((expected * weights).sum(), (log_mu, log_theta))
    expected, got = both()
    grads_got = torch.autograd.grad((got * weights).sum(), (log_mu, log_theta))
    for g_got, g_expected in zip(grads_got, grads_expected):
        torch.testing.assert_close(g_got, g_expected, rtol=1e-4, atol=1e-3)
    # a second decoding of the same data with the same dispersions reuses the memo exactly
    memo = {}
    theta = log_theta.exp().expand(40, 60)
    first = FeatureDispersionNB(mu=log_mu.exp(), theta=theta)
    second = FeatureDispersionNB(mu=(log_mu + 0.3).exp(), theta=theta)
    first.log_prob_per_cell(x, sparse=sparse, memo=memo)
    torch.testing.assert_close(
        second.log_prob_per_cell(x, sparse=sparse, memo=memo),
        NegativeBinomial(mu=(log_mu + 0.3).exp(), theta=theta).log_prob(x).sum(-1),
        rtol=1e-5,
        atol=1e-3,
    )
    # a likelihood without a per-cell form falls back to summing log_prob
    lik = mv.distributions.get_likelihood("nb")
    px = FeatureDispersionNB(mu=log_mu.exp(), theta=log_theta.exp().expand(40, 60))
    torch.testing.assert_close(lik.log_likelihood(px, x), got)


def test_count_poisson_and_log_factorial_match_torch():
    from torch.distributions import Poisson

    from mosaicvi.distributions._likelihoods import CountPoisson, log_factorial

    torch.manual_seed(0)
    rate = torch.rand(40, 70) * 6 + 1e-6
    x = torch.poisson(rate)
    torch.testing.assert_close(log_factorial(x), torch.lgamma(x + 1))
    torch.testing.assert_close(CountPoisson(rate).log_prob(x), Poisson(rate).log_prob(x))


def test_expression_streams_to_backed_h5ad(mosaic, tmp_path):
    model = mv.model.MultiVAE(mosaic, n_hidden=16)
    model.train(max_epochs=2, batch_size=64, **QUIET)
    in_memory = model.get_normalized_expression(modality="adt", batch_size=50)
    backed = model.get_normalized_expression(
        modality="adt", batch_size=50, out=tmp_path / "adt.h5ad"
    )
    assert backed.isbacked and backed.shape == in_memory.shape
    assert list(backed.obs_names) == list(in_memory.index)
    assert list(backed.var_names) == list(in_memory.columns)
    np.testing.assert_allclose(backed.X[:], in_memory.to_numpy(), rtol=1e-6)
    with pytest.raises(ValueError, match="h5ad"):
        model.get_normalized_expression(modality="adt", out=tmp_path / "adt.csv")
    with pytest.raises(ValueError, match="return_mean"):
        model.get_normalized_expression(
            modality="adt", n_samples=2, return_mean=False, out=tmp_path / "x.h5ad"
        )


def test_tensor_bank_shares_the_registered_matrix(mosaic):
    model = mv.model.MultiVAE(mosaic, n_hidden=16)
    bank = TensorBank(model.adata_manager)
    assert np.shares_memory(bank.fields["X"].matrix.data, model.adata.X.data)


@pytest.mark.parametrize("sparse", [True, False])
def test_poisson_per_cell_log_likelihood_matches_torch(sparse):
    from torch.distributions import Poisson

    from mosaicvi.distributions._likelihoods import CountPoisson

    torch.manual_seed(3)
    log_rate = (torch.randn(30, 80) - 2.0).requires_grad_(True)
    x = torch.poisson(log_rate.detach().exp() * 3)
    x[4] = 0
    memo = {}
    for shift in (0.0, 0.5):  # the second decoding reuses the memo
        expected = Poisson((log_rate + shift).exp()).log_prob(x).sum(-1)
        got = CountPoisson((log_rate + shift).exp()).log_prob_per_cell(x, sparse=sparse, memo=memo)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-4)
        (g_expected,) = torch.autograd.grad(expected.sum(), log_rate)
        (g_got,) = torch.autograd.grad(got.sum(), log_rate)
        torch.testing.assert_close(g_got, g_expected, rtol=1e-5, atol=1e-5)


def test_count_poisson_from_log_rates_matches_torch():
    from torch.distributions import Poisson

    from mosaicvi.distributions._likelihoods import CountPoisson

    torch.manual_seed(0)
    log_scale = torch.log_softmax(torch.randn(30, 50), -1)
    library = torch.log(torch.full((30, 1), 400.0))
    x = torch.poisson(torch.exp(log_scale + library))
    px = CountPoisson(log_rate=log_scale + library, total_rate=library.exp().squeeze(-1))
    reference = Poisson(torch.exp(log_scale + library))
    torch.testing.assert_close(px.log_rate, log_scale + library)
    torch.testing.assert_close(px.log_prob(x), reference.log_prob(x))
    for sparse in (True, False):
        torch.testing.assert_close(
            px.log_prob_per_cell(x, sparse=sparse),
            reference.log_prob(x).sum(-1),
            rtol=1e-5,
            atol=1e-3,
        )
    assert px.expand(torch.Size([2, 30, 50])).sample().shape == (2, 30, 50)
    with pytest.raises(ValueError, match="exactly one of `rate` and `log_rate`"):
        CountPoisson()
