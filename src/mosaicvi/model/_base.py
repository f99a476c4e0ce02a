"""Data registration, outputs and loading shared by every mosaicvi model."""

from __future__ import annotations

import inspect
import logging
import os
import weakref
from collections.abc import Mapping, Sequence
from typing import Literal

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from mudata import MuData
from scvi import REGISTRY_KEYS
from scvi.data import AnnDataManager
from scvi.data._constants import (
    _FIELD_REGISTRIES_KEY,
    _MODEL_NAME_KEY,
    _SETUP_ARGS_KEY,
    _STATE_REGISTRY_KEY,
)
from scvi.data.fields import (
    CategoricalJointObsField,
    CategoricalObsField,
    LayerField,
    NumericalJointObsField,
    ObsmField,
)
from scvi.dataloaders import AnnDataLoader, DataSplitter
from scvi.model._utils import (
    _get_batch_code_from_category,
    parse_device_args,
    use_distributed_sampler,
)
from scvi.model.base import UnsupervisedTrainingMixin
from scvi.model.base._save_load import _initialize_model, _load_saved_files, _validate_var_names

from mosaicvi.data import OBSERVED_KEY, ModalitySpec, assemble_mosaic, build_specs, prepare_query
from mosaicvi.data._constants import BATCH_COLUMN, MODALITY_VAR_COLUMN, OBSERVED_OBSM_KEY
from mosaicvi.dataloaders import InMemoryDataLoader, InMemoryDataSplitter
from mosaicvi.distributions import get_likelihood
from mosaicvi.train import FrozenReferenceCallback

from ._output import collect_rows
from ._surgery import freeze, transfer_reference_weights

logger = logging.getLogger("mosaicvi")

# (model class, id(mdata)) -> (weak reference to the user's MuData, assembled AnnData).
# The user's MuData is never written to, so the link to its assembled form lives here.
_ASSEMBLED: dict[tuple[str, int], tuple[weakref.ref, ad.AnnData]] = {}


def _remember(cls: type, mdata: MuData, assembled: ad.AnnData) -> None:
    for key in [k for k, (ref, _) in _ASSEMBLED.items() if ref() is None]:
        del _ASSEMBLED[key]  # forget MuData objects that no longer exist
    _ASSEMBLED[(cls.__name__, id(mdata))] = (weakref.ref(mdata), assembled)


def _recall(cls: type, mdata: MuData) -> ad.AnnData | None:
    entry = _ASSEMBLED.get((cls.__name__, id(mdata)))
    if entry is None or entry[0]() is not mdata:
        return None
    return entry[1]


DataLoaderChoice = Literal["auto", "in_memory", "anndata"]


def _fits_in_memory(adata: ad.AnnData, fraction: float = 0.25) -> bool:
    """Whether in-memory tensors of ``adata`` (CSR parts + per-cell fields) fit in RAM."""
    if adata.isbacked:
        return False
    x = adata.X
    nnz = x.nnz if sp.issparse(x) else x.size
    needed = nnz * 12 + adata.n_obs * 8 * (8 + sum(v.shape[1] for v in adata.obsm.values()))
    try:
        available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not a POSIX system: assume it fits
        return True
    return needed < fraction * available


