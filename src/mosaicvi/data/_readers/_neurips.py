"""NeurIPS 2021 multimodal BMMC benchmark files (GEO GSE194122)."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path

import h5py
import mudata
import numpy as np
import pandas as pd

from ._common import (
    _assemble,
    _clean_obs,
    _make_modality,
    _require_columns,
    _require_file,
    _select_modalities,
)
from ._h5ad import _read_obs_var, _read_rows

logger = logging.getLogger(__name__)

NEURIPS2021_GEO = "https://www.ncbi.nlm.nih.gov/geo/query/acc.cgi?acc=GSE194122"
NEURIPS2021_FILES = (
    "GSE194122_openproblems_neurips2021_cite_BMMC_processed.h5ad",
    "GSE194122_openproblems_neurips2021_multiome_BMMC_processed.h5ad",
)
NEURIPS2021_FEATURE_TYPES = {"GEX": "rna", "ADT": "adt", "ATAC": "atac"}
_BATCH_PATTERN = re.compile(r"^s(\d+)d(\d+)$")  # NeurIPS 2021 batches: s<site>d<donor>


def read_neurips2021(
    path: str | Path,
    batches: Sequence[str] | None = None,
    *,
    max_cells: int | None = None,
    modalities: Sequence[str] | None = None,
    random_state: int = 0,
) -> mudata.MuData:
    """Read a NeurIPS 2021 BMMC benchmark file from GEO GSE194122 into a MuData.

    Only the selected cells' raw counts are read from disk (the file is opened with h5py and the
    ``layers["counts"]`` matrix is streamed in chunks), so a laptop can read a few batches of the
    multi-GB files.

    Parameters
    ----------
    path
        The uncompressed processed file,
        ``GSE194122_openproblems_neurips2021_cite_BMMC_processed.h5ad`` (CITE-seq: RNA + protein)
        or ``GSE194122_openproblems_neurips2021_multiome_BMMC_processed.h5ad`` (10x Multiome:
        RNA + ATAC). GEO serves them as ``.h5ad.gz``: run ``gunzip -k`` on the download first.
    batches
        Batches (``obs["batch"]`` values such as ``"s1d1"``, site 1 donor 1) to read. ``None``
        reads every batch.
    max_cells
        At most this many cells, drawn uniformly at random (``random_state``) from the selected
        batches and kept in file order. ``None`` keeps all selected cells.
    modalities
        Modalities to return, among ``"rna"`` (``GEX`` features), ``"adt"`` (``ADT``) and
        ``"atac"`` (``ATAC``); each must be in the file. ``None`` returns every modality present,
        which must be ``rna`` and at least one other.
    random_state
        Seed for the ``max_cells`` draw.

    Returns
    -------
    MuData with modalities ``rna`` and ``adt`` (CITE file) or ``rna`` and ``atac`` (Multiome
    file). ``X`` and ``layers["counts"]`` hold the raw counts of ``layers["counts"]`` of the file as
    float32 (CSR for rna/atac, dense for adt); the file's normalised ``X`` is not read. Every
    column of the file's ``obs`` is copied to ``mdata.obs`` (unused categories removed), plus two
    lower-case aliases derived from ``batch`` as in the local subsets: ``site`` (``"s1"``) and
    ``donor`` (``"d1"``); the original ``Site`` and ``DonorNumber`` columns are kept as they are.
    The modalities' ``var`` are the file's ``var`` rows of that feature type (``feature_types``,
    ``gene_id``). ``obsm`` (PCA/UMAP/LSI, ATAC gene activity) and ``uns`` are not read.

    Raises
    ------
    FileNotFoundError
        The file does not exist (the message names the GEO files).
    ValueError
        A gzipped path, an unknown batch, a missing feature type, or ``max_cells`` < 1.
    KeyError
        ``layers["counts"]``, ``obs["batch"]``, ``obs["cell_type"]`` or ``var["feature_types"]``
        is missing (the message lists what the file has).

    Notes
    -----
    Layout confirmed from public sources: the two processed files hold one AnnData with all
    features side by side and ``var["feature_types"]`` in {GEX, ADT} (CITE: 13,953 + 134 features,
    90,261 cells) or {GEX, ATAC} (Multiome: 13,431 + 116,490, 69,249 cells); ``X`` is normalised
    and the raw counts are in ``layers["counts"]``; ``var`` has ``feature_types`` and ``gene_id``;
    ``obs`` has ``cell_type``, ``batch`` (``s1d1`` ... ``s4d9``), ``Site``, ``DonorNumber``,
    ``DonorID``, ``Samplename``, donor metadata and per-modality QC columns (``GEX_*``, ``ADT_*``,
    ``ATAC_*``). Sources: the GEO series page (file names, ``.h5ad.gz``), omicverse's
    batch-integration tutorial (prints the obs, var and layers of a subset of the CITE file) and
    public analysis code that splits both files by ``var["feature_types"]`` and reads
    ``layers["counts"]``.

    Assumed, not checked against the multi-GB files: the cell names are the barcodes with the
    batch appended (``AAACCCAAGGATGGCT-1-s1d1``) as in the organisers' starter files; the counts
    layer is a sparse matrix (CSR or CSC) or a dense array, all three of which are handled.

    Examples
    --------
    >>> import mosaicvi as mv
    >>> cite = mv.data.read_neurips2021(
    ...     "GSE194122_openproblems_neurips2021_cite_BMMC_processed.h5ad",
    ...     batches=["s1d1", "s1d2"],
    ... )  # doctest: +SKIP
    >>> multiome = mv.data.read_neurips2021(
    ...     "GSE194122_openproblems_neurips2021_multiome_BMMC_processed.h5ad",
    ...     max_cells=20_000,
    ... )  # doctest: +SKIP
    >>> cite.obs[["cell_type", "batch", "site", "donor"]].head()  # doctest: +SKIP
    """
    path = _require_file(
        path,
        what="NeurIPS 2021 processed h5ad",
        expected=NEURIPS2021_FILES,
        source=f"GEO GSE194122 ({NEURIPS2021_GEO})",
    )
    if max_cells is not None:
        if isinstance(max_cells, bool) or not isinstance(max_cells, int | np.integer):
            raise ValueError(f"max_cells must be a positive integer or None, got {max_cells!r}.")
        if max_cells < 1:
            raise ValueError(f"max_cells must be >= 1, got {max_cells}.")

    with h5py.File(path, "r") as f:
        layers = sorted(f["layers"].keys()) if "layers" in f else []
        if "counts" not in layers:
            raise KeyError(
                f"{path.name} has no layers['counts'] (its layers: {layers}). This reader needs "
                "the raw counts that the GEO processed files keep in layers['counts'] (their X is "
                "normalised). Check that this is one of "
                f"{list(NEURIPS2021_FILES)}."
            )
        obs, var = _read_obs_var(f, path)
        _require_columns(obs, ("batch", "cell_type"), "obs", path.name)
        _require_columns(var, ("feature_types",), "var", path.name)

        feature_types = var["feature_types"].astype(str).to_numpy()
        present = {
            mod: ftype for ftype, mod in NEURIPS2021_FEATURE_TYPES.items() if ftype in feature_types
        }
        unknown = sorted({str(t) for t in feature_types} - set(NEURIPS2021_FEATURE_TYPES))
        if unknown:
            logger.warning(
                "%s: feature types %s are not rna/adt/atac and are not read.", path.name, unknown
            )
        selected = _select_modalities(
            modalities,
            present,
            found=sorted({str(t) for t in feature_types}),
            source=path.name,
            column="var['feature_types']",
        )

        rows = _select_rows(obs, batches, max_cells, random_state, path.name)
        counts = _read_rows(f["layers"]["counts"], rows).astype(np.float32, copy=False)

    obs = obs.iloc[rows]
    mods = {}
    for mod in selected:
        columns = np.flatnonzero(feature_types == present[mod])
        mods[mod] = _make_modality(
            counts[:, columns], obs.index, var.iloc[columns].copy(), mod, path.name
        )
    del counts  # the modalities hold their own copies
    labels = _clean_obs(obs)
    for alias, values in _batch_aliases(labels["batch"]).items():
        if alias not in labels.columns:
            labels[alias] = values
    first = [c for c in ("cell_type", "batch", "site", "donor") if c in labels.columns]
    labels = labels[first + [c for c in labels.columns if c not in first]]
    return _assemble(mods, labels)


def _batch_aliases(batch: pd.Series) -> dict[str, pd.Series]:
    """``site`` (``s1``) and ``donor`` (``d1``) from NeurIPS batches ``s1d1``; empty if no match."""
    values = batch.astype(str)
    parts = values.str.extract(_BATCH_PATTERN)
    if parts.isna().any().any():
        logger.info(
            "obs['batch'] values are not all of the form s<site>d<donor>; the 'site' and 'donor' "
            "aliases are not added."
        )
        return {}
    return {
        "site": pd.Series(pd.Categorical("s" + parts[0]), index=batch.index),
        "donor": pd.Series(pd.Categorical("d" + parts[1]), index=batch.index),
    }


def _select_rows(
    obs: pd.DataFrame,
    batches: Sequence[str] | None,
    max_cells: int | None,
    random_state: int,
    source: str,
) -> np.ndarray:
    """Sorted row positions of the cells to read."""
    if batches is None:
        rows = np.arange(obs.shape[0])
    else:
        if isinstance(batches, str):
            batches = [batches]
        batches = [str(b) for b in batches]
        available = obs["batch"].astype(str)
        missing = sorted(set(batches) - set(available))
        if missing:
            raise ValueError(
                f"Batches {missing} are not in {source}. Its batches are "
                f"{sorted(available.unique())}."
            )
        rows = np.flatnonzero(available.isin(batches).to_numpy())
    if max_cells is not None and rows.size > max_cells:
        rng = np.random.default_rng(random_state)
        rows = np.sort(rng.choice(rows, size=max_cells, replace=False))
    if rows.size == 0:
        raise ValueError(f"No cells selected from {source}.")
    return rows
