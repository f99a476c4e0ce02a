"""Torch modules (inference, generative, loss), one per method."""

from ._clue import CLUEModule
from ._multivae import MultiVAEModule

__all__ = ["CLUEModule", "MultiVAEModule"]
