"""Training plans."""

from __future__ import annotations

from scvi.module.base import BaseModuleClass
from scvi.train import TrainingPlan


class MultiVAETrainingPlan(TrainingPlan):
    """scvi-tools' ELBO plan plus the MMD integration weight, and train mode on every fit.

    Parameters
    ----------
    module
        A module whose ``loss`` accepts ``kl_weight`` and ``mmd_weight``.
    mmd_weight
        Weight of the module's MMD integration loss (ignored if the module has none).
    **kwargs
        Passed to :class:`scvi.train.TrainingPlan` (``lr``, ``weight_decay``,
        ``n_epochs_kl_warmup``, ``max_kl_weight``, ...).
    """

    def __init__(self, module: BaseModuleClass, *, mmd_weight: float = 0.0, **kwargs):
        super().__init__(module, **kwargs)
        self.loss_kwargs.update({"mmd_weight": mmd_weight})

    def on_fit_start(self) -> None:
        """Put the module in train mode.

        scvi-tools leaves modules in eval mode after training or loading, and Lightning restores
        that mode, so a second ``train()`` would otherwise run without dropout.
        """
        super().on_fit_start()
        self.module.train()
