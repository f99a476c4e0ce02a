"""MultiVAE: product/mixture-of-experts VAE with MMD integration (Multigrate-style)."""

from ._model import MultiVAE
from ._module import MultiVAEModule
from ._plan import MultiVAETrainingPlan

__all__ = ["MultiVAE", "MultiVAEModule", "MultiVAETrainingPlan"]
