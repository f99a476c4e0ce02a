"""10x Genomics Cell Ranger / Cell Ranger ARC ``filtered_feature_bc_matrix.h5``."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

import h5py
import mudata
import numpy as np
import pandas as pd
import scipy.sparse as sp

from ._common import (
    _assemble,
    _check_unique_obs_names,
    _make_modality,
    _require_file,
    _select_modalities,
)

logger = logging.getLogger(__name__)

TENX_FEATURE_TYPES = {"Gene Expression": "rna", "Antibody Capture": "adt", "Peaks": "atac"}
TENX_H5_SUFFIX = "filtered_feature_bc_matrix.h5"


def read_10x_multimodal(
    path: str | Path,
    *,
    modalities: Sequence[str] | None = None,
    batch: str | None = None,
    append_batch_to_barcodes: bool = True,
) -> mudata.MuData:
    """Read a 10x Genomics ``filtered_feature_bc_matrix.h5`` with several feature types.

    Covers Cell Ranger CITE-seq output (``Gene Expression`` + ``Antibody Capture``) and Cell
    Ranger ARC Multiome output (``Gene Expression`` + ``Peaks``). The HDF5 parsing is scanpy's
    :func:`scanpy.read_10x_h5` (``gex_only=False``); this function splits the features by type and
    brings the result into mosaicvi's data contract.

    Parameters
    ----------
    path
        The ``.h5`` file (e.g. ``pbmc_10k_protein_v3_filtered_feature_bc_matrix.h5``), or a folder
        holding exactly one ``*filtered_feature_bc_matrix.h5`` (directly or in ``outs/``).
    modalities
        Modalities to return, among ``"rna"`` (``Gene Expression``), ``"adt"``
        (``Antibody Capture``) and ``"atac"`` (``Peaks``); each must be in the file. ``None``
        returns every modality present, which must be ``rna`` and at least one other (pass
        ``modalities=["rna"]`` to read an RNA-only run, e.g. for a mosaic).
    batch
        Name of this run (e.g. ``"pbmc10k"``), stored as ``mdata.obs["batch"]``. Give one per file
        when several runs are combined.
    append_batch_to_barcodes
        With ``batch``, name the cells ``<barcode>-<batch>`` (``AAACCCAAGATTGTGA-1-pbmc10k``, as in
        the local subsets) so that runs sharing barcodes can be concatenated.

    Returns
    -------
    MuData with one modality per feature type present (``rna``, ``adt``, ``atac``); counts as
    float32 in ``X`` and ``layers["counts"]`` (CSR for rna/atac, dense for adt). ``var`` keeps
    10x's ``gene_ids``, ``genome`` and, for ARC peaks, ``interval``; ``var["feature_types"]`` is
    rewritten to ``GEX``/``ADT``/``ATAC``. Gene names repeated in 10x references (a few dozen
    symbols map to several Ensembl IDs) are made unique (``-1``, ``-2`` suffixes) with a logged
    warning; ``var["gene_ids"]`` keeps the IDs. Other feature types (``CRISPR Guide Capture``,
    ``Custom``, ...) are skipped with a logged warning.

    Raises
    ------
    FileNotFoundError
        No such file, or a folder without exactly one matching ``.h5``.
    ValueError
        Not an HDF5 file, a Cell Ranger 2 (single-assay) file, or a missing feature type (the
        message lists the feature types in the file).

    Notes
    -----
    Layout confirmed from 10x's documentation of the HDF5 feature-barcode matrix
    (support.10xgenomics.com, ``.../advanced/h5_matrices`` for Cell Ranger and Cell Ranger ARC):
    group ``matrix`` with ``barcodes``, ``data``, ``indices``, ``indptr``, ``shape`` (features x
    barcodes, CSC) and ``features/{id, name, feature_type, genome, interval (ARC only)}``;
    feature types ``Gene Expression``, ``Antibody Capture``, ``CRISPR Guide Capture``, ``Custom``
    and, for ARC, ``Peaks``.

    Examples
    --------
    The full PBMC data of the PBMC tutorial, from 10x Genomics' public datasets
    (``pbmc_10k_protein_v3`` and ``pbmc_5k_protein_v3``, Cell Ranger 3.0.0):

    >>> import mosaicvi as mv
    >>> pbmc10k = mv.data.read_10x_multimodal(
    ...     "pbmc_10k_protein_v3_filtered_feature_bc_matrix.h5", batch="pbmc10k"
    ... )  # doctest: +SKIP
    >>> pbmc5k_rna = mv.data.read_10x_multimodal(
    ...     "pbmc_5k_protein_v3_filtered_feature_bc_matrix.h5", modalities=["rna"], batch="pbmc5k"
    ... )  # doctest: +SKIP
    >>> multiome = mv.data.read_10x_multimodal(
    ...     "pbmc_granulocyte_sorted_10k_filtered_feature_bc_matrix.h5"
    ... )  # doctest: +SKIP
    """
    import scanpy as sc

    path = _resolve_10x_path(path)
    try:
        with h5py.File(path, "r") as f:
            if "matrix" not in f:
                raise ValueError(
                    f"{path.name} has no 'matrix' group (top-level groups: {sorted(f.keys())}): "
                    "it is a Cell Ranger 2 file, which stores one assay (RNA) per genome and no "
                    "feature types. Read it with scanpy.read_10x_h5(path, genome=...) or re-run "
                    "Cell Ranger >= 3 for multimodal output."
                )
            raw_types = f["matrix"]["features"]["feature_type"][:]
    except OSError as err:
        raise ValueError(
            f"{path} is not a readable HDF5 file ({err}). Pass the Cell Ranger "
            f"'{TENX_H5_SUFFIX}' (the '.h5' download, not the MEX folder or the '.tar.gz')."
        ) from err
    feature_types = np.array([t.decode() if isinstance(t, bytes) else str(t) for t in raw_types])
    found = sorted({str(t) for t in feature_types})
    present = {mod: ftype for ftype, mod in TENX_FEATURE_TYPES.items() if ftype in found}
    unknown = sorted(set(found) - set(TENX_FEATURE_TYPES))
    if unknown:
        logger.warning("%s: feature types %s are not rna/adt/atac and are not read.", path, unknown)
    selected = _select_modalities(
        modalities,
        present,
        found=found,
        source=path.name,
        column="matrix/features/feature_type",
    )

    with warnings.catch_warnings():  # repeated gene names are handled (and logged) below
        warnings.filterwarnings("ignore", message=".*names are not unique.*")
        adata = sc.read_10x_h5(path, gex_only=False)
    _check_unique_obs_names(adata.obs_names, path.name)
    obs_names = pd.Index(adata.obs_names.astype(str))
    if batch is not None and append_batch_to_barcodes:
        obs_names = obs_names + f"-{batch}"
    x = sp.csr_matrix(adata.X)
    var = adata.var.copy()
    var_types = var["feature_types"].astype(str).to_numpy()
    mods = {}
    for mod in selected:
        columns = np.flatnonzero(var_types == present[mod])
        mods[mod] = _make_modality(
            x[:, columns], obs_names, var.iloc[columns].copy(), mod, path.name
        )
    labels = pd.DataFrame(index=obs_names)
    if batch is not None:
        labels["batch"] = pd.Categorical([str(batch)] * len(obs_names))
    return _assemble(mods, labels)


def _resolve_10x_path(path: str | Path) -> Path:
    path = Path(path).expanduser()
    if path.is_dir():
        candidates = sorted(path.glob(f"*{TENX_H5_SUFFIX}")) + sorted(
            (path / "outs").glob(f"*{TENX_H5_SUFFIX}")
        )
        if len(candidates) != 1:
            raise FileNotFoundError(
                f"Expected exactly one '*{TENX_H5_SUFFIX}' in {path} (or its outs/), found "
                f"{[str(c) for c in candidates]}. Pass the file itself."
            )
        return candidates[0]
    return _require_file(
        path,
        what="10x Cell Ranger HDF5 matrix",
        expected=(f"<sample>_{TENX_H5_SUFFIX}",),
        source="Cell Ranger 'outs/' or the 10x Genomics datasets page",
    )
