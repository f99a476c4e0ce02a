"""CLUE: cross-linked unified embedding (cross-encoders, adversarial modality discriminator)."""

from ._discriminator import ModalityDiscriminator
from ._model import CLUE
from ._module import CLUEModule
from ._plan import AdversarialTrainingPlan

__all__ = ["CLUE", "CLUEModule", "AdversarialTrainingPlan", "ModalityDiscriminator"]
