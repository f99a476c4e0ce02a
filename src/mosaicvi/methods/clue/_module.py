"""CLUE: cross-linked unified embedding (cross-encoders) with a modality discriminator."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from scvi import REGISTRY_KEYS
from scvi.module.base import LossOutput, auto_move_data
from torch.distributions import Normal

from mosaicvi.base import VAEModule
from mosaicvi.data import ModalitySpec
from mosaicvi.distributions import product_of_experts

from ._discriminator import ModalityDiscriminator
from ._losses import CLUELossTerms

Combine = Literal["poe", "mean"]
Alignment = Literal["mse", "cosine"]
ElboEstimator = Literal["shared", "separate"]


class CLUEModule(CLUELossTerms, VAEModule):
    """Cross-linked unified embedding (CLUE) over K >= 2 modalities.

    The latent of a cell is the concatenation ``z = (z_1, ..., z_K)`` of one sub-space of
    ``n_latent`` (``d``) dimensions per modality, so **the embedding has ``K * d`` dimensions**
    (40 for RNA + protein with ``d = 20``). Each input modality ``j`` has one encoder body with
    K heads, giving ``q(z_k | x_j)`` for every sub-space: self-encoders (``k = j``) and
    cross-encoders (``k != j``). (The paper's K x K separate encoders cost K times the
    first-layer work of the wide inputs; sharing the body is what makes CLUE as fast as one
    encoder per modality.) For a set ``S`` of modalities,
    ``q(z_k | x_S)`` combines the encoders ``q(z_k | x_j)``, ``j in S``:

    - ``combine="poe"`` (the paper): product of the Gaussian experts and the N(0, I) prior expert
      (:func:`~mosaicvi.distributions.product_of_experts`); a single modality's posterior is its
      expert times the prior.
    - ``combine="mean"`` (the reference code): each expert's sample is L2-normalised and the
      normalised samples are averaged; the posterior mean used for embedding is the average of
      the L2-normalised expert means. The decoders then read points near the unit sphere; the
      KL term is computed on the (unnormalised) Gaussian experts.

    Decoder ``k`` reads sub-space ``k`` only (plus covariates). Per-cell losses, each weighted:

    - ``self``: ELBO of every observed modality ``k`` from ``q(z_k | x_k)``;
    - ``cross``: ELBO of every observed modality ``k`` from ``q(z_k | x_{K_c minus k})``, the
      other observed modalities of the cell (cells with at least two observed modalities);
    - ``alignment``: distance between the latents inferred from each observed modality of a cell,
      ``u_j = (E q(z_1 | x_j), ..., E q(z_K | x_j))``, over pairs of observed modalities
      (squared Euclidean for ``"mse"``, ``1 - cosine`` for ``"cosine"``; paired cells only);
    - ``adversarial``: cross-entropy between the modality discriminator's prediction for a
      sample of ``u_j`` and the uniform distribution over modalities, minus its minimum
      ``log K`` (0 when the discriminator is at chance). The discriminator itself is trained by
      the training plan to tell the modalities apart (:meth:`discriminator_loss`).

    ``elbo_estimator`` says how a training step estimates the self and cross ELBOs:
    ``"separate"`` (default) decodes both; with ``"shared"`` every modality of a cell is decoded
    once, from its self latent or, where a cross term exists, from its cross latent with
    probability ``cross_weight / (self_weight + cross_weight)``, weighted ``self_weight +
    cross_weight`` (an unbiased estimate of the weighted sum at the decoding cost of one pass,
    which needs more epochs for the same result). The validation loss always uses
    ``"separate"``.

    Reconstruction terms are summed over features and KL terms over latent dimensions (the
    scvi-tools convention); the reference code averages them over features instead, so its
    published alignment/adversarial weights do not carry over as they are.

    Parameters
    ----------
    modalities
        One :class:`~mosaicvi.data.ModalitySpec` per modality, in the column order of ``X``.
    n_batch, n_cats_per_cov, n_continuous_cov
        Covariates (one-hot through ``n_cat_list`` of every :class:`scvi.nn.FCLayers`).
    n_latent
        Dimensions ``d`` of each sub-space; the embedding has ``K * d``.
    n_hidden, n_layers, dropout_rate
        Encoder/decoder architecture (LayerNorm, LeakyReLU).
    combine
        ``"poe"`` or ``"mean"`` (see above).
    alignment
        ``"mse"`` (the paper) or ``"cosine"`` (the reference code).
    self_weight, cross_weight, alignment_weight, adversarial_weight
        Weights of the loss terms; 0 switches a term off (it is then not computed).
    elbo_estimator
        ``"shared"`` or ``"separate"`` (see above).
    encode_covariates
        Condition the encoders on batch and covariates too.
    discriminator_hidden, discriminator_layers
        Architecture of the modality discriminator.
    measured_features
        Per-batch feature masks (see :class:`~mosaicvi.base.ModalityModule`).
    library_log_means
        ``(K,)`` mean observed log library of each modality (start of the library predictors).
    """

    def __init__(
        self,
        modalities: Sequence[ModalitySpec],
        n_batch: int = 1,
        n_cats_per_cov: Sequence[int] | None = None,
        n_continuous_cov: int = 0,
        n_latent: int = 20,
        n_hidden: int = 128,
        n_layers: int = 1,
        dropout_rate: float = 0.2,
        combine: Combine = "poe",
        alignment: Alignment = "mse",
        self_weight: float = 1.0,
        cross_weight: float = 1.0,
        alignment_weight: float = 1.0,
        adversarial_weight: float = 1.0,
        encode_covariates: bool = True,
        discriminator_hidden: int = 128,
        discriminator_layers: int = 2,
        library_log_means: torch.Tensor | None = None,
        elbo_estimator: ElboEstimator = "separate",
        measured_features: dict[str, torch.Tensor] | None = None,
    ):
        super().__init__(modalities, measured_features)
        if elbo_estimator not in ("shared", "separate"):
            raise ValueError(
                f"elbo_estimator must be 'shared' or 'separate', got {elbo_estimator!r}."
            )
        self.elbo_estimator = elbo_estimator
        if combine not in ("poe", "mean"):
            raise ValueError(f"combine must be 'poe' or 'mean', got {combine!r}.")
        if alignment not in ("mse", "cosine"):
            raise ValueError(f"alignment must be 'mse' or 'cosine', got {alignment!r}.")
        weights = {
            "self_weight": self_weight,
            "cross_weight": cross_weight,
            "alignment_weight": alignment_weight,
            "adversarial_weight": adversarial_weight,
        }
        negative = [name for name, w in weights.items() if w < 0]
        if negative:
            raise ValueError(f"Loss weights must be >= 0: {negative}.")
        self.n_modalities = len(self.modalities)
        self.n_latent_per_modality = n_latent
        self.n_latent = n_latent * self.n_modalities  # size of the embedding, K * d
        self.n_batch = n_batch
        self.combine = combine
        self.alignment = alignment
        self.self_weight = self_weight
        self.cross_weight = cross_weight
        self.alignment_weight = alignment_weight
        self.adversarial_weight = adversarial_weight
        self.encode_covariates = encode_covariates

        n_cat_list = [n_batch] + list(n_cats_per_cov or [])
        arch = {"n_hidden": n_hidden, "n_layers": n_layers, "dropout_rate": dropout_rate}
        # encoders[j]: one body per input modality j, one head per sub-space k: q(z_k | x_j)
        self.encoders = self._modality_encoders(
            n_latent,
            n_cat_list,
            n_continuous_cov,
            encode_covariates,
            n_heads=self.n_modalities,
            **arch,
        )
        self.decoders = self._modality_decoders(n_latent, n_cat_list, n_continuous_cov, **arch)
        self.discriminator = ModalityDiscriminator(
            self.n_latent,
            self.n_modalities,
            n_hidden=discriminator_hidden,
            n_layers=discriminator_layers,
            dropout_rate=dropout_rate,
        )
        self._init_library_predictors(self.n_latent, n_cat_list, library_log_means)

    # ---------------------------------------------------------------- plumbing
    def _get_generative_input(self, tensors: dict, inference_outputs: dict) -> dict:
        return {
            "z_self": inference_outputs["z_self"],
            "z_cross": inference_outputs["z_cross"],
            "library": inference_outputs["library"],
            "z_decoded": inference_outputs.get("z_decoded"),
            **self._covariates(tensors),
        }

    def decoder_input(self, z: torch.Tensor, k: int) -> torch.Tensor:
        """Decoder ``k`` reads sub-space ``k`` only."""
        return self.subspace(z, k)

    def subspace(self, z: torch.Tensor, k: int) -> torch.Tensor:
        """Sub-space ``k`` (``d`` dimensions) of an embedding ``(..., K * d)``."""
        d = self.n_latent_per_modality
        return z[..., k * d : (k + 1) * d]

    # ---------------------------------------------------------------- posteriors
    def _combined(
        self,
        means: torch.Tensor,
        variances: torch.Tensor,
        mask: torch.Tensor,
        n_samples: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Combine experts ``(J, n, d)`` over the modalities in ``mask`` ``(n, J)``.

        Returns the embedding mean, a variance and a sample (``(n_samples, n, d)`` when
        ``n_samples`` is given). For ``"mean"`` the variance is the mixture-mean formula of the
        unnormalised experts (indicative only); rows with no expert get the prior / zeros.
        """
        shape = () if n_samples is None else (n_samples,)
        if self.combine == "poe":
            mean, var = product_of_experts(means, variances, mask)
            return mean, var, Normal(mean, var.sqrt()).rsample(shape)
        weights = mask.T.unsqueeze(-1).to(means.dtype)  # (J, n, 1)
        n_used = weights.sum(0).clamp_min(1.0)
        samples = Normal(means, variances.sqrt()).rsample(shape)  # (*shape, J, n, d)
        sample = (weights * F.normalize(samples, dim=-1)).sum(-3) / n_used
        mean = (weights * F.normalize(means, dim=-1)).sum(0) / n_used
        var = (weights * variances).sum(0) / n_used**2
        return mean, var, sample

    def _single(
        self, means: torch.Tensor, variances: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Posterior of each single expert (elementwise), with one sample each."""
        if self.combine == "poe":  # one expert times the N(0, I) prior
            var = 1.0 / (1.0 + 1.0 / variances.clamp_min(1e-8))
            mean = var * means / variances.clamp_min(1e-8)
            return mean, var, Normal(mean, var.sqrt()).rsample()
        sample = F.normalize(Normal(means, variances.sqrt()).rsample(), dim=-1)
        return F.normalize(means, dim=-1), variances, sample

    # ---------------------------------------------------------------- inference
    @auto_move_data
    def inference(
        self,
        x: torch.Tensor,
        observed: torch.Tensor,
        batch_index: torch.Tensor,
        cat_covs: torch.Tensor | None = None,
        cont_covs: torch.Tensor | None = None,
        use_modalities: torch.Tensor | None = None,
        n_samples: int = 1,
    ) -> dict[str, torch.Tensor]:
        """Run the encoders (K heads each) and combine them over each cell's observed modalities.

        ``use_modalities`` (0/1, length K) restricts the joint posterior to some modalities: the
        embedding from RNA alone is ``(q(z_1 | x_rna), ..., q(z_K | x_rna))``.

        Returns
        -------
        ``z``, ``qz_mean``, ``qz_var`` (joint, ``(n, K * d)``; ``z`` is ``(n_samples, n, K*d)``
        for ``n_samples > 1``), ``library`` ``(n, K)``, ``observed`` (the mask used), and for the
        loss: ``expert_means``/``expert_vars`` ``(K, K, n, d)`` indexed ``[k, j]`` for
        ``q(z_k | x_j)``, ``z_self``/``z_cross`` samples ``(n, K * d)`` with their posterior
        means/variances, and ``modality_means``/``modality_z`` ``(K, n, K * d)``: the latent
        inferred from each single modality ``j``.
        """
        feature_masks = self.feature_masks(batch_index)
        # one (K, n, d) pair per input modality j
        by_input = self.encode_modalities(
            x,
            batch_index,
            cat_covs,
            cont_covs,
            self.encoder_feature_masks(feature_masks, batch_index),
        )
        expert_means = torch.stack([m for m, _ in by_input], dim=1)  # (K, J, n, d), [k, j]
        expert_vars = torch.stack([v for _, v in by_input], dim=1)

        mask = observed if use_modalities is None else observed * use_modalities.to(observed)
        joint = [
            self._combined(
                expert_means[k], expert_vars[k], mask, None if n_samples == 1 else n_samples
            )
            for k in range(self.n_modalities)
        ]
        qz_mean = torch.cat([m for m, _, _ in joint], dim=-1)
        qz_var = torch.cat([v for _, v, _ in joint], dim=-1)
        z = torch.cat([s for _, _, s in joint], dim=-1)

        # single-modality posteriors q(z_k | x_j) and their samples
        single_mean, single_var, single_z = self._single(expert_means, expert_vars)
        modality_means = torch.cat(list(single_mean), dim=-1)  # (K_x, n, K*d)
        modality_z = torch.cat(list(single_z), dim=-1)
        eye = torch.eye(self.n_modalities, device=observed.device, dtype=observed.dtype)
        self_mean = torch.cat([single_mean[k, k] for k in range(self.n_modalities)], dim=-1)
        self_var = torch.cat([single_var[k, k] for k in range(self.n_modalities)], dim=-1)
        z_self = torch.cat([single_z[k, k] for k in range(self.n_modalities)], dim=-1)
        if self.n_modalities == 2:  # the other modality's single posterior
            cross = [
                (single_mean[k, 1 - k], single_var[k, 1 - k], single_z[k, 1 - k]) for k in (0, 1)
            ]
        else:
            cross = [
                self._combined(expert_means[k], expert_vars[k], observed * (1 - eye[k]))
                for k in range(self.n_modalities)
            ]
        outputs = {
            "z": z,
            "qz_mean": qz_mean,
            "qz_var": qz_var,
            "library": self.log_library(x, feature_masks),
            "observed": mask,
            "expert_means": expert_means,
            "expert_vars": expert_vars,
            "z_self": z_self,
            "self_mean": self_mean,
            "self_var": self_var,
            "z_cross": torch.cat([s for _, _, s in cross], dim=-1),
            "cross_mean": torch.cat([m for m, _, _ in cross], dim=-1),
            "cross_var": torch.cat([v for _, v, _ in cross], dim=-1),
            "modality_means": modality_means,
            "modality_z": modality_z,
        }
        if feature_masks:
            outputs["feature_masks"] = feature_masks
        if self.training and n_samples == 1 and self.elbo_estimator == "shared":
            outputs.update(self._decoded_latent(outputs))
        return outputs

    def _cross_mask(self, observed: torch.Tensor) -> torch.Tensor:
        """``(n, K)``: modality k of a cell has a cross term when another one is observed."""
        n_observed = observed.sum(1, keepdim=True)
        return observed * (n_observed - observed > 0).to(observed)

    def _decoded_latent(self, outputs: dict) -> dict[str, torch.Tensor]:
        """Per cell and sub-space, the self or (at random) the cross sample to decode once."""
        cross_mask = self._cross_mask(outputs["observed"])
        total = self.self_weight + self.cross_weight
        p_cross = self.cross_weight / total if total > 0 else 0.0
        decoded_cross = cross_mask * (torch.rand_like(cross_mask) < p_cross).to(cross_mask)
        pick = decoded_cross.repeat_interleave(self.n_latent_per_modality, dim=1) > 0
        return {
            "z_decoded": torch.where(pick, outputs["z_cross"], outputs["z_self"]),
            "decoded_cross": decoded_cross,
        }

    # ---------------------------------------------------------------- generative
    @auto_move_data
    def generative(
        self,
        z_self: torch.Tensor,
        z_cross: torch.Tensor,
        library: torch.Tensor,
        batch_index: torch.Tensor,
        cat_covs: torch.Tensor | None = None,
        cont_covs: torch.Tensor | None = None,
        z_decoded: torch.Tensor | None = None,
    ) -> dict[str, dict]:
        """Observation distributions of every modality from the self and the cross latents.

        Decoding is skipped (empty dict) for a term whose weight is 0. With ``z_decoded`` (the
        ``"shared"`` estimator) only that latent is decoded, as ``px_decoded``.
        """
        covariates = (batch_index, cat_covs, cont_covs)
        if z_decoded is not None:
            return {"px_decoded": self.decode_all(z_decoded, library, *covariates)}
        out = {"px_self": {}, "px_cross": {}}
        if self.self_weight > 0:
            out["px_self"] = self.decode_all(z_self, library, *covariates)
        if self.cross_weight > 0:
            out["px_cross"] = self.decode_all(z_cross, library, *covariates)
        return out

    def loss(
        self,
        tensors: dict,
        inference_outputs: dict,
        generative_outputs: dict,
        kl_weight: float = 1.0,
    ) -> LossOutput:
        """Weighted sum of the self ELBO, cross ELBO, alignment and adversarial terms.

        Every term is logged in ``extra_metrics`` by name (unweighted per-cell means):
        ``self_elbo``, ``cross_elbo``, ``alignment_loss``, ``adversarial_loss``,
        ``reconstruction_loss_<modality>`` (self), ``cross_reconstruction_<modality>``,
        ``kl_self``, ``kl_cross``, ``library_loss``, ``discriminator_loss`` and
        ``discriminator_accuracy``.
        """
        out = inference_outputs
        observed = out["observed"]
        cross_mask = self._cross_mask(observed)
        multimodal = (observed.sum(1) > 1).to(observed)
        zeros = torch.zeros_like(observed)
        terms = self._elbo_terms(
            tensors[REGISTRY_KEYS.X_KEY], out, generative_outputs, cross_mask, kl_weight
        )
        rec_self, rec_cross, kl_self, kl_cross, self_elbo, cross_elbo, weighted_elbo = terms
        alignment = self._alignment(out) if self.alignment_weight > 0 else zeros[:, 0]
        alignment = alignment * multimodal
        adversarial, d_accuracy, d_loss = self._adversarial(out)
        if self.adversarial_weight == 0:
            adversarial = zeros[:, 0]
        library_loss = self._library_loss(tensors, out)

        per_cell = (
            weighted_elbo
            + self.alignment_weight * alignment
            + self.adversarial_weight * adversarial
            + library_loss
        )
        loss = per_cell.mean()

        names = [spec.name for spec in self.modalities]
        extra = {f"reconstruction_loss_{n}": rec_self[:, k].mean() for k, n in enumerate(names)}
        extra.update(
            {f"cross_reconstruction_{n}": rec_cross[:, k].mean() for k, n in enumerate(names)}
        )
        extra.update(
            {
                "self_elbo": self_elbo.mean(),
                "cross_elbo": cross_elbo.mean(),
                "kl_self": kl_self.sum(1).mean(),
                "kl_cross": kl_cross.sum(1).mean(),
                "alignment_loss": alignment.mean(),
                "adversarial_loss": adversarial.mean(),
                "library_loss": library_loss.mean(),
                "discriminator_loss": d_loss,
                "discriminator_accuracy": d_accuracy,
            }
        )
        return LossOutput(
            loss=loss,
            reconstruction_loss={n: rec_self[:, k] for k, n in enumerate(names)},
            kl_local=kl_self.sum(1),
            extra_metrics={k: v.detach() for k, v in extra.items()},
        )
