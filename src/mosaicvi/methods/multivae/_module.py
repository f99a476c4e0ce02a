"""MultiVAE: product/mixture-of-experts VAE over any number of modalities."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from scvi import REGISTRY_KEYS
from scvi.module.base import LossOutput, auto_move_data
from torch.distributions import Normal, kl_divergence

from mosaicvi.base import VAEModule
from mosaicvi.data import ModalitySpec
from mosaicvi.distributions import MIXINGS, groupwise_mmd

IntegrationLoss = Literal["latent", "marginal"]
ElboEstimator = Literal["shared", "separate"]


class MultiVAEModule(VAEModule):
    """Multimodal VAE with a joint posterior over the *observed* modalities of each cell.

    Every modality k has an encoder ``q(z | x_k)`` and a decoder ``p(x_k | z, covariates)``. The
    joint posterior combines the observed experts by a product of experts with the N(0, I) prior
    expert (``mixing="poe"``) or by their mixture mean (``"moe"``). With ``unimodal_weight > 0``
    each single-modality posterior of a multi-modal cell is trained to reconstruct all of the
    cell's observed modalities too (subset ELBO), so that a cell embedded from one modality lands
    near its joint embedding.

    The objective of a cell with several modalities is its joint ELBO plus ``unimodal_weight``
    times the ELBO of one of its single-modality posteriors (drawn uniformly at every step).
    ``elbo_estimator`` says how a training step estimates it:

    - ``"separate"`` (default): the joint posterior of every cell and one single-modality
      posterior of every multimodal cell are decoded (two decoding passes per step).
    - ``"shared"``: every cell is decoded once. A multimodal cell decodes its joint posterior
      with probability ``1 / (1 + unimodal_weight)`` and otherwise a single-modality posterior;
      either ELBO is weighted ``1 + unimodal_weight``, an unbiased estimate of the sum at the
      decoding cost of a plain VAE. Each step is cheaper but carries half the decoder signal,
      so it needs about twice the epochs for the same result.

    Evaluation (validation loss, :meth:`loss` in ``eval()`` mode) always uses ``"separate"``.

    Parameters
    ----------
    modalities
        One :class:`~mosaicvi.data.ModalitySpec` per modality, in the column order of ``X``.
    n_batch
        Number of batches.
    n_cats_per_cov
        Categories of each extra categorical covariate.
    n_continuous_cov
        Number of continuous covariates (concatenated to encoder and decoder inputs).
    n_latent, n_hidden, n_layers, dropout_rate
        Architecture (LayerNorm and LeakyReLU throughout).
    mixing
        ``"poe"`` or ``"moe"``.
    encode_covariates
        Condition the encoders on batch and categorical covariates too.
    unimodal_weight
        Weight of the subset-ELBO term over single-modality posteriors (0 disables it).
    elbo_estimator
        ``"shared"`` or ``"separate"`` (see above).
    integration_loss
        ``"latent"``: MMD between batches of the joint latents; ``"marginal"``: MMD between the
        single-modality latents of different modalities; ``None``: no MMD.
    library_log_means
        ``(K,)`` mean observed log library size of each modality; starting value of the library
        predictors that give cells lacking a count modality a library size for imputation.
    measured_features
        Per-batch feature masks (see :class:`~mosaicvi.base.ModalityModule`).
    """

    def __init__(
        self,
        modalities: Sequence[ModalitySpec],
        n_batch: int = 1,
        n_cats_per_cov: Sequence[int] | None = None,
        n_continuous_cov: int = 0,
        n_latent: int = 16,
        n_hidden: int = 128,
        n_layers: int = 1,
        dropout_rate: float = 0.2,
        mixing: Literal["poe", "moe"] = "poe",
        encode_covariates: bool = True,
        unimodal_weight: float = 1.0,
        integration_loss: IntegrationLoss | None = "latent",
        library_log_means: torch.Tensor | None = None,
        elbo_estimator: ElboEstimator = "separate",
        measured_features: dict[str, torch.Tensor] | None = None,
    ):
        super().__init__(modalities, measured_features)
        if mixing not in MIXINGS:
            raise ValueError(f"mixing must be one of {sorted(MIXINGS)}, got {mixing!r}.")
        if integration_loss not in (None, "latent", "marginal"):
            raise ValueError(
                f"integration_loss must be 'latent', 'marginal' or None, got {integration_loss!r}."
            )
        if elbo_estimator not in ("shared", "separate"):
            raise ValueError(
                f"elbo_estimator must be 'shared' or 'separate', got {elbo_estimator!r}."
            )
        self.elbo_estimator = elbo_estimator
        self.n_latent = n_latent
        self.n_batch = n_batch
        self.mixing = mixing
        self.unimodal_weight = unimodal_weight
        self.integration_loss = integration_loss

        n_cat_list = [n_batch] + list(n_cats_per_cov or [])
        self.encode_covariates = encode_covariates
        arch = {"n_hidden": n_hidden, "n_layers": n_layers, "dropout_rate": dropout_rate}
        self.encoders = self._modality_encoders(
            n_latent, n_cat_list, n_continuous_cov, encode_covariates, **arch
        )
        self.decoders = self._modality_decoders(n_latent, n_cat_list, n_continuous_cov, **arch)
        self._init_library_predictors(n_latent, n_cat_list, library_log_means)

    # ---------------------------------------------------------------- plumbing
    def _get_generative_input(self, tensors: dict, inference_outputs: dict) -> dict:
        return {
            "z": inference_outputs.get("z_decoded", inference_outputs["z"]),
            "library": inference_outputs["library"],
            **self._covariates(tensors),
        }

    def combine(
        self, expert_means: torch.Tensor, expert_vars: torch.Tensor, observed: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Joint posterior mean and variance over the experts marked in ``observed``."""
        return MIXINGS[self.mixing](expert_means, expert_vars, observed)

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
        """Encode every modality and combine the observed experts.

        ``use_modalities`` (a 0/1 tensor of length K) restricts the joint posterior to some
        modalities, e.g. to embed cells from RNA alone.
        """
        feature_masks = self.feature_masks(batch_index)
        means, variances = zip(
            *self.encode_modalities(
                x,
                batch_index,
                cat_covs,
                cont_covs,
                self.encoder_feature_masks(feature_masks, batch_index),
            )
        )
        expert_means, expert_vars = torch.stack(means), torch.stack(variances)
        mask = observed if use_modalities is None else observed * use_modalities.to(observed)
        qz_mean, qz_var = self.combine(expert_means, expert_vars, mask)
        qz = Normal(qz_mean, qz_var.sqrt())
        z = qz.rsample() if n_samples == 1 else qz.rsample((n_samples,))
        outputs = {
            "z": z,
            "qz_mean": qz_mean,
            "qz_var": qz_var,
            "expert_means": expert_means,
            "expert_vars": expert_vars,
            "library": self.log_library(x, feature_masks),
            "observed": mask,
        }
        if feature_masks:
            outputs["feature_masks"] = feature_masks
        if self._shared_pass(n_samples):
            outputs.update(self._decoded_posterior(outputs))
        return outputs

    def _shared_pass(self, n_samples: int = 1) -> bool:
        """Whether this step decodes one posterior per cell (training with ``"shared"``)."""
        return (
            self.training
            and n_samples == 1
            and self.elbo_estimator == "shared"
            and self.unimodal_weight > 0
        )

    def _decoded_posterior(self, outputs: dict) -> dict[str, torch.Tensor]:
        """The posterior each cell decodes this step under the ``"shared"`` estimator.

        A multimodal cell takes its joint posterior with probability ``1 / (1 +
        unimodal_weight)``, otherwise the single-modality posterior of one of its observed
        modalities drawn uniformly; cells with one modality take the joint one. ``subset_weight``
        is the cell's weight in the loss (``1 + unimodal_weight`` for multimodal cells).
        """
        observed = outputs["observed"]
        multimodal = observed.sum(1) > 1
        drawn = torch.multinomial(observed, 1).ravel()
        single_mean, single_var = self.combine(
            outputs["expert_means"],
            outputs["expert_vars"],
            F.one_hot(drawn, len(self.modalities)).to(observed),
        )
        p_joint = 1.0 / (1.0 + self.unimodal_weight)
        unimodal = multimodal & (torch.rand_like(observed[:, 0]) >= p_joint)
        pick = unimodal.unsqueeze(-1)
        mean = torch.where(pick, single_mean, outputs["qz_mean"])
        var = torch.where(pick, single_var, outputs["qz_var"])
        return {
            "z_decoded": Normal(mean, var.sqrt()).rsample(),
            "decoded_mean": mean,
            "decoded_var": var,
            "decoded_unimodal": unimodal.to(observed),
            # 1/p_joint and unimodal_weight/(1 - p_joint) are both 1 + unimodal_weight
            "subset_weight": 1.0 + self.unimodal_weight * multimodal.to(observed),
        }

    # ---------------------------------------------------------------- generative
    @auto_move_data
    def generative(
        self,
        z: torch.Tensor,
        library: torch.Tensor,
        batch_index: torch.Tensor,
        cat_covs: torch.Tensor | None = None,
        cont_covs: torch.Tensor | None = None,
    ) -> dict[str, dict]:
        """Observation distribution of every modality given ``z``."""
        return {"px": self.decode_all(z, library, batch_index, cat_covs, cont_covs)}

    # ---------------------------------------------------------------- loss
    def _unimodal_elbos(
        self, tensors: dict, inference_outputs: dict, kl_weight: float, memo: dict
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Subset ELBO of single-modality posteriors for cells with several modalities.

        Each step scores one modality per cell, drawn uniformly from the cell's observed ones:
        an unbiased estimate of the mean over its modalities at the cost of one extra decoding
        pass (instead of one per modality). ``memo`` is the joint reconstruction's (same data,
        same decoders). Also returns a sample of every single-modality posterior, for the
        marginal MMD.
        """
        observed = inference_outputs["observed"]
        means, variances = inference_outputs["expert_means"], inference_outputs["expert_vars"]

        def single(selection: torch.Tensor) -> Normal:
            mean, var = self.combine(means, variances, selection)
            return Normal(mean, var.sqrt())

        samples = []
        for k in range(len(self.modalities)):
            only_k = torch.zeros_like(observed)
            only_k[:, k] = observed[:, k]
            samples.append(single(only_k).rsample())
        multimodal = (observed.sum(1) > 1).to(observed)
        # skipping minibatches without paired cells saves a decoding pass on CPU; on a GPU the
        # check would make the step wait for the host, and the masked terms are zero anyway
        skip = multimodal.device.type == "cpu" and not multimodal.any()
        if self.unimodal_weight == 0 or skip or "z_decoded" in inference_outputs:
            return torch.zeros_like(multimodal), samples

        drawn = torch.multinomial(observed, 1).ravel()
        qz = single(F.one_hot(drawn, len(self.modalities)).to(observed))
        z = qz.rsample()
        px = self.generative(z, inference_outputs["library"], **self._covariates(tensors))["px"]
        recon = self._reconstruction(
            tensors[REGISTRY_KEYS.X_KEY],
            px,
            observed,
            memo,
            inference_outputs.get("feature_masks"),
        )
        recon = sum(recon.values())
        kl = kl_divergence(qz, Normal(0.0, 1.0)).sum(-1)
        return multimodal * (recon + kl_weight * kl), samples

    def _integration_penalty(
        self, tensors: dict, inference_outputs: dict, unimodal_z: list[torch.Tensor]
    ) -> torch.Tensor:
        if self.integration_loss == "latent":
            batch = tensors[REGISTRY_KEYS.BATCH_KEY].ravel()
            return groupwise_mmd(inference_outputs["z"], batch, n_groups=self.n_batch)
        # marginal: pool single-modality latents, grouped by the modality they came from
        observed = inference_outputs["observed"]
        n_cells, n_modalities = observed.shape
        points = torch.cat(unimodal_z)
        groups = torch.arange(n_modalities, device=points.device).repeat_interleave(n_cells)
        return groupwise_mmd(points, groups, n_groups=n_modalities, weights=observed.T.reshape(-1))

    def loss(
        self,
        tensors: dict,
        inference_outputs: dict,
        generative_outputs: dict,
        kl_weight: float = 1.0,
        mmd_weight: float = 0.0,
    ) -> LossOutput:
        """Joint ELBO + ``unimodal_weight`` x subset ELBO + ``mmd_weight`` x MMD."""
        x = tensors[REGISTRY_KEYS.X_KEY]
        observed = inference_outputs["observed"]
        memo = {}  # terms of the likelihoods that the subset ELBO's decoding shares
        reconstruction = self._reconstruction(
            x, generative_outputs["px"], observed, memo, inference_outputs.get("feature_masks")
        )
        shared = "z_decoded" in inference_outputs
        prefix = "decoded" if shared else "qz"
        qz = Normal(inference_outputs[f"{prefix}_mean"], inference_outputs[f"{prefix}_var"].sqrt())
        kl_joint = kl_divergence(qz, Normal(0.0, 1.0)).sum(-1)
        per_cell = sum(reconstruction.values()) + kl_weight * kl_joint

        unimodal, unimodal_z = self._unimodal_elbos(tensors, inference_outputs, kl_weight, memo)
        library_loss = self._library_loss(tensors, inference_outputs)
        if shared:  # one decoded posterior per cell stands for the joint and the subset ELBO
            decoded_unimodal = inference_outputs["decoded_unimodal"]
            unimodal = per_cell * decoded_unimodal
            per_cell = per_cell * inference_outputs["subset_weight"] + library_loss
        else:
            per_cell = per_cell + self.unimodal_weight * unimodal + library_loss

        mmd = x.new_zeros(())
        if self.integration_loss is not None and mmd_weight > 0:
            mmd = self._integration_penalty(tensors, inference_outputs, unimodal_z)
        loss = per_cell.mean() + mmd_weight * mmd

        extra = {f"reconstruction_loss_{name}": r.mean() for name, r in reconstruction.items()}
        extra.update(
            {
                "kl_joint": kl_joint.mean(),
                "unimodal_loss": unimodal.mean(),
                "library_loss": library_loss.mean(),
                "mmd": mmd,
            }
        )
        return LossOutput(
            loss=loss,
            reconstruction_loss=reconstruction,
            kl_local=kl_joint,
            extra_metrics={k: v.detach() for k, v in extra.items()},
        )
