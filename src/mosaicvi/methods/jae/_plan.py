"""JAE's training plan."""

from __future__ import annotations

from scvi.module.base import BaseModuleClass

from mosaicvi.base import MosaicTrainingPlan


class JAETrainingPlan(MosaicTrainingPlan):
    """Adam on JAE's weighted loss (reconstruction, cell type, batch, cell cycle).

    Parameters
    ----------
    module
        A :class:`~mosaicvi.module.JAEModule`.
    reconstruction_weight, cell_type_weight, batch_weight, cell_cycle_weight
        Loss weights (published: 0.7, 0.2, 0.05, 0.05); 0 switches a term off.
    **kwargs
        Passed to :class:`scvi.train.TrainingPlan` (``lr``, ``weight_decay``, ...).
    """

    def __init__(
        self,
        module: BaseModuleClass,
        *,
        reconstruction_weight: float = 0.7,
        cell_type_weight: float = 0.2,
        batch_weight: float = 0.05,
        cell_cycle_weight: float = 0.05,
        **kwargs,
    ):
        weights = {
            "reconstruction_weight": reconstruction_weight,
            "cell_type_weight": cell_type_weight,
            "batch_weight": batch_weight,
            "cell_cycle_weight": cell_cycle_weight,
        }
        if any(w < 0 for w in weights.values()):
            raise ValueError(f"Loss weights must be non-negative, got {weights}.")
        super().__init__(module, loss_weights=weights, **kwargs)
