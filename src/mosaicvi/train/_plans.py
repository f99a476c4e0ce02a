"""Training plans."""

from __future__ import annotations

import torch
from scvi.module.base import BaseModuleClass
from scvi.train import TrainingPlan


class SyncableMetricsMixin:
    """Log scvi-tools' epoch metrics as ordinary (no-grad) tensors instead of inference tensors.

    scvi-tools computes the logged metrics under ``torch.inference_mode``; with several
    processes (DDP) Lightning averages them across processes *in place* at the end of an epoch,
    which inference tensors forbid. The same computation under ``torch.no_grad`` is equivalent
    and syncs.
    """

    def compute_and_log_metrics(self, loss_output, metrics, mode):  # noqa: D102
        with torch.no_grad():
            return TrainingPlan.compute_and_log_metrics.__wrapped__(
                self, loss_output, metrics, mode
            )


class MosaicTrainingPlan(SyncableMetricsMixin, TrainingPlan):
    """scvi-tools' plan with extra loss weights, and the module in train mode on every fit.

    Parameters
    ----------
    module
        A module whose ``loss`` accepts the given weights as keyword arguments.
    loss_weights
        ``{loss argument: weight}`` passed to the module's ``loss`` at every step.
    **kwargs
        Passed to :class:`scvi.train.TrainingPlan` (``lr``, ``weight_decay``,
        ``n_epochs_kl_warmup``, ``max_kl_weight``, ...).
    """

    def __init__(
        self, module: BaseModuleClass, *, loss_weights: dict[str, float] | None = None, **kwargs
    ):
        super().__init__(module, **kwargs)
        self.loss_kwargs.update(loss_weights or {})

    def on_fit_start(self) -> None:
        """Put the module in train mode.

        scvi-tools leaves modules in eval mode after training or loading, and Lightning restores
        that mode, so a second ``train()`` would otherwise run without dropout.
        """
        super().on_fit_start()
        self.module.train()


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
