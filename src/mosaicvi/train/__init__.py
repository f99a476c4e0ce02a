"""Training plans (the shared base and one per method) and the query-training guard."""

from mosaicvi.base import FrozenReferenceCallback, MosaicTrainingPlan
from mosaicvi.methods.clue import AdversarialTrainingPlan
from mosaicvi.methods.jae import JAETrainingPlan
from mosaicvi.methods.multivae import MultiVAETrainingPlan

__all__ = [
    "AdversarialTrainingPlan",
    "FrozenReferenceCallback",
    "JAETrainingPlan",
    "MosaicTrainingPlan",
    "MultiVAETrainingPlan",
]
