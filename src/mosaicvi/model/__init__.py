"""User-facing models."""

from ._base import MosaicModelMixin
from ._clue import CLUE
from ._jae import JAE
from ._multivae import MultiVAE

__all__ = ["CLUE", "JAE", "MosaicModelMixin", "MultiVAE"]
