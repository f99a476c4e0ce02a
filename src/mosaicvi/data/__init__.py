"""MuData contract, mosaic assembly and the built-in simulator."""

from ._constants import OBSERVED_KEY
from ._mosaic import (
    ModalitySpec,
    assemble_mosaic,
    build_specs,
    default_likelihood,
    observed_mask,
    validate_matrix,
)

__all__ = [
    "OBSERVED_KEY",
    "ModalitySpec",
    "assemble_mosaic",
    "build_specs",
    "default_likelihood",
    "observed_mask",
    "validate_matrix",
]

try:  # the simulator is optional while it is being written
    from ._simulate import simulate  # noqa: F401

    __all__.append("simulate")
except ImportError:  # pragma: no cover
    pass
