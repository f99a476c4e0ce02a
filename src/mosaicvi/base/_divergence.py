"""Stopping a diverging run with the epoch, step and loss term that went non-finite."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from lightning.pytorch.callbacks import Callback


class TrainingDivergedError(FloatingPointError):
    """The loss (or the module's outputs) became NaN or infinite during training."""


def divergence_message(what: str, epoch: int | None, step: int | None) -> str:
    """What went non-finite, where, and what to try."""
    where = "" if epoch is None else f" at epoch {epoch}, step {step}"
    return (
        f"Training diverged{where}: {what} became NaN or infinite. Try a lower learning rate "
        "(e.g. `plan_kwargs={'lr': 1e-4}`), gradient clipping (`gradient_clip_val=1.0`), a "
        "larger batch size, or check the input for extreme values."
    )


def check_finite(
    terms: Mapping[str, torch.Tensor], epoch: int, step: int, mode: str = "train"
) -> None:
    """Raise :class:`TrainingDivergedError` naming the terms that are not finite.

    One device synchronisation per call: the terms are reduced to one flag first. The plans
    call it every step on CPU and, on an accelerator, once per epoch on the epoch sums (a
    check every step would make each step wait for the host).
    """
    values = torch.stack([torch.as_tensor(v).detach().float().sum() for v in terms.values()])
    finite = torch.isfinite(values)
    if bool(finite.all()):
        return
    bad = [name for name, ok in zip(terms, finite.tolist()) if not ok]
    what = f"the {mode} loss terms {bad}"
    raise TrainingDivergedError(divergence_message(what, epoch, step))


class DivergenceGuard(Callback):
    """Remembers the current epoch and step, to report where a forward pass failed."""

    def __init__(self):
        self.position: tuple[int, int] | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: D102
        self.position = (trainer.current_epoch, trainer.global_step)

    def translate(self, exc: BaseException) -> BaseException | None:
        """A :class:`TrainingDivergedError` for torch's invalid-distribution-parameter error."""
        if not isinstance(exc, ValueError) or "found invalid values" not in str(exc):
            return None
        epoch, step = self.position or (None, None)
        return TrainingDivergedError(
            divergence_message("the module's outputs (distribution parameters)", epoch, step)
        )
