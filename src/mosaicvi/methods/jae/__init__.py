"""JAE: autoencoder whose latent is regularised by cell type, batch and cell-cycle phase."""

from ._model import JAE
from ._module import JAEModule
from ._plan import JAETrainingPlan
from ._transforms import ModalityTransform

__all__ = ["JAE", "JAEModule", "JAETrainingPlan", "ModalityTransform"]
