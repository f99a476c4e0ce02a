"""Training plans (optimisation), one per method where needed, and query-training guards."""

from ._adversarial import AdversarialTrainingPlan
from ._freezing import FrozenReferenceCallback
from ._plans import JAETrainingPlan, MosaicTrainingPlan, MultiVAETrainingPlan

__all__ = [
    "AdversarialTrainingPlan",
    "FrozenReferenceCallback",
    "JAETrainingPlan",
    "MosaicTrainingPlan",
    "MultiVAETrainingPlan",
]
