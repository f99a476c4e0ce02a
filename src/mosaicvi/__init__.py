"""mosaicvi: probabilistic models for paired and mosaic multimodal single-cell data."""

import logging
from importlib.metadata import PackageNotFoundError, version

from . import (
    base,
    benchmark,
    data,
    dataloaders,
    distributions,
    methods,
    metrics,
    model,
    module,
    nn,
    registry,
    tools,
    train,
)

try:
    __version__ = version("mosaicvi")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0"

_logger = logging.getLogger("mosaicvi")
if not _logger.handlers:  # show setup choices (likelihoods, observed cells) by default
    _handler = logging.StreamHandler()
    _handler.setFormatter(logging.Formatter("mosaicvi: %(message)s"))
    _logger.addHandler(_handler)
    _logger.setLevel(logging.INFO)
    _logger.propagate = False

__all__ = [
    "base",
    "benchmark",
    "data",
    "dataloaders",
    "distributions",
    "methods",
    "metrics",
    "model",
    "module",
    "nn",
    "registry",
    "tools",
    "train",
    "__version__",
]