def _names(value: str | Sequence[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


class RegisteredModalities:
    """Modalities and features recorded in a model's registry (also of a saved model).

    Parameters
    ----------
    registry
        ``model.registry_`` or the registry of a saved model.
    """

    def __init__(self, registry: dict):
        self._args = registry[_SETUP_ARGS_KEY]
        columns = registry[_FIELD_REGISTRIES_KEY][REGISTRY_KEYS.X_KEY][_STATE_REGISTRY_KEY]
        self._columns = pd.Index(columns["column_names"])

    def modality_var_names(self, modality: str) -> pd.Index:
        """Feature names of one modality."""
        prefix = f"{modality}:"
        names = self._columns[self._columns.str.startswith(prefix)]
        return pd.Index([name[len(prefix) :] for name in names])

    @property
    def modality_specs(self) -> list[ModalitySpec]:
        """One :class:`~mosaicvi.data.ModalitySpec` per modality, in model order."""
        args = self._args
        return [
            ModalitySpec(
                name,
                key,
                args["layers"][name],
                args["likelihoods"][name],
                len(self.modality_var_names(name)),
            )
            for name, key in args["modalities"].items()
        ]


class MosaicModelMixin:
    """Registration of MuData (paired or mosaic), latent and imputation outputs, save/load.

    Models using it work on an assembled AnnData (see :func:`mosaicvi.data.assemble_mosaic`);
    users only ever pass their MuData.
    """

    #: Some parameters take no part in one of the losses (DDP must be told to look for them).
    _ddp_unused_parameters = False

    # ------------------------------------------------------------------ setup
    @classmethod
    def setup_mudata(
        cls,
        mdata: MuData,
        modalities: Mapping[str, str] | Sequence[str] | None = None,
        layers: Mapping[str, str | None] | None = None,
        likelihoods: Mapping[str, str] | None = None,
        batch_key: str | None = None,
        categorical_covariate_keys: Sequence[str] | None = None,
        continuous_covariate_keys: Sequence[str] | None = None,
        **kwargs,
    ) -> None:
        """Register a MuData whose modalities may cover different cells.

        A cell is *observed* in a modality when it is among that modality's ``obs_names``; cells
        missing from a modality are treated as unobserved there (not as zeros). The MuData is
        only read: nothing is added to it.

        Parameters
        ----------
        mdata
            MuData with two or more modalities. Covariates are columns of ``mdata.obs``.
        modalities
            ``{name: key of mdata.mod}`` (e.g. ``{"rna": "rna", "adt": "prot"}``), a list of
            keys, or ``None`` for every modality.
        layers
            ``{name: layer}``; modalities not named read ``X``.
        likelihoods
            ``{name: "nb" | "zinb" | "poisson" | "bernoulli" | "normal"}``. Defaults: ``nb`` for
            RNA- and protein-like names, ``poisson`` for ATAC-like names, otherwise ``nb`` for
            integer data and ``normal`` for anything else. The choice is logged and shown by
            ``model.modality_specs``.
        batch_key
            Column of ``mdata.obs`` with the batch of each cell.
        categorical_covariate_keys, continuous_covariate_keys
            Further columns of ``mdata.obs`` that decoders (and encoders) condition on.
        **kwargs
            ``source_registry`` / ``extend_categories`` of
            :meth:`scvi.data.AnnDataManager.register_fields`.
        """
        cls._setup_and_log(
            mdata,
            modalities,
            layers,
            likelihoods,
            batch_key,
            categorical_covariate_keys,
            continuous_covariate_keys,
            **kwargs,
        )

    @classmethod
    def _setup_and_log(
        cls, mdata: MuData, *args, model_args: dict | None = None, **register_kwargs
    ) -> ad.AnnData:
        """Register ``mdata`` (arguments of :meth:`_register_mudata`) and log what was chosen.

        ``register_kwargs`` are what ``setup_mudata(**kwargs)`` accepts (``source_registry``,
        ``extend_categories``); ``model_args`` a subclass's own setup arguments.
        """
        unknown = set(register_kwargs) - {"source_registry", "extend_categories"}
        if unknown:
            raise TypeError(f"setup_mudata got unexpected arguments {sorted(unknown)}.")
        kwargs = {**(model_args or {}), **register_kwargs}
        assembled = cls._register_mudata(mdata, *args, require_observed=True, **kwargs)
        specs = RegisteredModalities(cls._most_recent_registry(assembled)).modality_specs
        mask = assembled.obsm[OBSERVED_OBSM_KEY].astype(bool)
        for k, spec in enumerate(specs):
            logger.info(
                "%s: mdata.mod[%r]%s, likelihood %r, %d features, observed in %d of %d cells",
                spec.name,
                spec.mod_key,
                f".layers[{spec.layer!r}]" if spec.layer else ".X",
                spec.likelihood,
                spec.n_vars,
                int(mask[:, k].sum()),
                mask.shape[0],
            )
        return assembled

    @classmethod
    def _register_mudata(
        cls,
        mdata: MuData,
        modalities,
        layers,
        likelihoods,
        batch_key,
        categorical_covariate_keys,
        continuous_covariate_keys,
        require_observed: bool,
        source_registry: dict | None = None,
        extend_categories: bool = False,
        **model_args,
    ) -> ad.AnnData:
        """Assemble ``mdata`` and register the result with scvi-tools; return the assembly.

        ``model_args`` are a subclass's own ``setup_mudata`` arguments (e.g. JAE's labels); they
        are recorded in the registry and handed to :meth:`_annotate_assembly` and
        :meth:`_model_fields`.
        """
        specs = build_specs(mdata, modalities, layers, likelihoods)
        setup_method_args = cls._get_setup_method_args(
            cls=cls,
            mdata=mdata,
            modalities={s.name: s.mod_key for s in specs},
            layers={s.name: s.layer for s in specs},
            likelihoods={s.name: s.likelihood for s in specs},
            batch_key=batch_key,
            categorical_covariate_keys=categorical_covariate_keys,
            continuous_covariate_keys=continuous_covariate_keys,
            **model_args,
        )
        assembled = assemble_mosaic(
            mdata,
            specs,
            batch_key,
            categorical_covariate_keys,
            continuous_covariate_keys,
            require_observed=require_observed,
        )
        cls._annotate_assembly(assembled, mdata, specs, model_args, source_registry)
        fields = [
            LayerField(REGISTRY_KEYS.X_KEY, None, is_count_data=False),
            CategoricalObsField(
                REGISTRY_KEYS.BATCH_KEY, BATCH_COLUMN if batch_key is not None else None
            ),
            ObsmField(OBSERVED_KEY, OBSERVED_OBSM_KEY),
            CategoricalJointObsField(REGISTRY_KEYS.CAT_COVS_KEY, categorical_covariate_keys),
            NumericalJointObsField(REGISTRY_KEYS.CONT_COVS_KEY, continuous_covariate_keys),
            *cls._model_fields(model_args),
        ]
        manager = AnnDataManager(fields=fields, setup_method_args=setup_method_args)
        register_kwargs = {}
        if source_registry is not None:
            register_kwargs["source_registry"] = source_registry
            register_kwargs["extend_categories"] = extend_categories
        manager.register_fields(assembled, **register_kwargs)
        cls.register_manager(manager)
        _remember(cls, mdata, assembled)
        return assembled

    @classmethod
    def _annotate_assembly(
        cls,
        assembled: ad.AnnData,
        mdata: MuData,
        specs: Sequence[ModalitySpec],
        model_args: dict,
        source_registry: dict | None,
    ) -> None:
        """Add a subclass's own columns to the (internal) assembled AnnData; none by default."""

    @classmethod
    def _model_fields(cls, model_args: dict) -> list:
        """A subclass's extra scvi-tools fields (read from the assembled AnnData); none here."""
        return []

    @classmethod
    def _most_recent_registry(cls, assembled: ad.AnnData) -> dict:
        return cls._get_most_recent_anndata_manager(assembled, required=True).registry

    @classmethod
    def setup_anndata(cls, adata, *args, **kwargs):
        """Not supported: mosaicvi models are multimodal; use :meth:`setup_mudata`."""
        raise TypeError(
            f"{cls.__name__} works on MuData. Build one with `mudata.MuData({{'rna': rna, "
            f"'adt': adt}})` and call `{cls.__name__}.setup_mudata`."
        )

    @classmethod
    def _assembled_for(cls, mdata: MuData) -> ad.AnnData:
        assembled = _recall(cls, mdata) if isinstance(mdata, MuData) else None
        if assembled is None:
            raise ValueError(
                f"This MuData has not been registered. Call `{cls.__name__}.setup_mudata(mdata, "
                "modalities=..., batch_key=...)` first."
            )
        return assembled

    def _init_mosaic(self, mdata: MuData) -> ad.AnnData:
        """Resolve the user's MuData to its assembled AnnData (call before BaseModelClass init)."""
        assembled = self._assembled_for(mdata)
        self._mdata = mdata
        return assembled

    @property
    def mdata(self) -> MuData:
        """The MuData the model was created with."""
        return self._mdata

    @property
    def modality_specs(self) -> list[ModalitySpec]:
        """Registered modalities: name, key in ``mdata.mod``, layer, likelihood, features."""
        return RegisteredModalities(self.registry_).modality_specs

    @property
    def modalities(self) -> list[str]:
        """Names of the registered modalities."""
        return [spec.name for spec in self.modality_specs]

    def modality_var_names(self, modality: str) -> pd.Index:
        """Feature names of one modality, as in the user's MuData."""
        self._check_modality(modality)
        return RegisteredModalities(self.registry_).modality_var_names(modality)

    def _library_log_means(self, specs) -> torch.Tensor:
        """Mean observed log library of each modality (0 for non-count likelihoods).

        Start value of a module's library predictors (shared by the models).
        """
        observed = self.adata.obsm[OBSERVED_OBSM_KEY].astype(bool)
        # one product with a features x modalities indicator: every library, no copy of X
        owner = self.adata.var[MODALITY_VAR_COLUMN].to_numpy()
        indicator = np.stack([owner == spec.name for spec in specs], axis=1).astype(np.float32)
        totals = np.asarray(self.adata.X @ indicator)
        means = np.zeros(len(specs), dtype=np.float32)
        for k, spec in enumerate(specs):
            seen = totals[observed[:, k], k]
            # a query may lack the modality (its predictor is transferred from the reference)
            if get_likelihood(spec.likelihood).uses_library and seen.size:
                means[k] = np.log(np.maximum(seen, 1.0)).mean()
        return torch.as_tensor(means)

    def _covariate_sizes(self) -> dict:
        """``n_batch``, ``n_cats_per_cov`` and ``n_continuous_cov`` for building a module."""
        cat_state = self.adata_manager.get_state_registry(REGISTRY_KEYS.CAT_COVS_KEY)
        return {
            "n_batch": self.summary_stats.n_batch,
            "n_cats_per_cov": list(cat_state.get("n_cats_per_key", [])),
            "n_continuous_cov": self.summary_stats.get("n_extra_continuous_covs", 0),
        }

    def _check_modality(self, modality: str) -> int:
        if modality not in self.modalities:
            raise KeyError(f"Unknown modality {modality!r}; this model has {self.modalities}.")
        return self.modalities.index(modality)

    # ------------------------------------------------------------------ data resolution
    def _validate_anndata(self, adata=None, copy_if_view: bool = True) -> ad.AnnData:
        """Return the assembled AnnData for ``adata`` (a MuData, or None for the training data).

        Another MuData must have the model's modalities and features; an unregistered one is
        assembled with the model's registration (layers, likelihoods, covariate categories).
        """
        if adata is None:
            return super()._validate_anndata(None, copy_if_view)
        if isinstance(adata, MuData):
            mdata = adata
            if mdata is not self._mdata:
                self._check_features(mdata)
            adata = _recall(type(self), mdata)
            if adata is None:
                adata = self._assemble_like_training(mdata)
        return super()._validate_anndata(adata, copy_if_view)

    def _check_features(self, mdata: MuData) -> None:
        """Same modalities and the same features, in the same order, as the training data."""
        for spec in self.modality_specs:
            if spec.mod_key not in mdata.mod:
                raise KeyError(
                    f"Modality {spec.mod_key!r} (model modality {spec.name!r}) is not in this "
                    f"MuData, which has {list(mdata.mod)}."
                )
            given = mdata.mod[spec.mod_key].var_names
            expected = self.modality_var_names(spec.name)
            if not given.equals(expected):
                raise ValueError(
                    f"The features of modality {spec.name!r} differ from the model's "
                    f"({len(expected.difference(given))} of {len(expected)} model features "
                    f"missing, {len(given.difference(expected))} extra, or a different order). "
                    f"Reorder or subset them to `model.modality_var_names({spec.name!r})`."
                )

    def _assemble_like_training(self, mdata: MuData) -> ad.AnnData:
        args = self.registry_[_SETUP_ARGS_KEY]
        specs = build_specs(mdata, args["modalities"], args["layers"], args["likelihoods"])
        assembled = assemble_mosaic(
            mdata,
            specs,
            args["batch_key"],
            args["categorical_covariate_keys"],
            args["continuous_covariate_keys"],
        )
        base_args = set(inspect.signature(MosaicModelMixin.setup_mudata).parameters)
        model_args = {k: v for k, v in args.items() if k not in base_args}
        self._annotate_assembly(assembled, mdata, specs, model_args, self.registry_)
        _remember(type(self), mdata, assembled)
        return assembled

    def _use_modalities(
        self, modalities: str | Sequence[str] | None, observed: np.ndarray
    ) -> torch.Tensor | None:
        """0/1 selector over modalities, checking every cell has at least one of them."""
        if modalities is None:
            return None
        selected = [self._check_modality(m) for m in _names(modalities)]
        selector = np.zeros(len(self.modalities), dtype=np.float32)
        selector[selected] = 1.0
        lacking = int(((observed * selector).sum(1) == 0).sum())
        if lacking:
            raise ValueError(
                f"{lacking} of the requested cells have none of the modalities "
                f"{_names(modalities)}. Pass `indices` of cells that have them."
            )
        return torch.as_tensor(selector)

    def _observed(self, adata: ad.AnnData, indices) -> np.ndarray:
        mask = adata.obsm[OBSERVED_OBSM_KEY]
        return mask if indices is None else mask[np.asarray(indices)]

    # ------------------------------------------------------------------ outputs
    @torch.inference_mode()
    def get_latent_representation(
        self,
        adata: MuData | None = None,
        indices: Sequence[int] | None = None,
        modality: str | Sequence[str] | None = None,
        give_mean: bool = True,
        batch_size: int | None = None,
    ) -> np.ndarray:
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

        Returns
        -------
        ``(n_cells, n_latent)`` array, rows in the order of ``adata.obs_names[indices]``.
        """
        adata = self._validate_anndata(adata)
        use = self._use_modalities(modality, self._observed(adata, indices))
        loader = self._make_data_loader(adata=adata, indices=indices, batch_size=batch_size)
        latents = []
        for tensors in loader:
            inputs = self.module._get_inference_input(tensors)
            outputs = self.module.inference(**inputs, use_modalities=use)
            latents.append(outputs["qz_mean"] if give_mean else outputs["z"])
        return torch.cat(latents).cpu().numpy()

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
            Modality to decode (required when the model has more than one output).
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

        Returns
        -------
        DataFrame ``cells x features`` (the modality's ``var_names``), a samples-first array, or
        with ``out`` a backed AnnData.
        """
        if modality is None:
            raise ValueError(f"Pass `modality=`, one of {self.modalities}.")
        k = self._check_modality(modality)
        likelihood = get_likelihood(self.modality_specs[k].likelihood)
        if library_size != 1 and not likelihood.uses_library:
            raise ValueError(
                f"library_size applies to count likelihoods; {modality!r} uses "
                f"{likelihood.name!r}. Leave library_size=1."
            )
        if isinstance(library_size, str) and library_size != "latent":
            raise ValueError("library_size must be a number or 'latent'.")

        adata = self._validate_anndata(adata)
        observed = self._observed(adata, indices)
        use = self._use_modalities(from_modalities, observed)
        unmeasured, measured = None, None
        if transform_batch is None:
            batch_codes = [None]
            unmeasured, measured = self._batches_without(k)
        else:
            batch_codes = _get_batch_code_from_category(
                self.get_anndata_manager(adata, required=True), _names(transform_batch)
            )
        if out is not None and not return_mean and n_samples > 1:
            raise ValueError("out= writes one value per cell and feature: use return_mean=True.")
        loader = self._make_data_loader(adata=adata, indices=indices, batch_size=batch_size)

        def decode(z, batch_index, inputs, codes):
            """Mean of the decoded values over ``codes`` (None: each cell's own batch)."""
            per_batch = []
            for code in codes:
                decode_batch = batch_index if code is None else torch.full_like(batch_index, code)
                params = self.module.decoder_parameters(
                    k, z, decode_batch, inputs["cat_covs"], inputs["cont_covs"]
                )
                per_batch.append(likelihood.normalized_mean(params))
            return torch.stack(per_batch).mean(0)

        def samples_per_minibatch():
            for tensors in loader:
                inputs = self.module._get_inference_input(tensors)
                outputs = self.module.inference(**inputs, use_modalities=use, n_samples=n_samples)
                z = outputs["qz_mean"] if n_samples == 1 else outputs["z"]
                batch_index = inputs["batch_index"]
                values = decode(z, batch_index, inputs, batch_codes)
                if unmeasured is not None:
                    # cells of batches that never measured the modality: the decoder has no
                    # trained parameters for their batch there, so average the measured ones
                    lacking = torch.isin(batch_index.ravel(), unmeasured.to(batch_index.device))
                    if lacking.any():
                        substitute = decode(z, batch_index, inputs, measured)
                        values = torch.where(lacking.unsqueeze(-1), substitute, values)
                if library_size == "latent":
                    values = values * self._library(z, inputs, outputs["library"], k).exp()
                elif library_size != 1:
                    values = values * float(library_size)
                yield (values if n_samples > 1 else values.unsqueeze(0)).cpu().numpy()

        if not return_mean and n_samples > 1:
            return np.concatenate(list(samples_per_minibatch()), axis=1)
        obs_names = adata.obs_names if indices is None else adata.obs_names[np.asarray(indices)]
        means = (samples.mean(0) for samples in samples_per_minibatch())
        return collect_rows(means, obs_names, self.modality_var_names(modality), out)

    def _batches_without(self, k: int) -> tuple[torch.Tensor | None, list[int]]:
        """Batch codes of the training data in which no cell has modality ``k``, and those with.

        ``(None, [])`` when every batch measured it or none did (e.g. a query that lacks the
        modality: its new batch columns start at zero, the reference's are unknown here).
        """
        observed = self.adata.obsm[OBSERVED_OBSM_KEY][:, k].astype(bool)
        codes = np.asarray(self.adata_manager.get_from_registry(REGISTRY_KEYS.BATCH_KEY)).ravel()
        present = np.unique(codes)
        measured = np.unique(codes[observed])
        unmeasured = np.setdiff1d(present, measured)
        if len(unmeasured) == 0 or len(measured) == 0:
            return None, []
        return torch.as_tensor(unmeasured), [int(c) for c in measured]

    def _library(self, z: torch.Tensor, inputs: dict, library: torch.Tensor, k: int):
        """Observed log library of modality k, or the one predicted from z where unobserved."""
        observed = inputs["observed"][:, [k]]
        predicted = self.module.predicted_library(k, z, inputs["batch_index"], inputs["cat_covs"])
        return observed * library[:, [k]] + (1 - observed) * predicted

    # ------------------------------------------------------------------ training
    def _train_with_defaults(
        self,
        max_epochs: int | None,
        train_size: float,
        early_stopping: bool,
        plan_defaults: dict,
        plan_kwargs: dict | None,
        trainer_kwargs: dict,
        data_loader: DataLoaderChoice = "auto",
        **train_kwargs,
    ):
        """The ``train()`` body shared by the models.

        Default epochs (scvi-tools' heuristic: fewer for more cells, at most 400), the model's
        plan defaults plus a KL warm-up over a quarter of the epochs (at most 50), early stopping
        on ``validation_loss`` (patience 20), the callbacks that keep reference weights
        fixed when the model is a mapped query, and the data path (:meth:`_use_data_loader`).
        """
        self._use_data_loader(data_loader)
        if max_epochs is None:
            max_epochs = int(min(400, max(20, round(20_000 / self.adata.n_obs * 400))))
        plan_kwargs = {
            **plan_defaults,
            "n_epochs_kl_warmup": max(1, min(50, max_epochs // 4)),
            **(plan_kwargs or {}),
        }
        trainer_kwargs["callbacks"] = [
            *trainer_kwargs.get("callbacks", []),
            *self._query_callbacks(),
        ]
        if trainer_kwargs.get("strategy") == "ddp" and self._ddp_unused_parameters:
            # e.g. CLUE's discriminator takes no part in the module's loss
            trainer_kwargs["strategy"] = "ddp_find_unused_parameters_true"
        if use_distributed_sampler(trainer_kwargs.get("strategy")):
            # Lightning syncs epoch metrics across processes in place, which fails on tensors
            # logged under inference mode (validation); no_grad validation avoids that
            trainer_kwargs.setdefault("inference_mode", False)
        trainer_kwargs.setdefault("early_stopping_monitor", "validation_loss")
        trainer_kwargs.setdefault("early_stopping_patience", 20)
        if train_size >= 1.0 and early_stopping:
            logger.info("train_size=1 leaves no validation cells; early stopping is disabled.")
            early_stopping = False
        return UnsupervisedTrainingMixin.train(
            self,
            max_epochs=max_epochs,
            train_size=train_size,
            early_stopping=early_stopping,
            plan_kwargs=plan_kwargs,
            **train_kwargs,
            **trainer_kwargs,
        )

    def _use_data_loader(self, data_loader: DataLoaderChoice) -> None:
        """Pick the minibatch path for training and inference.

        ``"in_memory"``: :class:`~mosaicvi.dataloaders.InMemoryDataLoader` (fields built into
        tensors once, sliced per minibatch); ``"anndata"``: scvi-tools' ``AnnDataLoader``;
        ``"auto"``: in memory when the tensors take less than a quarter of the available RAM.
        """
        if data_loader not in ("auto", "in_memory", "anndata"):
            raise ValueError(
                f"data_loader must be 'auto', 'in_memory' or 'anndata', got {data_loader!r}."
            )
        if data_loader == "auto":
            data_loader = "in_memory" if _fits_in_memory(self.adata) else "anndata"
        in_memory = data_loader == "in_memory"
        self._data_splitter_cls = InMemoryDataSplitter if in_memory else DataSplitter
        self._data_loader_cls = InMemoryDataLoader if in_memory else AnnDataLoader
        self.data_loader_ = data_loader

    # ------------------------------------------------------------------ query mapping
    @classmethod
    def load_query_data(
        cls,
        adata: MuData,
        reference_model,
        unfrozen: bool | Sequence[str] = False,
        accelerator: str = "auto",
        device: int | str = "auto",
    ):
        """Map a query dataset onto a trained reference (scArches-style surgery).

        The query is aligned to the reference with :func:`mosaicvi.data.prepare_query` (it may
        lack whole modalities and have new batches). New covariate categories get new
        parameters; everything learned on the reference stays bit-identical during query
        training whatever the optimizer settings.

        Parameters
        ----------
        adata
            Query MuData; batch/covariate columns in ``mdata.obs`` as for the reference.
        reference_model
            A trained model of this class, or the folder it was saved to.
        unfrozen
            ``False`` (default): train only the new categories' parameters. ``True``: fine-tune
            everything. A list of parameter-name prefixes (e.g. ``["encoders"]``) also trains
            those parameters entirely.
        accelerator, device
            Where to put the query model.

        Returns
        -------
        A model of this class on the aligned query (``model.mdata``), ready for ``train()``.
        """
        _, _, torch_device = parse_device_args(
            accelerator=accelerator,
            devices=device,
            return_device="torch",
            validate_single_device=True,
        )
        if isinstance(reference_model, (str, os.PathLike)):
            attr_dict, _, reference_state, _ = _load_saved_files(
                str(reference_model), False, map_location=torch_device
            )
            registry = attr_dict.pop("registry_")
            init_params = attr_dict["init_params_"]
            reference_state.pop("pyro_param_store", None)
        elif isinstance(reference_model, cls):
            registry = reference_model.registry_
            init_params = reference_model.init_params_
            reference_state = {
                k: v.detach().to(torch_device).clone()
                for k, v in reference_model.module.state_dict().items()
            }
        else:
            raise TypeError(
                f"reference_model must be a trained {cls.__name__} or the folder it was saved to, "
                f"got {type(reference_model).__name__}."
            )
        if registry.get(_MODEL_NAME_KEY) != cls.__name__:
            raise ValueError(
                f"The reference is a {registry.get(_MODEL_NAME_KEY)} model, not a {cls.__name__}."
            )
        aligned = prepare_query(adata, RegisteredModalities(registry))
        cls._register_mudata(
            aligned,
            **registry[_SETUP_ARGS_KEY],
            require_observed=False,
            source_registry=registry,
            extend_categories=True,
        )
        model = _initialize_model(cls, aligned, registry, {"init_params_": init_params}, None)
        cat_state = registry[_FIELD_REGISTRIES_KEY][REGISTRY_KEYS.CAT_COVS_KEY][_STATE_REGISTRY_KEY]
        reference_n_cats = [
            AnnDataManager._get_summary_stats_from_registry(registry).n_batch,
            *cat_state.get("n_cats_per_key", []),
        ]
        model.module.to(torch_device)
        # saved with the model (trailing underscore), so a reloaded query stays frozen too
        model.trainable_masks_ = transfer_reference_weights(
            reference_state, model.module, reference_n_cats, unfrozen
        )
        freeze(model.module, model.trainable_masks_)
        model.module.eval()
        return model

    def _query_callbacks(self) -> list:
        """Freeze reference weights when this model is a mapped query; its guard callback."""
        masks = getattr(self, "trainable_masks_", None)
        if not masks:
            return []
        partial = freeze(self.module, {k: v.to(self.device) for k, v in masks.items()})
        return [FrozenReferenceCallback(partial)] if partial else []

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(
        cls,
        dir_path: str,
        adata: MuData,
        accelerator: str = "auto",
        device: int | str = "auto",
        prefix: str | None = None,
    ):
        """Load a saved model and attach it to a MuData shaped like its training data.

        Parameters
        ----------
        dir_path
            Folder written by :meth:`save`.
        adata
            MuData with the same modalities and features as the training data.
        accelerator, device
            Where to put the model.
        prefix
            Prefix of the saved file names.
        """
        _, _, torch_device = parse_device_args(
            accelerator=accelerator,
            devices=device,
            return_device="torch",
            validate_single_device=True,
        )
        attr_dict, var_names, state_dict, _ = _load_saved_files(
            dir_path, False, prefix=prefix, map_location=torch_device
        )
        registry = attr_dict.pop("registry_")
        if registry.get(_MODEL_NAME_KEY) != cls.__name__:
            raise ValueError(
                f"{dir_path} holds a {registry.get(_MODEL_NAME_KEY)} model, not a {cls.__name__}."
            )
        cls._register_mudata(
            adata, **registry[_SETUP_ARGS_KEY], require_observed=False, source_registry=registry
        )
        _validate_var_names(cls._assembled_for(adata), var_names)
        model = _initialize_model(cls, adata, registry, attr_dict, None)
        state_dict.pop("pyro_param_store", None)
        model.module.load_state_dict(state_dict)
        model.to_device(torch_device)
        model.module.eval()
        return model
