"""Torch modules (inference, generative, loss), one per method."""

from ._multivae import MultiVAEModule

__all__ = ["MultiVAEModule"]
