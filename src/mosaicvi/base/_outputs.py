"""Outputs of every model: latent representations and (for VAEs) imputation."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Literal

import anndata as ad
import numpy as np
import pandas as pd
import torch
from mudata import MuData
from scvi import REGISTRY_KEYS

from mosaicvi.data._constants import OBSERVED_OBSM_KEY
from mosaicvi.distributions import get_likelihood

from . import _compat
from ._data import as_names
from ._output import collect_rows


def check_library_size(library_size, allow_latent: bool) -> None:
    """A positive, finite number (or ``"latent"`` where a model predicts library sizes)."""
    if isinstance(library_size, str):
        if allow_latent and library_size == "latent":
            return
        choices = "a positive number or 'latent'" if allow_latent else "a positive number"
        raise ValueError(f"library_size must be {choices}, got {library_size!r}.")
    if (
        isinstance(library_size, bool)
        or not isinstance(library_size, int | float | np.number)
        or not np.isfinite(library_size)
        or library_size <= 0
    ):
        raise ValueError(
            f"library_size must be a positive, finite number, got {library_size!r} (1 gives "
            "proportions that sum to 1 per cell, e.g. 1e4 counts per 10,000)."
        )


class LatentMixin:
    """``get_latent_representation`` from any module whose inference gives ``qz_mean``/``z``."""

    @torch.inference_mode()
    def get_latent_representation(
        self,
        adata: MuData | None = None,
        indices: Sequence[int] | None = None,
        modality: str | Sequence[str] | None = None,
        give_mean: bool = True,
        batch_size: int | None = None,
        return_dist: bool = False,
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Joint latent representation, or the latent inferred from some modalities only.

        Parameters
        ----------
        adata
            A MuData registered with (or shaped like) the training data; ``None`` for the
            training data.
        indices
            Cells to use (positions in ``adata``); all by default.
        modality
            ``None`` for the joint posterior over each cell's observed modalities, or a modality
            name (or names) to embed from those modalities only.
        give_mean
            Posterior mean (default) instead of one sample.
        batch_size
            Minibatch size for inference.
        return_dist
            Return the posterior's mean and variance instead (as scvi-tools does).

        Returns
        -------
        ``(n_cells, n_latent)`` array, rows in the order of ``adata.obs_names[indices]``; with
        ``return_dist`` a tuple ``(mean, variance)`` of such arrays.
        """
        with self._data_for(adata) as assembled:
            use = self._use_modalities(modality, self._observed(assembled, indices))
            loader = self._make_data_loader(adata=assembled, indices=indices, batch_size=batch_size)
            if len(loader.indices) == 0:
                raise ValueError("`indices` selects no cell; pass at least one cell position.")
            latents, variances = [], []
            for tensors in loader:
                inputs = self.module._get_inference_input(tensors)
                outputs = self.module.inference(**inputs, use_modalities=use)
                latents.append(outputs["qz_mean"] if give_mean or return_dist else outputs["z"])
                if return_dist:
                    if "qz_var" not in outputs:
                        raise ValueError(
                            f"{type(self).__name__} has a deterministic latent: no posterior "
                            "distribution to return. Use return_dist=False."
                        )
                    variances.append(outputs["qz_var"])
        if return_dist:
            return torch.cat(latents).cpu().numpy(), torch.cat(variances).cpu().numpy()
        return torch.cat(latents).cpu().numpy()


