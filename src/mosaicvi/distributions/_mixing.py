"""Combining per-modality Gaussian posteriors into one joint posterior."""

from __future__ import annotations

import torch

_MIN_VAR = 1e-8


def product_of_experts(
    means: torch.Tensor, variances: torch.Tensor, observed: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Product of Gaussian experts, including the standard-normal prior expert.

    Parameters
    ----------
    means, variances
        Expert parameters of shape ``(K, n_cells, n_latent)``.
    observed
        Mask of shape ``(n_cells, K)``; unobserved experts get zero precision.

    Returns
    -------
    Mean and variance of the joint posterior, each ``(n_cells, n_latent)``.
    The prior expert N(0, I) contributes precision 1 and mean 0, so a cell with one observed
    modality k gets ``var = 1 / (1 + 1/s_k^2)`` and ``mean = var * mu_k / s_k^2``.
    """
    weights = observed.T.unsqueeze(-1).to(means.dtype)  # (K, n, 1)
    precisions = weights / variances.clamp_min(_MIN_VAR)
    joint_precision = 1.0 + precisions.sum(0)
    joint_var = 1.0 / joint_precision
    joint_mean = joint_var * (precisions * means).sum(0)
    return joint_mean, joint_var


def mixture_of_experts(
    means: torch.Tensor, variances: torch.Tensor, observed: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean of the observed unimodal latents, ``z = (1/|K_c|) sum_k z_k``.

    For independent ``z_k ~ N(mu_k, s_k^2)`` this is Gaussian with mean ``mean_k(mu_k)`` and
    variance ``sum_k s_k^2 / |K_c|^2``.

    Parameters
    ----------
    means, variances
        Expert parameters of shape ``(K, n_cells, n_latent)``.
    observed
        Mask of shape ``(n_cells, K)``; every cell needs at least one observed expert.

    Returns
    -------
    Mean and variance, each ``(n_cells, n_latent)``.
    """
    weights = observed.T.unsqueeze(-1).to(means.dtype)
    n_observed = weights.sum(0).clamp_min(1.0)
    joint_mean = (weights * means).sum(0) / n_observed
    joint_var = (weights * variances).sum(0) / n_observed**2
    return joint_mean, joint_var.clamp_min(_MIN_VAR)


MIXINGS = {"poe": product_of_experts, "moe": mixture_of_experts}
