"""CLUE's adversarial modality discriminator."""

from __future__ import annotations

import torch
from torch import nn


class ModalityDiscriminator(nn.Module):
    """MLP classifier ``q(k | z)``: which modality a latent was inferred from.

    Parameters
    ----------
    n_input
        Latent dimensions (``K * d`` for CLUE).
    n_modalities
        Number of classes ``K``.
    n_hidden, n_layers, dropout_rate
        Hidden layers (LeakyReLU, dropout).
    """

    def __init__(
        self,
        n_input: int,
        n_modalities: int,
        n_hidden: int = 128,
        n_layers: int = 2,
        dropout_rate: float = 0.2,
    ):
        super().__init__()
        layers: list[nn.Module] = []
        n_in = n_input
        for _ in range(n_layers):
            layers += [nn.Linear(n_in, n_hidden), nn.LeakyReLU(0.2), nn.Dropout(dropout_rate)]
            n_in = n_hidden
        layers.append(nn.Linear(n_in, n_modalities))
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Logits over modalities, ``(n, K)``."""
        return self.net(z)
