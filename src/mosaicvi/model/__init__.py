"""User-facing models."""

from ._base import MosaicModelMixin
from ._multivae import MultiVAE

__all__ = ["MosaicModelMixin", "MultiVAE"]
