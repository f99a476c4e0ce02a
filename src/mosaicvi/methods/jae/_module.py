"""JAE: autoencoder whose latent slices are supervised by cell type, batch and cell-cycle phase."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from scvi import REGISTRY_KEYS
from scvi.module.base import LossOutput, auto_move_data
from torch import nn

from mosaicvi.base import ModalityModule
from mosaicvi.data import ModalitySpec
from mosaicvi.nn import hidden_layers

from ._supervision import CELL_CYCLE_KEY
from ._transforms import ModalityTransform

#: Order of the named latent slices.
LATENT_SLICES = ("cell_type", "batch", "cell_cycle", "free")


def _mlp(n_in: int, n_out: int, n_hidden: int, n_layers: int, dropout_rate: float) -> nn.Module:
    return nn.Sequential(
        hidden_layers(n_in, n_hidden, n_layers, None, dropout_rate), nn.Linear(n_hidden, n_out)
    )


class JAEModule(ModalityModule):
    """Deterministic autoencoder over fixed per-modality input features.

    Each modality's counts pass through a :class:`~mosaicvi.methods.jae.ModalityTransform`
    fitted on the reference (stored as buffers); the encoder reads the concatenated features of a
    cell's observed modalities (zeros elsewhere) plus its 0/1 modality mask, and the decoder
    reconstructs every observed modality's features from the whole latent. The latent is the
    concatenation of named slices: ``cell_type`` (one logit per cell type), ``batch`` (one logit
    per reference batch), ``cell_cycle`` (S and G2M scores) and ``free`` dimensions.

    Parameters
    ----------
    modalities
        One :class:`~mosaicvi.data.ModalitySpec` per modality, in the column order of ``X``.
    transforms
        Input transform of each modality (``"svd"``, ``"clr"`` or ``"log1p"``).
    n_components
        SVD components of each modality (ignored for other transforms).
    n_labels
        Cell types (size of the ``cell_type`` slice); labels equal to ``n_labels`` mean
        "unlabelled".
    n_batch
        Size of the ``batch`` slice (the reference's batches; it is only trained towards the
        uniform distribution, so it does not index batches).
    n_free
        Unsupervised latent dimensions.
    n_hidden, n_layers, dropout_rate
        Encoder and decoder MLPs (LayerNorm, LeakyReLU).
    measured_features
        Per-batch feature masks (see :class:`~mosaicvi.base.ModalityModule`): unmeasured
        features enter the input transforms as the reference mean and are left out of the
        reconstruction of per-feature inputs (``"clr"``, ``"log1p"``).
    modality_dropout
        During training, the probability that a cell with several modalities is encoded from all
        but one randomly chosen of them (still reconstructing all), so that cells measured with
        fewer modalities (e.g. RNA-only queries) embed consistently.
    """

    def __init__(
        self,
        modalities: Sequence[ModalitySpec],
        transforms: Sequence[str],
        n_components: Sequence[int],
        n_labels: int,
        n_batch: int,
        n_free: int = 5,
        n_hidden: int = 256,
        n_layers: int = 2,
        dropout_rate: float = 0.1,
        modality_dropout: float = 0.2,
        measured_features: dict[str, torch.Tensor] | None = None,
    ):
        super().__init__(modalities, measured_features)
        if not 0.0 <= modality_dropout < 1.0:
            raise ValueError(f"modality_dropout must be in [0, 1), got {modality_dropout}.")
        self.transforms = nn.ModuleList(
            ModalityTransform(spec.n_vars, kind, n)
            for spec, kind, n in zip(self.modalities, transforms, n_components)
        )
        bounds = [0]
        for transform in self.transforms:
            bounds.append(bounds[-1] + transform.n_out)
        self.feature_slices = [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]
        self.n_features = bounds[-1]
        # modality of each input feature, built once rather than every step
        self._feature_modality = torch.repeat_interleave(
            torch.arange(len(self.transforms)), torch.tensor([t.n_out for t in self.transforms])
        )

        self.latent_sizes = {
            "cell_type": n_labels,
            "batch": n_batch,
            "cell_cycle": 2,
            "free": n_free,
        }
        start, self.latent_slices = 0, {}
        for name in LATENT_SLICES:
            self.latent_slices[name] = slice(start, start + self.latent_sizes[name])
            start += self.latent_sizes[name]
        self.n_latent = start
        self.n_labels = n_labels
        self.n_batch = n_batch
        self.modality_dropout = modality_dropout

        n_modalities = len(self.modalities)
        self.encoder = _mlp(
            self.n_features + n_modalities, self.n_latent, n_hidden, n_layers, dropout_rate
        )
        self.decoder = _mlp(self.n_latent, self.n_features, n_hidden, n_layers, dropout_rate)

    # ---------------------------------------------------------------- inference
    def features(
        self, x: torch.Tensor, feature_masks: dict[int, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """Transformed input features of every modality, concatenated ``(n, n_features)``."""
        feature_masks = feature_masks or {}
        return torch.cat(
            [
                t(x[:, s], feature_masks.get(k))
                for k, (t, s) in enumerate(zip(self.transforms, self.slices))
            ],
            dim=-1,
        )

    def _drop_one_modality(self, mask: torch.Tensor) -> torch.Tensor:
        """Hide one random observed modality of some multi-modal cells (training only)."""
        multimodal = mask.sum(1) > 1
        chosen = multimodal & (torch.rand_like(mask[:, 0]) < self.modality_dropout)
        dropped = torch.multinomial(mask + 1e-12 * (mask == 0), 1).ravel()
        hide = F.one_hot(dropped, mask.shape[1]).to(mask) * chosen.unsqueeze(1).to(mask)
        return mask * (1 - hide)

    def _expand(self, mask: torch.Tensor) -> torch.Tensor:
        """Modality mask ``(n, K)`` -> feature mask ``(n, n_features)``."""
        if self._feature_modality.device != mask.device:
            self._feature_modality = self._feature_modality.to(mask.device)
        return mask[:, self._feature_modality]

    @auto_move_data
    def inference(
        self,
        x: torch.Tensor,
        observed: torch.Tensor,
        batch_index: torch.Tensor | None = None,
        cat_covs: torch.Tensor | None = None,
        cont_covs: torch.Tensor | None = None,
        use_modalities: torch.Tensor | None = None,
        n_samples: int = 1,
    ) -> dict[str, torch.Tensor]:
        """Latent of each cell from its observed (or the selected) modalities.

        The autoencoder is deterministic: ``z`` equals ``qz_mean`` and ``n_samples`` repeats it.
        """
        observed = observed.to(x.dtype)
        feature_masks = self.feature_masks(batch_index)
        features = self.features(x, feature_masks)  # what the decoder reconstructs
        encoder_masks = self.encoder_feature_masks(feature_masks, batch_index)
        encoded = features if encoder_masks is feature_masks else self.features(x, encoder_masks)
        input_mask = observed if use_modalities is None else observed * use_modalities
        if self.training and self.modality_dropout > 0:
            input_mask = self._drop_one_modality(input_mask)
        encoder_input = torch.cat([encoded * self._expand(input_mask), input_mask], dim=-1)
        z = self.encoder(encoder_input)
        sampled = z if n_samples == 1 else z.unsqueeze(0).expand(n_samples, -1, -1)
        outputs = {"z": sampled, "qz_mean": z, "observed": observed, "features": features}
        if feature_masks:
            outputs["feature_masks"] = feature_masks
        return outputs

    def _get_generative_input(self, tensors: dict, inference_outputs: dict) -> dict:
        return {"z": inference_outputs["qz_mean"]}

    @auto_move_data
    def generative(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        """Reconstructed features of every modality, ``(n, n_features)``."""
        return {"reconstruction": self.decoder(z)}

    def proportions(self, k: int, z: torch.Tensor) -> torch.Tensor:
        """Expected feature proportions of modality ``k`` decoded from ``z`` (approximate)."""
        decoded = self.decoder(z)[..., self.feature_slices[k]]
        return self.transforms[k].proportions(decoded)

    # ---------------------------------------------------------------- loss
    def loss(
        self,
        tensors: dict,
        inference_outputs: dict,
        generative_outputs: dict,
        reconstruction_weight: float = 0.7,
        cell_type_weight: float = 0.2,
        batch_weight: float = 0.05,
        cell_cycle_weight: float = 0.05,
        kl_weight: float | None = None,
    ) -> LossOutput:
        """Weighted reconstruction, cell-type, batch-uniformity and cell-cycle terms.

        - reconstruction: mean squared error of each observed modality's features, summed over
          modalities;
        - cell type: cross-entropy of the ``cell_type`` slice against the label, labelled cells
          only (unlabelled cells contribute nothing);
        - batch: cross-entropy of the softmax of the ``batch`` slice against the uniform
          distribution, minus its minimum ``log(n_batch)`` (so 0 means uniform);
        - cell cycle: mean squared error of the ``cell_cycle`` slice against the (S, G2M)
          scores, for cells that have scores.

        ``kl_weight`` is accepted (scvi-tools' plan always passes it) and ignored.
        """
        z = inference_outputs["qz_mean"]
        observed = inference_outputs["observed"]
        features = inference_outputs["features"]
        squared = (generative_outputs["reconstruction"] - features) ** 2
        feature_masks = inference_outputs.get("feature_masks") or {}
        reconstruction = {}
        for k, (spec, s) in enumerate(zip(self.modalities, self.feature_slices)):
            if k in feature_masks and self.transforms[k].kind != "svd":  # per-feature inputs
                measured = feature_masks[k]
                error = (squared[:, s] * measured).sum(-1) / measured.sum(-1).clamp_min(1.0)
            else:
                error = squared[:, s].mean(-1)
            reconstruction[spec.name] = error * observed[:, k]
        recon = sum(reconstruction.values())

        labels = tensors[REGISTRY_KEYS.LABELS_KEY].long().ravel()
        labelled = (labels < self.n_labels).to(z.dtype)
        logits = z[:, self.latent_slices["cell_type"]]
        if self.n_labels > 0:
            cell_type = F.cross_entropy(
                logits, labels.clamp_max(self.n_labels - 1), reduction="none"
            )
            cell_type = cell_type * labelled
        else:  # set up without labels
            cell_type = torch.zeros_like(labelled)

        batch_log_p = F.log_softmax(z[:, self.latent_slices["batch"]], dim=-1)
        batch = -batch_log_p.mean(-1) - math.log(self.n_batch)

        scores = tensors[CELL_CYCLE_KEY].to(z.dtype)
        has_scores = scores[:, 2]
        cell_cycle = ((z[:, self.latent_slices["cell_cycle"]] - scores[:, :2]) ** 2).mean(-1)
        cell_cycle = cell_cycle * has_scores

        per_cell = (
            reconstruction_weight * recon
            + cell_type_weight * cell_type
            + batch_weight * batch
            + cell_cycle_weight * cell_cycle
        )
        n_labelled = labelled.sum().clamp_min(1.0)
        correct = logits.argmax(-1) == labels if self.n_labels > 0 else torch.zeros_like(labels)
        accuracy = (correct.to(z.dtype) * labelled).sum() / n_labelled
        extra = {f"reconstruction_loss_{name}": r.mean() for name, r in reconstruction.items()}
        extra.update(
            {
                "cell_type_loss": cell_type.sum() / n_labelled,
                "cell_type_accuracy": accuracy,
                "batch_loss": batch.mean(),
                "cell_cycle_loss": cell_cycle.sum() / has_scores.sum().clamp_min(1.0),
            }
        )
        return LossOutput(
            loss=per_cell.mean(),
            reconstruction_loss=reconstruction,
            kl_local=torch.zeros_like(recon),
            extra_metrics={k: v.detach() for k, v in extra.items()},
        )
