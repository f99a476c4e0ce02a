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
from ._query import prepare_query
from ._simulate import simulate

__all__ = [
    "OBSERVED_KEY",
    "ModalitySpec",
    "assemble_mosaic",
    "build_specs",
    "default_likelihood",
    "observed_mask",
    "validate_matrix",
    "simulate",
    "prepare_query",
]
