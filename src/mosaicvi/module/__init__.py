"""Torch modules (inference, generative, loss), one per method."""

from ._clue import CLUEModule
from ._jae import JAEModule
from ._multivae import MultiVAEModule

__all__ = ["CLUEModule", "JAEModule", "MultiVAEModule"]
