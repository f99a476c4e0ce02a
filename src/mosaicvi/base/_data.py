"""Which assembled data a model reads for a MuData passed to one of its methods."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence

import anndata as ad
import numpy as np
import torch
from mudata import MuData

from mosaicvi.data._constants import OBSERVED_OBSM_KEY

from . import _compat
from ._fingerprint import content_fingerprint

logger = logging.getLogger("mosaicvi")


def as_names(value: str | Sequence[str]) -> list[str]:
    """A name or a list of names, as a list."""
    return [value] if isinstance(value, str) else list(value)


class DataAccessMixin:
    """Resolve the MuData given to a model's methods to registered, assembled data.

    The training data is read from the model's own assembly while the MuData is unchanged;
    another MuData, or the training MuData after an edit, is assembled for the call alone and
    freed after it.
    """

    def _training_data_is_current(self) -> bool:
        args = _compat.setup_args(self.registry_)
        return content_fingerprint(self._mdata, args) == self._mdata_content

    def _check_training_data_unchanged(self) -> None:
        """Training must read what setup registered."""
        if not self._training_data_is_current():
            name = type(self).__name__
            raise ValueError(
                f"model.mdata was edited after `{name}.setup_mudata` (its values, cells, "
                "features or covariate columns changed), so the registered data is stale. Call "
                f"`{name}.setup_mudata(mdata, ...)` again and create a new model."
            )

    def _check_trained(self) -> None:
        """Outputs of a model that was never trained are random: refuse them, as scvi-tools does."""
        if not (self.is_trained_ or self.reference_weights_only_):
            name = type(self).__name__
            what = "query model" if self.is_query else "model"
            raise RuntimeError(
                f"This {name} {what} is not trained yet, so its outputs would be random. Call "
                "`model.train()` first."
            )

    @contextlib.contextmanager
    def _data_for(self, adata: MuData | None, require_trained: bool = True) -> Iterator[ad.AnnData]:
        """The assembled AnnData for ``adata`` (``None``: the training data), for one call.

        Model outputs need a trained model; ``require_trained=False`` is for reading data only.
        The module is in evaluation mode for the call (no dropout, the deterministic loss
        estimators), whatever mode it was left in; its mode is restored afterwards.
        """
        if require_trained:
            self._check_trained()
        self._prepare_module()
        was_training = self.module.training
        self.module.eval()
        try:
            with self._assembled_for(adata) as assembled:
                yield assembled
        finally:
            self.module.train(was_training)

    @contextlib.contextmanager
    def _assembled_for(self, adata: MuData | None) -> Iterator[ad.AnnData]:
        if adata is None or adata is self._mdata:
            if self._training_data_is_current():
                yield self.adata
                return
            logger.warning("model.mdata was edited after setup_mudata; reading its current values.")
            adata = self._mdata
        if not isinstance(adata, MuData):
            raise TypeError(
                f"Pass a mudata.MuData shaped like the training data, got {type(adata).__name__}."
            )
        manager = self._transient_manager(adata)
        try:
            yield manager.adata
        finally:
            _compat.forget_manager(self, manager)

    def _transient_manager(self, mdata: MuData):
        """Assemble ``mdata`` with the model's registration and register it for this model."""
        args = _compat.setup_args(self.registry_)
        _, assembled = self._assemble(mdata, args, False, self.registry_)
        manager = self.adata_manager.transfer_fields(assembled)
        _compat.register_for_instance(self, manager)
        return manager

    def _validate_anndata(self, adata=None, copy_if_view: bool = True) -> ad.AnnData:
        """scvi-tools' hook: only the model's own assembled data is passed here."""
        if isinstance(adata, MuData):
            raise TypeError("Internal: resolve a MuData with `model._data_for(mdata)` first.")
        return super()._validate_anndata(adata, copy_if_view)

    def _use_modalities(
        self, modalities: str | Sequence[str] | None, observed: np.ndarray
    ) -> torch.Tensor | None:
        """0/1 selector over modalities, checking every cell has at least one of them."""
        if modalities is None:
            return None
        selected = [self._check_modality(m) for m in as_names(modalities)]
        selector = np.zeros(len(self.modalities), dtype=np.float32)
        selector[selected] = 1.0
        lacking = int(((observed * selector).sum(1) == 0).sum())
        if lacking:
            raise ValueError(
                f"{lacking} of the requested cells have none of the modalities "
                f"{as_names(modalities)}. Pass `indices` of cells that have them."
            )
        return torch.as_tensor(selector)

    @staticmethod
    def _observed(adata: ad.AnnData, indices) -> np.ndarray:
        mask = adata.obsm[OBSERVED_OBSM_KEY]
        return mask if indices is None else mask[np.asarray(indices)]

    @staticmethod
    def _obs_names(adata: ad.AnnData, indices):
        return adata.obs_names if indices is None else adata.obs_names[np.asarray(indices)]
