"""Neural-network building blocks."""

from ._modality import ModalityDecoder, ModalityEncoder, hidden_layers
from ._pipeline import ModalityTransform

__all__ = ["ModalityDecoder", "ModalityEncoder", "ModalityTransform", "hidden_layers"]
