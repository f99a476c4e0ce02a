"""Base modules: modality plumbing for every model, VAE decoding on top of it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from scvi import REGISTRY_KEYS
from scvi.module.base import BaseModuleClass
from scvi.nn import FCLayers
from torch import nn
from torch.distributions import Normal

from mosaicvi.data import OBSERVED_KEY, ModalitySpec
from mosaicvi.distributions import get_likelihood
from mosaicvi.nn import ModalityDecoder, ModalityEncoder


class ModalityModule(BaseModuleClass):
    """Base of every mosaicvi module: the modalities and the covariates of a minibatch.

    Knows the modalities (their column slices of ``X``) and reads the observed mask and the
    covariates from a minibatch. Subclasses set ``n_latent`` (the width of the embedding that
    ``get_latent_representation`` returns) and implement ``inference`` (whose outputs hold
    ``qz_mean``, ``z`` and ``observed``), ``generative`` and ``loss``.

    Parameters
    ----------
    modalities
        One :class:`~mosaicvi.data.ModalitySpec` per modality, in the column order of ``X``.
    measured_features
        ``{modality: (n_batch, n_features) bool}``: the features each batch measured, for
        modalities with per-batch feature masks (see ``setup_mudata(feature_masks=...)``). They
        are rebuilt from the registry, not saved with the weights.
    """

    def __init__(
        self,
        modalities: Sequence[ModalitySpec],
        measured_features: Mapping[str, torch.Tensor] | None = None,
    ):
        super().__init__()
        self.modalities = list(modalities)
        bounds = torch.tensor([0] + [spec.n_vars for spec in self.modalities]).cumsum(0)
        self.slices = [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]
        measured_features = dict(measured_features or {})
        self.masked_modalities = []  # indices of the modalities with feature masks
        for k, spec in enumerate(self.modalities):
            if spec.name in measured_features:
                table = torch.as_tensor(measured_features[spec.name]).to(torch.float32)
                self.register_buffer(f"measured_{k}", table, persistent=False)
                self.masked_modalities.append(k)

    #: During training, the probability that a cell's encoders read only the features that
    #: its batch and another batch (drawn at random) both measured, while its likelihood still
    #: scores all of its own: encoders then embed a cell alike from either panel (modalities
    #: with feature masks only).
    panel_swap: float = 0.5

    def encoder_feature_masks(
        self, feature_masks: dict[int, torch.Tensor], batch_index: torch.Tensor
    ) -> dict[int, torch.Tensor]:
        """The masks the encoders read: ``feature_masks``, with panel swaps in training."""
        if not feature_masks or not self.training or self.panel_swap <= 0:
            return feature_masks
        some = next(iter(feature_masks.values()))
        n_batch = getattr(self, f"measured_{self.masked_modalities[0]}").shape[0]
        other = torch.randint(n_batch, (len(some),), device=some.device)
        swap = (torch.rand(len(some), 1, device=some.device) < self.panel_swap).to(some)
        swapped = {}
        for k, own in feature_masks.items():
            both = own * getattr(self, f"measured_{k}")[other]
            keep = swap * (both.sum(-1, keepdim=True) > 0).to(own)  # never an empty panel
            swapped[k] = keep * both + (1 - keep) * own
        return swapped

    def feature_masks(self, batch_index: torch.Tensor | None) -> dict[int, torch.Tensor]:
        """``{k: (n, n_features_k)}`` 1/0 measured features of each cell, masked modalities only."""
        if not self.masked_modalities:
            return {}
        rows = batch_index.long().ravel()
        return {k: getattr(self, f"measured_{k}")[rows] for k in self.masked_modalities}

    @staticmethod
    def _covariates(tensors: dict) -> dict:
        return {
            "batch_index": tensors[REGISTRY_KEYS.BATCH_KEY],
            "cat_covs": tensors.get(REGISTRY_KEYS.CAT_COVS_KEY),
            "cont_covs": tensors.get(REGISTRY_KEYS.CONT_COVS_KEY),
        }

    def _get_inference_input(self, tensors: dict) -> dict:
        return {
            "x": tensors[REGISTRY_KEYS.X_KEY],
            "observed": tensors[OBSERVED_KEY],
            **self._covariates(tensors),
        }

    @staticmethod
    def _cat_list(batch_index, cat_covs) -> list[torch.Tensor]:
        cats = [batch_index]
        if cat_covs is not None:
            cats.extend(torch.split(cat_covs, 1, dim=1))
        return cats


class VAEModule(ModalityModule):
    """A module with one likelihood and decoder per modality and library-size predictors.

    Adds to :class:`ModalityModule` the per-modality likelihoods, observed log library sizes and
    their prediction from a latent (for cells that lack a count modality), decoding and the
    reconstruction loss. Subclasses build ``self.decoders`` (one
    :class:`~mosaicvi.nn.ModalityDecoder` per modality); their inference outputs also hold
    ``library``.

    Parameters
    ----------
    modalities
        One :class:`~mosaicvi.data.ModalitySpec` per modality, in the column order of ``X``.
    """

    def __init__(
        self,
        modalities: Sequence[ModalitySpec],
        measured_features: Mapping[str, torch.Tensor] | None = None,
    ):
        super().__init__(modalities, measured_features)
        self.likelihoods = [get_likelihood(spec.likelihood) for spec in self.modalities]

    def _modality_encoders(
        self,
        n_latent: int,
        n_cat_list: Sequence[int],
        n_continuous_cov: int,
        encode_covariates: bool,
        **architecture,
    ) -> nn.ModuleList:
        """One Gaussian encoder ``q(z | x_k)`` per modality, conditioned on covariates or not."""
        return nn.ModuleList(
            ModalityEncoder(
                spec.n_vars + n_continuous_cov * encode_covariates,
                n_latent,
                lik,
                n_cat_list=list(n_cat_list) if encode_covariates else None,
                reads_feature_mask=k in self.masked_modalities,
                **architecture,
            )
            for k, (spec, lik) in enumerate(zip(self.modalities, self.likelihoods))
        )

    def _modality_decoders(
        self, n_latent: int, n_cat_list: Sequence[int], n_continuous_cov: int, **architecture
    ) -> nn.ModuleList:
        """One decoder ``p(x_k | z, covariates)`` per modality."""
        return nn.ModuleList(
            ModalityDecoder(
                n_latent + n_continuous_cov, spec.n_vars, lik, n_cat_list=n_cat_list, **architecture
            )
            for spec, lik in zip(self.modalities, self.likelihoods)
        )

    def _init_library_predictors(
        self,
        n_latent: int,
        n_cat_list: Sequence[int],
        library_log_means: torch.Tensor | None,
    ) -> None:
        """One linear head per count modality: log library from the latent and covariates."""
        self.library_predictors = nn.ModuleDict()
        for k, (spec, lik) in enumerate(zip(self.modalities, self.likelihoods)):
            if not lik.uses_library:
                continue
            predictor = FCLayers(
                n_in=n_latent,
                n_out=1,
                n_cat_list=list(n_cat_list),
                n_layers=1,
                use_activation=False,
                use_batch_norm=False,
                dropout_rate=0.0,
            )
            if library_log_means is not None:  # start at the mean: Adam moves a bias slowly
                with torch.no_grad():
                    predictor.fc_layers[0][0].bias.fill_(float(library_log_means[k]))
            self.library_predictors[spec.name] = predictor

    def log_library(
        self, x: torch.Tensor, feature_masks: Mapping[int, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """Per-modality observed log library size, ``(n, K)``; zero-count rows give 0.

        With ``feature_masks`` (from :meth:`feature_masks`) only measured features count.
        """
        feature_masks = feature_masks or {}
        totals = [
            (x[:, s] * feature_masks[k] if k in feature_masks else x[:, s]).sum(1)
            for k, s in enumerate(self.slices)
        ]
        return torch.log(torch.stack(totals, dim=1).clamp_min(1.0))

    def encode_modalities(
        self,
        x: torch.Tensor,
        batch_index: torch.Tensor,
        cat_covs: torch.Tensor | None = None,
        cont_covs: torch.Tensor | None = None,
        feature_masks: Mapping[int, torch.Tensor] | None = None,
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Posterior mean and variance of every modality's encoder (covariates if encoded)."""
        encoded = getattr(self, "encode_covariates", True)
        cats = self._cat_list(batch_index, cat_covs) if encoded else []
        cont = cont_covs if encoded else None
        feature_masks = feature_masks or {}
        return [
            encoder(x[:, s], *cats, cont_covs=cont, feature_mask=feature_masks.get(k))
            for k, (encoder, s) in enumerate(zip(self.encoders, self.slices))
        ]

    def predicted_library(
        self,
        k: int,
        z: torch.Tensor,
        batch_index: torch.Tensor,
        cat_covs: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Log library of count modality ``k`` predicted from ``z`` and covariates, ``(n, 1)``."""
        predictor = self.library_predictors[self.modalities[k].name]
        return predictor(z, *self._cat_list(batch_index, cat_covs))

    # ---------------------------------------------------------------- decoding
    def decoder_input(self, z: torch.Tensor, k: int) -> torch.Tensor:
        """The part of ``z`` that decoder ``k`` reads (all of it unless a subclass says so)."""
        return z

    def decoder_parameters(
        self,
        k: int,
        z: torch.Tensor,
        batch_index: torch.Tensor,
        cat_covs: torch.Tensor | None = None,
        cont_covs: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Likelihood parameters of modality ``k`` decoded from ``z`` (before a library size)."""
        return self.decoders[k].parameters_for(
            self.decoder_input(z, k), *self._cat_list(batch_index, cat_covs), cont_covs=cont_covs
        )

    def decode_all(
        self,
        z: torch.Tensor,
        library: torch.Tensor,
        batch_index: torch.Tensor,
        cat_covs: torch.Tensor | None = None,
        cont_covs: torch.Tensor | None = None,
    ) -> dict:
        """Observation distribution of every modality given ``z`` and log libraries ``(n, K)``."""
        cats = self._cat_list(batch_index, cat_covs)
        feature_masks = self.feature_masks(batch_index)
        px = {}
        for k, (spec, decoder) in enumerate(zip(self.modalities, self.decoders)):
            params = decoder.parameters_for(self.decoder_input(z, k), *cats, cont_covs=cont_covs)
            if k in feature_masks:  # proportions over the features the cell's batch measured
                params = self.likelihoods[k].restrict(params, feature_masks[k])
            px[spec.name] = self.likelihoods[k].distribution(params, library[:, [k]])
        return px

    def _reconstruction(
        self,
        x: torch.Tensor,
        px: dict,
        mask: torch.Tensor,
        memo: dict | None = None,
        feature_masks: Mapping[int, torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Negative log-likelihood per cell of each modality, zero outside ``mask`` ``(n, K)``.

        Pass one ``memo`` dict to the calls that score the same minibatch ``x`` with this
        module's decoders, so that terms free of the decoded means are computed once.
        ``feature_masks`` (the inference outputs' ``"feature_masks"``) leaves unmeasured
        features out.
        """
        memo = {} if memo is None else memo
        feature_masks = feature_masks or {}
        return {
            spec.name: -lik.log_likelihood(
                px[spec.name],
                x[:, self.slices[k]],
                memo=memo.setdefault(spec.name, {}),
                feature_mask=feature_masks.get(k),
            )
            * mask[:, k]
            for k, (spec, lik) in enumerate(zip(self.modalities, self.likelihoods))
        }

    @torch.inference_mode()
    def importance_log_weights(self, tensors: dict, n_samples: int) -> torch.Tensor:
        """``log p(x | z) + log p(z) - log q(z | x)`` for ``n_samples`` draws, ``(S, n)``.

        ``q`` is each cell's joint posterior over its observed modalities and ``p(z)`` the
        standard normal prior; ``x`` is scored on the observed modalities only.
        """
        inputs = self._get_inference_input(tensors)
        outputs = self.inference(**inputs)
        qz = Normal(outputs["qz_mean"], outputs["qz_var"].sqrt())
        prior = Normal(torch.zeros_like(outputs["qz_mean"]), 1.0)
        x, covariates, memo = tensors[REGISTRY_KEYS.X_KEY], self._covariates(tensors), {}
        weights = []
        for _ in range(n_samples):
            z = qz.sample()
            px = self.decode_all(z, outputs["library"], **covariates)
            recon = self._reconstruction(
                x, px, outputs["observed"], memo, outputs.get("feature_masks")
            )
            nll = sum(recon.values())
            weights.append(-nll + prior.log_prob(z).sum(-1) - qz.log_prob(z).sum(-1))
        return torch.stack(weights)

    def _library_loss(self, tensors: dict, inference_outputs: dict) -> torch.Tensor:
        """Squared error of the library predictors on observed cells (z is not moved by it)."""
        z = inference_outputs["qz_mean"].detach()
        observed, library = inference_outputs["observed"], inference_outputs["library"]
        loss = torch.zeros_like(observed[:, 0])
        for k, spec in enumerate(self.modalities):
            if spec.name in self.library_predictors:
                predicted = self.predicted_library(
                    k,
                    z,
                    tensors[REGISTRY_KEYS.BATCH_KEY],
                    tensors.get(REGISTRY_KEYS.CAT_COVS_KEY),
                ).squeeze(-1)
                loss = loss + observed[:, k] * (predicted - library[:, k]) ** 2
        return loss
