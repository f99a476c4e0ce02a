"""Adversarial training plan: alternating updates of a model and its modality discriminator."""

from __future__ import annotations

from typing import Literal

import torch
from scvi.module.base import BaseModuleClass
from scvi.train import TrainingPlan

from mosaicvi.base import EpochMetricsMixin, make_optimizer

_OPTIMIZERS = {
    "Adam": torch.optim.Adam,
    "AdamW": torch.optim.AdamW,
    "RMSprop": torch.optim.RMSprop,
}


class AdversarialTrainingPlan(EpochMetricsMixin, TrainingPlan):
    """Manual optimisation of a module with a built-in discriminator (e.g. CLUE).

    Each training step (1) computes the module's loss, which includes the encoders' term that
    fools the discriminator, and updates every module parameter except the discriminator's;
    (2) updates the discriminator on the detached latents (``module.discriminator_loss``), with
    optional Gaussian input noise whose standard deviation decays linearly from
    ``discriminator_noise`` to 0 over ``n_epochs_discriminator_burnin`` epochs. Gradients are
    clipped inside the step (Lightning rejects ``gradient_clip_val`` under manual
    optimisation). The KL weight is warmed up as in :class:`scvi.train.TrainingPlan`, and the
    same metrics are logged (``train_loss``, ``validation_loss``, ``elbo_*``, every extra
    metric of the module's loss, plus ``discriminator_step_loss_train``), so they appear in
    ``model.history``.

    Parameters
    ----------
    module
        A module with a ``discriminator`` submodule and a ``discriminator_loss(inference_outputs,
        noise_std)`` method returning ``(loss, accuracy)``.
    optimizer
        ``"Adam"``, ``"AdamW"`` or ``"RMSprop"`` (both optimizers), or ``"Custom"`` with
        ``optimizer_creator``.
    lr
        Learning rate of the module.
    discriminator_lr
        Learning rate of the discriminator (default: ``lr``).
    weight_decay
        Weight decay of both optimizers.
    gradient_clip_val
        Maximum gradient norm of each optimizer's parameters (``None`` or 0: no clipping).
    discriminator_noise
        Initial standard deviation of the noise added to the discriminator's input.
    n_epochs_discriminator_burnin
        Epochs over which that noise decays to 0 (``None``: the KL warm-up epochs).
    n_steps_discriminator
        Discriminator updates per module update.
    **kwargs
        Passed to :class:`scvi.train.TrainingPlan` (``n_epochs_kl_warmup``, ``max_kl_weight``,
        ``eps``, ...).
    """

    def __init__(
        self,
        module: BaseModuleClass,
        *,
        optimizer: Literal["Adam", "AdamW", "RMSprop", "Custom"] = "RMSprop",
        lr: float = 2e-3,
        discriminator_lr: float | None = None,
        weight_decay: float = 1e-6,
        gradient_clip_val: float | None = 10.0,
        discriminator_noise: float = 0.0,
        n_epochs_discriminator_burnin: int | None = None,
        n_steps_discriminator: int = 1,
        **kwargs,
    ):
        if kwargs.get("reduce_lr_on_plateau"):
            raise ValueError("reduce_lr_on_plateau is not supported by AdversarialTrainingPlan.")
        super().__init__(
            module,
            optimizer="Custom" if optimizer == "Custom" else "Adam",
            lr=lr,
            weight_decay=weight_decay,
            **kwargs,
        )
        self.optimizer_name = optimizer
        self.discriminator_lr = lr if discriminator_lr is None else discriminator_lr
        self.gradient_clip_val = gradient_clip_val
        self.discriminator_noise = discriminator_noise
        self.n_epochs_discriminator_burnin = n_epochs_discriminator_burnin
        self.n_steps_discriminator = n_steps_discriminator
        self.automatic_optimization = False

    # ------------------------------------------------------------------ optimisers
    def _make_optimizer(self, params, lr: float) -> torch.optim.Optimizer:
        if self.optimizer_name == "Custom":
            return self.optimizer_creator(params)
        cls = _OPTIMIZERS[self.optimizer_name]
        extra = {"eps": self.eps} if cls is not torch.optim.RMSprop else {}
        return make_optimizer(cls, params, lr=lr, weight_decay=self.weight_decay, **extra)

    def _split_parameters(self) -> tuple[list, list]:
        discriminator = {id(p) for p in self.module.discriminator.parameters()}
        main, adversary = [], []
        for p in self.module.parameters():
            if p.requires_grad:
                (adversary if id(p) in discriminator else main).append(p)
        return main, adversary

    def configure_optimizers(self):
        """One optimizer for the module without its discriminator, one for the discriminator.

        Where a part has no trainable parameter (a query model keeps the reference's
        discriminator frozen), its optimizer is left out.
        """
        main, adversary = self._split_parameters()
        optimizers = []
        self._has_main = bool(main)
        self._has_discriminator = bool(adversary)
        if main:
            optimizers.append(self._make_optimizer(main, self.lr))
        if adversary:
            optimizers.append(self._make_optimizer(adversary, self.discriminator_lr))
        if not optimizers:
            raise ValueError("The module has no trainable parameters.")
        return optimizers

    def _optimizers(self) -> tuple[torch.optim.Optimizer | None, torch.optim.Optimizer | None]:
        opts = self.optimizers()
        opts = list(opts) if isinstance(opts, list | tuple) else [opts]
        main = opts.pop(0) if self._has_main else None
        return main, (opts.pop(0) if self._has_discriminator else None)

    # ------------------------------------------------------------------ schedule
    @property
    def discriminator_noise_std(self) -> float:
        """Current standard deviation of the discriminator's input noise."""
        if self.discriminator_noise <= 0:
            return 0.0
        burnin = self.n_epochs_discriminator_burnin
        if burnin is None:
            burnin = self.n_epochs_kl_warmup or 0
        if burnin <= 0:
            return 0.0
        return self.discriminator_noise * max(0.0, 1.0 - self.current_epoch / burnin)

    def _step(self, optimizer, loss: torch.Tensor) -> None:
        optimizer.zero_grad()
        self.manual_backward(loss)
        if self.gradient_clip_val:
            self.clip_gradients(
                optimizer,
                gradient_clip_val=self.gradient_clip_val,
                gradient_clip_algorithm="norm",
            )
        optimizer.step()

    # ------------------------------------------------------------------ steps
    def on_fit_start(self) -> None:
        """Put the module in train mode (scvi-tools leaves it in eval mode after training)."""
        super().on_fit_start()
        self.module.train()

    def training_step(self, batch, batch_idx):
        """Update the module (encoders fool the discriminator), then the discriminator."""
        self._update_kl_weight()
        opt_main, opt_discriminator = self._optimizers()

        inference_outputs, _, scvi_loss = self.forward(batch, loss_kwargs=self.loss_kwargs)
        if opt_main is not None:
            self._step(opt_main, scvi_loss.loss)
        extra_sums = {}
        if opt_discriminator is not None:
            noise = self.discriminator_noise_std
            for _ in range(self.n_steps_discriminator):
                d_loss, _ = self.module.discriminator_loss(inference_outputs, noise_std=noise)
                self._step(opt_discriminator, d_loss)
            extra_sums["discriminator_step_loss"] = d_loss.detach() * scvi_loss.n_obs_minibatch
        self.compute_and_log_metrics(scvi_loss, self.train_metrics, "train", extra_sums)
        return scvi_loss.loss.detach()
