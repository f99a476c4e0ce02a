"""mosaicvi: probabilistic models for paired and mosaic multimodal single-cell data.

Subpackages are imported on first use (``mv.model``, ``mv.data``, ...), so ``import mosaicvi``
and the ``mosaicvi`` command answer without loading torch and scvi-tools first.
"""

import importlib
import logging
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mosaicvi")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0"

_SUBMODULES = (
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
)


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_SUBMODULES])


#: The level of the ``mosaicvi`` logger until a user sets one: just below INFO, it means
#: "follow ``scvi.settings.verbosity``".
_FOLLOW_SCVI = logging.INFO - 1


class _FollowScviVerbosity(logging.Filter):
    """Show a record only at or above ``scvi.settings.verbosity`` (the ``scvi`` logger's level).

    Only while the ``mosaicvi`` logger keeps its default level: a level set by the user
    (``logging.getLogger("mosaicvi").setLevel(logging.INFO)``) wins. Before scvi-tools is
    imported its logger has no level, and INFO applies.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if logging.getLogger("mosaicvi").level != _FOLLOW_SCVI:
            return True
        level = logging.getLogger("scvi").level or logging.INFO
        return record.levelno >= level


_logger = logging.getLogger("mosaicvi")
if not _logger.handlers:  # show setup choices (likelihoods, observed cells) by default
    _handler = logging.StreamHandler()
    _handler.setFormatter(logging.Formatter("mosaicvi: %(message)s"))
    _handler.addFilter(_FollowScviVerbosity())
    _logger.addHandler(_handler)
    _logger.setLevel(_FOLLOW_SCVI)
    _logger.propagate = False

__all__ = [*_SUBMODULES, "__version__"]
