"""The model base class: every shared capability, composed once."""

from __future__ import annotations

from mudata import MuData
from scvi.model.base import BaseModelClass, UnsupervisedTrainingMixin

from ._data import DataAccessMixin
from ._outputs import LatentMixin
from ._query import QueryMixin
from ._registration import RegistrationMixin
from ._training import TrainingMixin


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
