"""Readers that turn public download formats into MuData objects in mosaicvi's data contract.

The contract is the layout of the small subsets in ``../shared/data`` that the tutorials use:

- one modality per assay, named ``rna``, ``adt`` and ``atac``;
- raw integer counts as float32 in ``X`` and again in ``layers["counts"]`` (CSR sparse for ``rna``
  and ``atac``, a dense array for ``adt``);
- the modalities' ``obs_names`` are the cell barcodes (unique), their ``obs`` is empty;
- cell-level labels and covariates (``cell_type``, ``batch``, ...) live in ``mdata.obs``;
- ``var_names`` are unique: duplicates are made unique with a logged warning, never dropped;
- ``var["feature_types"]`` is ``GEX``, ``ADT`` or ``ATAC``.

So a notebook written against the local subsets runs unchanged on the full public data.

One module per source (:mod:`._neurips`, :mod:`._tenx`, :mod:`._snareseq`); :mod:`._common`
holds the contract (validation, modality construction, assembly) and :mod:`._h5ad` reads a
subset of rows of an on-disk h5ad matrix in chunks (``_h5ad._CHUNK_NNZ`` stored values at once).
"""

from ._common import CONTRACT_FEATURE_TYPES, MODALITIES
from ._neurips import (
    NEURIPS2021_FEATURE_TYPES,
    NEURIPS2021_FILES,
    NEURIPS2021_GEO,
    read_neurips2021,
)
from ._snareseq import SNARESEQ_GEO, SNARESEQ_PREFIX, read_snareseq
from ._tenx import TENX_FEATURE_TYPES, TENX_H5_SUFFIX, read_10x_multimodal

__all__ = [
    "CONTRACT_FEATURE_TYPES",
    "MODALITIES",
    "NEURIPS2021_FEATURE_TYPES",
    "NEURIPS2021_FILES",
    "NEURIPS2021_GEO",
    "SNARESEQ_GEO",
    "SNARESEQ_PREFIX",
    "TENX_FEATURE_TYPES",
    "TENX_H5_SUFFIX",
    "read_10x_multimodal",
    "read_neurips2021",
    "read_snareseq",
]
