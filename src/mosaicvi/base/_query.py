"""Saving, loading and scArches-style query mapping, for every model."""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd
import torch
from mudata import MuData, read_h5mu
from scvi import REGISTRY_KEYS
from scvi.model.base import BaseModelClass

from mosaicvi.data import prepare_query
from mosaicvi.data._feature_masks import merge_unmeasured, resolve_feature_masks

from . import _compat
from ._freezing import FrozenReferenceCallback
from ._registration import RegisteredModalities
from ._surgery import complete_state_dict, freeze, transfer_reference_weights

MDATA_FILE = "mdata.h5mu"  # the user's MuData, written by save(save_anndata=True)


def _reference_n_cats(registry: dict) -> list[int]:
    """Categories of each covariate of a registry (batch first)."""
    n_batch = _compat.field_state(registry, REGISTRY_KEYS.BATCH_KEY).get("categorical_mapping")
    cat_state = _compat.field_state(registry, REGISTRY_KEYS.CAT_COVS_KEY)
    return [1 if n_batch is None else len(n_batch), *cat_state.get("n_cats_per_key", [])]


class QueryMixin:
    """``save``, ``load`` and ``load_query_data``.

    A mapped query keeps ``trainable_masks_`` (saved with it): which entries of each parameter
    may train. ``None`` for a reference model.
    """

    trainable_masks_: dict[str, torch.Tensor] | None = None
    #: A query without new categories: every weight is the reference's, so outputs are valid
    #: before query training.
    reference_weights_only_: bool = False
    #: Default of ``load_query_data(unfrozen=...)``.
    _query_unfrozen_default: bool | Sequence[str] = False

    @property
    def is_query(self) -> bool:
        """Whether this model was mapped onto a reference with :meth:`load_query_data`."""
        return self.trainable_masks_ is not None

    @property
    def _all_frozen(self) -> bool:
        """No parameter may train (a query of known categories mapped with ``unfrozen=False``)."""
        return not any(p.requires_grad for p in self.module.parameters())

    # ------------------------------------------------------------------ saving and loading
    def save(
        self,
        dir_path: str | os.PathLike,
        prefix: str | None = None,
        overwrite: bool = False,
        save_anndata: bool = False,
        save_kwargs: dict | None = None,
        **anndata_write_kwargs,
    ) -> None:
        """Save the model (weights, registry, fitted inputs) to a folder.

        Parameters
        ----------
        dir_path
            Folder to create.
        prefix
            Prefix of the file names.
        overwrite
            Replace an existing folder.
        save_anndata
            Also write the MuData the model was created with (``mdata.h5mu``), so that
            :meth:`load` needs no data.
        save_kwargs
            Passed to :func:`torch.save`.
        **anndata_write_kwargs
            Passed to :meth:`mudata.MuData.write_h5mu`.
        """
        BaseModelClass.save(
            self, str(dir_path), prefix, overwrite, save_anndata=False, save_kwargs=save_kwargs
        )
        if save_anndata:
            self.mdata.write_h5mu(
                Path(dir_path) / f"{prefix or ''}{MDATA_FILE}", **anndata_write_kwargs
            )

    @classmethod
    def load(
        cls,
        dir_path: str | os.PathLike,
        adata: MuData | None = None,
        accelerator: str = "auto",
        device: int | str = "auto",
        prefix: str | None = None,
    ):
        """Load a saved model onto a MuData shaped like its training data.

        Parameters
        ----------
        dir_path
            Folder written by :meth:`save`.
        adata
            MuData with the model's modalities and features (in order). ``None``: the MuData
            saved with ``save(save_anndata=True)``.
        accelerator, device
            Where to put the model.
        prefix
            Prefix of the saved file names.
        """
        dir_path = str(dir_path)
        torch_device = _compat.torch_device(accelerator, device)
        attr_dict, _, state_dict = _compat.load_saved_files(dir_path, prefix, torch_device)
        registry = attr_dict.pop("registry_")
        cls._check_registry_model(registry, dir_path)
        if adata is None:
            saved = Path(dir_path) / f"{prefix or ''}{MDATA_FILE}"
            if not saved.exists():
                raise ValueError(
                    f"{dir_path} holds no data ({saved.name} is absent: the model was saved "
                    "without `save_anndata=True`). Pass the MuData: "
                    f"`{cls.__name__}.load({dir_path!r}, mdata)`."
                )
            adata = read_h5mu(saved)
        args = _compat.setup_args(registry)
        cls._register(adata, args, require_observed=False, source_registry=registry)
        model = _compat.initialize_model(cls, adata, registry, attr_dict)
        state_dict = complete_state_dict(model.module, state_dict)
        _check_saved_parameters(model.module, state_dict, dir_path, cls.__name__)
        model.module.load_state_dict(state_dict)
        model.to_device(torch_device)
        model.module.eval()
        return model

    @classmethod
    def _check_registry_model(cls, registry: dict, where: str) -> None:
        name = _compat.model_name(registry)
        if name != cls.__name__:
            raise ValueError(
                f"{where} holds a {name} model, not a {cls.__name__}. Load it with "
                f"`mosaicvi.model.{name}.load(...)`."
            )

    # ------------------------------------------------------------------ query mapping
    @classmethod
    def load_query_data(
        cls,
        adata: MuData,
        reference_model,
        unfrozen: bool | Sequence[str] | None = None,
        accelerator: str = "auto",
        device: int | str = "auto",
        feature_masks: Mapping[str, pd.DataFrame] | None = None,
    ):
        """Map a query dataset onto a trained reference (scArches-style surgery).

        The query is aligned to the reference with :func:`mosaicvi.data.prepare_query`: it may
        lack whole modalities, have its features in another order or miss some, and bring new
        batches. Features the query lacks are unmeasured in its batches (feature masks, when
        the reference has a ``batch_key``): left out of the likelihood and imputed. New
        covariate categories get new parameters; everything
        learned on the reference stays bit-identical during query training whatever the
        optimizer settings.

        Parameters
        ----------
        adata
            Query MuData; batch/covariate columns in ``mdata.obs`` as for the reference.
        reference_model
            A trained model of this class, or the folder it was saved to.
        unfrozen
            ``False``: train only the new categories' parameters. ``True``: fine-tune
            everything. A list of parameter-name prefixes (e.g. ``["encoders"]``) also trains
            those parameters entirely. ``None``: the model's default (``False`` for the VAEs;
            JAE, whose latent has no batch-specific parameters, fine-tunes everything).
        accelerator, device
            Where to put the query model.
        feature_masks
            Measured features of the query's batches, as in ``setup_mudata(feature_masks=...)``
            (rows: the query's batches; columns: the reference's features of the modality).
            Features the query lacks are added to them; the reference's masks are kept.

        Returns
        -------
        A model of this class on the aligned query (``model.mdata``), ready for ``train()``.
        """
        torch_device = _compat.torch_device(accelerator, device)
        registry, init_params, reference_state = cls._reference_parts(reference_model, torch_device)
        registered = RegisteredModalities(registry)
        aligned = prepare_query(adata, registered)
        args = _compat.setup_args(registry)
        masks = _query_masks(adata, aligned, registered, args, feature_masks)
        args = {**args, "feature_masks": masks}
        cls._register(
            aligned,
            args,
            require_observed=False,
            source_registry=registry,
            extend_categories=True,
        )
        model = _compat.initialize_model(cls, aligned, registry, {"init_params_": init_params})
        model.module.to(torch_device)
        reference_state = complete_state_dict(model.module, reference_state)
        unfrozen = cls._query_unfrozen_default if unfrozen is None else unfrozen
        # saved with the model (trailing underscore), so a reloaded query stays frozen too
        model.trainable_masks_ = transfer_reference_weights(
            reference_state, model.module, _reference_n_cats(registry), unfrozen
        )
        freeze(model.module, model.trainable_masks_)
        model.module.eval()
        # without new categories every weight is the reference's: outputs are valid untrained
        model.reference_weights_only_ = _reference_n_cats(model.registry_) == _reference_n_cats(
            registry
        )
        if model._all_frozen:
            warnings.warn(
                "The query brings no batch or covariate category the reference lacks, so with "
                "`unfrozen=False` nothing trains: use the query model as it is (no `train()`), "
                "or pass `unfrozen=True` to fine-tune the reference on it.",
                UserWarning,
                stacklevel=2,
            )
        return model

    @classmethod
    def _reference_parts(cls, reference_model, torch_device) -> tuple[dict, dict, dict]:
        """``(registry, init_params, state_dict)`` of a reference model or saved folder."""
        if isinstance(reference_model, str | os.PathLike):
            attr_dict, _, state = _compat.load_saved_files(str(reference_model), None, torch_device)
            registry = attr_dict.pop("registry_")
            init_params = attr_dict["init_params_"]
        elif isinstance(reference_model, cls):
            registry = reference_model.registry_
            init_params = reference_model.init_params_
            state = {
                k: v.detach().to(torch_device).clone()
                for k, v in reference_model.module.state_dict().items()
            }
        else:
            raise TypeError(
                f"reference_model must be a trained {cls.__name__} or the folder it was saved to, "
                f"got {type(reference_model).__name__}."
            )
        cls._check_registry_model(registry, "The reference")
        return registry, init_params, state

    def _query_callbacks(self) -> list:
        """Freeze reference weights when this model is a mapped query; its guard callback."""
        if not self.trainable_masks_:
            return []
        masks = {k: v.to(self.device) for k, v in self.trainable_masks_.items()}
        partial = freeze(self.module, masks)
        return [FrozenReferenceCallback(partial)] if partial else []


