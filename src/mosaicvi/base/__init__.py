"""Capabilities written once for every model.

Registration (``setup_mudata``), outputs (latent; VAE imputation), query mapping with
save/load, training (one ``train()``), base modules and the training-plan base. Every use of
scvi-tools internals is in :mod:`mosaicvi.base._compat`.
"""

from ._analysis import AnalysisMixin, NoLikelihoodMixin
from ._divergence import TrainingDivergedError
from ._freezing import FrozenReferenceCallback
from ._model import MosaicModel, check_architecture
from ._module import ModalityModule, VAEModule
from ._outputs import ImputationMixin, LatentMixin
from ._plan import EpochMetricsMixin, MosaicTrainingPlan, make_optimizer
from ._registration import ModalitiesField, RegisteredModalities, registered_specs
from ._surgery import IncompatibleReferenceError, freeze, transfer_reference_weights
from ._training import DataLoaderChoice, TrainingDefaults, default_max_epochs

__all__ = [
    "AnalysisMixin",
    "NoLikelihoodMixin",
    "DataLoaderChoice",
    "EpochMetricsMixin",
    "FrozenReferenceCallback",
    "ImputationMixin",
    "IncompatibleReferenceError",
    "LatentMixin",
    "ModalitiesField",
    "ModalityModule",
    "MosaicModel",
    "MosaicTrainingPlan",
    "RegisteredModalities",
    "TrainingDefaults",
    "TrainingDivergedError",
    "VAEModule",
    "check_architecture",
    "default_max_epochs",
    "freeze",
    "make_optimizer",
    "registered_specs",
    "transfer_reference_weights",
]
