"""``train()``, written once: each model declares its defaults as data."""

from __future__ import annotations

import difflib
import inspect
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import anndata as ad
import numpy as np
import scipy.sparse as sp
from scvi.dataloaders import AnnDataLoader, DataSplitter
from scvi.model.base import UnsupervisedTrainingMixin
from scvi.train import TrainingPlan

from mosaicvi.data._backed import is_out_of_core

from . import _compat
from ._divergence import DivergenceGuard

logger = logging.getLogger("mosaicvi")

DataLoaderChoice = Literal["auto", "in_memory", "out_of_core", "anndata"]
_DATA_LOADERS = ("auto", "in_memory", "out_of_core", "anndata")


@dataclass(frozen=True)
class TrainingDefaults:
    """A model's defaults for its ``train()`` method.

    Attributes
    ----------
    plan_kwargs
        Training-plan options (learning rate, loss weights, ...).
    batch_size
        Minibatch size.
    early_stopping
        Stop on ``validation_loss`` (patience 20 epochs).
    query_max_epochs
        Default epochs of a mapped query (``None``: the reference rule).
    query_plan_kwargs
        Plan options that replace ``plan_kwargs`` entries for a mapped query.
    validate_every_epoch
        Compute validation metrics every epoch even without early stopping.
    clip_in_plan
        The plan optimises manually, so a ``gradient_clip_val`` trainer option is handed to it
        (Lightning rejects clipping with manual optimisation).
    """

    plan_kwargs: Mapping[str, object] = field(default_factory=dict)
    batch_size: int = 128
    early_stopping: bool = True
    query_max_epochs: int | None = None
    query_plan_kwargs: Mapping[str, object] = field(default_factory=dict)
    validate_every_epoch: bool = False
    clip_in_plan: bool = False


def _positive_int(value) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool) and value >= 1


def check_training_arguments(max_epochs, batch_size, train_size, validation_size) -> None:
    """Reject values Lightning or the data splitter would read as something else (or hang on)."""
    if max_epochs is not None and not _positive_int(max_epochs):
        raise ValueError(
            f"max_epochs must be a positive integer, got {max_epochs!r} (Lightning reads -1 as "
            "'train forever'). Pass e.g. `max_epochs=100`, or None for the default rule."
        )
    if batch_size is not None and not _positive_int(batch_size):
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    if not 0 < train_size <= 1:
        raise ValueError(f"train_size must be in (0, 1], got {train_size!r}.")
    if validation_size is not None and not (0 <= validation_size < 1):
        raise ValueError(f"validation_size must be in [0, 1), got {validation_size!r}.")
    if validation_size is not None and train_size + validation_size > 1:
        raise ValueError(
            f"train_size + validation_size must be at most 1, got {train_size} + {validation_size}."
        )


def default_max_epochs(n_cells: int) -> int:
    """scvi-tools' rule: fewer epochs for more cells, between 20 and 400."""
    return int(min(400, max(20, round(20_000 / n_cells * 400))))


def _fits_in_memory(adata: ad.AnnData, fraction: float = 0.25) -> bool:
    """Whether in-memory tensors of ``adata`` (CSR parts + per-cell fields) fit in RAM."""
    if adata.isbacked or is_out_of_core(adata):
        return False
    x = adata.X
    nnz = x.nnz if sp.issparse(x) else x.size
    needed = nnz * 12 + adata.n_obs * 8 * (8 + sum(v.shape[1] for v in adata.obsm.values()))
    try:
        available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not a POSIX system: assume it fits
        return True
    return needed < fraction * available


def _named_parameters(function) -> set[str]:
    """Names a function accepts explicitly (``**kwargs`` does not count)."""
    return {
        name
        for name, p in inspect.signature(function).parameters.items()
        if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
    }


