"""Command-line interface: ``mosaicvi demo | fit | benchmark``.

``mosaicvi demo`` simulates a small mosaic CITE-seq-like dataset (one batch without protein),
trains a model (``--model``, default :class:`mosaicvi.model.MultiVAE`) on it and writes the latent
space, a UMAP figure and metrics. ``mosaicvi fit`` does the same on a user's ``.h5mu`` file with
any model of :mod:`mosaicvi.registry`. ``mosaicvi benchmark`` compares the registered methods on
a user's paired data. The input file is never modified: results go to a new folder.

Model code (torch, scvi-tools) is imported by the commands, not by this package.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from ._common import LATENT_KEY, CLIError
from ._parser import build_parser

__all__ = ["LATENT_KEY", "CLIError", "build_parser", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``mosaicvi`` command line and return its exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2
    if args.command is None:
        parser.print_help()
        return 1
    try:
        return int(args.func(args) or 0)
    except CLIError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
