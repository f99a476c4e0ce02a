"""MultiVAE: the user-facing model."""

from __future__ import annotations

from typing import Literal

from mudata import MuData

from mosaicvi.base import (
    AnalysisMixin,
    ImputationMixin,
    MosaicModel,
    TrainingDefaults,
    check_architecture,
)

from ._module import MultiVAEModule
from ._plan import MultiVAETrainingPlan


class MultiVAE(AnalysisMixin, ImputationMixin, MosaicModel):
    """Multimodal VAE for paired and mosaic data (product or mixture of experts, MMD).

    Each modality has its own encoder and decoder; a cell's joint posterior combines the experts
    of the modalities it has. Single-modality posteriors are trained too (subset ELBO), so
    ``get_latent_representation(modality="rna")`` of a paired cell lands near its joint
    embedding, and cells lacking a modality can have it imputed with
    :meth:`get_normalized_expression`.

    Parameters
    ----------
    adata
        MuData registered with :meth:`setup_mudata`.
    n_latent
        Latent dimensions.
    n_hidden, n_layers, dropout_rate
        Encoder/decoder architecture (LayerNorm, LeakyReLU).
    mixing
        ``"poe"``: product of the observed experts and the N(0, I) prior; ``"moe"``: mixture
        (mean of the observed unimodal latents).
    integration_loss
        ``"latent"``: MMD between batches on the joint latent; ``"marginal"``: MMD between the
        latents inferred from different modalities (helps unimodal queries); ``None``.
        Its weight is ``plan_kwargs={"mmd_weight": ...}`` in :meth:`train`.
    unimodal_weight
        Weight of the subset-ELBO term that trains single-modality posteriors (0 disables it).
    elbo_estimator
        How a training step estimates the joint plus subset ELBO: ``"separate"`` (default)
        decodes the joint posterior and one single-modality posterior of every multimodal cell;
        ``"shared"`` decodes each cell once (its joint or, at random, one single-modality
        posterior, reweighted so the estimate is unbiased): cheaper steps that need about twice
        the epochs for the same result.
    encode_covariates
        Also condition the encoders on batch and covariates.

    Notes
    -----
    Training defaults (:attr:`training_defaults`): Adam with learning rate 1e-3, ``mmd_weight``
    1, ``max_kl_weight`` 0.1 (KL warm-up over a quarter of the epochs), minibatch 128, early
    stopping on the validation loss. Options of ``train(plan_kwargs=...)`` are those of
    :class:`~mosaicvi.train.MultiVAETrainingPlan`.

    Examples
    --------
    >>> mosaicvi.model.MultiVAE.setup_mudata(mdata, modalities=["rna", "adt"], batch_key="batch")
    >>> model = mosaicvi.model.MultiVAE(mdata)
    >>> model.train()
    >>> z = model.get_latent_representation()
    >>> protein = model.get_normalized_expression(modality="adt")
    """

    _module_cls = MultiVAEModule
    _training_plan_cls = MultiVAETrainingPlan
    training_defaults = TrainingDefaults(
        plan_kwargs={"lr": 1e-3, "mmd_weight": 1.0, "max_kl_weight": 0.1}
    )

    def __init__(
        self,
        adata: MuData,
        n_latent: int = 16,
        n_hidden: int = 128,
        n_layers: int = 1,
        dropout_rate: float = 0.2,
        mixing: Literal["poe", "moe"] = "poe",
        integration_loss: Literal["latent", "marginal"] | None = "latent",
        unimodal_weight: float = 1.0,
        elbo_estimator: Literal["shared", "separate"] = "separate",
        encode_covariates: bool = True,
    ):
        check_architecture(locals())
        super().__init__(adata)
        specs = self.modality_specs
        self.module = self._module_cls(
            specs,
            **self._covariate_sizes(),
            n_latent=n_latent,
            n_hidden=n_hidden,
            n_layers=n_layers,
            dropout_rate=dropout_rate,
            mixing=mixing,
            encode_covariates=encode_covariates,
            unimodal_weight=unimodal_weight,
            elbo_estimator=elbo_estimator,
            integration_loss=integration_loss,
            library_log_means=self._library_log_means(specs),
            measured_features=self._measured_features(),
        )
        self._model_summary_string = self._model_summary(
            f"{mixing}, latent {n_latent}, integration {integration_loss}"
        )
        self.init_params_ = self._get_init_params(locals())