class TrainingMixin:
    """One ``train()`` for every model; a model sets ``training_defaults``."""

    training_defaults: TrainingDefaults = TrainingDefaults()
    #: Some parameters take no part in one of the losses (DDP must be told to look for them).
    _ddp_unused_parameters = False

    def _plan_defaults(self) -> dict:
        """Plan options before the user's ``plan_kwargs`` (a model may compute some)."""
        defaults = dict(self.training_defaults.plan_kwargs)
        if self.is_query:
            defaults.update(self.training_defaults.query_plan_kwargs)
        return defaults

    def train(
        self,
        max_epochs: int | None = None,
        accelerator: str = "auto",
        devices: int | list[int] | str = "auto",
        train_size: float = 0.9,
        validation_size: float | None = None,
        batch_size: int | None = None,
        early_stopping: bool | None = None,
        plan_kwargs: dict | None = None,
        data_loader: DataLoaderChoice = "auto",
        **trainer_kwargs,
    ):
        """Train with Lightning (a GPU is used when present and ``accelerator="auto"``).

        Parameters
        ----------
        max_epochs
            Default: scvi-tools' rule (fewer epochs for more cells, 20 to 400); a mapped query
            of a model with its own recipe uses that (see ``training_defaults``).
        accelerator, devices
            Lightning device selection.
        train_size, validation_size
            Split of the cells; the validation loss drives early stopping.
        batch_size
            Minibatch size (default: the model's ``training_defaults.batch_size``).
        early_stopping
            Stop when ``validation_loss`` has not improved for ``early_stopping_patience``
            (default 20) epochs. Default: the model's ``training_defaults.early_stopping``.
        plan_kwargs
            Options of the model's training plan (``model._training_plan_cls``: learning rate,
            weight decay, loss weights); they update ``training_defaults.plan_kwargs``. A KL
            warm-up over a quarter of the epochs (at most 50) is added unless given.
        data_loader
            ``"auto"`` (default): for a MuData whose modalities stay on disk (see
            :func:`mosaicvi.data.read_backed`), minibatches read from disk chunk by chunk;
            otherwise from tensors built once in memory when they fit in a quarter of the
            available RAM, else scvi-tools' AnnData loader. ``"in_memory"``,
            ``"out_of_core"`` or ``"anndata"`` to choose.
        **trainer_kwargs
            Passed to :class:`scvi.train.Trainer`.
        """
        check_training_arguments(max_epochs, batch_size, train_size, validation_size)
        self._check_training_data_unchanged()
        self._prepare_module()
        if self.is_query and self._all_frozen:
            raise ValueError(
                "Every parameter of this query model is frozen: the query brings no new batch or "
                "covariate category, so there is nothing to train. Use the model as it is, or "
                "map with `load_query_data(..., unfrozen=True)` to fine-tune."
            )
        defaults = self.training_defaults
        if max_epochs is None:
            query_epochs = defaults.query_max_epochs if self.is_query else None
            max_epochs = query_epochs or default_max_epochs(self.adata.n_obs)
        plan_kwargs = {
            **self._plan_defaults(),
            "n_epochs_kl_warmup": max(1, min(50, max_epochs // 4)),
            **(plan_kwargs or {}),
        }
        self._check_plan_kwargs(plan_kwargs)
        early_stopping = defaults.early_stopping if early_stopping is None else early_stopping
        self._use_data_loader(data_loader)
        guard = DivergenceGuard()
        trainer_kwargs["callbacks"] = [*trainer_kwargs.get("callbacks", []), guard]
        self._prepare_trainer_kwargs(trainer_kwargs, plan_kwargs)
        if defaults.validate_every_epoch and train_size < 1.0:
            trainer_kwargs.setdefault("check_val_every_n_epoch", 1)
        if train_size >= 1.0 and early_stopping:
            logger.info("train_size=1 leaves no validation cells; early stopping is disabled.")
            early_stopping = False
        try:
            return UnsupervisedTrainingMixin.train(
                self,
                max_epochs=max_epochs,
                accelerator=accelerator,
                devices=devices,
                train_size=train_size,
                validation_size=validation_size,
                batch_size=defaults.batch_size if batch_size is None else batch_size,
                early_stopping=early_stopping,
                plan_kwargs=plan_kwargs,
                **trainer_kwargs,
            )
        except ValueError as exc:
            diverged = guard.translate(exc)
            if diverged is None:
                raise
            raise diverged from exc

    def _check_plan_kwargs(self, plan_kwargs: Mapping[str, object]) -> None:
        """Every plan option is one the training plan or the module's loss takes."""
        accepted = _named_parameters(self.module.loss)
        for klass in self._training_plan_cls.__mro__:
            if "__init__" in vars(klass):
                accepted |= _named_parameters(klass.__init__)
            if klass is TrainingPlan:
                break
        accepted -= {"self", "module", "tensors", "inference_outputs", "generative_outputs"}
        unknown = [name for name in plan_kwargs if name not in accepted]
        if unknown:
            hints = {n: difflib.get_close_matches(n, accepted, n=1) for n in unknown}
            hint = "; ".join(f"{n!r}: did you mean {h[0]!r}?" for n, h in hints.items() if h)
            raise TypeError(
                f"Unknown plan_kwargs {unknown} for {type(self).__name__}"
                + (f" ({hint})" if hint else "")
                + f". Accepted: {sorted(accepted)}."
            )

    def _prepare_trainer_kwargs(self, trainer_kwargs: dict, plan_kwargs: dict) -> None:
        """Callbacks, DDP and early-stopping settings shared by the models (in place)."""
        if self.training_defaults.clip_in_plan and "gradient_clip_val" in trainer_kwargs:
            plan_kwargs["gradient_clip_val"] = trainer_kwargs.pop("gradient_clip_val")
        trainer_kwargs["callbacks"] = [
            *trainer_kwargs.get("callbacks", []),
            *self._query_callbacks(),
        ]
        if trainer_kwargs.get("strategy") == "ddp" and self._ddp_unused_parameters:
            # e.g. CLUE's discriminator takes no part in the module's loss
            trainer_kwargs["strategy"] = "ddp_find_unused_parameters_true"
        if _compat.use_distributed_sampler(trainer_kwargs.get("strategy")):
            # Lightning syncs epoch metrics across processes in place, which fails on tensors
            # logged under inference mode (validation); no_grad validation avoids that
            trainer_kwargs.setdefault("inference_mode", False)
        trainer_kwargs.setdefault("early_stopping_monitor", "validation_loss")
        trainer_kwargs.setdefault("early_stopping_patience", 20)

    def _use_data_loader(self, data_loader: DataLoaderChoice) -> None:
        """Pick the minibatch path for training and inference.

        ``"in_memory"``: :class:`~mosaicvi.dataloaders.InMemoryDataLoader` (fields built into
        tensors once, sliced per minibatch); ``"out_of_core"``:
        :class:`~mosaicvi.dataloaders.OutOfCoreDataLoader` (features read from disk in shuffled
        blocks); ``"anndata"``: scvi-tools' ``AnnDataLoader``; ``"auto"``: out of core for data
        on disk, else in memory when the tensors take less than a quarter of the available RAM.
        """
        # imported here: the loaders import scvi-tools internals through this package
        from mosaicvi.dataloaders import (
            InMemoryDataLoader,
            InMemoryDataSplitter,
            OutOfCoreDataLoader,
            OutOfCoreDataSplitter,
        )

        if data_loader not in _DATA_LOADERS:
            raise ValueError(f"data_loader must be one of {_DATA_LOADERS}, got {data_loader!r}.")
        on_disk = is_out_of_core(self.adata)
        if data_loader == "auto":
            if on_disk:
                data_loader = "out_of_core"
            else:
                data_loader = "in_memory" if _fits_in_memory(self.adata) else "anndata"
        if on_disk and data_loader != "out_of_core":
            raise ValueError(
                f"data_loader={data_loader!r} needs the data in memory, but this model's "
                "MuData keeps its modalities on disk (backed). Use data_loader='out_of_core' "
                "(the default for such data), or read the MuData into memory first "
                "(`mdata = mdata.to_memory()`; then set it up again)."
            )
        splitters = {
            "in_memory": (InMemoryDataSplitter, InMemoryDataLoader),
            "out_of_core": (OutOfCoreDataSplitter, OutOfCoreDataLoader),
            "anndata": (DataSplitter, AnnDataLoader),
        }
        self._data_splitter_cls, self._data_loader_cls = splitters[data_loader]
        self.data_loader_ = data_loader

    def _make_data_loader(self, adata, indices=None, batch_size=None, shuffle=False, **kwargs):
        """scvi-tools' loader factory; data kept on disk is always read out of core."""
        if is_out_of_core(adata) and "data_loader_class" not in kwargs:
            from mosaicvi.dataloaders import OutOfCoreDataLoader

            kwargs["data_loader_class"] = OutOfCoreDataLoader
        return super()._make_data_loader(
            adata=adata, indices=indices, batch_size=batch_size, shuffle=shuffle, **kwargs
        )
