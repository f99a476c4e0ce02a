"""Torch modules (inference, generative, loss): the base modules and one per method."""

from mosaicvi.base import ModalityModule, VAEModule
from mosaicvi.methods.clue import CLUEModule
from mosaicvi.methods.jae import JAEModule
from mosaicvi.methods.multivae import MultiVAEModule

__all__ = ["CLUEModule", "JAEModule", "ModalityModule", "MultiVAEModule", "VAEModule"]
