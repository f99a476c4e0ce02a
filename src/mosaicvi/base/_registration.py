"""Registration of a MuData (paired or mosaic) with a model class: ``setup_mudata``.

The user's MuData is only read. ``setup_mudata`` validates it, assembles the model-facing AnnData
(see :func:`mosaicvi.data.assemble_mosaic`) and records the setup under the MuData's content
fingerprint. The model built on that MuData takes the assembled data over: it belongs to the
model and is freed with it.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import anndata as ad
import numpy as np
import pandas as pd
from mudata import MuData
from scvi import REGISTRY_KEYS
from scvi.data import AnnDataManager
from scvi.data.fields import (
    BaseAnnDataField,
    CategoricalJointObsField,
    CategoricalObsField,
    LayerField,
    NumericalJointObsField,
    ObsmField,
)

from mosaicvi.data import OBSERVED_KEY, ModalitySpec, assemble_mosaic, build_specs
from mosaicvi.data._backed import is_out_of_core
from mosaicvi.data._constants import (
    BATCH_COLUMN,
    LIBRARY_OBSM_KEY,
    MODALITY_VAR_COLUMN,
    OBSERVED_OBSM_KEY,
)
from mosaicvi.data._feature_masks import as_frames, measured_matrix, resolve_feature_masks
from mosaicvi.data._mosaic import categorical_column, resolve_modalities

from . import _compat
from ._fingerprint import content_fingerprint, structure_fingerprint

logger = logging.getLogger("mosaicvi")

MODALITIES_KEY = "modalities"  # registry key of the modality layout
_MAX_SETUPS = 8  # setups remembered per model class (their arguments; one keeps its data)


class AssembledMatrixField(LayerField):
    """The assembled features as ``X``: an in-memory matrix, or one read from disk.

    A MuData whose modalities stay on disk is assembled without ``X`` (its rows are a
    :class:`~mosaicvi.data.MosaicRows`, read per minibatch); scvi-tools' ``LayerField`` would
    try to check and convert a matrix it cannot hold, so that step is skipped for it.
    """

    def __init__(self):
        super().__init__(REGISTRY_KEYS.X_KEY, None, is_count_data=False)

    def validate_field(self, adata) -> None:  # noqa: D102
        if not is_out_of_core(adata):
            super().validate_field(adata)

    def register_field(self, adata) -> dict:  # noqa: D102
        if not is_out_of_core(adata):
            return super().register_field(adata)
        return {
            self.N_OBS_KEY: adata.n_obs,
            self.N_VARS_KEY: adata.n_vars,
            self.COLUMN_NAMES_KEY: np.asarray(adata.var_names),
        }


class ModalitiesField(BaseAnnDataField):
    """The modality layout in the registry: each modality's spec and features.

    It holds no per-cell data (nothing reaches the data loaders); its state is what saved models
    and queries are checked against.
    """

    registry_key = MODALITIES_KEY
    attr_name = "var"
    attr_key = MODALITY_VAR_COLUMN
    is_empty = False

    def __init__(self, specs: Sequence[ModalitySpec], var_names: Mapping[str, Sequence[str]]):
        self.specs = list(specs)
        self.var_names = {name: [str(v) for v in names] for name, names in var_names.items()}

    def validate_field(self, adata) -> None:  # noqa: D102
        if MODALITY_VAR_COLUMN not in adata.var:
            raise ValueError("Not an assembled mosaicvi AnnData (no modality column in var).")

    def get_data_registry(self) -> dict:  # noqa: D102
        return {}

    def register_field(self, adata) -> dict:  # noqa: D102
        self.validate_field(adata)
        return {"specs": [spec.to_dict() for spec in self.specs], "var_names": self.var_names}

    def transfer_field(self, state_registry: dict, adata_target, **kwargs) -> dict:  # noqa: D102
        self.validate_field(adata_target)
        # callers check the user's MuData first (check_same_features); this guards internal use
        for spec in state_registry["specs"]:
            if self.var_names.get(spec["name"], []) != state_registry["var_names"][spec["name"]]:
                raise ValueError(f"Internal: features of {spec['name']!r} differ from the model's.")
        return state_registry

    def get_summary_stats(self, state_registry: dict) -> dict:  # noqa: D102
        return {"n_modalities": len(state_registry.get("specs", []))}

    def view_state_registry(self, state_registry: dict):  # noqa: D102
        return None


def registered_specs(registry: dict) -> list[ModalitySpec]:
    """One :class:`~mosaicvi.data.ModalitySpec` per modality of a registry, in model order."""
    return [ModalitySpec(**d) for d in _compat.field_state(registry, MODALITIES_KEY)["specs"]]


class RegisteredModalities:
    """Modalities and features recorded in a registry (of a live or a saved model)."""

    def __init__(self, registry: dict):
        self.modality_specs = registered_specs(registry)
        self._var_names = _compat.field_state(registry, MODALITIES_KEY)["var_names"]

    def modality_var_names(self, modality: str) -> pd.Index:
        """Feature names of one modality."""
        return pd.Index(self._var_names[modality])


def check_same_features(mdata: MuData, registered) -> None:
    """``mdata`` has every modality of ``registered`` with the same features, in the same order.

    ``registered`` is a model or a :class:`RegisteredModalities`.
    """
    for spec in registered.modality_specs:
        if spec.mod_key not in mdata.mod:
            raise KeyError(
                f"Modality {spec.mod_key!r} (model modality {spec.name!r}) is not in this "
                f"MuData, which has {list(mdata.mod)}. Map data that lacks a modality with "
                "`load_query_data`."
            )
        given = mdata.mod[spec.mod_key].var_names
        expected = registered.modality_var_names(spec.name)
        if given.equals(expected):
            continue
        n_missing = len(expected.difference(given))
        n_extra = len(given.difference(expected))
        if n_missing or n_extra:
            detail = f"{n_missing} of the model's {len(expected)} missing, {n_extra} extra"
        else:
            detail = "the same features in another order"
        raise ValueError(
            f"The features of modality {spec.name!r} (mdata.mod[{spec.mod_key!r}], "
            f"{len(given)} features) differ from the model's ({detail}). Reorder or subset "
            f"them to `model.modality_var_names({spec.name!r})`, or map new data with "
            "`load_query_data`, which aligns features."
        )


def check_known_categories(mdata: MuData, args: dict, registry: dict, model_name: str) -> None:
    """Every batch and categorical-covariate value of ``mdata`` is one the model was trained on."""
    columns = {REGISTRY_KEYS.BATCH_KEY: [args["batch_key"]] if args["batch_key"] else []}
    columns[REGISTRY_KEYS.CAT_COVS_KEY] = list(args["categorical_covariate_keys"] or [])
    for registry_key, keys in columns.items():
        state = _compat.field_state(registry, registry_key)
        for key in keys:
            if registry_key == REGISTRY_KEYS.BATCH_KEY:
                known = state.get("categorical_mapping", [])
            else:
                known = state.get("mappings", {}).get(key, [])
            if key not in mdata.obs:
                continue  # assemble_mosaic names the missing column
            values = pd.Index(mdata.obs[key].dropna().astype(str).unique())
            unseen = values.difference(pd.Index(np.asarray(known).astype(str)))
            if len(unseen):
                what = "batch" if registry_key == REGISTRY_KEYS.BATCH_KEY else "category"
                shown = ", ".join(map(repr, list(unseen[:5]))) + (" ..." if len(unseen) > 5 else "")
                raise ValueError(
                    f"mdata.obs[{key!r}] has {len(unseen)} {what} value(s) the model was not "
                    f"trained on ({shown}; it knows {list(map(str, known))}). Map data with new "
                    f"batches or categories with `{model_name}.load_query_data(mdata, model)`."
                )


@dataclass
class _Setup:
    """One ``setup_mudata`` call: its arguments, fingerprints and (until a model takes it) data."""

    args: dict
    structure: str
    content: str
    manager: AnnDataManager | None


class RegistrationMixin:
    """``setup_mudata`` and the modality layout of a model."""

    _setups: list[_Setup]

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls._setups = []  # per class, like scvi-tools' own manager stores

    #: ``setup_mudata`` arguments a model adds to the shared ones (JAE: labels, cell cycle).
    _model_setup_args: tuple[str, ...] = ()

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
        feature_masks: Mapping[str, pd.DataFrame] | None = None,
    ) -> None:
        """Register a MuData whose modalities may cover different cells.

        A cell is *observed* in a modality when it is among that modality's ``obs_names``; cells
        missing from a modality are treated as unobserved there (not as zeros). The MuData is
        only read: nothing is added to it. Edit it after setup and ``setup_mudata`` must be
        called again.

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
        feature_masks
            ``{name: DataFrame}`` for modalities whose batches measured different features
            (gene panels): one boolean row per category of ``batch_key`` and one column per
            feature of the modality, ``True`` where the batch measured the feature. An
            unmeasured feature is left out of its cells' likelihood and library size, the
            encoders see it as missing rather than zero, and
            :meth:`get_normalized_expression` imputes it. Values stored there are ignored.
            Saved with the model; query mapping adds the features a query lacks.
        """
        cls._setup(mdata, dict(locals_without(locals(), "cls", "mdata")))

    @classmethod
    def _setup(cls, mdata: MuData, args: dict) -> None:
        """Register ``mdata`` with resolved ``args`` and log what was chosen."""
        manager = cls._register(mdata, args, require_observed=True)
        specs = registered_specs(manager.registry)
        mask = manager.adata.obsm[OBSERVED_OBSM_KEY].astype(bool)
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

    @classmethod
    def _register(
        cls,
        mdata: MuData,
        args: dict,
        require_observed: bool,
        source_registry: dict | None = None,
        extend_categories: bool = False,
    ) -> AnnDataManager:
        """Assemble ``mdata``, register the result and remember the setup; return its manager.

        ``args`` are ``setup_mudata``'s arguments (those of a saved registry when loading).
        """
        if not isinstance(mdata, MuData):
            raise TypeError(
                f"{cls.__name__} works on MuData, got {type(mdata).__name__}. Wrap your "
                "modalities with `mudata.MuData({'rna': rna, 'adt': adt})`."
            )
        args = {**args, "feature_masks": _resolved_masks(mdata, args)}
        specs, assembled = cls._assemble(
            mdata, args, require_observed, source_registry, extend_categories
        )
        args = {
            **args,
            "modalities": {s.name: s.mod_key for s in specs},
            "layers": {s.name: s.layer for s in specs},
            "likelihoods": {s.name: s.likelihood for s in specs},
        }
        model_args = {k: args[k] for k in cls._model_setup_args}
        var_names = {s.name: mdata.mod[s.mod_key].var_names for s in specs}
        fields = [
            AssembledMatrixField(),
            ModalitiesField(specs, var_names),
            CategoricalObsField(
                REGISTRY_KEYS.BATCH_KEY, BATCH_COLUMN if args["batch_key"] is not None else None
            ),
            ObsmField(OBSERVED_KEY, OBSERVED_OBSM_KEY),
            CategoricalJointObsField(
                REGISTRY_KEYS.CAT_COVS_KEY, args["categorical_covariate_keys"]
            ),
            NumericalJointObsField(REGISTRY_KEYS.CONT_COVS_KEY, args["continuous_covariate_keys"]),
            *cls._model_fields(model_args),
        ]
        manager = AnnDataManager(
            fields=fields, setup_method_args=_compat.setup_method_args(cls.__name__, args)
        )
        register_kwargs = {}
        if source_registry is not None:
            register_kwargs = {
                "source_registry": source_registry,
                "extend_categories": extend_categories,
            }
        manager.register_fields(assembled, **register_kwargs)
        cls._remember_setup(mdata, args, manager)
        return manager

    @classmethod
    def _assemble(
        cls,
        mdata: MuData,
        args: dict,
        require_observed: bool,
        source_registry: dict | None,
        extend_categories: bool = False,
    ) -> tuple[list[ModalitySpec], ad.AnnData]:
        """Validate ``mdata`` and assemble it with ``setup_mudata`` arguments ``args``.

        ``source_registry`` is the registry of the model whose data this is read for (a query,
        a loaded model or another MuData passed to a trained model); unless the categories may
        be extended (a query), ``mdata`` must have the model's features and categories.
        """
        if source_registry is not None and not extend_categories:
            check_same_features(mdata, RegisteredModalities(source_registry))
            check_known_categories(mdata, args, source_registry, cls.__name__)
        specs = build_specs(mdata, args["modalities"], args["layers"], args["likelihoods"])
        assembled = assemble_mosaic(
            mdata,
            specs,
            args["batch_key"],
            args["categorical_covariate_keys"],
            args["continuous_covariate_keys"],
            require_observed=require_observed,
            feature_masks=args["feature_masks"],
        )
        model_args = {k: args[k] for k in cls._model_setup_args}
        cls._annotate_assembly(assembled, mdata, specs, model_args, source_registry)
        return specs, assembled

    @classmethod
    def _remember_setup(cls, mdata: MuData, args: dict, manager: AnnDataManager) -> None:
        structure = structure_fingerprint(mdata, args["modalities"].values())
        content = content_fingerprint(mdata, args)
        for setup in cls._setups:  # only the newest setup keeps its assembled data
            setup.manager = None
        cls._setups = [s for s in cls._setups if s.content != content][-(_MAX_SETUPS - 1) :]
        cls._setups.append(_Setup(args, structure, content, manager))

    @classmethod
    def _take_setup(cls, mdata: MuData) -> tuple[AnnDataManager, str]:
        """The manager of ``mdata``'s setup (assembled again if another setup came since)."""
        if not isinstance(mdata, MuData):
            raise TypeError(
                f"{cls.__name__} works on MuData, got {type(mdata).__name__}. Set it up with "
                f"`{cls.__name__}.setup_mudata(mdata, ...)` and pass the MuData."
            )
        edited = False
        for setup in reversed(cls._setups):
            if structure_fingerprint(mdata, setup.args["modalities"].values()) != setup.structure:
                continue
            if content_fingerprint(mdata, setup.args) != setup.content:
                edited = True
                continue
            manager, setup.manager = setup.manager, None
            if manager is None:  # assembled again from the recorded arguments
                manager = cls._register(mdata, setup.args, require_observed=True)
                setup = cls._setups[-1]
                setup.manager = None
            return manager, setup.content
        if edited:
            raise ValueError(
                "This MuData was edited after "
                f"`{cls.__name__}.setup_mudata` (its values or covariate columns changed). Call "
                f"`{cls.__name__}.setup_mudata(mdata, ...)` again before creating the model."
            )
        raise ValueError(
            f"This MuData has not been registered with {cls.__name__} (or its cells or features "
            f"changed since). Call `{cls.__name__}.setup_mudata(mdata, modalities=..., "
            "batch_key=...)` first."
        )

    def _adopt(self, mdata: MuData) -> ad.AnnData:
        """Take over ``mdata``'s registered data; call before ``BaseModelClass.__init__``.

        Returns the assembled AnnData to pass to it. The class-level stores of scvi-tools are
        emptied of it once the model holds it (see :meth:`_own_registered_data`).
        """
        manager, content = self._take_setup(mdata)
        type(self).register_manager(manager)
        self._mdata = mdata
        self._mdata_content = content
        return manager.adata

    def _own_registered_data(self) -> None:
        """After ``BaseModelClass.__init__``: the model is the only owner of its data."""
        cls = type(self)
        _compat.release_setup_manager(cls, self.adata_manager)
        weakref.finalize(self, _compat.forget_instance, cls, self.id)

    @classmethod
    def _annotate_assembly(
        cls,
        assembled: ad.AnnData,
        mdata: MuData,
        specs: Sequence[ModalitySpec],
        model_args: dict,
        source_registry: dict | None,
    ) -> None:
        """Add a model's own columns to the (internal) assembled AnnData; none by default."""

    @classmethod
    def _model_fields(cls, model_args: dict) -> list:
        """A model's extra scvi-tools fields (read from the assembled AnnData); none here."""
        return []

    @classmethod
    def setup_anndata(cls, adata, *args, **kwargs):
        """Not supported: mosaicvi models are multimodal; use :meth:`setup_mudata`."""
        raise TypeError(
            f"{cls.__name__} works on MuData. Build one with `mudata.MuData({{'rna': rna, "
            f"'adt': adt}})` and call `{cls.__name__}.setup_mudata`."
        )

    # ------------------------------------------------------------------ layout
    @property
    def mdata(self) -> MuData:
        """The MuData the model was created with."""
        return self._mdata

    @property
    def modality_specs(self) -> list[ModalitySpec]:
        """One :class:`~mosaicvi.data.ModalitySpec` per registered modality, in model order."""
        return registered_specs(self.registry_)

    @property
    def modalities(self) -> list[str]:
        """Names of the registered modalities."""
        return [spec.name for spec in self.modality_specs]

    def modality_var_names(self, modality: str) -> pd.Index:
        """Feature names of one modality, as in the user's MuData."""
        self._check_modality(modality)
        return RegisteredModalities(self.registry_).modality_var_names(modality)

    def _feature_selection(
        self, modality: str, features: Sequence[str] | None
    ) -> tuple[np.ndarray | None, pd.Index]:
        """Positions of ``features`` in a modality (``None``: all) and their names."""
        names = self.modality_var_names(modality)
        if features is None:
            return None, names
        wanted = pd.Index([features] if isinstance(features, str) else list(features))
        positions = names.get_indexer(wanted)
        unknown = wanted[positions < 0]
        if len(unknown):
            raise KeyError(
                f"{len(unknown)} of the requested features are not features of modality "
                f"{modality!r} (e.g. {list(unknown[:5])}); see `model.modality_var_names"
                f"({modality!r})`."
            )
        if len(wanted) == 0:
            raise ValueError("`features` is empty; pass at least one feature name, or None.")
        return positions, names[positions]

    def _check_modality(self, modality: str) -> int:
        if modality not in self.modalities:
            raise KeyError(f"Unknown modality {modality!r}; this model has {self.modalities}.")
        return self.modalities.index(modality)

    def view_anndata_setup(self, adata=None, hide_state_registries: bool = False) -> None:
        """Print the registered modalities, batches and covariates (the user's terms)."""
        args = _compat.setup_args(self.registry_)
        lines = [f"{type(self).__name__} set up on a MuData of {self.mdata.n_obs} cells:"]
        observed = self.adata.obsm[OBSERVED_OBSM_KEY].astype(bool).sum(0)
        for spec, n_observed in zip(self.modality_specs, observed):
            source = f".layers[{spec.layer!r}]" if spec.layer else ".X"
            lines.append(
                f"  {spec.name}: mdata.mod[{spec.mod_key!r}]{source}, {spec.n_vars} features, "
                f"likelihood {spec.likelihood!r}, observed in {int(n_observed)} cells"
            )
        batches = self.adata_manager.get_state_registry(REGISTRY_KEYS.BATCH_KEY)
        lines.append(
            f"  batch: mdata.obs[{args['batch_key']!r}], "
            f"{len(batches.categorical_mapping)} categories"
            if args["batch_key"] is not None
            else "  batch: none"
        )
        for key in ("categorical_covariate_keys", "continuous_covariate_keys"):
            if args[key]:
                lines.append(f"  {key.replace('_keys', 's')}: {list(args[key])}")
        for key in self._model_setup_args:
            lines.append(f"  {key}: {args[key]!r}")
        for name, frame in self.feature_masks.items():
            partial = frame.index[~frame.to_numpy().all(1)]
            lines.append(
                f"  feature masks of {name}: {len(partial)} of {len(frame)} batches measured a "
                f"subset ({int(frame.to_numpy().sum(1).min())} to {frame.shape[1]} features)"
            )
        print("\n".join(lines))

    @property
    def feature_masks(self) -> dict[str, pd.DataFrame]:
        """Measured features per batch (``True``: measured), for modalities with masks."""
        return as_frames(
            _compat.setup_args(self.registry_).get("feature_masks") or {},
            self._batch_categories(),
            {name: self.modality_var_names(name) for name in self.modalities},
        )

    def _batch_categories(self) -> list[str]:
        state = self.adata_manager.get_state_registry(REGISTRY_KEYS.BATCH_KEY)
        return [str(b) for b in state.categorical_mapping]

    def _measured_features(self) -> dict:
        """``{modality: (n_batch, n_features) bool}`` for a module (batches in model order)."""
        import torch

        unmeasured = _compat.setup_args(self.registry_).get("feature_masks") or {}
        batches = self._batch_categories()
        return {
            name: torch.as_tensor(
                measured_matrix(per_batch, batches, self.modality_var_names(name))
            )
            for name, per_batch in unmeasured.items()
        }

    def _library_log_means(self, specs: Sequence[ModalitySpec]):
        """Mean observed log library of each modality (0 for non-count likelihoods).

        Start value of a module's library predictors.
        """
        import torch

        from mosaicvi.distributions import get_likelihood

        observed = self.adata.obsm[OBSERVED_OBSM_KEY].astype(bool)
        totals = self.adata.obsm[LIBRARY_OBSM_KEY]  # summed at assembly, chunk by chunk
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


def _resolved_masks(mdata: MuData, args: dict) -> dict:
    """``args["feature_masks"]`` in registry form (checked first when given as DataFrames)."""
    masks = args.get("feature_masks") or {}
    if isinstance(masks, Mapping) and all(isinstance(v, dict) for v in masks.values()):
        return masks  # already the registry's form (a loaded model or a query)
    mapping = resolve_modalities(mdata, args["modalities"])
    var_names = {name: mdata.mod[key].var_names for name, key in mapping.items()}
    batch_key = args["batch_key"]
    batches = observed = None
    if batch_key is not None:
        column = pd.Series(categorical_column(mdata, batch_key, "batch_key"), index=mdata.obs_names)
        batches = list(column.cat.categories)
        observed = {
            name: set(column[mdata.obs_names.isin(mdata.mod[key].obs_names)].astype(str))
            for name, key in mapping.items()
        }
    return resolve_feature_masks(masks, var_names, batches, batch_key, observed)


def locals_without(values: dict, *names: str) -> dict:
    """A function's ``locals()`` without some names (``cls``, the data)."""
    return {k: v for k, v in values.items() if k not in names and not k.startswith("__")}
