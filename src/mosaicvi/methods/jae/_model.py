"""JAE: the user-facing model."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Literal

import anndata as ad
import numpy as np
import pandas as pd
import torch
from mudata import MuData
from scvi import REGISTRY_KEYS
from scvi.data.fields import LabelsWithUnlabeledObsField, ObsmField

from mosaicvi.base import MosaicModel, NoLikelihoodMixin, TrainingDefaults, check_architecture
from mosaicvi.base._output import collect_rows
from mosaicvi.base._outputs import check_library_size
from mosaicvi.base._registration import locals_without
from mosaicvi.data import ModalitySpec
from mosaicvi.data._backed import assembled_matrix
from mosaicvi.data._constants import OBSERVED_OBSM_KEY

from . import _supervision
from ._module import LATENT_SLICES, JAEModule
from ._plan import JAETrainingPlan
from ._supervision import CELL_CYCLE_KEY, CELL_CYCLE_OBSM_KEY, LABELS_COLUMN, PROTEIN_NAMES
from ._transforms import TRANSFORMS

LatentSlice = Literal["cell_type", "batch", "cell_cycle", "free"]


class JAE(NoLikelihoodMixin, MosaicModel):
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
    ``batch``      number of reference batches             be uniform across batches
    ``cell_cycle`` 2                                       equal the S and G2M phase scores
    ``free``       ``n_free`` (5)                          (unsupervised)
    ============== ======================================= ====================================

    Loss: ``0.7`` reconstruction + ``0.2`` cell type + ``0.05`` batch + ``0.05`` cell cycle
    (``train(plan_kwargs=...)``, see :class:`~mosaicvi.train.JAETrainingPlan`). Cells without a
    label contribute no cell-type term. The batch slice is trained towards the uniform
    distribution whatever a cell's batch, so it does not grow with new batches: a query with new
    batches keeps the reference's architecture.

    A query from :meth:`load_query_data` follows the published recipe: by default the whole
    network is fine-tuned (``unfrozen=True``) with reconstruction only, for 2 epochs, at
    learning rate 1e-4.

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
    n_batch_slice
        Size of the ``batch`` slice; ``None``: the number of batches of the data (a query
        inherits the reference's).

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
    _model_setup_args = (
        "labels_key",
        "unlabeled_category",
        "cell_cycle_keys",
        "cell_cycle_modality",
        "organism",
    )
    _query_unfrozen_default = True  # no batch-specific parameters: fine-tune (published recipe)
    training_defaults = TrainingDefaults(
        plan_kwargs={"lr": 1e-3},
        query_max_epochs=2,
        query_plan_kwargs={
            "lr": 1e-4,
            "reconstruction_weight": 1.0,
            "cell_type_weight": 0.0,
            "batch_weight": 0.0,
            "cell_cycle_weight": 0.0,
        },
    )
    #: Imputation decodes input features back to proportions, not a count likelihood.
    imputation_is_approximate = True

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
        n_batch_slice: int | None = None,
    ):
        check_architecture(locals())
        super().__init__(adata)
        specs = self.modality_specs
        transforms = self._resolve_transforms(specs, input_transforms)
        if n_batch_slice is None:  # recorded resolved, so a query keeps the reference's size
            n_batch_slice = self.summary_stats.n_batch
        self.module = self._module_cls(
            specs,
            transforms=transforms,
            n_components=[n_components] * len(specs),
            n_labels=len(self.cell_type_names),
            n_batch=n_batch_slice,
            n_free=n_free,
            n_hidden=n_hidden,
            n_layers=n_layers,
            dropout_rate=dropout_rate,
            modality_dropout=modality_dropout,
            measured_features=self._measured_features(),
        )
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

    def _prepare_module(self) -> None:
        """Fit each modality's input transform on the training cells that have it, once.

        A loaded or mapped model brings fitted transforms in its weights.
        """
        observed = self.adata.obsm[OBSERVED_OBSM_KEY].astype(bool)
        measured = self._measured_features()
        batch_codes = None
        if measured:
            batch_codes = self.adata_manager.get_from_registry(REGISTRY_KEYS.BATCH_KEY)
            batch_codes = np.asarray(batch_codes).ravel().astype(np.int64)
        for k, (transform, columns) in enumerate(zip(self.module.transforms, self.module.slices)):
            if not bool(transform.fitted):
                table = measured.get(self.module.modalities[k].name)
                transform.fit(
                    assembled_matrix(self.adata),
                    rows=np.flatnonzero(observed[:, k]),
                    columns=columns,
                    batch_codes=batch_codes if table is not None else None,
                    measured=None if table is None else table.numpy(),
                )

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
        feature_masks: Mapping[str, pd.DataFrame] | None = None,
    ) -> None:
        """Register a MuData (paired or mosaic) with labels and cell-cycle scores.

        The MuData is only read. Arguments shared with the other models are described in
        :meth:`mosaicvi.model.MultiVAE.setup_mudata`; ``likelihoods`` only matter for data
        validation here (JAE's inputs are counts).

        Parameters
        ----------
        feature_masks
            Measured features per batch, as for :meth:`mosaicvi.model.MultiVAE.setup_mudata`;
            an unmeasured feature enters the input transform as the reference's mean of the
            feature and is left out of the reconstruction of per-feature inputs.
        labels_key
            Column of ``mdata.obs`` with cell types. Missing values and ``unlabeled_category``
            mark unlabelled cells, which contribute no cell-type loss (semi-supervised).
        unlabeled_category
            Label value of unlabelled cells.
        cell_cycle_keys
            Two columns of ``mdata.obs`` with S and G2M scores. ``None``: computed with
            :func:`scanpy.tl.score_genes_cell_cycle` from ``cell_cycle_modality`` using the
            packaged S and G2M gene lists (a warning says when too few of them are present),
            for at most 100,000 cells (a seeded random sample of larger data; the other cells
            train no phase target). Scores are kept inside the model (see
            :meth:`cell_cycle_scores`), not written to ``mdata``.
        cell_cycle_modality
            Modality with gene expression counts; default ``"rna"``/``"gex"`` or the first
            modality with a negative binomial likelihood.
        organism
            ``"human"`` or ``"mouse"`` gene symbols; guessed from the symbols' case if ``None``.
        """
        if cell_cycle_keys is not None and (
            isinstance(cell_cycle_keys, str) or len(cell_cycle_keys) != 2
        ):
            raise ValueError(
                "cell_cycle_keys must be two columns of mdata.obs: (S score, G2M score)."
            )
        args = locals_without(locals(), "cls", "mdata")
        args["cell_cycle_keys"] = None if cell_cycle_keys is None else list(cell_cycle_keys)
        cls._setup(
            mdata, {**args, "categorical_covariate_keys": None, "continuous_covariate_keys": None}
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
        assembled.obs[LABELS_COLUMN] = _supervision.label_column(mdata, model_args, source_registry)
        assembled.obsm[CELL_CYCLE_OBSM_KEY] = _supervision.cell_cycle_matrix(
            assembled, mdata, specs, model_args, source_registry
        )

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

    # ------------------------------------------------------------------ outputs
    def get_latent_representation(
        self,
        adata: MuData | None = None,
        indices: Sequence[int] | None = None,
        modality: str | Sequence[str] | None = None,
        give_mean: bool = True,
        batch_size: int | None = None,
        latent_slice: LatentSlice | None = None,
        return_dist: bool = False,
    ) -> np.ndarray:
        """Whole latent (default) or one named slice.

        Parameters
        ----------
        adata, indices, modality, batch_size
            As in :meth:`mosaicvi.model.MultiVAE.get_latent_representation`.
        give_mean
            Ignored: the autoencoder is deterministic.
        return_dist
            Not available: the latent is deterministic (a clear error).
        latent_slice
            ``"cell_type"`` (logits, columns :attr:`cell_type_names`), ``"batch"``,
            ``"cell_cycle"`` (S, G2M) or ``"free"``; ``None`` for the whole latent.

        Returns
        -------
        ``(n_cells, n_columns)`` array, rows in the order of ``adata.obs_names[indices]``.
        """
        if latent_slice is not None and latent_slice not in LATENT_SLICES:
            raise ValueError(f"latent_slice must be one of {LATENT_SLICES} or None.")
        if return_dist:
            raise ValueError(
                "JAE's latent is deterministic (an autoencoder): there is no posterior "
                "distribution to return. Use return_dist=False."
            )
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
        # the assembled data has the MuData's cells in order: no second assembly for the names
        mdata = self.mdata if adata is None else adata
        obs_names = mdata.obs_names if indices is None else mdata.obs_names[np.asarray(indices)]
        return pd.DataFrame(probabilities, index=obs_names, columns=names)

    def cell_cycle_scores(self, adata: MuData | None = None) -> pd.DataFrame:
        """S and G2M scores the model used (given or computed at setup); NaN where absent."""
        with self._data_for(adata, require_trained=False) as assembled:
            scores = assembled.obsm[CELL_CYCLE_OBSM_KEY]
            obs_names = assembled.obs_names
        values = np.where(scores[:, [2]] > 0, scores[:, :2], np.nan)
        return pd.DataFrame(values, index=obs_names, columns=["S_score", "G2M_score"])

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
        features: str | Sequence[str] | None = None,
    ) -> pd.DataFrame | ad.AnnData:
        """Expression of one modality reconstructed from the latent (approximate imputation).

        JAE decodes a modality's input features (SVD scores or CLR values), not counts: the
        fitted transform maps them back to proportions (the SVD basis back to log-normalised
        expression, then ``expm1``; CLR through a softmax). Expression outside the reference's
        SVD components is lost, so prefer :class:`~mosaicvi.model.MultiVAE` for imputation.

        Parameters
        ----------
        adata, indices, modality, batch_size, from_modalities, out, features
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
        check_library_size(library_size, allow_latent=False)  # JAE predicts no library sizes
        k = self._check_modality(modality)
        columns, var_names = self._feature_selection(modality, features)
        with self._data_for(adata) as assembled:
            use = self._use_modalities(from_modalities, self._observed(assembled, indices))
            loader = self._make_data_loader(adata=assembled, indices=indices, batch_size=batch_size)

            def blocks():
                for tensors in loader:
                    outputs = self.module.inference(
                        **self.module._get_inference_input(tensors), use_modalities=use
                    )
                    values = self.module.proportions(k, outputs["qz_mean"]) * float(library_size)
                    values = values.cpu().numpy()
                    yield values if columns is None else values[:, columns]

            obs_names = self._obs_names(assembled, indices)
            return collect_rows(blocks(), obs_names, var_names, out)
