"""CLUE's loss terms: KLs, self/cross ELBOs, alignment and the adversarial discriminator terms.

A mixin of :class:`~mosaicvi.module.CLUEModule`, kept apart so the module file holds the
architecture and inference; the methods read the module's weights and helpers
(``subspace``, ``_reconstruction``, ``discriminator``, ``_cross_mask``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.distributions import Normal, kl_divergence


class CLUELossTerms:
    """Per-cell loss terms of CLUE (see :class:`~mosaicvi.module.CLUEModule`)."""

    def _kl(self, mean: torch.Tensor, var: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """KL to N(0, I) per cell and sub-space, ``(n, K)``, zero outside ``mask``."""
        kl = kl_divergence(Normal(mean, var.sqrt()), Normal(0.0, 1.0))
        per_space = torch.stack(
            [self.subspace(kl, k).sum(-1) for k in range(self.n_modalities)], dim=1
        )
        return per_space * mask

    def _expert_kl(self, outputs: dict, mask_self: torch.Tensor, mask_cross: torch.Tensor):
        """KL terms for ``combine="mean"``: on the raw experts (normalisation has no density)."""
        kl = kl_divergence(
            Normal(outputs["expert_means"], outputs["expert_vars"].sqrt()), Normal(0.0, 1.0)
        ).sum(-1)  # (K, K, n), [k, j]
        eye = torch.eye(self.n_modalities, device=kl.device, dtype=kl.dtype)
        kl_self = torch.stack([kl[k, k] for k in range(self.n_modalities)], dim=1) * mask_self
        observed = outputs["observed"]
        cross = []
        for k in range(self.n_modalities):
            others = observed * (1 - eye[k])  # (n, K)
            cross.append((kl[k].T * others).sum(1) / others.sum(1).clamp_min(1.0))
        return kl_self, torch.stack(cross, dim=1) * mask_cross

    def _pairs(self, observed: torch.Tensor) -> list[tuple[int, int, torch.Tensor]]:
        """Pairs of modalities with the cells that have both."""
        return [
            (i, j, observed[:, i] * observed[:, j])
            for i in range(self.n_modalities)
            for j in range(i + 1, self.n_modalities)
        ]

    def _alignment(self, outputs: dict) -> torch.Tensor:
        """Mean distance between single-modality latents over observed pairs, per cell."""
        u = outputs["modality_means"]
        observed = outputs["observed"]
        total = torch.zeros_like(observed[:, 0])
        n_pairs = torch.zeros_like(total)
        for i, j, both in self._pairs(observed):
            if self.alignment == "mse":
                distance = (u[i] - u[j]).pow(2).sum(-1)
            else:
                distance = 1.0 - F.cosine_similarity(u[i], u[j], dim=-1)
            total = total + both * distance
            n_pairs = n_pairs + both
        return total / n_pairs.clamp_min(1.0)

    def _discriminator_terms(
        self, modality_z: torch.Tensor, observed: torch.Tensor, noise_std: float = 0.0
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits for every (modality, cell) latent, their labels and 0/1 weights (observed).

        All ``K x n`` latents are scored and unobserved ones weighted 0, instead of selecting
        the observed ones, so a GPU step never waits for the host.
        """
        n_modalities, n_cells, _ = modality_z.shape
        points = modality_z.reshape(n_modalities * n_cells, -1)
        if noise_std > 0:
            points = points + noise_std * torch.randn_like(points)
        labels = torch.arange(n_modalities, device=points.device).repeat_interleave(n_cells)
        return self.discriminator(points), labels, observed.T.reshape(-1)

    @staticmethod
    def _weighted_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        return (values * weights).sum() / weights.sum().clamp_min(1.0)

    def discriminator_loss(
        self, inference_outputs: dict, noise_std: float = 0.0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-entropy and accuracy of the discriminator on detached latents.

        Parameters
        ----------
        inference_outputs
            Output of :meth:`inference`.
        noise_std
            Standard deviation of Gaussian noise added to the discriminator's input.
        """
        logits, labels, weights = self._discriminator_terms(
            inference_outputs["modality_z"].detach(), inference_outputs["observed"], noise_std
        )
        loss = self._weighted_mean(F.cross_entropy(logits, labels, reduction="none"), weights)
        accuracy = self._weighted_mean((logits.argmax(-1) == labels).to(weights), weights)
        return loss, accuracy.detach()

    def _adversarial(self, outputs: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encoders' term (cross-entropy to uniform, per cell) and the discriminator's state."""
        observed = outputs["observed"]
        logits, labels, weights = self._discriminator_terms(outputs["modality_z"], observed)
        # cross-entropy to the uniform distribution minus its minimum log K: 0 at chance
        to_uniform = -F.log_softmax(logits, -1).mean(-1) - math.log(self.n_modalities)
        per_cell = (to_uniform * weights).reshape(observed.shape[1], -1).sum(0)
        per_cell = per_cell / observed.sum(1).clamp_min(1.0)
        with torch.no_grad():
            accuracy = self._weighted_mean((logits.argmax(-1) == labels).to(weights), weights)
            d_loss = self._weighted_mean(F.cross_entropy(logits, labels, reduction="none"), weights)
        return per_cell, accuracy, d_loss

    def _elbo_terms(
        self,
        x: torch.Tensor,
        out: dict,
        generative_outputs: dict,
        cross_mask: torch.Tensor,
        kl_weight: float,
    ) -> tuple[torch.Tensor, ...]:
        """Self and cross reconstruction ``(n, K)``, their KLs ``(n, K)`` and ELBOs ``(n,)``.

        A term whose weight is 0 is not computed (zeros).
        """
        observed = out["observed"]
        zeros = torch.zeros_like(observed)
        if self.combine == "mean":
            kl_self, kl_cross = self._expert_kl(out, observed, cross_mask)
        else:
            kl_self = self._kl(out["self_mean"], out["self_var"], observed)
            kl_cross = self._kl(out["cross_mean"], out["cross_var"], cross_mask)

        rec_self = rec_cross = zeros
        if "px_decoded" in generative_outputs:
            return self._shared_elbo_terms(x, out, generative_outputs, kl_self, kl_cross, kl_weight)
        memo = {}  # the self and cross decodings score the same data with the same decoders
        masks = out.get("feature_masks")
        if self.self_weight > 0:
            px_self = generative_outputs["px_self"]
            rec_self = torch.stack(
                list(self._reconstruction(x, px_self, observed, memo, masks).values()), dim=1
            )
        if self.cross_weight > 0:
            px_cross = generative_outputs["px_cross"]
            rec_cross = torch.stack(
                list(self._reconstruction(x, px_cross, cross_mask, memo, masks).values()), dim=1
            )
        self_elbo = (rec_self + kl_weight * kl_self).sum(1) if self.self_weight > 0 else zeros[:, 0]
        cross_elbo = (
            (rec_cross + kl_weight * kl_cross).sum(1) if self.cross_weight > 0 else zeros[:, 0]
        )
        weighted = self.self_weight * self_elbo + self.cross_weight * cross_elbo
        return rec_self, rec_cross, kl_self, kl_cross, self_elbo, cross_elbo, weighted

    def _shared_elbo_terms(
        self,
        x: torch.Tensor,
        out: dict,
        generative_outputs: dict,
        kl_self: torch.Tensor,
        kl_cross: torch.Tensor,
        kl_weight: float,
    ) -> tuple[torch.Tensor, ...]:
        """The terms of :meth:`_elbo_terms` from one decoding (the ``"shared"`` estimator).

        Each (cell, modality) entry is the self or the cross term, whichever was decoded; the
        weighted sum is the unbiased estimate described in the class docstring.
        """
        observed, decoded_cross = out["observed"], out["decoded_cross"]
        rec = torch.stack(
            list(
                self._reconstruction(
                    x, generative_outputs["px_decoded"], observed, None, out.get("feature_masks")
                ).values()
            ),
            dim=1,
        )
        decoded_self = observed - decoded_cross
        elbo = rec + kl_weight * torch.where(decoded_cross > 0, kl_cross, kl_self)
        weight = self.self_weight + self.cross_weight * self._cross_mask(observed)
        weighted = (weight * elbo * observed).sum(1)
        if self.self_weight == 0:  # a switched-off term logs 0, as with "separate"
            decoded_self = torch.zeros_like(decoded_self)
        rec_self, rec_cross = rec * decoded_self, rec * decoded_cross
        self_elbo = (elbo * decoded_self).sum(1)
        cross_elbo = (elbo * decoded_cross).sum(1)
        return rec_self, rec_cross, kl_self, kl_cross, self_elbo, cross_elbo, weighted
