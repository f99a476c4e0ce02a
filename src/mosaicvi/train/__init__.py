"""Training plans (optimisation), one per method where needed, and query-training guards."""

from ._freezing import FrozenReferenceCallback
from ._plans import MultiVAETrainingPlan

__all__ = ["FrozenReferenceCallback", "MultiVAETrainingPlan"]
