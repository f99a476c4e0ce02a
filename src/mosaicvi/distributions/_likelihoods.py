"""Registry of per-modality likelihoods.

Each likelihood knows how to turn a decoder's hidden layer into a torch distribution, how to
encode its data for the encoder, and what its library-free expected value is.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from scvi.distributions import NegativeBinomial, ZeroInflatedNegativeBinomial
from torch import nn
from torch.distributions import Bernoulli, Distribution, Normal, Poisson

_EPS = 1e-8


class Likelihood:
    """Base class: the behaviour shared by a family of observation models."""

    name: str = ""
    #: data must be non-negative integers
    requires_counts: bool = False
    #: expected values scale with a per-cell, per-modality library size
    uses_library: bool = False

    def make_head(self, n_hidden: int, n_vars: int) -> nn.Module:
        """Layer mapping the decoder's hidden state to this likelihood's parameters."""
        raise NotImplementedError

    def distribution(self, params: dict[str, torch.Tensor], library: torch.Tensor) -> Distribution:
        """Observation distribution given head outputs and log-library ``(n, 1)``."""
        raise NotImplementedError

    def normalized_mean(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """Expected value for a library size of 1 (proportions for counts)."""
        raise NotImplementedError

    def encoder_input(self, x: torch.Tensor) -> torch.Tensor:
        """Transform of the raw data that the encoder reads."""
        return x

    def restrict(
        self, params: dict[str, torch.Tensor], feature_mask: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Parameters for data measured on the features where ``feature_mask`` is 1 only.

        Unchanged by default: each feature's distribution stands alone. Likelihoods whose
        means are proportions of a library size renormalise them over the measured features.
        """
        return params

    def target(self, x: torch.Tensor) -> torch.Tensor:
        """Data the likelihood scores (e.g. binarised for Bernoulli)."""
        return x

    def log_likelihood(
        self,
        px: Distribution,
        x: torch.Tensor,
        memo: dict | None = None,
        feature_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Log-likelihood of each cell's data (``target(x)``) under ``px``, summed over features.

        ``memo``: one dict shared by the calls that score the same ``x`` with the same decoder
        (several decodings of one minibatch); terms that do not depend on the decoded means are
        then computed once. ``feature_mask`` (same shape as ``x``, 1/0): only the features
        marked 1 are scored; the values elsewhere are ignored.
        """
        target = self.target(x)
        if feature_mask is not None:
            target = target * feature_mask
        per_cell = getattr(px, "log_prob_per_cell", None)
        if per_cell is not None:
            return per_cell(target, memo=memo, feature_mask=feature_mask)
        return masked_sum(px.log_prob(target), feature_mask)


class _ScaleHead(nn.Module):
    """Log-softmax proportions per feature, plus optional dispersion and zero-inflation.

    The head returns ``log_scale`` (log proportions): the likelihoods read ``log mu = log_scale
    + library`` directly instead of taking the log of a softmax, which saves element-wise passes
    over the decoded matrix and keeps tiny proportions finite.
    """

    def __init__(self, n_hidden: int, n_vars: int, dispersion: bool, zero_inflation: bool):
        super().__init__()
        self.scale = nn.Linear(n_hidden, n_vars)
        self.log_theta = nn.Parameter(torch.zeros(n_vars)) if dispersion else None
        self.zi_logits = nn.Linear(n_hidden, n_vars) if zero_inflation else None

    def forward(self, h: torch.Tensor) -> dict[str, torch.Tensor]:
        params = {"log_scale": F.log_softmax(self.scale(h), dim=-1)}
        if self.log_theta is not None:
            params["theta"] = self.log_theta.exp().expand_as(params["log_scale"])
        if self.zi_logits is not None:
            params["zi_logits"] = self.zi_logits(h)
        return params


def masked_sum(values: torch.Tensor, feature_mask: torch.Tensor | None) -> torch.Tensor:
    """``values`` summed over features, those where ``feature_mask`` is 0 left out."""
    return (values if feature_mask is None else values * feature_mask).sum(-1)


def log_factorial(x: torch.Tensor) -> torch.Tensor:
    """``lgamma(x + 1)`` of counts, evaluated on CPU only where ``x > 1`` (it is 0 for 0 and 1).

    Single-cell counts are mostly 0 or 1, so this skips most ``lgamma`` calls; the term is
    constant in the parameters and never needs a gradient. On an accelerator it is evaluated
    densely: selecting the entries would make the step wait for the host.
    """
    if x.device.type != "cpu":
        return torch.lgamma(x + 1.0)
    out = torch.zeros_like(x)
    above_one = x > 1
    out[above_one] = torch.lgamma(x[above_one] + 1.0)
    return out


class CountPoisson(Poisson):
    """Poisson over counts with a cheaper log-density (no per-entry support check).

    Parameters
    ----------
    rate
        Rates; or give ``log_rate`` instead (then ``rate`` is only computed if read).
    log_rate
        Log rates, e.g. log proportions plus a log library.
    total_rate
        ``rate.sum(-1)`` when it is known without summing (a library size times proportions
        that sum to one).
    """

    def __init__(
        self,
        rate: torch.Tensor | None = None,
        log_rate: torch.Tensor | None = None,
        total_rate: torch.Tensor | None = None,
    ):
        if (rate is None) == (log_rate is None):
            raise ValueError("Give exactly one of `rate` and `log_rate`.")
        self._rate, self._log_rate, self._total_rate = rate, log_rate, total_rate
        shape = (rate if rate is not None else log_rate).shape
        torch.distributions.Distribution.__init__(self, shape, validate_args=False)

    @property
    def rate(self) -> torch.Tensor:  # noqa: D102
        if self._rate is None:
            self._rate = self._log_rate.exp()
        return self._rate

    @property
    def log_rate(self) -> torch.Tensor:
        """Log of the rates."""
        if self._log_rate is None:
            self._log_rate = torch.log(self._rate)
        return self._log_rate

    def expand(self, batch_shape, _instance=None):  # noqa: D102
        return CountPoisson(rate=self.rate.expand(batch_shape))

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return value * self.log_rate - self.rate - log_factorial(value)

    def log_prob_per_cell(
        self,
        value: torch.Tensor,
        sparse: bool | None = None,
        memo: dict | None = None,
        feature_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``log_prob(value).sum(-1)`` for cells x features, computed per cell.

        ``feature_mask`` (1/0, shape of ``value``, whose entries must be 0 where it is 0):
        features marked 0 are left out.

        ``sum_j x_j log rate_j`` needs the log rates at the non-zero counts only: with
        ``sparse`` (default: on CPU) it reads them there, which for sparse data such as ATAC
        counts (a few % non-zero) saves most of a decoding's element-wise work. The non-zero
        positions and ``log x!`` depend on the data alone and are kept in ``memo`` (if given)
        for the next decoding of the same ``value``.
        """
        if value.dim() != 2:
            return masked_sum(self.log_prob(value), feature_mask)
        if sparse is None:
            sparse = value.device.type == "cpu"
        memo = {} if memo is None else memo
        if "log_factorial" not in memo:
            if sparse:  # flat positions of the non-zero counts, for index_select
                rows, cols = (value > 0).nonzero(as_tuple=True)
                counts = value[rows, cols]
                memo["nonzero"] = (rows, rows * value.shape[1] + cols, counts)
                log_fact = torch.lgamma(counts + 1.0)
                memo["log_factorial"] = value.new_zeros(len(value)).index_add(0, rows, log_fact)
            else:
                memo["log_factorial"] = log_factorial(value).sum(-1)
        if feature_mask is not None:
            total = (self.rate * feature_mask).sum(-1)
        elif self._total_rate is not None:
            total = self._total_rate
        else:
            total = self.rate.sum(-1)
        per_cell = -total - memo["log_factorial"]
        if not sparse:
            return per_cell + (value * self.log_rate).sum(-1)
        rows, flat, counts = memo["nonzero"]
        log_rate = self.log_rate.reshape(-1).index_select(0, flat)
        return per_cell.index_add(0, rows, counts * log_rate)


class FeatureDispersionNB(NegativeBinomial):
    """scvi-tools' negative binomial with a log-density that exploits sparse counts.

    ``log NB(x; mu, theta) = theta log(theta / (theta + mu)) + x log(mu / (theta + mu))
    + lgamma(x + theta) - lgamma(theta) - lgamma(x + 1)``. The gamma-function terms cancel
    where ``x = 0``, so they (and their ``digamma`` gradients, which dominated a CPU training
    step) are evaluated only at the non-zero counts on CPU (on an accelerator they are dense,
    which avoids a host-device synchronisation). When ``theta`` is one dispersion per
    feature broadcast over cells, ``theta log theta`` is computed once per feature.
    ``log_mu`` (optional): the log of ``mu``, when the decoder has it (log proportions plus log
    library), so that it is not recomputed from ``mu``.
    """

    def __init__(self, *args, log_mu: torch.Tensor | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.log_mu = log_mu

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:  # noqa: D102
        mu, theta = self.mu, self.theta
        per_feature = theta.dim() >= 2 and theta.stride(-2) == 0
        base = theta[..., 0, :] if per_feature else theta
        log_theta_mu = torch.log(theta + mu + _EPS)
        dense = (
            base * torch.log(base + _EPS)
            - theta * log_theta_mu
            + value * (torch.log(mu + _EPS) - log_theta_mu)
        )
        return _add_gamma_terms(dense, value, theta, sparse=value.device.type == "cpu")

    def log_prob_per_cell(
        self,
        value: torch.Tensor,
        sparse: bool | None = None,
        memo: dict | None = None,
        feature_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``log_prob(value).sum(-1)`` for cells x features, computed per cell.

        ``feature_mask`` (1/0, shape of ``value``, whose entries must be 0 where it is 0):
        features marked 0 are left out.

        With one dispersion per feature, the terms that depend on ``theta`` alone are evaluated
        once per feature, so ``lgamma(theta)`` and its ``digamma`` gradient cost one evaluation
        per feature instead of one per non-zero count.
        ``sparse`` (default: on CPU) evaluates ``lgamma(x + theta)`` at the non-zero counts only.
        The terms free of ``mu`` are stored in ``memo`` (if given) and reused from it: pass one
        dict to the calls that score the same ``value`` with the same ``theta``.
        """
        mu, theta = self.mu, self.theta
        if value.dim() != 2 or theta.dim() != 2 or theta.stride(0) != 0:
            return masked_sum(self.log_prob(value), feature_mask)
        base = theta[0]
        log_theta_mu = torch.log(theta + mu + _EPS)
        log_mu = self.log_mu if self.log_mu is not None else torch.log(mu + _EPS)
        log_ratio = log_mu - log_theta_mu
        # sums, not matrix products: autocast would run those in bfloat16 under mixed precision
        mean_terms = masked_sum(value * log_ratio - log_theta_mu * base, feature_mask)
        if memo is not None and "count_terms" in memo:
            return mean_terms + memo["count_terms"]
        if sparse is None:
            sparse = value.device.type == "cpu"
        count_terms = _nb_count_terms(value, base, sparse=sparse, feature_mask=feature_mask)
        if memo is not None:
            memo["count_terms"] = count_terms
        return mean_terms + count_terms


def _nb_count_terms(
    value: torch.Tensor,
    theta: torch.Tensor,
    sparse: bool,
    feature_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """The NB log-density terms free of the mean, per cell, for per-feature ``theta`` ``(G,)``.

    ``sum_j theta_j log theta_j + sum_{j: x_j > 0} lgamma(x_j + theta_j) - lgamma(theta_j)
    - lgamma(x_j + 1)``. ``sparse=True`` evaluates ``lgamma(x + theta)`` at the non-zero counts
    only (fast on CPU); ``False`` densely, which on an accelerator avoids the host-device
    synchronisation of ``nonzero()``. With ``feature_mask`` the sums run over its features.
    """
    present = (value > 0).to(theta.dtype)
    theta_terms = theta * torch.log(theta + _EPS)
    if feature_mask is None:
        theta_terms = theta_terms.sum()
    else:
        theta_terms = (feature_mask * theta_terms).sum(-1)
    per_cell = theta_terms - (present * torch.lgamma(theta)).sum(-1)
    if not sparse:
        gamma = torch.lgamma(value + theta) - torch.lgamma(value + 1.0)
        return per_cell + (gamma * present).sum(-1)
    rows, cols = present.nonzero(as_tuple=True)
    counts = value[rows, cols]
    gamma = torch.lgamma(counts + theta[cols]) - torch.lgamma(counts + 1.0)
    return per_cell.index_add(0, rows, gamma)


def _add_gamma_terms(
    dense: torch.Tensor, value: torch.Tensor, theta: torch.Tensor, sparse: bool
) -> torch.Tensor:
    """``dense + lgamma(x + theta) - lgamma(theta) - lgamma(x + 1)``, the last three zero at x = 0.

    ``sparse=True`` evaluates them at the non-zero counts only (fast on CPU); ``False`` densely,
    which on an accelerator is cheap and avoids the host-device synchronisation of
    ``nonzero()``.
    """
    if not sparse:
        return dense + (torch.lgamma(value + theta) - torch.lgamma(theta) - torch.lgamma(value + 1))
    nonzero = (value > 0).nonzero(as_tuple=True)
    counts, theta_nz = value[nonzero], theta[nonzero]
    gamma_terms = (
        torch.lgamma(counts + theta_nz) - torch.lgamma(theta_nz) - torch.lgamma(counts + 1.0)
    )
    return dense.index_put(nonzero, gamma_terms, accumulate=True)


class NegativeBinomialLikelihood(Likelihood):
    """Negative binomial with per-feature dispersion; mean = library x proportion."""

    name = "nb"
    requires_counts = True
    uses_library = True

    def make_head(self, n_hidden, n_vars):  # noqa: D102
        return _ScaleHead(n_hidden, n_vars, dispersion=True, zero_inflation=False)

    def distribution(self, params, library):  # noqa: D102
        log_mu = params["log_scale"] + library
        return FeatureDispersionNB(mu=log_mu.exp(), theta=params["theta"], log_mu=log_mu)

    def normalized_mean(self, params):  # noqa: D102
        return params["log_scale"].exp()

    def restrict(self, params, feature_mask):
        """Log proportions renormalised over the measured features (they sum to 1 there)."""
        measured = params["log_scale"].masked_fill(feature_mask == 0, float("-inf"))
        shift = torch.logsumexp(measured, dim=-1, keepdim=True)
        return {**params, "log_scale": params["log_scale"] - shift}

    def encoder_input(self, x):
        """log1p of counts per 10,000, so sequencing depth does not shape the latent."""
        return torch.log1p(1e4 * x / x.sum(-1, keepdim=True).clamp_min(1.0))


class ZeroInflatedNegativeBinomialLikelihood(NegativeBinomialLikelihood):
    """Zero-inflated negative binomial; expected value ``(1 - pi) * mu``."""

    name = "zinb"

    def make_head(self, n_hidden, n_vars):  # noqa: D102
        return _ScaleHead(n_hidden, n_vars, dispersion=True, zero_inflation=True)

    def distribution(self, params, library):  # noqa: D102
        mu = (params["log_scale"] + library).exp()
        return ZeroInflatedNegativeBinomial(
            mu=mu + _EPS, theta=params["theta"], zi_logits=params["zi_logits"]
        )

    def normalized_mean(self, params):  # noqa: D102
        return params["log_scale"].exp() * torch.sigmoid(-params["zi_logits"])


class PoissonLikelihood(NegativeBinomialLikelihood):
    """Poisson with rate = library x proportion (e.g. ATAC fragment counts)."""

    name = "poisson"

    def make_head(self, n_hidden, n_vars):  # noqa: D102
        return _ScaleHead(n_hidden, n_vars, dispersion=False, zero_inflation=False)

    def distribution(self, params, library):  # noqa: D102
        # the proportions sum to one, so the rates of a cell sum to its library size
        return CountPoisson(
            log_rate=params["log_scale"] + library, total_rate=library.exp().squeeze(-1)
        )


class _LogitHead(nn.Module):
    def __init__(self, n_hidden: int, n_vars: int):
        super().__init__()
        self.logits = nn.Linear(n_hidden, n_vars)

    def forward(self, h):
        return {"logits": self.logits(h)}


class BernoulliLikelihood(Likelihood):
    """Bernoulli on binarised data (any value > 0 counts as 1), e.g. peak accessibility."""

    name = "bernoulli"

    def make_head(self, n_hidden, n_vars):  # noqa: D102
        return _LogitHead(n_hidden, n_vars)

    def distribution(self, params, library):  # noqa: D102
        return Bernoulli(logits=params["logits"])

    def normalized_mean(self, params):  # noqa: D102
        return torch.sigmoid(params["logits"])

    def encoder_input(self, x):  # noqa: D102
        return (x > 0).to(x.dtype)

    def target(self, x):  # noqa: D102
        return (x > 0).to(x.dtype)


class _GaussianHead(nn.Module):
    def __init__(self, n_hidden: int, n_vars: int):
        super().__init__()
        self.mean = nn.Linear(n_hidden, n_vars)
        self.log_scale = nn.Parameter(torch.zeros(n_vars))

    def forward(self, h):
        mean = self.mean(h)
        return {"mean": mean, "scale": self.log_scale.exp().expand_as(mean)}


class NormalLikelihood(Likelihood):
    """Gaussian with per-feature scale, for continuous data (CLR, z-scores, LSI)."""

    name = "normal"

    def make_head(self, n_hidden, n_vars):  # noqa: D102
        return _GaussianHead(n_hidden, n_vars)

    def distribution(self, params, library):  # noqa: D102
        return Normal(params["mean"], params["scale"] + 1e-4)

    def normalized_mean(self, params):  # noqa: D102
        return params["mean"]


LIKELIHOODS: dict[str, Likelihood] = {
    lik.name: lik
    for lik in (
        NegativeBinomialLikelihood(),
        ZeroInflatedNegativeBinomialLikelihood(),
        PoissonLikelihood(),
        BernoulliLikelihood(),
        NormalLikelihood(),
    )
}


def get_likelihood(name: str) -> Likelihood:
    """Look up a likelihood by name, with an error listing the valid names."""
    try:
        return LIKELIHOODS[name]
    except KeyError:
        raise ValueError(
            f"Unknown likelihood {name!r}. Choose one of {sorted(LIKELIHOODS)}."
        ) from None
