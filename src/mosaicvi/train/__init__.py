"""Training plans (optimisation), one per method where needed."""

from ._plans import MultiVAETrainingPlan

__all__ = ["MultiVAETrainingPlan"]
