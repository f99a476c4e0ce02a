"""The scores ``mosaicvi fit`` and ``mosaicvi demo`` write to ``metrics.json``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ._common import jsonable, say

K_OVERLAP = 15


def final_loss(model: Any) -> float | None:
    """Last training loss in the model's history, if it has one."""
    hist = getattr(model, "history", None) or {}
    for key in ("train_loss_epoch", "elbo_train"):
        if key in hist and len(hist[key]):
            return round(float(hist[key].iloc[-1, 0]), 4)
    return None


def missing_labels(labels: Any) -> Any:
    """Boolean array: labels that mean "unlabelled" (nan, none, empty, unknown)."""
    import numpy as np

    low = np.char.lower(labels.astype(str))
    return np.isin(low, ["nan", "none", "", "unknown"])


def integration(
    z: Any,
    labels: Any,
    batches: Any,
    masks: Mapping[str, Any],
    modalities: Sequence[str],
) -> dict[str, Any] | None:
    """scib-metrics scores of the joint latent (labelled cells), or None when not computable."""
    import numpy as np

    import mosaicvi.metrics

    keep = ~missing_labels(labels)
    n_batches = len(set(batches[keep])) if batches is not None else 1
    if n_batches < 2 or keep.sum() <= 10:
        say("integration scores need labels and at least two batches; skipped")
        return None
    say("scoring integration (bio conservation and batch correction)")
    try:
        # which modalities each cell has ("rna+adt", "rna"): scores modality mixing too
        n_cells = len(z)
        observed_sets = np.array(
            ["+".join(m for m in modalities if masks[m][i]) for i in range(n_cells)]
        )
        extra = {"modality": observed_sets[keep]} if len(set(observed_sets)) > 1 else {}
        scores = mosaicvi.metrics.integration_scores(
            z[keep], labels=labels[keep], batch=batches[keep], **extra
        )
    except Exception as exc:  # metrics must not lose a trained model
        say(f"warning: integration scores failed: {exc}")
        return None
    return jsonable(scores)


def knn_overlap(
    z: Any, z_single: Mapping[str, Any], masks: Mapping[str, Any], modalities: Sequence[str]
) -> dict[str, Any] | None:
    """How close a cell's single-modality embedding lands to its joint one (paired cells)."""
    import numpy as np

    import mosaicvi.metrics

    paired = np.logical_and.reduce([masks[m] for m in modalities])
    if paired.sum() <= K_OVERLAP + 1:
        return None
    overlap = {
        m: float(mosaicvi.metrics.knn_overlap(z_single[m][paired], z[paired], k=K_OVERLAP))
        for m in modalities
    }
    return {
        "description": f"{K_OVERLAP}-NN overlap of the embedding from one modality vs the joint "
        "embedding, paired cells",
        "n_paired_cells": int(paired.sum()),
        **{f"{m}_vs_joint": round(v, 4) for m, v in overlap.items()},
    }


def print_metrics(metrics: dict[str, Any]) -> None:
    """The headline numbers of ``metrics.json`` on stdout."""
    print()
    print("metrics")
    print("-------")
    print(
        f"model {metrics['model']}, cells {metrics['n_cells']}, epochs {metrics['epochs']}, ",
        end="",
    )
    print(f"training time {metrics['train_time_s']:.1f} s")
    integ = metrics.get("integration")
    if isinstance(integ, dict):
        parts = [f"{k} {v:.3f}" for k, v in integ.items() if isinstance(v, int | float)]
        print("integration (scib-metrics, higher is better): " + ", ".join(parts))
    for key, val in metrics.items():
        if key.startswith("knn_overlap_") and isinstance(val, dict):
            parts = [f"{k} {v:.3f}" for k, v in val.items() if k.endswith("_vs_joint")]
            print(
                f"{key.removeprefix('knn_overlap_')}-NN overlap with the joint embedding "
                f"({val['n_paired_cells']} paired cells): " + ", ".join(parts)
            )
    print()
