"""Maximum mean discrepancy with a multi-scale RBF kernel."""

from __future__ import annotations

import torch

# Bandwidths spanning several orders of magnitude, so one kernel fits latents of any scale.
DEFAULT_GAMMAS = (1e-3, 1e-2, 1e-1, 1.0, 1e1, 1e2, 1e3)


def rbf_kernel(a: torch.Tensor, b: torch.Tensor, gammas=DEFAULT_GAMMAS) -> torch.Tensor:
    """Multi-scale RBF kernel ``K(a, b) = (1/S) sum_i exp(-gamma_i ||a - b||^2)``."""
    sq_dist = torch.cdist(a, b).pow(2)
    return torch.stack([torch.exp(-g * sq_dist) for g in gammas]).mean(0)


def mmd(x: torch.Tensor, y: torch.Tensor, gammas=DEFAULT_GAMMAS) -> torch.Tensor:
    """Biased estimate of MMD^2 between the samples ``x`` and ``y`` (rows are points)."""
    return (
        rbf_kernel(x, x, gammas).mean()
        + rbf_kernel(y, y, gammas).mean()
        - 2 * rbf_kernel(x, y, gammas).mean()
    )


def groupwise_mmd(z: torch.Tensor, groups: torch.Tensor, min_group_size: int = 2) -> torch.Tensor:
    """Sum of MMD^2 over all pairs of groups present in the minibatch.

    Parameters
    ----------
    z
        Points, ``(n, d)``.
    groups
        Integer group of each point, ``(n,)``.
    min_group_size
        Groups with fewer points in this minibatch are skipped.
    """
    labels, counts = torch.unique(groups, return_counts=True)
    present = labels[counts >= min_group_size]
    total = z.new_zeros(())
    for i in range(len(present)):
        for j in range(i + 1, len(present)):
            total = total + mmd(z[groups == present[i]], z[groups == present[j]])
    return total
