"""JAE: the user-facing model."""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Literal

import anndata as ad
import numpy as np
import pandas as pd
import torch
from mudata import MuData
from scvi import REGISTRY_KEYS
from scvi.data._constants import _FIELD_REGISTRIES_KEY, _STATE_REGISTRY_KEY
from scvi.data.fields import LabelsWithUnlabeledObsField, ObsmField
from scvi.model.base import BaseModelClass, UnsupervisedTrainingMixin

from mosaicvi.data import ModalitySpec, score_cell_cycle
from mosaicvi.data._constants import (
    CELL_CYCLE_KEY,
    CELL_CYCLE_OBSM_KEY,
    LABELS_COLUMN,
    OBSERVED_OBSM_KEY,
    PROTEIN_NAMES,
)
from mosaicvi.data._mosaic import _obs_column
from mosaicvi.module import JAEModule
from mosaicvi.module._jae import LATENT_SLICES
from mosaicvi.nn._pipeline import TRANSFORMS
from mosaicvi.train import JAETrainingPlan

from ._base import DataLoaderChoice, MosaicModelMixin
from ._output import collect_rows

logger = logging.getLogger("mosaicvi")

LatentSlice = Literal["cell_type", "batch", "cell_cycle", "free"]


class JAE(MosaicModelMixin, UnsupervisedTrainingMixin, BaseModelClass):
    """Autoencoder with a latent regularised by cell type, batch and cell-cycle phase.

    The winning joint-embedding method of the NeurIPS 2021 multimodal benchmark. Each modality
    is turned into fixed features fitted once on the reference and saved with the model
    (library normalisation to 1e4, log1p and a truncated SVD for RNA and ATAC; centred
    log-ratios for proteins), and a deterministic autoencoder embeds their concatenation. The
    latent has named slices, in this order:

    ============== ======================================= ====================================
    slice          size                                    trained to
    ============== ======================================= ====================================
    ``cell_type``  number of cell types in ``labels_key``  predict the label (cross-entropy)
    ``batch``      number of batches                       be uniform across batches
    ``cell_cycle`` 2                                       equal the S and G2M phase scores
    ``free``       ``n_free`` (5)                          (unsupervised)
    ============== ======================================= ====================================

    Loss: ``0.7`` reconstruction + ``0.2`` cell type + ``0.05`` batch + ``0.05`` cell cycle
    (configurable in :meth:`train`). Cells without a label contribute no cell-type term.

    Parameters
    ----------
    adata
        MuData registered with :meth:`setup_mudata`.
    n_free
        Unsupervised latent dimensions.
    n_components
        SVD components per modality (capped at the number of features minus one).
    input_transforms
        ``{modality: "svd" | "clr" | "log1p"}``; default ``"clr"`` for protein-like names
        (adt, protein, prot, cite) and ``"svd"`` otherwise.
    n_hidden, n_layers, dropout_rate
        Encoder and decoder MLPs (LayerNorm, LeakyReLU).
    modality_dropout
        Probability, per training step, that a cell with several modalities is encoded without
        one of them (it still reconstructs all), so RNA-only cells and queries embed like paired
        ones. 0 reproduces the published model.

    Examples
    --------
    >>> mosaicvi.model.JAE.setup_mudata(mdata, batch_key="batch", labels_key="cell_type")
    >>> model = mosaicvi.model.JAE(mdata)
    >>> model.train()
    >>> z = model.get_latent_representation()
    >>> cell_types = model.predict()
    """

    _module_cls = JAEModule
    _training_plan_cls = JAETrainingPlan
    _restoring = 0  # > 0 while a saved/reference state is about to overwrite the module

    def __init__(
        self,
        adata: MuData,
        n_free: int = 5,
        n_components: int = 100,
        input_transforms: Mapping[str, str] | None = None,
        n_hidden: int = 256,
        n_layers: int = 2,
        dropout_rate: float = 0.1,
        modality_dropout: float = 0.2,
    ):
        super().__init__(self._init_mosaic(adata))
        specs = self.modality_specs
        transforms = self._resolve_transforms(specs, input_transforms)
        self.module = self._module_cls(
            specs,
            transforms=transforms,
            n_components=[n_components] * len(specs),
            n_labels=len(self.cell_type_names),
            n_batch=self.summary_stats.n_batch,
            n_free=n_free,
            n_hidden=n_hidden,
            n_layers=n_layers,
            dropout_rate=dropout_rate,
            modality_dropout=modality_dropout,
        )
        if not type(self)._restoring:
            self._fit_input_transforms()
        sizes = self.module.latent_sizes
        self._model_summary_string = (
            f"JAE (latent {self.module.n_latent}: "
            + ", ".join(f"{name} {sizes[name]}" for name in LATENT_SLICES)
            + ") on "
            + ", ".join(
                f"{s.name} ({kind}, {s.n_vars} features)" for s, kind in zip(specs, transforms)
            )
        )
        self.init_params_ = self._get_init_params(locals())

    @staticmethod
    def _resolve_transforms(
        specs: Sequence[ModalitySpec], input_transforms: Mapping[str, str] | None
    ) -> list[str]:
        given = dict(input_transforms or {})
        unknown = set(given) - {s.name for s in specs}
        if unknown:
            raise KeyError(
                f"input_transforms names unknown modalities {sorted(unknown)}; the model has "
                f"{[s.name for s in specs]}."
            )
        for name, kind in given.items():
            if kind not in TRANSFORMS:
                raise ValueError(f"input_transforms[{name!r}] = {kind!r}; use one of {TRANSFORMS}.")
        return [
            given.get(s.name, "clr" if s.name.lower() in PROTEIN_NAMES else "svd") for s in specs
        ]

    def _fit_input_transforms(self) -> None:
        """Fit each modality's transform on the training cells that have it."""
        observed = self.adata.obsm[OBSERVED_OBSM_KEY].astype(bool)
        for k, (transform, columns) in enumerate(zip(self.module.transforms, self.module.slices)):
            transform.fit(self.adata.X, rows=np.flatnonzero(observed[:, k]), columns=columns)

    # ------------------------------------------------------------------ setup
    @classmethod
    def setup_mudata(
        cls,
        mdata: MuData,
        modalities: Mapping[str, str] | Sequence[str] | None = None,
        layers: Mapping[str, str | None] | None = None,
        likelihoods: Mapping[str, str] | None = None,
        batch_key: str | None = None,
        labels_key: str | None = None,
        unlabeled_category: str = "Unknown",
        cell_cycle_keys: Sequence[str] | None = None,
        cell_cycle_modality: str | None = None,
        organism: Literal["human", "mouse"] | None = None,
        **kwargs,
    ) -> None:
        """Register a MuData (paired or mosaic) with labels and cell-cycle scores.

        The MuData is only read. Arguments shared with the other models are described in
        :meth:`mosaicvi.model.MultiVAE.setup_mudata`; ``likelihoods`` only matter for data
        validation here (JAE's inputs are counts).

        Parameters
        ----------
        labels_key
            Column of ``mdata.obs`` with cell types. Missing values and ``unlabeled_category``
            mark unlabelled cells, which contribute no cell-type loss (semi-supervised).
        unlabeled_category
            Label value of unlabelled cells.
        cell_cycle_keys
            Two columns of ``mdata.obs`` with S and G2M scores. ``None``: computed with
            :func:`scanpy.tl.score_genes_cell_cycle` from ``cell_cycle_modality`` using the
            packaged S and G2M gene lists (a warning says when too few of them are present).
            Scores are kept inside the model (see :meth:`cell_cycle_scores`), not written to
            ``mdata``.
        cell_cycle_modality
            Modality with gene expression counts; default ``"rna"``/``"gex"`` or the first
            modality with a negative binomial likelihood.
        organism
            ``"human"`` or ``"mouse"`` gene symbols; guessed from the symbols' case if ``None``.
        **kwargs
            ``source_registry`` / ``extend_categories`` (used when loading models).
        """
        if cell_cycle_keys is not None and (
            isinstance(cell_cycle_keys, str) or len(cell_cycle_keys) != 2
        ):
            raise ValueError(
                "cell_cycle_keys must be two columns of mdata.obs: (S score, G2M score)."
            )
        cls._setup_and_log(
            mdata,
            modalities,
            layers,
            likelihoods,
            batch_key,
            None,
            None,
            model_args={
                "labels_key": labels_key,
                "unlabeled_category": unlabeled_category,
                "cell_cycle_keys": None if cell_cycle_keys is None else list(cell_cycle_keys),
                "cell_cycle_modality": cell_cycle_modality,
                "organism": organism,
            },
            **kwargs,
        )

    @classmethod
    def _model_fields(cls, model_args: dict) -> list:
        return [
            LabelsWithUnlabeledObsField(
                REGISTRY_KEYS.LABELS_KEY, LABELS_COLUMN, model_args["unlabeled_category"]
            ),
            ObsmField(CELL_CYCLE_KEY, CELL_CYCLE_OBSM_KEY),
        ]

    @classmethod
    def _annotate_assembly(
        cls,
        assembled: ad.AnnData,
        mdata: MuData,
        specs: Sequence[ModalitySpec],
        model_args: dict,
        source_registry: dict | None,
    ) -> None:
        assembled.obs[LABELS_COLUMN] = cls._label_column(mdata, model_args, source_registry)
        assembled.obsm[CELL_CYCLE_OBSM_KEY] = cls._cell_cycle_matrix(
            assembled, mdata, specs, model_args, source_registry
        )

    @staticmethod
    def _label_column(
        mdata: MuData, model_args: dict, source_registry: dict | None
    ) -> pd.Categorical:
        key, unlabeled = model_args["labels_key"], model_args["unlabeled_category"]
        n = mdata.n_obs
        if key is None or (source_registry is not None and key not in mdata.obs.columns):
            return pd.Categorical([unlabeled] * n)
        column = _obs_column(mdata, key, "labels_key")
        labels = column.astype(object).where(column.notna(), unlabeled).astype(str).to_numpy()
        if source_registry is not None:  # a query: only the reference's cell types are known
            mapping = source_registry[_FIELD_REGISTRIES_KEY][REGISTRY_KEYS.LABELS_KEY][
                _STATE_REGISTRY_KEY
            ]["categorical_mapping"]
            unknown = ~np.isin(labels, np.asarray(mapping, dtype=str))
            if unknown.any():
                logger.warning(
                    "%d cells have labels the reference does not know (%s); they count as "
                    "unlabelled.",
                    int(unknown.sum()),
                    sorted(set(labels[unknown]))[:5],
                )
                labels = np.where(unknown, unlabeled, labels)
        elif (labels == unlabeled).all():
            warnings.warn(
                f"labels_key {key!r} has no labelled cell; the cell-type slice is not trained.",
                UserWarning,
                stacklevel=4,
            )
        return pd.Categorical(labels)

    @staticmethod
    def _expression_modality(specs: Sequence[ModalitySpec], model_args: dict) -> int | None:
        names = [s.name for s in specs]
        chosen = model_args["cell_cycle_modality"]
        if chosen is not None:
            if chosen not in names:
                raise KeyError(f"cell_cycle_modality {chosen!r} is not one of {names}.")
            return names.index(chosen)
        for k, spec in enumerate(specs):
            if spec.name.lower() in ("rna", "gex", "gene", "genes", "expression"):
                return k
        for k, spec in enumerate(specs):
            if spec.likelihood in ("nb", "zinb") and spec.name.lower() not in PROTEIN_NAMES:
                return k
        return None

    @classmethod
    def _cell_cycle_matrix(
        cls,
        assembled: ad.AnnData,
        mdata: MuData,
        specs: Sequence[ModalitySpec],
        model_args: dict,
        source_registry: dict | None,
    ) -> np.ndarray:
        """``(n, 3)``: S score, G2M score, and 1 where the cell has scores."""
        scores = np.zeros((assembled.n_obs, 3), dtype=np.float32)
        keys = model_args["cell_cycle_keys"]
        if keys is not None and (source_registry is None or all(k in mdata.obs for k in keys)):
            for j, key in enumerate(keys):
                values = pd.to_numeric(_obs_column(mdata, key, "cell_cycle_keys"), errors="coerce")
                scores[:, j] = values.to_numpy(dtype=np.float32)
            finite = np.isfinite(scores[:, :2]).all(1)
            scores[~finite, :2] = 0.0
            scores[:, 2] = finite
            return scores
        k = cls._expression_modality(specs, model_args)
        if k is None:
            warnings.warn(
                "No gene-expression modality to score the cell cycle from; the cell-cycle slice "
                "is not trained. Pass `cell_cycle_modality=` or `cell_cycle_keys=`.",
                UserWarning,
                stacklevel=4,
            )
            return scores
        has = assembled.obsm[OBSERVED_OBSM_KEY][:, k].astype(bool)
        if not has.any():
            return scores
        start = sum(s.n_vars for s in specs[:k])
        s_score, g2m_score, info = score_cell_cycle(
            assembled.X,
            mdata.mod[specs[k].mod_key].var_names,
            organism=model_args["organism"],
            rows=np.flatnonzero(has),
            columns=slice(start, start + specs[k].n_vars),
        )
        if info["scored"]:  # otherwise the slice is left untrained rather than pinned to 0
            scores[has, 0], scores[has, 1], scores[has, 2] = s_score, g2m_score, 1.0
        return scores

    # ------------------------------------------------------------------ properties
    @property
    def cell_type_names(self) -> list[str]:
        """Cell types of the ``cell_type`` slice, in column order."""
        state = self.adata_manager.get_state_registry(REGISTRY_KEYS.LABELS_KEY)
        return [str(c) for c in state.categorical_mapping if c != state.unlabeled_category]

    @property
    def latent_slices(self) -> dict[str, slice]:
        """Columns of each named slice in :meth:`get_latent_representation`'s output."""
        return dict(self.module.latent_slices)

    # ------------------------------------------------------------------ training
    def train(
        self,
        max_epochs: int | None = None,
        accelerator: str = "auto",
        devices: int | list[int] | str = "auto",
        train_size: float = 0.9,
        validation_size: float | None = None,
        batch_size: int = 128,
        early_stopping: bool = True,
        plan_kwargs: dict | None = None,
        data_loader: DataLoaderChoice = "auto",
        **trainer_kwargs,
    ):
        """Train with Lightning (a GPU is used when present and ``accelerator="auto"``).

        A reference trains on every loss term. A query from :meth:`load_query_data` follows the
        published recipe: reconstruction only, 2 epochs by default.

        Parameters
        ----------
        max_epochs
            Reference: scvi-tools' heuristic (fewer epochs for more cells, at most 400). Query: 2.
        accelerator, devices
            Lightning device selection.
        train_size, validation_size
            Split of the cells; the validation loss drives early stopping.
        batch_size
            Minibatch size.
        early_stopping
            Stop when ``validation_loss`` has not improved for ``early_stopping_patience``
            (default 20) epochs.
        plan_kwargs
            :class:`~mosaicvi.train.JAETrainingPlan` options: ``lr`` (1e-3), ``weight_decay``,
            ``reconstruction_weight`` (0.7), ``cell_type_weight`` (0.2), ``batch_weight``
            (0.05), ``cell_cycle_weight`` (0.05).
        data_loader
            ``"auto"`` (default): minibatches from tensors built once in memory when they fit
            in a quarter of the available RAM, else scvi-tools' AnnData loader;
            ``"in_memory"`` or ``"anndata"`` to choose.
        **trainer_kwargs
            Passed to :class:`scvi.train.Trainer`.
        """
        defaults = {"lr": 1e-3}
        if getattr(self, "is_query_", False):
            max_epochs = 2 if max_epochs is None else max_epochs
            defaults.update(
                {
                    "lr": 1e-4,
                    "reconstruction_weight": 1.0,
                    "cell_type_weight": 0.0,
                    "batch_weight": 0.0,
                    "cell_cycle_weight": 0.0,
                }
            )
            if not any(p.requires_grad for p in self.module.parameters()):
                raise ValueError(
                    "Every parameter of this query model is frozen (unfrozen=False), so there is "
                    "nothing to train; use it as it is, or map with `unfrozen=True`."
                )
        return self._train_with_defaults(
            max_epochs,
            train_size,
            early_stopping,
            plan_defaults=defaults,
            plan_kwargs=plan_kwargs,
            trainer_kwargs=trainer_kwargs,
            accelerator=accelerator,
            devices=devices,
            validation_size=validation_size,
            batch_size=batch_size,
            data_loader=data_loader,
        )

    # ------------------------------------------------------------------ outputs
    @torch.inference_mode()
    def get_latent_representation(
        self,
        adata: MuData | None = None,
        indices: Sequence[int] | None = None,
        modality: str | Sequence[str] | None = None,
        give_mean: bool = True,
        batch_size: int | None = None,
        latent_slice: LatentSlice | None = None,
    ) -> np.ndarray:
        """Whole latent (default) or one named slice.

        Parameters
        ----------
        adata, indices, modality, batch_size
            As in :meth:`mosaicvi.model.MultiVAE.get_latent_representation`.
        give_mean
            Ignored: the autoencoder is deterministic.
        latent_slice
            ``"cell_type"`` (logits, columns :attr:`cell_type_names`), ``"batch"``,
            ``"cell_cycle"`` (S, G2M) or ``"free"``; ``None`` for the whole latent.

        Returns
        -------
        ``(n_cells, n_columns)`` array, rows in the order of ``adata.obs_names[indices]``.
        """
        if latent_slice is not None and latent_slice not in LATENT_SLICES:
            raise ValueError(f"latent_slice must be one of {LATENT_SLICES} or None.")
        latent = super().get_latent_representation(adata, indices, modality, True, batch_size)
        return (
            latent if latent_slice is None else latent[:, self.module.latent_slices[latent_slice]]
        )

    def predict(
        self,
        adata: MuData | None = None,
        indices: Sequence[int] | None = None,
        soft: bool = False,
        modality: str | Sequence[str] | None = None,
        batch_size: int | None = None,
    ) -> np.ndarray | pd.DataFrame:
        """Cell types predicted from the ``cell_type`` slice.

        Parameters
        ----------
        adata, indices, modality, batch_size
            As in :meth:`get_latent_representation`.
        soft
            Return class probabilities (softmax of the logits) instead of labels.

        Returns
        -------
        Array of labels, or a DataFrame ``cells x cell types`` of probabilities.
        """
        names = self.cell_type_names
        if not names:
            raise ValueError(
                "This model was set up without labels (labels_key=None); it cannot predict cell "
                "types."
            )
        logits = self.get_latent_representation(
            adata, indices, modality, batch_size=batch_size, latent_slice="cell_type"
        )
        probabilities = torch.softmax(torch.as_tensor(logits), dim=-1).numpy()
        if not soft:
            return np.asarray(names, dtype=object)[probabilities.argmax(1)]
        assembled = self._validate_anndata(adata)
        obs_names = assembled.obs_names if indices is None else assembled.obs_names[indices]
        return pd.DataFrame(probabilities, index=obs_names, columns=names)

    def cell_cycle_scores(self, adata: MuData | None = None) -> pd.DataFrame:
        """S and G2M scores the model used (given or computed at setup); NaN where absent."""
        assembled = self._validate_anndata(adata)
        scores = assembled.obsm[CELL_CYCLE_OBSM_KEY]
        values = np.where(scores[:, [2]] > 0, scores[:, :2], np.nan)
        return pd.DataFrame(values, index=assembled.obs_names, columns=["S_score", "G2M_score"])

    @torch.inference_mode()
    def get_normalized_expression(
        self,
        adata: MuData | None = None,
        indices: Sequence[int] | None = None,
        modality: str | None = None,
        transform_batch: str | Sequence[str] | None = None,
        n_samples: int = 1,
        library_size: float = 1,
        return_mean: bool = True,
        batch_size: int | None = None,
        from_modalities: str | Sequence[str] | None = None,
        out: str | os.PathLike | None = None,
    ) -> pd.DataFrame | ad.AnnData:
        """Expression of one modality reconstructed from the latent (approximate imputation).

        JAE decodes a modality's input features (SVD scores or CLR values), not counts: the
        fitted transform maps them back to proportions (the SVD basis back to log-normalised
        expression, then ``expm1``; CLR through a softmax). Expression outside the reference's
        SVD components is lost, so prefer :class:`~mosaicvi.model.MultiVAE` for imputation.

        Parameters
        ----------
        adata, indices, modality, batch_size, from_modalities, out
            As in :meth:`mosaicvi.model.MultiVAE.get_normalized_expression`.
        library_size
            Scale of the proportions (1: rows sum to 1).
        transform_batch, n_samples, return_mean
            Not applicable (JAE has no batch-conditioned decoder and is deterministic); must be
            left at their defaults.
        """
        if modality is None:
            raise ValueError(f"Pass `modality=`, one of {self.modalities}.")
        if transform_batch is not None or n_samples != 1 or not return_mean:
            raise ValueError(
                "JAE is deterministic and its decoder is not conditioned on batch: leave "
                "transform_batch=None, n_samples=1 and return_mean=True."
            )
        if isinstance(library_size, str):
            raise ValueError("JAE takes a numeric library_size (it predicts no library sizes).")
        k = self._check_modality(modality)
        assembled = self._validate_anndata(adata)
        use = self._use_modalities(from_modalities, self._observed(assembled, indices))
        loader = self._make_data_loader(adata=assembled, indices=indices, batch_size=batch_size)

        def blocks():
            for tensors in loader:
                outputs = self.module.inference(
                    **self.module._get_inference_input(tensors), use_modalities=use
                )
                values = self.module.proportions(k, outputs["qz_mean"]) * float(library_size)
                yield values.cpu().numpy()

        obs_names = assembled.obs_names if indices is None else assembled.obs_names[indices]
        return collect_rows(blocks(), obs_names, self.modality_var_names(modality), out)

    # ------------------------------------------------------------------ query mapping / loading
    @classmethod
    @contextlib.contextmanager
    def _restoring_state(cls):
        """Skip fitting input transforms: a saved or reference state is about to be loaded."""
        cls._restoring += 1
        try:
            yield
        finally:
            cls._restoring -= 1

    @classmethod
    def load_query_data(
        cls,
        adata: MuData,
        reference_model,
        unfrozen: bool | Sequence[str] = True,
        accelerator: str = "auto",
        device: int | str = "auto",
    ):
        """Map a query onto a trained reference through the reference's fitted input transforms.

        The query model starts as a copy of the reference (input transforms included, so the
        same cells get the same features). JAE has no covariate-specific parameters, so by
        default the whole network is fine-tuned (``unfrozen=True``), which is the published
        recipe: :meth:`train` then runs 2 epochs of reconstruction only. The reference model
        itself is never changed. ``unfrozen=False`` gives a query model that only projects.

        Parameters
        ----------
        adata
            Query MuData (may lack modalities; labels are not needed).
        reference_model
            A trained JAE or the folder it was saved to.
        unfrozen
            ``True`` (default): fine-tune everything; ``False``: nothing trains; or a list of
            parameter-name prefixes (e.g. ``["decoder"]``).
        accelerator, device
            Where to put the query model.
        """
        with cls._restoring_state():
            model = super().load_query_data(adata, reference_model, unfrozen, accelerator, device)
        model.is_query_ = True
        return model

    @classmethod
    def load(
        cls,
        dir_path: str,
        adata: MuData,
        accelerator: str = "auto",
        device: int | str = "auto",
        prefix: str | None = None,
    ):
        """Load a saved JAE (input transforms included) onto a MuData like its training data."""
        with cls._restoring_state():
            return super().load(dir_path, adata, accelerator, device, prefix)
