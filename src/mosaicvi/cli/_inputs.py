"""Reading and checking the user's input: the file, its columns, layers and modalities."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._common import CLIError, clean_message, say


def check_h5mu_path(path: Path, command: str) -> Path:
    """``path`` if it can be a MuData file; a clear error otherwise."""
    if not path.exists():
        raise CLIError(f"data file not found: {path}")
    if path.is_dir():
        raise CLIError(f"--data must be a .h5mu file, got a folder: {path}")
    if path.suffix == ".h5ad":
        raise CLIError(
            f"{path} is an AnnData file; `{command}` needs a MuData file (.h5mu) with one "
            "modality per assay, e.g. built with mudata.MuData({'rna': rna, 'adt': adt})"
        )
    return path


def read_mudata(path: Path) -> Any:
    """Read a ``.h5mu`` file; any failure is reported as the user's file."""
    import mudata

    say(f"reading {path}")
    try:
        return mudata.read_h5mu(path)
    except Exception as exc:  # any read failure is the user's file
        raise CLIError(f"could not read {path} as MuData: {exc}") from exc


def resolve_obs_key(mdata: Any, wanted: str | None, default: str, flag: str) -> str | None:
    """Use ``wanted`` (must exist) or ``default`` when present in ``mdata.obs``, else ``None``."""
    if wanted is not None:
        if wanted not in mdata.obs.columns:
            raise CLIError(
                f"{flag} {wanted!r} is not a column of mdata.obs; columns: "
                f"{', '.join(map(str, mdata.obs.columns)) or '(none)'}"
            )
        return wanted
    return default if default in mdata.obs.columns else None


def layers_for(mdata: Any, modalities: Sequence[str], layer: str | None) -> dict[str, str | None]:
    """Layer per modality: an explicit ``layer`` must exist everywhere; by default 'counts'."""
    layers: dict[str, str | None] = {}
    for m in modalities:
        available = list(mdata.mod[m].layers)
        if layer is None:
            layers[m] = "counts" if "counts" in available else None
            if layers[m] is None:
                say(f"modality {m!r} has no 'counts' layer; using .X")
        elif layer == "X":
            layers[m] = None
        elif layer in available:
            layers[m] = layer
        else:
            raise CLIError(
                f"modality {m!r} has no layer {layer!r} (its layers: "
                f"{', '.join(available) or 'none'}); pass --layer X to use .X"
            )
    return layers


def observed_masks(mdata: Any, modalities: Sequence[str]) -> dict[str, Any]:
    """Per-modality boolean arrays (in ``mdata.obs_names`` order): which cells have it."""
    import numpy as np

    from mosaicvi.data import observed_mask

    try:
        mask = np.asarray(observed_mask(mdata, list(modalities)), dtype=bool)
    except (ValueError, KeyError) as exc:
        raise CLIError(clean_message(exc)) from exc
    return {m: mask[:, k] for k, m in enumerate(modalities)}
