"""``mosaicvi fit``: train a registered model on the user's ``.h5mu`` file."""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

from ._common import CLIError, configure_runtime, prepare_out_dir, say
from ._inputs import check_h5mu_path, read_mudata, resolve_obs_key


def parse_likelihoods(items: Sequence[str] | None) -> dict[str, str] | None:
    """Turn ``["adt=nb", "rna=zinb"]`` into ``{"adt": "nb", "rna": "zinb"}``."""
    if not items:
        return None
    out: dict[str, str] = {}
    for item in items:
        name, sep, lik = item.partition("=")
        if not sep or not name or not lik:
            raise CLIError(f"--likelihood expects MODALITY=NAME (e.g. adt=nb), got {item!r}")
        out[name.strip()] = lik.strip()
    return out


def _modalities(mdata, wanted: Sequence[str] | None, model: str, filename: str) -> list[str]:
    from mosaicvi import registry

    available = list(mdata.mod)
    modalities = list(wanted) if wanted else available
    missing = [m for m in modalities if m not in mdata.mod]
    if missing:
        raise CLIError(
            f"modality {', '.join(map(repr, missing))} not found in {filename}; "
            f"available modalities: {', '.join(available)}"
        )
    if len(modalities) < 2:
        name = registry.get(model).display_name
        raise CLIError(f"{name} needs at least two modalities, got {modalities}")
    return modalities


def run(args: argparse.Namespace) -> int:
    """Run the command."""
    t_start = time.perf_counter()
    path = check_h5mu_path(Path(args.data), "mosaicvi fit")
    out = Path(args.out)
    if out.resolve() == path.resolve().parent and path.name == "latent.h5mu":
        raise CLIError("--out would overwrite the input file; choose another folder")
    likelihoods = parse_likelihoods(args.likelihood)
    prepare_out_dir(out)
    configure_runtime(args)
    mdata = read_mudata(path)

    modalities = _modalities(mdata, args.modalities, args.model, path.name)
    if likelihoods:
        unknown = [m for m in likelihoods if m not in modalities]
        if unknown:
            raise CLIError(
                f"--likelihood names modality {', '.join(map(repr, unknown))}, which is not among "
                f"the modalities used ({', '.join(modalities)})"
            )
    from ._pipeline import FitSpec, run_pipeline

    spec = FitSpec(
        mdata=mdata,
        model=args.model,
        modalities=modalities,
        layer=args.layer,
        batch_key=resolve_obs_key(mdata, args.batch_key, "batch", "--batch-key"),
        label_key=resolve_obs_key(mdata, args.label_key, "cell_type", "--label-key"),
        likelihoods=likelihoods,
        dataset=str(path),
    )
    run_pipeline(spec, out, args, early_stopping=args.early_stopping)
    say(f"done in {time.perf_counter() - t_start:.1f} s; results in {out.resolve()}")
    return 0
