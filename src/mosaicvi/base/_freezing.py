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
        self._guarded: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def on_fit_start(self, trainer, pl_module) -> None:  # noqa: D102
        # resolve parameters, masks and reference values once, not at every step
        named = dict(pl_module.module.named_parameters())
        self._guarded = [
            (named[name], mask.to(named[name].device), named[name].detach().clone())
            for name, mask in self.trainable_masks.items()
        ]

    def on_after_backward(self, trainer, pl_module) -> None:  # noqa: D102
        for param, mask, _ in self._guarded:
            if param.grad is not None:
                param.grad.mul_(mask)

    @torch.no_grad()
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: D102
        for param, mask, reference in self._guarded:
            param.copy_(torch.where(mask, param, reference))
