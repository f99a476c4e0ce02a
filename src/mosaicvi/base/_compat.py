"""Every use of scvi-tools internals, in one place (scvi-tools >= 1.4, < 1.5).

scvi-tools' public API (``BaseModelClass``, ``AnnDataManager``, fields, ``TrainingPlan``,
``FCLayers``) is imported where it is used. What scvi-tools keeps private (registry keys of saved
models, save/load helpers, device parsing, the distributed sampler and its per-class manager
stores) is reached only through this module, so a new scvi-tools release is checked here.
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from pathlib import Path

from scvi import REGISTRY_KEYS
from scvi.data._constants import (
    _FIELD_REGISTRIES_KEY,
    _MODEL_NAME_KEY,
    _SETUP_ARGS_KEY,
    _SETUP_METHOD_NAME,
    _STATE_REGISTRY_KEY,
)
from scvi.dataloaders._samplers import BatchDistributedSampler
from scvi.model._utils import (
    _get_batch_code_from_category,
    parse_device_args,
    use_distributed_sampler,
)
from scvi.model.base._de_core import _de_core
from scvi.model.base._save_load import _initialize_model, _load_saved_files

from mosaicvi.data._backed import assembled_matrix

__all__ = [
    "BatchDistributedSampler",
    "batch_codes",
    "differential_core",
    "field_state",
    "forget_instance",
    "forget_manager",
    "initialize_model",
    "load_saved_files",
    "model_name",
    "register_for_instance",
    "release_setup_manager",
    "setup_args",
    "setup_method_args",
    "torch_device",
    "use_distributed_sampler",
]


def setup_args(registry: dict) -> dict:
    """The ``setup_mudata`` arguments recorded in a registry."""
    return registry[_SETUP_ARGS_KEY]


def setup_method_args(model_name: str, args: dict) -> dict:
    """What ``AnnDataManager(setup_method_args=...)`` records of a ``setup_mudata`` call."""
    return {_MODEL_NAME_KEY: model_name, _SETUP_METHOD_NAME: "setup_mudata", _SETUP_ARGS_KEY: args}


def model_name(registry: dict) -> str | None:
    """Name of the model class that wrote a registry."""
    return registry.get(_MODEL_NAME_KEY)


def field_state(registry: dict, registry_key: str) -> dict:
    """State registry of one field (``{}`` when the field is absent or empty)."""
    return registry[_FIELD_REGISTRIES_KEY].get(registry_key, {}).get(_STATE_REGISTRY_KEY, {})


def torch_device(accelerator: str, device: int | str):
    """The torch device Lightning would pick for ``accelerator`` / ``device``."""
    _, _, chosen = parse_device_args(
        accelerator=accelerator, devices=device, return_device="torch", validate_single_device=True
    )
    return chosen


def batch_codes(adata_manager, categories: Sequence[str]) -> list[int]:
    """Integer codes of batch categories (scvi-tools' error for unknown ones)."""
    return _get_batch_code_from_category(adata_manager, list(categories))


class _ModalityView:
    """An ``AnnDataManager`` whose ``X`` is one modality's columns, for scvi-tools' DE.

    ``DifferentialComputation`` reads ``X`` from the manager to estimate pseudocounts; the
    assembled ``X`` holds every modality side by side, so it is restricted to the tested one.
    Everything else is the model's manager.
    """

    def __init__(self, manager, columns):
        self._manager, self._columns = manager, columns

    def __getattr__(self, name):
        return getattr(self._manager, name)

    def get_from_registry(self, registry_key: str):
        if registry_key == REGISTRY_KEYS.X_KEY:
            return assembled_matrix(self._manager.adata)[:, self._columns]
        return self._manager.get_from_registry(registry_key)


def differential_core(adata_manager, columns, **kwargs):
    """scvi-tools' differential-expression driver on the features ``columns`` of ``X``."""
    return _de_core(_ModalityView(adata_manager, columns), **kwargs)


def load_saved_files(dir_path: str, prefix: str | None, map_location) -> tuple:
    """``(attributes, var_names, state_dict)`` of a folder written by ``model.save``.

    A missing, truncated or corrupt file is reported with its path (torch's own errors name
    neither the file nor the fix).
    """
    path = Path(dir_path) / f"{prefix or ''}model.pt"
    if not path.is_file():
        found = (
            sorted(p.name for p in Path(dir_path).glob("*.pt")) if Path(dir_path).is_dir() else []
        )
        where = f"{dir_path} does not exist" if not Path(dir_path).exists() else f"{path} is absent"
        raise FileNotFoundError(
            f"No saved model: {where}"
            + (f" (the folder has {found}: pass the matching `prefix=`)" if found else "")
            + ". Pass the folder written by `model.save(dir_path)`."
        )
    try:
        attr_dict, var_names, state_dict, _ = _load_saved_files(
            dir_path, False, prefix=prefix, map_location=map_location
        )
    except (OSError, EOFError, RuntimeError, pickle.UnpicklingError, KeyError, ValueError) as exc:
        raise ValueError(
            f"{path} is not a readable saved model ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else 'no detail'}). It is truncated or "
            "corrupt, e.g. by an interrupted copy: save the model again or copy the folder anew."
        ) from exc
    state_dict.pop("pyro_param_store", None)
    return attr_dict, var_names, state_dict


def initialize_model(cls: type, adata, registry: dict, attr_dict: dict):
    """A model of ``cls`` on registered ``adata``, built from saved init params and attributes."""
    return _initialize_model(cls, adata, registry, attr_dict, None)


def release_setup_manager(cls: type, adata_manager) -> None:
    """Drop a manager from the class-level store ``setup_anndata`` put it in.

    scvi-tools keeps every registered AnnData alive there for the lifetime of the process; once
    a model holds the manager, the store's reference only leaks memory.
    """
    cls._setup_adata_manager_store.pop(adata_manager.adata_uuid, None)


def forget_instance(cls: type, instance_id: str) -> None:
    """Drop a deleted model's managers (and so its data) from the per-instance store."""
    cls._per_instance_manager_store.pop(instance_id, None)


def register_for_instance(model, adata_manager) -> None:
    """Let a live model read data registered with ``adata_manager`` (its instance store)."""
    model._register_manager_for_instance(adata_manager)


def forget_manager(model, adata_manager) -> None:
    """Drop one transient manager of a live model from its per-instance store."""
    store = type(model)._per_instance_manager_store.get(model.id, {})
    store.pop(adata_manager.adata_uuid, None)
