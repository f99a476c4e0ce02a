"""Neural-network building blocks shared by the methods."""

from ._modality import ModalityDecoder, ModalityEncoder, hidden_layers

__all__ = ["ModalityDecoder", "ModalityEncoder", "hidden_layers"]
