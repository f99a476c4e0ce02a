"""Downstream tools on learned embeddings."""

from ._label_transfer import label_transfer

__all__ = ["label_transfer"]
