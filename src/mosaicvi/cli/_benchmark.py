"""``mosaicvi benchmark``: the registered methods on the user's paired data, with a report."""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from ._common import CLIError, clean_message, configure_runtime, prepare_out_dir, say
from ._inputs import check_h5mu_path, read_mudata, resolve_obs_key


def _method_names(values: list[str] | None) -> str | None:
    """``--methods a,b c`` as one comma-separated string (None: the default methods)."""
    if not values:
        return None
    return ",".join(v for value in values for v in value.split(",") if v.strip())


def run(args: argparse.Namespace) -> int:
    """Run the command; exit code 1 when every method failed."""
    t_start = time.perf_counter()
    path = check_h5mu_path(Path(args.data), "mosaicvi benchmark")
    out = prepare_out_dir(args.out)
    args.accelerator = "auto"
    configure_runtime(args)
    from mosaicvi import benchmark

    mdata = read_mudata(path)
    batch_key = resolve_obs_key(mdata, args.batch_key, "batch", "--batch-key")
    label_key = resolve_obs_key(mdata, args.label_key, "cell_type", "--label-key")
    try:
        task, protocol = benchmark.prepare_task(
            mdata,
            second=args.second,
            batch_key=batch_key,
            labels_key=label_key,
            layer=args.layer,
            holdout_batch=args.holdout_batch,
            epochs=args.epochs,
            max_cells=args.max_cells,
            seed=args.seed,
        )
        methods = benchmark.resolve_methods(_method_names(args.models), task.second)
    except (ValueError, KeyError) as exc:
        raise CLIError(clean_message(exc)) from exc
    protocol = {"data": str(path), **protocol}
    say(
        f"{protocol['cells']} paired cells, {protocol['modalities']}; {protocol['holdout']}; "
        f"methods: {', '.join(methods)}"
    )
    result = benchmark.run_benchmark(task, methods, protocol=protocol, progress=say)
    command = "mosaicvi " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv else None
    report = benchmark.write_report(
        result, out, title=f"mosaicvi benchmark: {path.name}", command=command, seed=args.seed
    )
    print()
    print(result.scores.round(3).to_string())
    print()
    failed = [m for m, notes in result.notes.items() if any(n.startswith("failed") for n in notes)]
    say(f"report: {report.resolve()} ({time.perf_counter() - t_start:.0f} s)")
    if failed:
        say(f"failed methods: {', '.join(failed)} (see the report's notes)")
    return 1 if len(failed) == len(methods) else 0
