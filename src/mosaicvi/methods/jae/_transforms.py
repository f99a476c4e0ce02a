"""Fixed input transforms fitted once on a reference and stored with a model (JAE's inputs).

A :class:`ModalityTransform` maps one modality's raw counts to model features. Its parameters
are buffers, not trainable weights: they are saved in the module's ``state_dict`` and copied
into a query model, so a query is transformed exactly as the reference was.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from mosaicvi.data._normalise import TARGET_SUM, log_normalise, row_chunks, select

TransformKind = Literal["svd", "clr", "log1p"]
TRANSFORMS = ("svd", "clr", "log1p")
#: reference cells a transform is fitted on at most (its memory must not grow with the atlas)
MAX_FIT_CELLS = 100_000
#: consecutive cells sampled together when the fit subsamples (one read each from disk)
_FIT_BLOCK = 64


def fit_cells(rows: np.ndarray, limit: int | None = None, seed: int = 0) -> np.ndarray:
    """``rows`` itself, or a random subset of at most ``limit`` of them in blocks of neighbours.

    ``limit`` defaults to ``MAX_FIT_CELLS``. Blocks of consecutive entries of ``rows`` keep the
    reads from an on-disk matrix few.
    """
    rows = np.asarray(rows)
    limit = MAX_FIT_CELLS if limit is None else limit
    if len(rows) <= limit:
        return rows
    starts = np.arange(0, len(rows), _FIT_BLOCK)
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(starts, size=max(1, limit // _FIT_BLOCK), replace=False))
    return np.concatenate([rows[start : start + _FIT_BLOCK] for start in chosen])[:limit]


def _clr_numpy(counts, measured: np.ndarray | None = None) -> np.ndarray:
    """Centred log-ratios per cell (over its measured features when ``measured`` is given)."""
    logged = np.log1p(counts.toarray() if sp.issparse(counts) else np.asarray(counts, np.float64))
    if measured is None:
        return logged - logged.mean(1, keepdims=True)
    logged *= measured
    n_measured = np.maximum(measured.sum(1, keepdims=True), 1)
    return (logged - logged.sum(1, keepdims=True) / n_measured) * measured


def _masked_mean(values, batch_codes: np.ndarray | None, measured: np.ndarray | None) -> np.ndarray:
    """Per-feature mean of ``values`` over the rows whose batch measured the feature.

    ``values`` (rows x features, sparse or dense) is zero at unmeasured entries; without
    ``measured`` every row counts.
    """
    if measured is None:
        return np.asarray(values.mean(0), dtype=np.float64).ravel()
    totals = np.zeros(measured.shape[1])
    counts = np.zeros(measured.shape[1])
    for b in np.unique(batch_codes):
        in_batch = batch_codes == b
        totals += np.asarray(values[in_batch].sum(0), dtype=np.float64).ravel() * measured[b]
        counts += in_batch.sum() * measured[b]
    return totals / np.maximum(counts, 1)


class ModalityTransform(nn.Module):
    """Counts of one modality -> standardised features, with an approximate inverse.

    ``kind="svd"``: library-normalise to 1e4, log1p, project on the top right singular vectors of
    the reference (truncated SVD, no centring, as in LSI). ``"clr"``: centred log-ratio per cell
    (for proteins). ``"log1p"``: library-normalised log1p features as they are. In every case the
    features are then centred per dimension and divided by one scale for the whole modality, so
    each modality's block has unit mean variance on the reference while its dimensions keep their
    relative variances.

    Parameters
    ----------
    n_vars
        Features of the modality.
    kind
        ``"svd"``, ``"clr"`` or ``"log1p"``.
    n_components
        SVD components (``kind="svd"`` only); capped at ``n_vars - 1`` and, when fitted, at the
        number of reference cells minus one.
    """

    def __init__(self, n_vars: int, kind: TransformKind = "svd", n_components: int = 100):
        super().__init__()
        if kind not in TRANSFORMS:
            raise ValueError(f"Unknown input transform {kind!r}; use one of {TRANSFORMS}.")
        self.kind = kind
        self.n_vars = n_vars
        self.n_out = max(1, min(n_components, n_vars - 1)) if kind == "svd" else n_vars
        if kind == "svd":
            self.register_buffer("components", torch.zeros(n_vars, self.n_out))
        self.register_buffer("center", torch.zeros(self.n_out))
        self.register_buffer("scale", torch.ones(()))
        # input of features a cell's batch did not measure: the reference mean (feature masks)
        self.register_buffer("feature_mean", torch.zeros(n_vars))
        # saved with the weights: a loaded or mapped model is never fitted again
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    def _features_numpy(self, logged) -> np.ndarray:
        if self.kind == "svd":
            components = self.components.cpu().numpy().astype(np.float32)
            return np.asarray(logged @ components, dtype=np.float64)
        return logged.toarray() if sp.issparse(logged) else logged

    def fit(
        self,
        counts,
        random_state: int = 0,
        rows: np.ndarray | None = None,
        columns: slice | None = None,
        batch_codes: np.ndarray | None = None,
        measured: np.ndarray | None = None,
    ) -> ModalityTransform:
        """Fit on the reference cells that have this modality (at most ``MAX_FIT_CELLS``).

        Above ``MAX_FIT_CELLS`` cells, a random subset of them (blocks of neighbouring cells,
        seeded by ``random_state``) is used, so fitting an atlas costs as much as fitting
        100,000 cells and does not read the whole modality.

        Parameters
        ----------
        counts
            Cells x features counts (dense or sparse).
        random_state
            Seed of the randomized SVD.
        rows, columns
            The reference cells (integer positions) and this modality's features in
            ``counts`` (default: all). They are read chunk by chunk, so no copy of the
            selection is made besides the log-normalised one that the SVD needs.
        batch_codes, measured
            With per-batch feature masks: the batch of every row of ``counts`` and the
            ``(n_batch, n_vars)`` table of measured features. Unmeasured entries (zero in the
            model's data) then count for nothing in the normalisation; they enter the features
            as :attr:`feature_mean`, the mean over the cells that measured the feature (the SVD
            basis itself is fitted with them at zero). Without masks :attr:`feature_mean` is the
            mean over all cells (what a query's missing features are read as).
        """
        rows = np.arange(counts.shape[0]) if rows is None else np.asarray(rows)
        rows = fit_cells(rows, seed=random_state)
        columns = slice(None) if columns is None else columns
        n_cells = len(rows)
        if n_cells < 2:
            raise ValueError(
                f"Fitting the input transform needs at least 2 cells with this modality, got "
                f"{n_cells}."
            )
        masked = measured is not None
        codes = np.asarray(batch_codes)[rows] if masked else None
        if self.kind == "clr":
            features = np.concatenate(
                [
                    _clr_numpy(
                        select(counts, chunk, columns),
                        measured[np.asarray(batch_codes)[chunk]] if masked else None,
                    )
                    for chunk in row_chunks(rows)
                ]
            )
            mean = _masked_mean(features, codes, measured)
            self.feature_mean.copy_(torch.as_tensor(mean))
            if masked:
                features = np.where(measured[codes], features, mean)
        else:
            logged = log_normalise(counts, rows, columns)
            self.feature_mean.copy_(torch.as_tensor(_masked_mean(logged, codes, measured)))
            if self.kind == "svd":
                from sklearn.decomposition import TruncatedSVD

                n_fit = min(self.n_out, n_cells - 1)
                svd = TruncatedSVD(
                    n_components=n_fit, algorithm="randomized", random_state=random_state
                )
                svd.fit(logged)
                components = np.zeros((self.n_vars, self.n_out))
                components[:, :n_fit] = svd.components_.T  # unused trailing dimensions stay 0
                self.components.copy_(torch.as_tensor(components))
            features = self._features_numpy(logged)
            del logged
            if masked:  # features of the mean-filled input, batch by batch
                fill = self.feature_mean.cpu().numpy().astype(np.float64) * ~measured
                if self.kind == "svd":
                    fill = fill @ self.components.cpu().numpy().astype(np.float64)
                features = features + fill[codes]
        center = features.mean(0)
        scale = float(np.sqrt(((features - center) ** 2).mean()))
        self.center.copy_(torch.as_tensor(center))
        self.scale.fill_(scale if scale > 0 else 1.0)
        self.fitted.fill_(True)
        return self

    def forward(self, counts: torch.Tensor, measured: torch.Tensor | None = None) -> torch.Tensor:
        """Features of a minibatch of counts, ``(n, n_out)``.

        ``measured`` (1/0 per cell and feature): unmeasured features are read as
        :attr:`feature_mean` and left out of the normalisation.
        """
        if measured is not None:
            counts = counts * measured
        if self.kind == "clr":
            logged = torch.log1p(counts)
            if measured is None:
                h = logged - logged.mean(-1, keepdim=True)
            else:
                n_measured = measured.sum(-1, keepdim=True).clamp_min(1.0)
                h = logged - (logged * measured).sum(-1, keepdim=True) / n_measured
        else:
            library = counts.sum(-1, keepdim=True).clamp_min(1.0)
            h = torch.log1p(counts * (TARGET_SUM / library))
        if measured is not None:
            h = torch.where(measured > 0, h, self.feature_mean)
        if self.kind == "svd":
            h = h @ self.components
        return (h - self.center) / self.scale

    def proportions(self, features: torch.Tensor) -> torch.Tensor:
        """Approximate inverse: expected proportions of the features (rows sum to 1).

        The SVD basis maps features back to log-normalised expression (the part that the
        reference's components span); for CLR, proportions are the softmax of the log-ratios.
        """
        h = features * self.scale + self.center
        if self.kind == "svd":
            h = h @ self.components.T
        if self.kind == "clr":
            return torch.softmax(h, dim=-1)
        expression = torch.expm1(h).clamp_min(0.0)
        return expression / expression.sum(-1, keepdim=True).clamp_min(1e-12)
