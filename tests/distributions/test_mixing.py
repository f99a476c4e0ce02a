import torch

from mosaicvi.distributions import groupwise_mmd, mixture_of_experts, mmd, product_of_experts


def _experts(n_cells=5, n_latent=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(2, n_cells, n_latent, generator=g)
    variances = torch.rand(2, n_cells, n_latent, generator=g) + 0.1
    return means, variances


def test_poe_single_expert_equals_expert_times_prior():
    means, variances = _experts()
    observed = torch.tensor([[1.0, 0.0]] * 5)
    mean, var = product_of_experts(means, variances, observed)
    # N(mu, s^2) x N(0, 1): precision 1 + 1/s^2, mean mu/s^2 / precision
    expected_var = 1.0 / (1.0 + 1.0 / variances[0])
    torch.testing.assert_close(var, expected_var)
    torch.testing.assert_close(mean, expected_var * means[0] / variances[0])


def test_poe_two_experts_precision_weighted():
    means, variances = _experts()
    observed = torch.ones(5, 2)
    mean, var = product_of_experts(means, variances, observed)
    precision = 1.0 + 1.0 / variances[0] + 1.0 / variances[1]
    torch.testing.assert_close(var, 1.0 / precision)
    torch.testing.assert_close(
        mean, (means[0] / variances[0] + means[1] / variances[1]) / precision
    )


def test_poe_ignores_unobserved_expert_values():
    means, variances = _experts()
    observed = torch.tensor([[1.0, 0.0]] * 5)
    poisoned_means = means.clone()
    poisoned_means[1] = 1e6
    a = product_of_experts(means, variances, observed)
    b = product_of_experts(poisoned_means, variances, observed)
    torch.testing.assert_close(a, b)


def test_moe_formula_mean_and_variance():
    means, variances = _experts()
    observed = torch.tensor([[1.0, 1.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, 1.0]])
    mean, var = mixture_of_experts(means, variances, observed)
    torch.testing.assert_close(mean[0], (means[0, 0] + means[1, 0]) / 2)
    torch.testing.assert_close(var[0], (variances[0, 0] + variances[1, 0]) / 4)
    torch.testing.assert_close(mean[1], means[0, 1])
    torch.testing.assert_close(var[1], variances[0, 1])
    torch.testing.assert_close(mean[2], means[1, 2])
    torch.testing.assert_close(var[2], variances[1, 2])


def test_mmd_zero_for_identical_and_positive_for_shifted():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(100, 4, generator=g)
    assert mmd(x, x).abs() < 1e-6
    assert mmd(x, x + 3.0) > 0.1
    same = torch.randn(100, 4, generator=g)
    assert mmd(x, x + 3.0) > 10 * mmd(x, same)


def test_groupwise_mmd_sums_pairs_and_skips_tiny_groups():
    g = torch.Generator().manual_seed(2)
    z = torch.randn(90, 2, generator=g)
    groups = torch.tensor([0] * 30 + [1] * 30 + [2] * 30)
    z[groups == 2] += 4.0
    total = groupwise_mmd(z, groups)
    pairs = mmd(z[:30], z[30:60]) + mmd(z[:30], z[60:]) + mmd(z[30:60], z[60:])
    torch.testing.assert_close(total, pairs)
    lonely = torch.tensor([0] * 89 + [1])
    assert groupwise_mmd(z, lonely) == 0


def test_groupwise_mmd_with_declared_groups_and_weights_matches_pairwise_loop():
    g = torch.Generator().manual_seed(3)
    z = torch.randn(70, 3, generator=g)
    groups = torch.tensor([0] * 20 + [2] * 30 + [3] * 19 + [1])  # group 1 has one point
    z[groups == 3] += 2.0
    expected = mmd(z[:20], z[20:50]) + mmd(z[:20], z[50:69]) + mmd(z[20:50], z[50:69])
    # n_groups declared (no host sync): absent group 4 and one-point group 1 are skipped
    torch.testing.assert_close(groupwise_mmd(z, groups, n_groups=5), expected)
    # weight 0 removes points from their group (the marginal MMD's unobserved modalities)
    weights = torch.ones(70)
    weights[50:60] = 0
    expected_w = mmd(z[:20], z[20:50]) + mmd(z[:20], z[60:69]) + mmd(z[20:50], z[60:69])
    torch.testing.assert_close(
        groupwise_mmd(z, groups, n_groups=5, weights=weights), expected_w, rtol=1e-4, atol=1e-5
    )
    # gradients flow to the points as in the loop
    z.requires_grad_(True)
    groupwise_mmd(z, groups, n_groups=5).backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
