"""Keeping a reference model's parameters bit-identical while a query trains."""

from __future__ import annotations

import torch
from lightning.pytorch.callbacks import Callback


class FrozenReferenceCallback(Callback):
    """Train only the entries of partly new parameters that belong to new covariates.

    Fully frozen parameters have ``requires_grad=False`` and never reach the optimizer. For a
    parameter that mixes reference and new entries (a layer's weight with new batch columns), the
    reference entries get zero gradient and are restored after every optimizer step, so they stay
    bit-identical whatever the optimizer does (momentum, weight decay).

    Parameters
    ----------
    trainable_masks
        ``{parameter name: bool tensor}``, True where an entry may train.
    """

    def __init__(self, trainable_masks: dict[str, torch.Tensor]):
        super().__init__()
        self.trainable_masks = trainable_masks
        self._reference_values: dict[str, torch.Tensor] = {}

    def _parameters(self, pl_module):
        named = dict(pl_module.module.named_parameters())
        for name, mask in self.trainable_masks.items():
            yield name, named[name], mask.to(named[name].device)

    def on_fit_start(self, trainer, pl_module) -> None:  # noqa: D102
        self._reference_values = {
            name: param.detach().clone() for name, param, _ in self._parameters(pl_module)
        }

    def on_after_backward(self, trainer, pl_module) -> None:  # noqa: D102
        for _, param, mask in self._parameters(pl_module):
            if param.grad is not None:
                param.grad.mul_(mask)

    @torch.no_grad()
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: D102
        for name, param, mask in self._parameters(pl_module):
            param.copy_(torch.where(mask, param, self._reference_values[name]))
