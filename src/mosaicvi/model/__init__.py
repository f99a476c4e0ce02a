"""User-facing models (each defined in its folder under :mod:`mosaicvi.methods`)."""

from mosaicvi.base import MosaicModel
from mosaicvi.methods.clue import CLUE
from mosaicvi.methods.jae import JAE
from mosaicvi.methods.multivae import MultiVAE

__all__ = ["CLUE", "JAE", "MosaicModel", "MultiVAE"]
