"""Base modules: modality plumbing for every model, VAE decoding on top of it."""

from __future__ import annotations

from collections.abc import Sequence

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
    """

    def __init__(self, modalities: Sequence[ModalitySpec]):
        super().__init__()
        self.modalities = list(modalities)
        bounds = torch.tensor([0] + [spec.n_vars for spec in self.modalities]).cumsum(0)
        self.slices = [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]

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

    def __init__(self, modalities: Sequence[ModalitySpec]):
        super().__init__(modalities)
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
                **architecture,
            )
            for spec, lik in zip(self.modalities, self.likelihoods)
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

    def log_library(self, x: torch.Tensor) -> torch.Tensor:
        """Per-modality observed log library size, ``(n, K)``; zero-count rows give 0."""
        return torch.stack([torch.log(x[:, s].sum(1).clamp_min(1.0)) for s in self.slices], dim=1)

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
        return {
            spec.name: decoder(
                self.decoder_input(z, k), library[:, [k]], *cats, cont_covs=cont_covs
            )
            for k, (spec, decoder) in enumerate(zip(self.modalities, self.decoders))
        }

    def _reconstruction(
        self, x: torch.Tensor, px: dict, mask: torch.Tensor, memo: dict | None = None
    ) -> dict[str, torch.Tensor]:
        """Negative log-likelihood per cell of each modality, zero outside ``mask`` ``(n, K)``.

        Pass one ``memo`` dict to the calls that score the same minibatch ``x`` with this
        module's decoders, so that terms free of the decoded means are computed once.
        """
        memo = {} if memo is None else memo
        return {
            spec.name: -lik.log_likelihood(
                px[spec.name], x[:, self.slices[k]], memo=memo.setdefault(spec.name, {})
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
            nll = sum(self._reconstruction(x, px, outputs["observed"], memo).values())
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
