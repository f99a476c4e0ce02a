"""MultiVAE's training plan."""

from __future__ import annotations

from scvi.module.base import BaseModuleClass

from mosaicvi.base import MosaicTrainingPlan


class MultiVAETrainingPlan(MosaicTrainingPlan):
    """ELBO plan plus the MMD integration weight.

    Parameters
    ----------
    module
        A module whose ``loss`` accepts ``kl_weight`` and ``mmd_weight``.
    mmd_weight
        Weight of the module's MMD integration loss (ignored if the module has none).
    **kwargs
        Passed to :class:`scvi.train.TrainingPlan`.
    """

    def __init__(self, module: BaseModuleClass, *, mmd_weight: float = 0.0, **kwargs):
        super().__init__(module, loss_weights={"mmd_weight": mmd_weight}, **kwargs)
