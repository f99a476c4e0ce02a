"""Neural-network building blocks."""

from ._modality import ModalityDecoder, ModalityEncoder

__all__ = ["ModalityEncoder", "ModalityDecoder"]
