"""The argument parser of the ``mosaicvi`` command (it imports no model code)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable

from mosaicvi import registry

from . import _benchmark, _demo, _fit
from ._common import DEFAULT_BENCHMARK_OUT, DEFAULT_DEMO_OUT, DEFAULT_FIT_OUT, DEFAULT_MODEL

ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")


def positive_int(text: str) -> int:
    """An integer >= 1, for argparse (which turns the error into exit code 2)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def non_negative_float(text: str) -> float:
    """A finite number >= 0, for argparse."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return value


def _default_threads() -> int:
    return max(1, min(2, os.cpu_count() or 1))


def _method_list(kind: registry.MethodKind) -> str:
    return "; ".join(f"{m.name} ({m.display_name}: {m.summary})" for m in registry.methods(kind))


def _add_model_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        choices=registry.names("model"),
        default=DEFAULT_MODEL,
        help=f"model to train (default {DEFAULT_MODEL}): {_method_list('model')}",
    )


def _add_training_args(p: argparse.ArgumentParser, *, epochs: int, threads: int) -> None:
    p.add_argument(
        "--epochs", type=positive_int, default=epochs, help=f"training epochs (default {epochs})"
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument(
        "--n-latent",
        type=positive_int,
        default=None,
        help="latent dimensions, for models that take n_latent (default: the model's)",
    )
    p.add_argument(
        "--batch-size",
        type=positive_int,
        default=None,
        help="minibatch size (default: the model's)",
    )
    p.add_argument(
        "--accelerator",
        default="auto",
        choices=ACCELERATORS,
        help="Lightning accelerator: auto (GPU when present), cpu, gpu, ... (default auto)",
    )
    p.add_argument(
        "--mmd-weight",
        type=non_negative_float,
        default=None,
        help="weight of the MMD batch-integration penalty, for models trained with one "
        "(MultiVAE; default: the model's default)",
    )
    p.add_argument(
        "--threads",
        type=positive_int,
        default=threads,
        help=f"CPU threads for torch (default {threads})",
    )


def _add_command(
    sub: argparse._SubParsersAction,
    name: str,
    func: Callable[[argparse.Namespace], int],
    *,
    help: str,
    description: str,
) -> argparse.ArgumentParser:
    """Add the sub-command ``name``, run by ``func``."""
    command = sub.add_parser(name, help=help, description=description)
    command.set_defaults(func=func)
    return command


def _add_input_args(
    p: argparse.ArgumentParser, *, batch_help: str, label_help: str, layer_help: str
) -> None:
    """Add ``--batch-key``, ``--label-key`` and ``--layer`` (where the input's batches, labels
    and raw counts are).
    """
    p.add_argument("--batch-key", default=None, help=batch_help)
    p.add_argument("--label-key", default=None, help=label_help)
    p.add_argument("--layer", default=None, help=layer_help)


def _add_out_arg(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument("--out", default=default, help=f"output folder (default ./{default})")


def _add_demo(sub: argparse._SubParsersAction) -> None:
    demo = _add_command(
        sub,
        "demo",
        _demo.run,
        help="simulate a mosaic CITE-seq-like dataset, train a model (MultiVAE), write results",
        description=(
            "Simulate a CITE-seq-like dataset with 3 batches where batch_2 has RNA only, train "
            "a model (--model, default MultiVAE), and write latent.h5mu, umap.png and "
            "metrics.json to --out."
        ),
    )
    _add_out_arg(demo, DEFAULT_DEMO_OUT)
    _add_model_arg(demo)
    # one thread: this small model gains nothing from more, and loses up to 10x on a busy machine
    _add_training_args(demo, epochs=80, threads=1)
    # small values keep the test-suite fast; not advertised in --help
    demo.add_argument("--n-cells", type=positive_int, default=1500, help=argparse.SUPPRESS)


def _add_fit(sub: argparse._SubParsersAction) -> None:
    fit = _add_command(
        sub,
        "fit",
        _fit.run,
        help="train a model (MultiVAE, CLUE, JAE, ...) on your .h5mu file and write results",
        description=(
            "Train one of mosaicvi's models (--model) on a MuData file (modalities may cover "
            "different cells: a mosaic). The input file is not modified; results go to --out."
        ),
    )
    fit.add_argument("--data", required=True, help="input MuData file (.h5mu)")
    _add_model_arg(fit)
    fit.add_argument(
        "--modalities",
        nargs="+",
        default=None,
        metavar="MOD",
        help="modalities of the file to use (default: all of them)",
    )
    _add_input_args(
        fit,
        batch_help="column of mdata.obs with the batch (default 'batch' when present)",
        label_help="column of mdata.obs with cell types, used for metrics and the figure, and as "
        "training labels by semi-supervised models (JAE) (default 'cell_type' when present)",
        layer_help="layer with the raw counts, in every modality (default: 'counts' where a "
        "modality has it, else .X); pass X to use .X",
    )
    fit.add_argument(
        "--likelihood",
        nargs="+",
        default=None,
        metavar="MOD=NAME",
        help="likelihood per modality, e.g. adt=nb atac=bernoulli (default: the model's choice)",
    )
    _add_out_arg(fit, DEFAULT_FIT_OUT)
    fit.add_argument(
        "--early-stopping",
        action="store_true",
        help="stop when the validation loss stops improving",
    )
    _add_training_args(fit, epochs=100, threads=_default_threads())


def _add_benchmark(sub: argparse._SubParsersAction) -> None:
    bench = _add_command(
        sub,
        "benchmark",
        _benchmark.run,
        help="compare mosaicvi's models with scvi-tools peers on your data; write a report",
        description=(
            "Train several methods on the paired cells of a MuData file (RNA + adt or RNA + atac) "
            "with the second modality hidden in held-out cells, then score integration "
            "(scIB metrics) and imputation of the hidden modality. Writes report.md, "
            "scores.csv and figures (UMAPs, metric bars, imputed vs measured) to --out. "
            "The input file is not modified."
        ),
    )
    bench.add_argument("--data", required=True, help="input MuData file (.h5mu)")
    peers = ", ".join(
        f"{m.name} (RNA + {'/'.join(m.second_modalities or ('any',))})"
        for m in registry.methods("peer")
    )
    bench.add_argument(
        "--methods",
        "--models",
        dest="models",
        nargs="+",
        default=None,
        metavar="METHOD",
        help=f"methods, comma- or space-separated: models {', '.join(registry.names('model'))}; "
        f"peers {peers}; peer (the peer for the data); the baseline "
        f"{', '.join(registry.names('baseline'))} is always added "
        "(default: every model, the peer and the baseline)",
    )
    bench.add_argument(
        "--second", default=None, help="modality paired with rna: adt or atac (default: detected)"
    )
    _add_input_args(
        bench,
        batch_help="column of mdata.obs with the batch (default 'batch')",
        label_help="column of mdata.obs with cell types (default 'cell_type' when present)",
        layer_help="layer with raw counts (default: 'counts' where present, else .X); X for .X",
    )
    bench.add_argument(
        "--holdout-batch",
        default=None,
        help="batch whose second modality is hidden and imputed (default: the smallest batch; "
        "a random 20%% of cells when there is one batch)",
    )
    bench.add_argument(
        "--max-cells", type=positive_int, default=None, help="subsample to at most this many cells"
    )
    bench.add_argument("--out", default=DEFAULT_BENCHMARK_OUT, help="output folder")
    bench.add_argument(
        "--epochs",
        type=positive_int,
        default=None,
        help="epochs for every neural method (default: 40,000 / cells, between 20 and 200)",
    )
    bench.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    bench.add_argument(
        "--threads", type=positive_int, default=_default_threads(), help="CPU threads for torch"
    )


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser of the ``mosaicvi`` command."""
    from mosaicvi import __version__

    parser = argparse.ArgumentParser(
        prog="mosaicvi",
        description="Probabilistic models for paired and mosaic multimodal single-cell data.",
    )
    parser.add_argument("--version", action="version", version=f"mosaicvi {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_demo(sub)
    _add_fit(sub)
    _add_benchmark(sub)
    return parser
