"""Maximum mean discrepancy with a multi-scale RBF kernel."""

from __future__ import annotations

import torch
import torch.nn.functional as F

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


def groupwise_mmd(
    z: torch.Tensor,
    groups: torch.Tensor,
    n_groups: int | None = None,
    weights: torch.Tensor | None = None,
    min_group_size: int = 2,
) -> torch.Tensor:
    """Sum of MMD^2 over all pairs of groups present in the minibatch.

    Computed from one kernel matrix and a one-hot membership matrix, without boolean indexing
    or ``torch.unique``, so a GPU training step does not wait for the host.

    Parameters
    ----------
    z
        Points, ``(n, d)``.
    groups
        Integer group of each point, ``(n,)``, in ``[0, n_groups)``.
    n_groups
        Number of possible groups (e.g. batches); ``None`` reads it from ``groups`` (which
        synchronises a GPU with the host once).
    weights
        Optional 0/1 weight per point, ``(n,)``: points with weight 0 belong to no group.
    min_group_size
        Groups with fewer points in this minibatch are skipped.
    """
    if n_groups is None:
        n_groups = int(groups.max()) + 1
    member = F.one_hot(groups.long().ravel(), n_groups).to(z.dtype)  # (n, G)
    if weights is not None:
        member = member * weights.to(z.dtype).unsqueeze(1)
    counts = member.sum(0)
    block_sums = member.T @ rbf_kernel(z, z) @ member  # kernel summed over each pair of groups
    block_means = block_sums / (counts.unsqueeze(1) * counts.unsqueeze(0)).clamp_min(1.0)
    within = block_means.diagonal()
    pair_mmd = within.unsqueeze(1) + within.unsqueeze(0) - 2.0 * block_means
    present = counts >= min_group_size
    pairs = torch.triu(present.unsqueeze(1) & present.unsqueeze(0), diagonal=1)
    return (pair_mmd * pairs).sum()
