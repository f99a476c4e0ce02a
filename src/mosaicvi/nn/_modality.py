"""Per-modality encoder and decoder built on :class:`scvi.nn.FCLayers`.

Covariates enter through ``n_cat_list`` (one-hot columns appended to each layer's input), which is
what scArches-style query surgery can extend with new categories.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from scvi.nn import FCLayers
from torch import nn
from torch.distributions import Distribution

from mosaicvi.distributions import Likelihood


def hidden_layers(
    n_in: int,
    n_hidden: int,
    n_layers: int,
    n_cat_list: Sequence[int] | None,
    dropout_rate: float,
) -> FCLayers:
    """LayerNorm + LeakyReLU MLP body; covariates enter every layer via ``n_cat_list``."""
    return FCLayers(
        n_in=n_in,
        n_out=n_hidden,
        n_cat_list=list(n_cat_list) if n_cat_list else None,
        n_layers=n_layers,
        n_hidden=n_hidden,
        dropout_rate=dropout_rate,
        use_batch_norm=False,
        use_layer_norm=True,
        activation_fn=nn.LeakyReLU,
    )


class ModalityEncoder(nn.Module):
    """Gaussian posterior ``q(z | x_k)`` for one modality.

    Parameters
    ----------
    n_input
        Number of features of the modality (plus continuous covariates, if encoded).
    n_latent
        Latent dimensions.
    likelihood
        The modality's likelihood; defines the input transform (log1p, binarisation, identity).
    n_cat_list
        Categories of each categorical covariate fed to every layer (empty for none).
    n_heads
        Number of posteriors read from the one hidden body (e.g. one per latent sub-space);
        with more than one, the outputs are ``(n_heads, n, n_latent)``.
    reads_feature_mask
        Whether the modality has per-batch feature masks: only then does
        :attr:`missing_value` train (otherwise no loss reaches it, which DDP rejects).
    """

    def __init__(
        self,
        n_input: int,
        n_latent: int,
        likelihood: Likelihood,
        n_cat_list: Sequence[int] | None = None,
        n_hidden: int = 128,
        n_layers: int = 1,
        dropout_rate: float = 0.2,
        n_heads: int = 1,
        reads_feature_mask: bool = False,
    ):
        super().__init__()
        self.likelihood = likelihood
        self.n_heads = n_heads
        self.body = hidden_layers(n_input, n_hidden, n_layers, n_cat_list, dropout_rate)
        self.mean = nn.Linear(n_hidden, n_heads * n_latent)
        self.log_var = nn.Linear(n_hidden, n_heads * n_latent)
        # the input of features a cell's batch did not measure (feature masks): learned, so
        # that "not measured" differs from a measured zero
        self.missing_value = nn.Parameter(torch.zeros(n_input), requires_grad=reads_feature_mask)

    def forward(
        self,
        x: torch.Tensor,
        *cat_covs: torch.Tensor,
        cont_covs: torch.Tensor | None = None,
        feature_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and variance, each ``(n, n_latent)`` (``(n_heads, n, n_latent)``).

        ``feature_mask`` ``(n, n_features)``: 1 where the cell's batch measured a feature;
        unmeasured features are read as :attr:`missing_value` (their data are ignored).
        """
        if feature_mask is None:
            h = self.likelihood.encoder_input(x)
        else:
            h = self.likelihood.encoder_input(x * feature_mask)
            h = torch.where(feature_mask > 0, h, self.missing_value[: h.shape[-1]])
        if cont_covs is not None:
            h = torch.cat([h, cont_covs], dim=-1)
        h = self.body(h, *cat_covs)
        # bounded log-variance keeps PoE precisions finite early in training
        mean, var = self.mean(h), self.log_var(h).clamp(-12.0, 8.0).exp()
        if self.n_heads == 1:
            return mean, var
        return self._by_head(mean), self._by_head(var)

    def _by_head(self, values: torch.Tensor) -> torch.Tensor:
        """``(n, n_heads * d)`` -> ``(n_heads, n, d)``."""
        return values.reshape(len(values), self.n_heads, -1).transpose(0, 1)


class ModalityDecoder(nn.Module):
    """Decoder ``p(x_k | z, covariates)`` returning a torch distribution.

    Parameters
    ----------
    n_latent
        Latent dimensions (plus continuous covariates, which are concatenated to ``z``).
    n_output
        Number of features of the modality.
    likelihood
        Observation model from :data:`mosaicvi.distributions.LIKELIHOODS`.
    n_cat_list
        Categories of each categorical covariate (batch first).
    """

    def __init__(
        self,
        n_latent: int,
        n_output: int,
        likelihood: Likelihood,
        n_cat_list: Sequence[int] | None = None,
        n_hidden: int = 128,
        n_layers: int = 1,
        dropout_rate: float = 0.2,
    ):
        super().__init__()
        self.likelihood = likelihood
        self.body = hidden_layers(n_latent, n_hidden, n_layers, n_cat_list, dropout_rate)
        self.head = likelihood.make_head(n_hidden, n_output)

    def parameters_for(
        self, z: torch.Tensor, *cat_covs: torch.Tensor, cont_covs: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Likelihood parameters (before applying a library size)."""
        h = z if cont_covs is None else torch.cat([z, cont_covs], dim=-1)
        return self.head(self.body(h, *cat_covs))

    def forward(
        self,
        z: torch.Tensor,
        library: torch.Tensor,
        *cat_covs: torch.Tensor,
        cont_covs: torch.Tensor | None = None,
    ) -> Distribution:
        """Observation distribution for log-library ``library`` of shape ``(n, 1)``."""
        params = self.parameters_for(z, *cat_covs, cont_covs=cont_covs)
        return self.likelihood.distribution(params, library)