class ImputationMixin:
    """``get_normalized_expression`` for modules that decode likelihood parameters from z."""

    @torch.inference_mode()
    def get_normalized_expression(
        self,
        adata: MuData | None = None,
        indices: Sequence[int] | None = None,
        modality: str | None = None,
        transform_batch: str | Sequence[str] | None = None,
        n_samples: int = 1,
        library_size: float | Literal["latent"] = 1,
        return_mean: bool = True,
        batch_size: int | None = None,
        from_modalities: str | Sequence[str] | None = None,
        out: str | os.PathLike | None = None,
        features: str | Sequence[str] | None = None,
    ) -> pd.DataFrame | np.ndarray | ad.AnnData:
        """Expected values of one modality decoded from the joint latent (imputation).

        Cells that lack ``modality`` get it imputed from the modalities they have.

        Parameters
        ----------
        adata
            Registered MuData, or ``None`` for the training data.
        indices
            Cells to use; all by default.
        modality
            Modality to decode.
        transform_batch
            Decode as if every cell came from this batch (or the mean over several batches).
            ``None`` keeps each cell's batch, except for cells of a batch in which no training
            cell measured ``modality``: the decoder has no trained parameters for that batch
            there, so those cells are decoded with the mean over the batches that measured it.
        n_samples
            With 1, decode the posterior mean of z (deterministic). With more, decode that many
            posterior samples.
        library_size
            Count likelihoods only: ``1`` gives proportions that sum to 1 per cell; a number
            rescales them; ``"latent"`` uses each cell's observed library of that modality, or,
            where the modality is unobserved, the library predicted from the cell's latent.
        return_mean
            Average over samples; with ``False`` and ``n_samples > 1`` an array of shape
            ``(n_samples, n_cells, n_features)`` is returned.
        batch_size
            Minibatch size for inference.
        from_modalities
            Infer z from these modalities only (e.g. predict protein from RNA for paired cells).
        out
            Path of an ``.h5ad`` file: write the values there minibatch by minibatch (memory
            holds one minibatch, not ``cells x features``) and return it as a backed AnnData.
        features
            Names of the modality's features to return (e.g. a few peaks of 25,000); all by
            default. Only these columns are kept from each minibatch.

        Returns
        -------
        DataFrame ``cells x features`` (the modality's ``var_names``), a samples-first array, or
        with ``out`` a backed AnnData.
        """
        if modality is None:
            raise ValueError(f"Pass `modality=`, one of {self.modalities}.")
        k = self._check_modality(modality)
        likelihood = get_likelihood(self.modality_specs[k].likelihood)
        check_library_size(library_size, allow_latent=True)
        if library_size != 1 and not likelihood.uses_library:
            raise ValueError(
                f"library_size applies to count likelihoods; {modality!r} uses "
                f"{likelihood.name!r}. Leave library_size=1."
            )
        if out is not None and not return_mean and n_samples > 1:
            raise ValueError("out= writes one value per cell and feature: use return_mean=True.")
        columns, var_names = self._feature_selection(modality, features)
        with self._data_for(adata) as assembled:
            use = self._use_modalities(from_modalities, self._observed(assembled, indices))
            if transform_batch is None:
                codes, (unmeasured, measured) = [None], self._batches_without(k)
            else:
                codes = self._transform_batch_codes(assembled, as_names(transform_batch), k)
                unmeasured, measured = None, []
            loader = self._make_data_loader(adata=assembled, indices=indices, batch_size=batch_size)
            blocks = (
                self._decoded_values(
                    tensors, k, use, codes, unmeasured, measured, n_samples, library_size
                )
                for tensors in loader
            )
            if columns is not None:
                blocks = (values[..., columns] for values in blocks)
            if not return_mean and n_samples > 1:
                return np.concatenate(list(blocks), axis=1)
            means = (samples.mean(0) for samples in blocks)
            obs_names = self._obs_names(assembled, indices)
            return collect_rows(means, obs_names, var_names, out)

    def _decoded_values(
        self,
        tensors,
        k,
        use,
        codes,
        unmeasured,
        measured,
        n_samples,
        library_size,
        sample_z: bool = False,
    ) -> np.ndarray:
        """``(n_samples, cells, features)`` expected values of modality ``k`` for a minibatch.

        With one sample, z is the posterior mean unless ``sample_z`` (one posterior draw).
        """
        likelihood = get_likelihood(self.modality_specs[k].likelihood)
        inputs = self.module._get_inference_input(tensors)
        outputs = self.module.inference(**inputs, use_modalities=use, n_samples=n_samples)
        z = outputs["qz_mean"] if n_samples == 1 and not sample_z else outputs["z"]
        batch_index = inputs["batch_index"]

        def decode(batch_codes) -> torch.Tensor:
            """Mean of the decoded values over ``batch_codes`` (None: each cell's own batch)."""
            per_batch = []
            for code in batch_codes:
                decode_batch = batch_index if code is None else torch.full_like(batch_index, code)
                params = self.module.decoder_parameters(
                    k, z, decode_batch, inputs["cat_covs"], inputs["cont_covs"]
                )
                per_batch.append(likelihood.normalized_mean(params))
            return torch.stack(per_batch).mean(0)

        values = decode(codes)
        if unmeasured is not None:
            # cells of batches that never measured the modality: the decoder has no trained
            # parameters for their batch there, so average the measured ones
            lacking = torch.isin(batch_index.ravel(), unmeasured.to(batch_index.device))
            if lacking.any():
                values = torch.where(lacking.unsqueeze(-1), decode(measured), values)
        if library_size == "latent":
            values = values * self._library(z, inputs, outputs["library"], k).exp()
        elif library_size != 1:
            values = values * float(library_size)
        return (values if n_samples > 1 else values.unsqueeze(0)).cpu().numpy()

    def _training_batch_codes(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(unmeasured, measured)``: training batch codes without and with modality ``k``."""
        observed = self.adata.obsm[OBSERVED_OBSM_KEY][:, k].astype(bool)
        codes = np.asarray(self.adata_manager.get_from_registry(REGISTRY_KEYS.BATCH_KEY)).ravel()
        measured = np.unique(codes[observed])
        return np.setdiff1d(np.unique(codes), measured), measured

    def _batches_without(self, k: int) -> tuple[torch.Tensor | None, list[int]]:
        """Batch codes of the training data in which no cell has modality ``k``, and those with.

        ``(None, [])`` when every batch measured it or none did (e.g. a query that lacks the
        modality: its new batch columns start at zero, the reference's are unknown here).
        """
        unmeasured, measured = self._training_batch_codes(k)
        if len(unmeasured) == 0 or len(measured) == 0:
            return None, []
        return torch.as_tensor(unmeasured), [int(c) for c in measured]

    def _transform_batch_codes(self, assembled, names: list[str], k: int) -> list[int]:
        """Codes of ``transform_batch`` names; a batch must have measured modality ``k``.

        The decoder's parameters for a batch that never measured a modality were never trained
        (a query's reference batches are not checked: the query model does not see them).
        """
        manager = self.get_anndata_manager(assembled, required=True)
        known = [
            str(c)
            for c in _compat.field_state(manager.registry, REGISTRY_KEYS.BATCH_KEY).get(
                "categorical_mapping", []
            )
        ]
        unknown = [n for n in names if str(n) not in known]
        if unknown:
            raise ValueError(f"transform_batch {unknown} are not batches of this model: {known}.")
        codes = _compat.batch_codes(manager, names)
        unmeasured, measured = self._training_batch_codes(k)
        lacking = [n for n, c in zip(names, codes) if c in unmeasured]
        if lacking:
            modality = self.modalities[k]
            raise ValueError(
                f"No training cell of batch {lacking} measured {modality!r}, so the decoder has "
                f"no trained parameters for it there. Pick batches that measured {modality!r}: "
                f"{[known[c] for c in measured]}, or leave transform_batch=None."
            )
        return codes

    def _library(self, z: torch.Tensor, inputs: dict, library: torch.Tensor, k: int):
        """Observed log library of modality k, or the one predicted from z where unobserved."""
        observed = inputs["observed"][:, [k]]
        predicted = self.module.predicted_library(k, z, inputs["batch_index"], inputs["cat_covs"])
        return observed * library[:, [k]] + (1 - observed) * predicted
