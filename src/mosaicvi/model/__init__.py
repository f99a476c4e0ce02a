"""User-facing models."""

from ._base import MosaicModelMixin
from ._clue import CLUE
from ._multivae import MultiVAE

__all__ = ["CLUE", "MosaicModelMixin", "MultiVAE"]