def _query_masks(
    query: MuData,
    aligned: MuData,
    registered: RegisteredModalities,
    args: dict,
    given: Mapping[str, pd.DataFrame] | None,
) -> dict:
    """Feature masks of a query model: the reference's, the query's and its missing features."""
    masks = args.get("feature_masks") or {}
    batch_key = args["batch_key"]
    if batch_key is None:
        if given:
            raise ValueError(
                "feature_masks are per batch, but the reference was set up without "
                "`batch_key`; its query cannot have per-batch feature masks."
            )
        return masks  # no batches: features a query lacks stay zero (prepare_query warned)
    if batch_key not in aligned.obs:
        return masks  # the registration names the missing column
    batches = pd.Index(pd.unique(aligned.obs[batch_key].astype(str)))
    missing = {}
    for spec in registered.modality_specs:
        if spec.mod_key not in query.mod:
            continue  # the whole modality is unobserved
        absent = registered.modality_var_names(spec.name).difference(
            query.mod[spec.mod_key].var_names, sort=False
        )
        if len(absent):
            missing[spec.name] = {str(b): [str(f) for f in absent] for b in batches}
    resolved = {}
    if given:
        names = [spec.name for spec in registered.modality_specs]
        var_names = {name: registered.modality_var_names(name) for name in names}
        resolved = resolve_feature_masks(given, var_names, list(batches), batch_key)
    return merge_unmeasured(merge_unmeasured(masks, missing), resolved)


def _check_saved_parameters(module, state_dict: dict, dir_path: str, model_name: str) -> None:
    """Refuse saved weights of another architecture with the names that differ and the fix."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unknown = sorted(set(state_dict) - set(expected))
    reshaped = sorted(
        name
        for name in set(expected) & set(state_dict)
        if tuple(expected[name].shape) != tuple(state_dict[name].shape)
    )
    if not (missing or unknown or reshaped):
        return
    parts = [
        f"{len(names)} {what} (e.g. {names[:3]})"
        for names, what in (
            (missing, "parameters of this model are not in the file"),
            (unknown, "saved parameters are unknown to this model"),
            (reshaped, "parameters have another shape"),
        )
        if names
    ]
    raise ValueError(
        f"The weights saved in {dir_path} do not fit this {model_name}: {'; '.join(parts)}. "
        "The model was probably saved by another mosaicvi version with a different "
        "architecture (e.g. CLUE before its encoders became one body per modality). Load it "
        "with the version that saved it, or train it again with this one."
    )
