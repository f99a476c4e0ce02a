"""MuData contract, mosaic assembly and the built-in simulator."""

from ._backed import MosaicRows, read_backed
from ._cell_cycle import cell_cycle_genes, score_cell_cycle
from ._combine import concat_mosaic
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
from ._readers import read_10x_multimodal, read_neurips2021, read_snareseq
from ._simulate import simulate
from ._soma import SomaRows, read_soma, write_soma

__all__ = [
    "OBSERVED_KEY",
    "MosaicRows",
    "read_backed",
    "SomaRows",
    "read_soma",
    "write_soma",
    "concat_mosaic",
    "cell_cycle_genes",
    "score_cell_cycle",
    "ModalitySpec",
    "assemble_mosaic",
    "build_specs",
    "default_likelihood",
    "observed_mask",
    "validate_matrix",
    "simulate",
    "prepare_query",
    "read_neurips2021",
    "read_10x_multimodal",
    "read_snareseq",
]
