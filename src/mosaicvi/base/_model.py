"""The model base class: every shared capability, composed once."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from mudata import MuData
from scvi.model.base import BaseModelClass, UnsupervisedTrainingMixin

from ._data import DataAccessMixin
from ._outputs import LatentMixin
from ._query import QueryMixin
from ._registration import RegistrationMixin
from ._training import TrainingMixin

#: Constructor arguments checked by name, for every model: sizes that must be at least 1,
#: sizes that may be 0, rates in [0, 1). Names ending in ``_weight`` must be non-negative.
_AT_LEAST_ONE = ("n_latent", "n_hidden", "n_layers", "n_components")
_AT_LEAST_ZERO = ("n_free", "n_batch_slice")
_RATES = ("dropout_rate", "modality_dropout")


def _is_int(value) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def check_architecture(arguments: Mapping[str, object]) -> None:
    """Reject sizes and rates that would build a degenerate network (``None``: a default).

    A model calls this with its constructor's ``locals()``; unknown names are ignored.
    """
    for name, value in arguments.items():
        if value is None:
            continue
        if name in _AT_LEAST_ONE + _AT_LEAST_ZERO:
            low = 1 if name in _AT_LEAST_ONE else 0
            if not _is_int(value) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}.")
        elif name in _RATES:
            if not isinstance(value, int | float | np.number) or not 0 <= value < 1:
                raise ValueError(f"{name} must be in [0, 1), got {value!r}.")
        elif name.endswith("_weight"):
            if (
                not isinstance(value, int | float | np.number)
                or not np.isfinite(value)
                or value < 0
            ):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}.")


class MosaicModel(
    RegistrationMixin,
    DataAccessMixin,
    LatentMixin,
    QueryMixin,
    TrainingMixin,
    UnsupervisedTrainingMixin,
    BaseModelClass,
):
    """Base of the mosaicvi models: registration, latent, query mapping, save/load, training.

    A model class sets ``_module_cls``, ``_training_plan_cls`` and ``training_defaults``, builds
    its module in ``__init__`` after ``super().__init__(mdata)``, and adds only what is its own
    (e.g. :class:`~mosaicvi.base.ImputationMixin` for decoders with a likelihood).

    Parameters
    ----------
    mdata
        MuData registered with the model class's ``setup_mudata``.
    """

    def __init__(self, mdata: MuData):
        super().__init__(self._adopt(mdata))
        self._own_registered_data()

    def _prepare_module(self) -> None:
        """Called before training and before any output: fit what the module fits from data."""

    def _model_summary(self, description: str) -> str:
        """Summary line shown by ``print(model)``: the model's description, its data."""
        specs = ", ".join(
            f"{s.name} ({s.likelihood}, {s.n_vars} features)" for s in self.modality_specs
        )
        n_batch = self.summary_stats.n_batch
        return f"{type(self).__name__} ({description}) on {specs}; {n_batch} batches"
