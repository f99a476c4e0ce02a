"""Downstream analysis of the VAEs: likelihoods, posterior predictive samples, differential tests.

Differential expression runs on scvi-tools' own machinery (``DifferentialComputation`` through
``_de_core``, reached via :mod:`mosaicvi.base._compat`), fed with this package's imputed
normalised values, so its statistics and columns are scvi-tools' (``lfc_mean``,
``bayes_factor``, ``proba_de``, ``is_de_fdr_*``, ``group1``, ...).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd
import torch
from mudata import MuData
from scvi import REGISTRY_KEYS

from mosaicvi.data import OBSERVED_KEY
from mosaicvi.data._constants import MODALITY_VAR_COLUMN, OBSERVED_OBSM_KEY
from mosaicvi.distributions import get_likelihood

from . import _compat

_GROUP_COLUMN = "_mosaicvi_de_group"  # temporary column of the model's own assembled obs


def _counts_or_binary(likelihood) -> bool:
    """Count (library-scaled) or binary data: sparse draws, testable by DE."""
    return likelihood.uses_library or likelihood.name == "bernoulli"


class AnalysisMixin:
    """ELBO, reconstruction error, marginal likelihood, posterior predictive samples and DE.

    For models whose module decodes every modality with a likelihood from a latent with a
    standard normal prior (``VAEModule`` subclasses).
    """

    # ------------------------------------------------------------------ likelihoods
    @torch.inference_mode()
    def get_elbo(
        self,
        adata: MuData | None = None,
        indices: Sequence[int] | None = None,
        batch_size: int | None = None,
    ) -> float:
        """Negative ELBO per cell (lower is better), as scvi-tools' ``get_elbo`` reports it.

        The reconstruction of each cell's observed modalities plus the KL divergence of its
        posterior from the prior, averaged over the cells.
        """
        total, n_cells = 0.0, 0
        for _, losses in self._losses(adata, indices, batch_size):
            per_cell = sum(losses.reconstruction_loss.values()) + sum(losses.kl_local.values())
            total += float(per_cell.sum())
            n_cells += int(per_cell.shape[0])
        return total / n_cells

    @torch.inference_mode()
    def get_reconstruction_error(
        self,
        adata: MuData | None = None,
        indices: Sequence[int] | None = None,
        batch_size: int | None = None,
    ) -> dict[str, float]:
        """Negative log-likelihood per cell of each modality, over the cells that have it.

        Returns
        -------
        ``{modality: mean NLL}`` (NaN for a modality none of the cells has). scvi-tools' own
        helper averages over all cells; here a modality's mean is over the cells that measured
        it, so mosaic data are not diluted by the zeros of unobserved cells.
        """
        sums = dict.fromkeys(self.modalities, 0.0)
        counts = dict.fromkeys(self.modalities, 0.0)
        for tensors, losses in self._losses(adata, indices, batch_size):
            observed = tensors[OBSERVED_KEY]
            for k, name in enumerate(self.modalities):
                sums[name] += float(losses.reconstruction_loss[name].sum())
                counts[name] += float(observed[:, k].sum())
        return {
            name: (sums[name] / counts[name] if counts[name] else float("nan")) for name in sums
        }

    def _losses(self, adata, indices, batch_size):
        """``(tensors, LossOutput)`` per minibatch, with the KL weight at 1 (the true ELBO)."""
        with self._data_for(adata) as assembled:
            loader = self._make_data_loader(adata=assembled, indices=indices, batch_size=batch_size)
            if len(loader.indices) == 0:
                raise ValueError("`indices` selects no cell; pass at least one cell position.")
            for tensors in loader:
                _, _, losses = self.module(tensors, loss_kwargs={"kl_weight": 1.0})
                yield tensors, losses

    @torch.inference_mode()
    def get_marginal_ll(
        self,
        adata: MuData | None = None,
        indices: Sequence[int] | None = None,
        n_mc_samples: int = 100,
        batch_size: int | None = None,
        return_mean: bool = True,
    ) -> float | np.ndarray:
        """Negative marginal log-likelihood per cell, by importance sampling.

        ``log p(x) ~ logsumexp_s [log p(x | z_s) + log p(z_s) - log q(z_s | x)] - log S`` with
        ``S = n_mc_samples`` draws from each cell's joint posterior, over its observed
        modalities. Like scvi-tools, the negative value is returned (lower is better).

        Returns
        -------
        The mean over cells, or with ``return_mean=False`` one value per cell.
        """
        if n_mc_samples < 1:
            raise ValueError(f"n_mc_samples must be at least 1, got {n_mc_samples}.")
        values = []
        with self._data_for(adata) as assembled:
            loader = self._make_data_loader(adata=assembled, indices=indices, batch_size=batch_size)
            for tensors in loader:
                log_w = self.module.importance_log_weights(tensors, n_mc_samples)
                log_px = torch.logsumexp(log_w, dim=0) - np.log(n_mc_samples)
                values.append(-log_px.cpu().numpy())
        values = np.concatenate(values)
        return float(values.mean()) if return_mean else values

    # ------------------------------------------------------------------ posterior predictive
    @torch.inference_mode()
    def posterior_predictive_sample(
        self,
        adata: MuData | None = None,
        indices: Sequence[int] | None = None,
        modality: str | None = None,
        n_samples: int = 1,
        batch_size: int | None = None,
    ):
        """Draws of one modality's data from the posterior predictive distribution.

        ``z`` is drawn from each cell's joint posterior, then the data from the modality's
        likelihood; counts use the cell's observed library of the modality, or where the cell
        lacks the modality the library predicted from its latent (imputed draws).

        Returns
        -------
        A :class:`sparse.GCXS` array, as scvi-tools returns: ``(n_cells, n_features)`` for
        ``n_samples=1``, else ``(n_cells, n_features, n_samples)``. Sparse for counts and
        binary data (ATAC); a dense ``numpy`` array for a Gaussian modality.
        """
        import sparse

        if modality is None:
            raise ValueError(f"Pass `modality=`, one of {self.modalities}.")
        if n_samples < 1:
            raise ValueError(f"n_samples must be at least 1, got {n_samples}.")
        k = self._check_modality(modality)
        likelihood = get_likelihood(self.modality_specs[k].likelihood)
        sparse_output = _counts_or_binary(likelihood)
        blocks = []
        with self._data_for(adata) as assembled:
            loader = self._make_data_loader(adata=assembled, indices=indices, batch_size=batch_size)
            if len(loader.indices) == 0:
                raise ValueError("`indices` selects no cell; pass at least one cell position.")
            for tensors in loader:
                draws = self._predictive_draws(tensors, k, likelihood, n_samples)
                draws = np.moveaxis(draws.cpu().numpy(), 0, -1)  # (cells, features, samples)
                blocks.append(sparse.GCXS.from_numpy(draws) if sparse_output else draws)
        out = sparse.concatenate(blocks, axis=0) if sparse_output else np.concatenate(blocks)
        return out[..., 0] if n_samples == 1 else out

    def _predictive_draws(self, tensors, k: int, likelihood, n_samples: int) -> torch.Tensor:
        inputs = self.module._get_inference_input(tensors)
        draws = []
        for _ in range(n_samples):
            outputs = self.module.inference(**inputs)
            z = outputs["z"]
            params = self.module.decoder_parameters(
                k, z, inputs["batch_index"], inputs["cat_covs"], inputs["cont_covs"]
            )
            library = (
                self._library(z, inputs, outputs["library"], k)
                if likelihood.uses_library
                else torch.zeros_like(z[:, :1])
            )
            draws.append(likelihood.distribution(params, library).sample())
        return torch.stack(draws)

    # ------------------------------------------------------------------ differential tests
    def differential_expression(
        self,
        adata: MuData | None = None,
        groupby: str | None = None,
        group1: str | Sequence[str] | None = None,
        group2: str | None = None,
        idx1: Sequence[int] | Sequence[bool] | str | None = None,
        idx2: Sequence[int] | Sequence[bool] | str | None = None,
        modality: str | None = None,
        mode: Literal["vanilla", "change"] = "change",
        delta: float = 0.25,
        batch_size: int | None = None,
        all_stats: bool = True,
        batch_correction: bool = False,
        batchid1: Sequence[str] | None = None,
        batchid2: Sequence[str] | None = None,
        fdr_target: float = 0.05,
        silent: bool = True,
        **kwargs,
    ) -> pd.DataFrame:
        """Bayesian differential expression of one count modality between groups of cells.

        Genes, proteins or peaks (differential accessibility): the posterior of each feature's
        normalised expression is sampled for both groups (imputed for cells that lack the
        modality) and compared with scvi-tools' ``DifferentialComputation``.

        Parameters
        ----------
        adata
            Registered MuData (``None``: the training data).
        groupby
            Column of ``mdata.obs`` with the groups.
        group1
            Group(s) tested one by one against ``group2``; default: every group.
        group2
            Reference group; ``None``: the rest of the cells.
        idx1, idx2
            Instead of ``groupby``: positions or boolean masks of the two groups.
        modality
            The modality to test (a count or binary likelihood).
        mode, delta
            ``"change"``: probability that the log fold change exceeds ``delta`` in absolute
            value; ``"vanilla"``: probability that expression is higher in group 1.
        batch_size
            Minibatch size for decoding.
        all_stats
            Add raw mean, fraction of non-zero values and mean normalised value per group
            (``raw_mean1``, ``non_zeros_proportion1``, ...), over the cells that measured the
            modality.
        batch_correction
            Decode with every batch that measured the modality and pool, instead of each
            cell's own batch.
        batchid1, batchid2
            Batches to decode the groups with when ``batch_correction`` is True.
        fdr_target
            Target posterior false discovery rate of the ``is_de_fdr_<fdr_target>`` column.
        silent
            Hide the progress bar.
        **kwargs
            Passed to scvi-tools' ``DifferentialComputation.get_bayes_factors``
            (``n_samples_overall``, ``pseudocounts``, ``use_permutation``, ...).

        Returns
        -------
        DataFrame indexed by feature, with scvi-tools' columns (``proba_de``,
        ``bayes_factor``, ``lfc_mean``, ``lfc_median``, ``lfc_std``, ``is_de_fdr_*``,
        ``comparison``, ``group1``, ``group2``, ...).
        """
        if modality is None:
            raise ValueError(f"Pass `modality=`, one of {self.modalities}.")
        k = self._check_modality(modality)
        likelihood = get_likelihood(self.modality_specs[k].likelihood)
        if not _counts_or_binary(likelihood):
            raise ValueError(
                f"Differential expression compares normalised counts; modality {modality!r} "
                f"uses the {likelihood.name!r} likelihood. Test a count modality."
            )
        if (groupby is None) == (idx1 is None):
            raise ValueError("Pass either `groupby` (a column of mdata.obs) or `idx1`.")
        mdata = self.mdata if adata is None else adata
        if groupby is not None and groupby not in mdata.obs:
            raise KeyError(
                f"groupby {groupby!r} is not a column of mdata.obs "
                f"(columns: {list(mdata.obs.columns)})."
            )
        columns = np.flatnonzero(self.adata.var[MODALITY_VAR_COLUMN].to_numpy() == modality)
        with self._data_for(adata) as assembled:
            manager = self.get_anndata_manager(assembled, required=True)
            if batch_correction:
                self._check_batches_measured(batchid1, batchid2, k, manager)
            if groupby is not None:
                assembled.obs[_GROUP_COLUMN] = (
                    mdata.obs[groupby].reindex(assembled.obs_names).astype(str).to_numpy()
                )
            try:
                return _compat.differential_core(
                    manager,
                    columns,
                    model_fn=self._de_sampler(manager, k, batch_size),
                    representation_fn=None,
                    groupby=_GROUP_COLUMN if groupby is not None else None,
                    group1=group1,
                    group2=group2,
                    idx1=idx1,
                    idx2=idx2,
                    all_stats=all_stats,
                    all_stats_fn=self._de_statistics(k),
                    col_names=self.modality_var_names(modality),
                    mode=mode,
                    batchid1=batchid1,
                    batchid2=batchid2,
                    delta=delta,
                    batch_correction=batch_correction,
                    fdr=fdr_target,
                    silent=silent,
                    **kwargs,
                )
            finally:
                if _GROUP_COLUMN in assembled.obs:
                    del assembled.obs[_GROUP_COLUMN]

    def _check_batches_measured(self, batchid1, batchid2, k, manager) -> None:
        """Batch-corrected DE decodes with batches; each must have measured the modality."""
        names = [*(batchid1 or []), *(batchid2 or [])]
        if names:
            self._transform_batch_codes(manager.adata, names, k)
            return
        unmeasured, _ = self._training_batch_codes(k)
        if len(unmeasured):
            mapping = _compat.field_state(manager.registry, REGISTRY_KEYS.BATCH_KEY)
            lacking = [str(mapping["categorical_mapping"][c]) for c in unmeasured]
            raise ValueError(
                f"batch_correction=True decodes with every batch, but batches {lacking} never "
                f"measured {self.modalities[k]!r}. Pass `batchid1`/`batchid2` with batches "
                "that measured it."
            )

    def _de_sampler(self, manager, k: int, batch_size: int | None):
        """scvi-tools' ``model_fn``: posterior draws of normalised values, ``(draws, features)``.

        Each draw is one cell's normalised expression decoded from one posterior sample of z,
        with the cell's batch (or ``transform_batch``); cells that lack the modality get it
        imputed, as in :meth:`get_normalized_expression`.
        """
        import scvi

        rng = np.random.default_rng(scvi.settings.seed)  # which cells are drawn, reproducibly

        def sample(adata, indices, transform_batch=None, n_samples_overall=None, **_):
            indices = np.asarray(indices)
            if n_samples_overall is not None and len(indices):
                indices = rng.choice(indices, int(n_samples_overall))
            if transform_batch is None:
                codes, (unmeasured, measured) = [None], self._batches_without(k)
            else:
                codes = _compat.batch_codes(manager, [transform_batch])
                unmeasured, measured = None, []
            loader = self._make_data_loader(adata=adata, indices=indices, batch_size=batch_size)
            draws = []
            with torch.inference_mode():
                for tensors in loader:
                    values = self._decoded_values(
                        tensors, k, None, codes, unmeasured, measured, 1, 1, sample_z=True
                    )
                    draws.append(values[0])
            return np.concatenate(draws)

        return sample

    @staticmethod
    def _de_statistics(k: int):
        """Raw per-group statistics over the cells that measured the modality.

        scvi-tools' ``scrna_raw_counts_properties`` averages over every cell, which in a mosaic
        counts the zeros of cells that never measured the modality.
        """

        def statistics(manager, idx1, idx2) -> dict[str, np.ndarray]:
            x = manager.get_from_registry(REGISTRY_KEYS.X_KEY)
            observed = np.asarray(manager.adata.obsm[OBSERVED_OBSM_KEY])[:, k].astype(bool)
            out = {}
            for suffix, idx in (("1", idx1), ("2", idx2)):
                mask = np.zeros(manager.adata.n_obs, dtype=bool)
                mask[np.asarray(idx)] = True
                rows = np.flatnonzero(mask & observed)
                block = x[rows]  # the manager's X is the tested modality's columns
                block = block.toarray() if hasattr(block, "toarray") else np.asarray(block)
                totals = np.maximum(block.sum(1, keepdims=True), 1.0)
                empty = np.full(block.shape[1], np.nan)
                out[f"raw_mean{suffix}"] = block.mean(0) if len(rows) else empty
                out[f"non_zeros_proportion{suffix}"] = (block > 0).mean(0) if len(rows) else empty
                out[f"raw_normalized_mean{suffix}"] = (
                    (block / totals * 1e4).mean(0) if len(rows) else empty
                )
            return out

        return statistics


class NoLikelihoodMixin:
    """The analysis methods of :class:`AnalysisMixin`, refused with the reason and the way out.

    For models without an observation likelihood (e.g. JAE's autoencoder): there is no ELBO,
    marginal likelihood, posterior predictive distribution or posterior to test.
    """

    def _no_likelihood(self, what: str):
        name = type(self).__name__
        raise NotImplementedError(
            f"{name} is an autoencoder without an observation likelihood, so it has no {what}. "
            "Use MultiVAE or CLUE for likelihood-based analysis, or test "
            f"`{name}.get_normalized_expression(...)` with e.g. scanpy.tl.rank_genes_groups."
        )

    def get_elbo(self, *args, **kwargs):  # noqa: D102
        self._no_likelihood("ELBO")

    def get_reconstruction_error(self, *args, **kwargs):  # noqa: D102
        self._no_likelihood("reconstruction log-likelihood")

    def get_marginal_ll(self, *args, **kwargs):  # noqa: D102
        self._no_likelihood("marginal likelihood")

    def posterior_predictive_sample(self, *args, **kwargs):  # noqa: D102
        self._no_likelihood("posterior predictive distribution")

    def differential_expression(self, *args, **kwargs):  # noqa: D102
        self._no_likelihood("posterior over expression to test for differential expression")
