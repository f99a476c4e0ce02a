"""Train one registered model on a MuData and write its outputs (``fit`` and ``demo``).

Nothing here names a model: options that only some models take (labels, ``n_latent``, the MMD
weight) are passed when the model's signatures accept them.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import _metrics
from ._common import (
    LATENT_KEY,
    CLIError,
    accepts,
    clean_message,
    given,
    quiet_trainer_kwargs,
    say,
    threads,
)
from ._inputs import layers_for, observed_masks
from ._plot import plot_umap


@dataclass
class FitSpec:
    """What to train on: the data, its columns and the model."""

    mdata: Any
    model: str
    modalities: Sequence[str]
    layer: str | None
    batch_key: str | None
    label_key: str | None
    likelihoods: dict[str, str] | None
    dataset: str


def _option(flag: str, value: Any, applies: bool, name: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not applies:
        raise CLIError(f"{flag} does not apply to {name}")
    return {flag.removeprefix("--").replace("-", "_"): value}


def build_model(spec: FitSpec, args: argparse.Namespace) -> tuple[Any, str, dict[str, Any]]:
    """Register the data with the model class and build the model.

    Returns the model, its display name and the training-plan options to train it with.
    """
    from mosaicvi import registry
    from mosaicvi.benchmark import is_semi_supervised

    method = registry.get(spec.model)
    model_cls = method.model_class()
    name = method.display_name
    setup: dict[str, Any] = {
        "modalities": {m: m for m in spec.modalities},
        "layers": layers_for(spec.mdata, spec.modalities, spec.layer),
        "batch_key": spec.batch_key,
    }
    if spec.likelihoods:
        setup["likelihoods"] = spec.likelihoods
    if spec.label_key is not None and is_semi_supervised(model_cls):
        setup["labels_key"] = spec.label_key
        say(f"{name} trains on the cell-type labels in {spec.label_key!r}")
    init = _option("--n-latent", args.n_latent, accepts(model_cls.__init__, "n_latent"), name)
    plan_cls = getattr(model_cls, "_training_plan_cls", None)
    takes_mmd = plan_cls is not None and accepts(plan_cls, "mmd_weight")
    plan_kwargs = _option("--mmd-weight", args.mmd_weight, takes_mmd, name)
    try:
        model_cls.setup_mudata(spec.mdata, **setup)
        model = model_cls(spec.mdata, **init)
    except (ValueError, KeyError, TypeError) as exc:
        raise CLIError(clean_message(exc)) from exc
    return model, name, plan_kwargs


def train(
    model: Any,
    name: str,
    args: argparse.Namespace,
    early_stopping: bool,
    plan_kwargs: dict[str, Any] | None = None,
) -> tuple[float, int]:
    """Train; returns the seconds taken and the epochs run."""
    from mosaicvi.benchmark import epochs_run_of

    say(
        f"training {name} for {args.epochs} epochs (accelerator {args.accelerator}, "
        f"{threads()} CPU threads)"
    )
    from mosaicvi.base import TrainingDivergedError

    t0 = time.perf_counter()
    try:
        model.train(
            max_epochs=args.epochs,
            accelerator=args.accelerator,
            devices="auto",
            early_stopping=early_stopping,
            plan_kwargs=plan_kwargs or None,
            **given(batch_size=args.batch_size),
            **quiet_trainer_kwargs(),
        )
    except TrainingDivergedError as exc:
        raise CLIError(str(exc)) from exc
    seconds = time.perf_counter() - t0
    epochs_run = epochs_run_of(model, default=args.epochs)
    say(f"trained {epochs_run} epochs in {seconds:.1f} s")
    return seconds, epochs_run


def embeddings(model: Any, masks: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """The joint latent and, per modality, the latent from that modality alone (NaN elsewhere)."""
    import numpy as np

    say("computing the joint latent representation and per-modality embeddings")
    z = np.asarray(model.get_latent_representation())
    z_single: dict[str, Any] = {}
    for m, mask in masks.items():
        z_m = np.full_like(z, np.nan)
        have = np.flatnonzero(mask)
        z_m[have] = np.asarray(model.get_latent_representation(indices=have, modality=m))
        z_single[m] = z_m
    return z, z_single


def _as_frame(expr: Any, mdata: Any, modality: str) -> Any:
    import numpy as np
    import pandas as pd

    if isinstance(expr, pd.DataFrame):
        return expr
    return pd.DataFrame(
        np.asarray(expr), index=mdata.obs_names, columns=mdata.mod[modality].var_names
    )


def expected_values(model: Any, mdata: Any, modality: str) -> tuple[Any, str]:
    """Expected values of ``modality`` for every cell and what scale they are on.

    Counts at the model's library size where the model and likelihood give one, normalised
    values (library size 1) otherwise.
    """
    try:
        expr = model.get_normalized_expression(modality=modality, library_size="latent")
        scale = "expected counts at the model's library size"
    except (ValueError, TypeError):  # no library size for this model or likelihood
        expr = model.get_normalized_expression(modality=modality)
        scale = "normalised values (library size 1)"
    if getattr(type(model), "imputation_is_approximate", False):
        scale += "; approximate back-projection (no count likelihood)"
    return _as_frame(expr, mdata, modality), scale


def impute(model: Any, spec: FitSpec, masks: dict[str, Any], result: Any, out: Path) -> dict:
    """Write ``imputed_<mod>.csv`` for modalities absent in some cells; store expected values.

    Returns ``{"imputed": {mod: file}, "imputed_values": {mod: scale}}`` (empty when every cell
    has every modality).
    """
    import numpy as np

    files: dict[str, str] = {}
    scales: dict[str, str] = {}
    for m in spec.modalities:
        lacking = ~masks[m]
        if not lacking.any():
            continue
        say(f"imputing {m} for {int(lacking.sum())} cells that lack it")
        expr, scales[m] = expected_values(model, spec.mdata, m)
        imputed = expr.loc[np.asarray(spec.mdata.obs_names)[lacking]]
        files[m] = f"imputed_{m}.csv"
        imputed.to_csv(out / files[m], float_format="%.5g")
        # expected values for every cell (denoised where observed, imputed where not)
        result.obsm[f"{LATENT_KEY}_expected_{m}"] = expr.to_numpy(dtype=np.float32)
        result.uns[f"{LATENT_KEY}_expected_{m}_var_names"] = np.asarray(expr.columns, dtype=str)
    return {"imputed": files, "imputed_values": scales} if files else {}


def _describe(spec: FitSpec, masks: dict[str, Any]) -> None:
    desc = ", ".join(
        f"{m}: {int(masks[m].sum())} cells x {spec.mdata.mod[m].n_vars}" for m in spec.modalities
    )
    say(f"data: {spec.mdata.n_obs} cells; {desc}")
    if spec.batch_key:
        say(f"batches ({spec.batch_key}): {spec.mdata.obs[spec.batch_key].astype(str).nunique()}")


def _column(mdata: Any, key: str | None) -> Any:
    return mdata.obs[key].astype(str).to_numpy() if key else None


def run_pipeline(
    spec: FitSpec, out: Path, args: argparse.Namespace, early_stopping: bool
) -> dict[str, Any]:
    """Set up, train, embed, score, impute, plot and write; returns the metrics."""
    from mosaicvi.benchmark import is_semi_supervised

    out.mkdir(parents=True, exist_ok=True)
    mdata, modalities = spec.mdata, list(spec.modalities)
    masks = observed_masks(mdata, modalities)
    _describe(spec, masks)
    model, name, plan_kwargs = build_model(spec, args)
    train_time, epochs_run = train(model, name, args, early_stopping, plan_kwargs)
    z, z_single = embeddings(model, masks)

    metrics: dict[str, Any] = {
        "dataset": spec.dataset,
        "model": name,
        "n_cells": int(mdata.n_obs),
        "modalities": {m: int(masks[m].sum()) for m in modalities},
        "n_latent": int(z.shape[1]),
        "epochs": int(epochs_run),
        "max_epochs": int(args.epochs),
        "train_time_s": round(train_time, 2),
        "seed": int(args.seed),
    }
    if (loss := _metrics.final_loss(model)) is not None:
        metrics["final_train_loss"] = loss
    labels, batches = _column(mdata, spec.label_key), _column(mdata, spec.batch_key)
    if labels is not None and (
        scores := _metrics.integration(z, labels, batches, masks, modalities)
    ):
        metrics["integration"] = scores
    if labels is not None and is_semi_supervised(type(model)):
        # bio-conservation scores are then measured on the labels the model was trained on
        metrics["labels_in_training"] = spec.label_key
    if (overlap := _metrics.knn_overlap(z, z_single, masks, modalities)) is not None:
        metrics[f"knn_overlap_{_metrics.K_OVERLAP}"] = overlap

    result = mdata.copy()
    result.obsm[LATENT_KEY] = z
    for m in modalities:
        result.obsm[f"{LATENT_KEY}_{m}"] = z_single[m]
    metrics.update(impute(model, spec, masks, result, out))

    say("computing UMAP of the joint latent")
    colour_by = {spec.label_key: labels, spec.batch_key: batches}
    result.obsm["X_umap_mosaicvi"] = plot_umap(
        z, colour_by, out / "umap.png", args.seed, title=f"{name} latent"
    )
    _write(model, name, result, metrics, out, modalities)
    return metrics


def _write(
    model: Any, name: str, result: Any, metrics: dict, out: Path, modalities: list[str]
) -> None:
    say(f"writing {out / 'latent.h5mu'}")
    result.uns["mosaicvi"] = {
        "model": name,
        "latent_key": LATENT_KEY,
        "modalities": modalities,
        "epochs": metrics["epochs"],
    }
    result.write_h5mu(out / "latent.h5mu")

    say(f"saving the trained model to {out / 'model'}")
    try:
        model.save(str(out / "model"), overwrite=True)
    except Exception as exc:
        say(f"warning: could not save the model: {exc}")

    metrics["outputs"] = {
        "latent": "latent.h5mu",
        "umap": "umap.png",
        "metrics": "metrics.json",
        "model": "model/",
    }
    with open(out / "metrics.json", "w") as fh:
        json.dump(metrics, fh, indent=2)

    _metrics.print_metrics(metrics)
    imputed = metrics.get("imputed", {}).values()
    say(
        f"files: {out / 'latent.h5mu'} (.obsm['{LATENT_KEY}']), {out / 'umap.png'}, "
        f"{out / 'metrics.json'}" + "".join(f", {out / f}" for f in imputed)
    )
