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
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import anndata as ad
import h5py
import mudata
import numpy as np
import pandas as pd
import scipy.sparse as sp

logger = logging.getLogger(__name__)

MODALITIES = ("rna", "adt", "atac")
# var["feature_types"] value written for each modality (the local subsets' convention)
CONTRACT_FEATURE_TYPES = {"rna": "GEX", "adt": "ADT", "atac": "ATAC"}
_DENSE_MODALITIES = ("adt",)

NEURIPS2021_GEO = "https://www.ncbi.nlm.nih.gov/geo/query/acc.cgi?acc=GSE194122"
NEURIPS2021_FILES = (
    "GSE194122_openproblems_neurips2021_cite_BMMC_processed.h5ad",
    "GSE194122_openproblems_neurips2021_multiome_BMMC_processed.h5ad",
)
NEURIPS2021_FEATURE_TYPES = {"GEX": "rna", "ADT": "adt", "ATAC": "atac"}

TENX_FEATURE_TYPES = {"Gene Expression": "rna", "Antibody Capture": "adt", "Peaks": "atac"}
TENX_H5_SUFFIX = "filtered_feature_bc_matrix.h5"

SNARESEQ_GEO = "https://www.ncbi.nlm.nih.gov/geo/query/acc.cgi?acc=GSE126074"
SNARESEQ_PREFIX = "GSE126074_AdBrainCortex_SNAREseq"
# (modality, role) -> file name suffix after the prefix; GEO serves them gzipped
_SNARESEQ_PARTS = {
    ("rna", "counts"): "_cDNA.counts.mtx.gz",
    ("rna", "barcodes"): "_cDNA.barcodes.tsv.gz",
    ("rna", "features"): "_cDNA.genes.tsv.gz",
    ("atac", "counts"): "_chromatin.counts.mtx.gz",
    ("atac", "barcodes"): "_chromatin.barcodes.tsv.gz",
    ("atac", "features"): "_chromatin.peaks.tsv.gz",
}

# Largest number of stored values read from disk at once when loading a subset of cells.
_CHUNK_NNZ = 20_000_000
_BATCH_PATTERN = re.compile(r"^s(\d+)d(\d+)$")  # NeurIPS 2021 batches: s<site>d<donor>
_SNARE_BARCODE_PATTERN = re.compile(r"^([^_]+)_([ACGTN]+)$")  # <library>_<cell barcode>


# --------------------------------------------------------------------------------------------
# NeurIPS 2021 (GEO GSE194122)
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# 10x Genomics Cell Ranger / Cell Ranger ARC HDF5
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# SNARE-seq adult mouse cortex (GEO GSE126074)
# --------------------------------------------------------------------------------------------


def read_snareseq(
    directory: str | Path,
    *,
    cell_types: str | Path | pd.Series | pd.DataFrame | None = None,
    label_key: str | None = None,
    prefix: str = SNARESEQ_PREFIX,
    paired_only: bool = True,
    batch_from_barcodes: bool = True,
) -> mudata.MuData:
    """Read the SNARE-seq adult mouse cortex files of GEO GSE126074 into a MuData.

    Parameters
    ----------
    directory
        Folder with the six GEO supplementary files (gzipped as downloaded, or gunzipped)::

            GSE126074_AdBrainCortex_SNAREseq_cDNA.counts.mtx.gz
            GSE126074_AdBrainCortex_SNAREseq_cDNA.barcodes.tsv.gz
            GSE126074_AdBrainCortex_SNAREseq_cDNA.genes.tsv.gz
            GSE126074_AdBrainCortex_SNAREseq_chromatin.counts.mtx.gz
            GSE126074_AdBrainCortex_SNAREseq_chromatin.barcodes.tsv.gz
            GSE126074_AdBrainCortex_SNAREseq_chromatin.peaks.tsv.gz

    cell_types
        Optional labels by barcode: a CSV file whose first column is the barcode (e.g. the
        authors' ``AdBrainCortex_SNAREseq_metadata.rds`` written out with R's ``write.csv``), a
        DataFrame indexed by barcode, or a Series. The chosen column becomes
        ``mdata.obs["cell_type"]``; barcodes without a label get NaN (counted in a logged
        warning).
    label_key
        Column of ``cell_types`` to use (e.g. ``"Ident"`` for the authors' metadata). Needed when
        it has several columns and none is called ``cell_type``.
    prefix
        File name prefix; change it for the series' other sample
        (``"GSE126074_P0_BrainCortex_SNAREseq"``, same layout).
    paired_only
        Keep only barcodes present in both the cDNA and the chromatin files (the default; the
        number dropped is logged). ``False`` keeps every cell, giving a mosaic where unpaired cells
        lack one modality.
    batch_from_barcodes
        When every barcode looks like ``<library>_<sequence>`` (``09A_CAGCCCCGCCTT``), store the
        library as ``mdata.obs["batch"]``, as in the local subset. Otherwise no batch is set
        (logged).

    Returns
    -------
    MuData with ``rna`` (genes) and ``atac`` (peaks, named as in the peaks file,
    ``chr1:3005833-3005982``), counts as float32 CSR in ``X`` and ``layers["counts"]``, cells named
    by barcode in the cDNA file's order.

    Raises
    ------
    FileNotFoundError
        Missing files (all of them are listed, with what the folder holds).
    ValueError
        A matrix whose shape matches neither orientation of its barcode and feature lists,
        duplicated barcodes, or no barcode shared by the two modalities.
    KeyError
        ``label_key`` is not a column of ``cell_types``.

    Notes
    -----
    Confirmed from public sources (the GEO series; gao-lab/GLUE ``data/download/Chen-2019`` and
    ``data/collect/Chen-2019.ipynb``; Wu-Lab/SCARP_biorxiv ``Exp3_SNARE_seq``): the six file names
    above; the ``.mtx`` matrices are features x cells (genes or peaks in rows, barcodes in
    columns); the ``.tsv`` files have one column and no header; peaks are ``chr:start-end``; the
    cell-type labels are not on GEO but in the authors' ``AdBrainCortex_SNAREseq_metadata.rds``
    (column ``Ident``). Assumed: the barcode format ``<library>_<sequence>`` (seen in the local
    subset, which was derived from these files) and that both modalities share barcodes. The
    orientation is checked against the barcode and feature counts and fixed if transposed.

    Examples
    --------
    >>> import mosaicvi as mv
    >>> snare = mv.data.read_snareseq("GSE126074/")  # doctest: +SKIP
    >>> snare = mv.data.read_snareseq(
    ...     "GSE126074/", cell_types="AdBrainCortex_SNAREseq_metadata.csv", label_key="Ident"
    ... )  # doctest: +SKIP
    """
    directory = Path(directory).expanduser()
    if not directory.is_dir():
        raise FileNotFoundError(
            f"{directory} is not a folder. Pass the folder holding the {len(_SNARESEQ_PARTS)} "
            f"{prefix}_* files from GEO GSE126074 ({SNARESEQ_GEO})."
        )
    files = _find_snareseq_files(directory, prefix)

    mods = {}
    for mod in ("rna", "atac"):
        barcodes = _read_single_column(files[(mod, "barcodes")])
        features = _read_single_column(files[(mod, "features")])
        counts = _read_mtx(files[(mod, "counts")], n_cells=len(barcodes), n_features=len(features))
        _check_unique_obs_names(pd.Index(barcodes), files[(mod, "barcodes")].name)
        var = pd.DataFrame(index=pd.Index(features))
        mods[mod] = _make_modality(counts, pd.Index(barcodes), var, mod, directory.name)

    rna_cells, atac_cells = mods["rna"].obs_names, mods["atac"].obs_names
    shared = rna_cells[rna_cells.isin(atac_cells)]
    if shared.size == 0:
        raise ValueError(
            f"The cDNA and chromatin barcode files of {prefix} share no barcode (examples: "
            f"{list(rna_cells[:3])} vs {list(atac_cells[:3])}); they cannot be paired."
        )
    n_unpaired = rna_cells.size + atac_cells.size - 2 * shared.size
    if paired_only:
        if n_unpaired:
            logger.warning(
                "%s: %d RNA-only and %d ATAC-only barcodes are dropped (paired_only=True); pass "
                "paired_only=False to keep them as a mosaic.",
                prefix,
                rna_cells.size - shared.size,
                atac_cells.size - shared.size,
            )
        mods = {mod: adata[shared].copy() for mod, adata in mods.items()}
        cells = shared
    else:
        if n_unpaired:
            logger.info("%s: %d barcodes are measured in one modality only.", prefix, n_unpaired)
        cells = rna_cells.append(atac_cells[~atac_cells.isin(rna_cells)])

    labels = pd.DataFrame(index=cells)
    if batch_from_barcodes:
        libraries = cells.to_series().str.extract(_SNARE_BARCODE_PATTERN)[0]
        if libraries.notna().all():
            labels["batch"] = pd.Categorical(libraries.to_numpy())
        else:
            logger.info(
                "%s: barcodes are not all of the form <library>_<sequence> (e.g. %s); no batch "
                "column is set.",
                prefix,
                cells[libraries.isna().to_numpy()][0],
            )
    if cell_types is not None:
        labels["cell_type"] = _labels_by_barcode(cell_types, label_key, cells)
    return _assemble(mods, labels)


def _find_snareseq_files(directory: Path, prefix: str) -> dict[tuple[str, str], Path]:
    files, missing = {}, []
    for key, suffix in _SNARESEQ_PARTS.items():
        name = prefix + suffix
        for candidate in (directory / name, directory / name.removesuffix(".gz")):
            if candidate.is_file():
                files[key] = candidate
                break
        else:
            missing.append(name)
    if missing:
        present = sorted(p.name for p in directory.iterdir())
        shown = present[:20] + (["..."] if len(present) > 20 else [])
        raise FileNotFoundError(
            f"Missing SNARE-seq files in {directory}: {missing} (gzipped or not). The folder "
            f"holds {shown}. Download the supplementary files of GEO GSE126074 "
            f"({SNARESEQ_GEO}) or pass `prefix=` if yours are named differently."
        )
    return files


def _read_single_column(path: Path) -> list[str]:
    table = pd.read_csv(path, sep="\t", header=None, dtype=str, keep_default_na=False)
    if table.shape[1] > 1:
        logger.info("%s has %d columns; the first one is used as names.", path.name, table.shape[1])
    return table.iloc[:, 0].tolist()


def _read_mtx(path: Path, n_cells: int, n_features: int) -> sp.csr_matrix:
    """A Matrix Market file as cells x features CSR (GEO's SNARE-seq files are features x cells)."""
    from scipy.io import mmread

    matrix = sp.coo_matrix(mmread(path))
    if matrix.shape == (n_features, n_cells):
        return matrix.T.tocsr()
    if matrix.shape == (n_cells, n_features):
        logger.info("%s is stored cells x features; read as such.", path.name)
        return matrix.tocsr()
    raise ValueError(
        f"{path.name} is {matrix.shape[0]} x {matrix.shape[1]}, but its barcode and feature files "
        f"list {n_cells} cells and {n_features} features. The three files of one modality must "
        "come from the same download."
    )


def _labels_by_barcode(
    cell_types: str | Path | pd.Series | pd.DataFrame, label_key: str | None, cells: pd.Index
) -> pd.Categorical:
    if isinstance(cell_types, str | Path):
        table_path = Path(cell_types).expanduser()
        if not table_path.is_file():
            raise FileNotFoundError(
                f"Cell-type table {table_path} not found. Pass a CSV whose first column is the "
                "barcode, a DataFrame indexed by barcode, or a Series."
            )
        cell_types = pd.read_csv(table_path, index_col=0)
    if isinstance(cell_types, pd.DataFrame):
        columns = list(cell_types.columns)
        if label_key is None:
            if len(columns) == 1:
                label_key = columns[0]
            elif "cell_type" in columns:
                label_key = "cell_type"
            else:
                raise KeyError(
                    f"The cell-type table has columns {columns}; pass label_key= to choose one "
                    "(e.g. label_key='Ident' for the authors' metadata)."
                )
        if label_key not in columns:
            raise KeyError(f"label_key {label_key!r} is not a column of the table: {columns}.")
        labels = cell_types[label_key]
    elif isinstance(cell_types, pd.Series):
        labels = cell_types
    else:
        raise TypeError(
            f"cell_types must be a path, a DataFrame or a Series, got {type(cell_types).__name__}."
        )
    labels = labels.copy()
    labels.index = labels.index.astype(str)
    if labels.index.has_duplicates:
        raise ValueError("The cell-type labels have duplicated barcodes.")
    aligned = labels.reindex(cells)
    n_missing = int(aligned.isna().sum())
    if n_missing:
        logger.warning(
            "%d of %d cells have no cell-type label (set to NaN); %d labelled barcodes are not in "
            "the data.",
            n_missing,
            len(cells),
            int((~labels.index.isin(cells)).sum()),
        )
    return pd.Categorical(aligned.to_numpy())


# --------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------


def _require_file(path: str | Path, *, what: str, expected: Sequence[str], source: str) -> Path:
    path = Path(path).expanduser()
    if path.name.endswith(".gz"):
        raise ValueError(
            f"{path} is gzipped. Decompress it first (`gunzip -k {path.name}`): an HDF5 file "
            "must be uncompressed to read a subset of its cells."
        )
    if path.is_file():
        return path
    gz = path.with_name(path.name + ".gz")
    if gz.is_file():
        raise FileNotFoundError(
            f"{path} not found, but {gz.name} is there: decompress it first (`gunzip -k "
            f"{gz.name}`)."
        )
    raise FileNotFoundError(
        f"{what} not found: {path}. Expected one of {list(expected)}, from {source}."
    )


def _select_modalities(
    modalities: Sequence[str] | None,
    present: Mapping[str, str],
    *,
    found: Sequence[str],
    source: str,
    column: str,
) -> list[str]:
    """Validate the requested modalities against those present (``{modality: feature type}``)."""
    found = sorted(str(x) for x in found)
    if modalities is None:
        if "rna" not in present or len(present) < 2:
            raise ValueError(
                f"{source} has feature types {list(found)} in {column}; a multimodal read needs "
                "RNA and at least one of protein (ADT) or ATAC. Pass modalities=[...] to read "
                "only some of them (e.g. modalities=['rna'])."
            )
        return [m for m in MODALITIES if m in present]
    if isinstance(modalities, str):
        modalities = [modalities]
    modalities = list(dict.fromkeys(modalities))
    unknown = [m for m in modalities if m not in MODALITIES]
    if unknown:
        raise ValueError(f"Unknown modalities {unknown}; choose among {list(MODALITIES)}.")
    if not modalities:
        raise ValueError(f"modalities is empty; choose among {list(MODALITIES)}.")
    missing = [m for m in modalities if m not in present]
    if missing:
        raise ValueError(
            f"Modalities {missing} are not in {source}: it has feature types {list(found)} in "
            f"{column}, i.e. modalities {sorted(present)}."
        )
    return modalities


def _require_columns(frame: pd.DataFrame, columns: Sequence[str], where: str, source: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise KeyError(
            f"{source}: {where} has no column {missing}. Its columns are {list(frame.columns)}."
        )


def _read_obs_var(f: h5py.File, path: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``obs`` and ``var`` of an h5ad without loading its matrices."""
    try:
        from anndata.io import read_elem
    except ImportError:  # anndata < 0.11
        from anndata.experimental import read_elem
    if isinstance(f.get("obs"), h5py.Group) and isinstance(f.get("var"), h5py.Group):
        return read_elem(f["obs"]), read_elem(f["var"])
    # anndata < 0.7 stored obs/var as compound datasets: let anndata parse the whole file
    logger.warning(
        "%s uses a pre-2020 h5ad layout; reading it with anndata (slower, more memory).", path.name
    )
    backed = ad.read_h5ad(path, backed="r")
    try:
        return backed.obs.copy(), backed.var.copy()
    finally:
        backed.file.close()


def _sparse_format(elem: h5py.Group) -> tuple[str, tuple[int, int]]:
    attrs = elem.attrs
    encoding = attrs.get("encoding-type", attrs.get("h5sparse_format"))
    if isinstance(encoding, bytes):
        encoding = encoding.decode()
    shape = attrs.get("shape", attrs.get("h5sparse_shape"))
    if encoding in ("csr_matrix", "csr"):
        return "csr", tuple(int(s) for s in shape)
    if encoding in ("csc_matrix", "csc"):
        return "csc", tuple(int(s) for s in shape)
    raise ValueError(f"Unsupported on-disk matrix encoding {encoding!r} at {elem.name}.")


def _windows(indptr: np.ndarray, max_nnz: int) -> list[tuple[int, int]]:
    """Split ``range(len(indptr) - 1)`` into consecutive windows of at most ``max_nnz`` values."""
    n = len(indptr) - 1
    bounds, start = [], 0
    while start < n:
        stop = int(np.searchsorted(indptr, indptr[start] + max_nnz, side="right")) - 1
        stop = min(max(stop, start + 1), n)
        bounds.append((start, stop))
        start = stop
    return bounds


def _read_rows(elem: h5py.Group | h5py.Dataset, rows: np.ndarray) -> sp.csr_matrix:
    """Rows ``rows`` (sorted, unique) of an on-disk h5ad matrix, as CSR, read in chunks."""
    if isinstance(elem, h5py.Dataset):  # dense
        n_obs, n_vars = elem.shape
        step = max(1, _CHUNK_NNZ // max(n_vars, 1))
        blocks = []
        for start in range(0, n_obs, step):
            inside = rows[(rows >= start) & (rows < start + step)]
            if inside.size:
                block = elem[start : min(start + step, n_obs)]
                blocks.append(sp.csr_matrix(block[inside - start]))
        return sp.vstack(blocks, format="csr")

    fmt, (n_obs, n_vars) = _sparse_format(elem)
    indptr = elem["indptr"][:].astype(np.int64)
    data, indices = elem["data"], elem["indices"]
    blocks = []
    if fmt == "csr":
        for start, stop in _windows(indptr, _CHUNK_NNZ):
            inside = rows[(rows >= start) & (rows < stop)]
            if inside.size == 0:
                continue
            lo, hi = indptr[start], indptr[stop]
            block = sp.csr_matrix(
                (data[lo:hi], indices[lo:hi], indptr[start : stop + 1] - lo),
                shape=(stop - start, n_vars),
            )
            blocks.append(block[inside - start])
        return sp.vstack(blocks, format="csr")
    # CSC: stream column windows, keep the selected rows of each
    for start, stop in _windows(indptr, _CHUNK_NNZ):
        lo, hi = indptr[start], indptr[stop]
        block = sp.csc_matrix(
            (data[lo:hi], indices[lo:hi], indptr[start : stop + 1] - lo),
            shape=(n_obs, stop - start),
        )
        blocks.append(block.tocsr()[rows])
    return sp.hstack(blocks, format="csr")


def _check_unique_obs_names(names: pd.Index, source: str) -> None:
    if names.has_duplicates:
        dup = names[names.duplicated()].unique()
        raise ValueError(
            f"{source}: {len(dup)} cell barcodes occur more than once (e.g. {list(dup[:3])}); "
            "cells must have unique names to pair modalities."
        )


def _unique_names(names: pd.Index, mod: str, source: str) -> pd.Index:
    """``names`` with repeats suffixed ``-1``, ``-2``, ... (logged); nothing is dropped."""
    if names.is_unique:
        return names
    dup = names[names.duplicated(keep=False)].unique()
    logger.warning(
        "%s: %d %s feature names occur more than once (e.g. %s); they are made unique by "
        "appending -1, -2, ... (all features are kept).",
        source,
        len(dup),
        mod,
        list(dup[:5]),
    )
    return ad.utils.make_index_unique(names)


def _clean_obs(obs: pd.DataFrame) -> pd.DataFrame:
    """A copy with unused categories removed (so that selected batches are the only levels)."""
    obs = obs.copy()
    for column in obs.columns:
        if isinstance(obs[column].dtype, pd.CategoricalDtype):
            obs[column] = obs[column].cat.remove_unused_categories()
    return obs


def _make_modality(
    counts: sp.spmatrix, obs_names: pd.Index, var: pd.DataFrame, mod: str, source: str
) -> ad.AnnData:
    """One modality in the contract: float32 counts in X and layers['counts'], empty obs."""
    counts = sp.csr_matrix(counts, dtype=np.float32)
    counts.sum_duplicates()
    values = counts.data
    if values.size and (not np.isfinite(values).all() or values.min() < 0):
        raise ValueError(
            f"{source}: the {mod} counts have negative or non-finite values; raw counts are needed."
        )
    if values.size and not np.array_equal(values, np.round(values)):
        logger.warning(
            "%s: the %s counts are not all integers; mosaicvi's count likelihoods expect raw "
            "counts.",
            source,
            mod,
        )
    x = counts.toarray() if mod in _DENSE_MODALITIES else counts
    var = var.copy()
    var.index = _unique_names(pd.Index(var.index.astype(str)), mod, source)
    var["feature_types"] = CONTRACT_FEATURE_TYPES[mod]
    adata = ad.AnnData(X=x, obs=pd.DataFrame(index=pd.Index(obs_names, dtype=str)), var=var)
    adata.layers["counts"] = x.copy()
    return adata


def _assemble(mods: Mapping[str, ad.AnnData], labels: pd.DataFrame) -> mudata.MuData:
    """MuData of the modalities with ``labels`` (indexed by cell) as ``mdata.obs``."""
    shared = set()
    names = [set(adata.var_names) for adata in mods.values()]
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            shared |= first & second
    if shared:
        # as in the local subsets (a protein and its gene share a name): mdata.var_names repeat,
        # each modality's var_names stay unique
        logger.info(
            "%d feature names occur in several modalities (e.g. %s); each modality's var_names "
            "are unique, mdata.var_names are not.",
            len(shared),
            sorted(shared)[:3],
        )
    with mudata.set_options(pull_on_update=False), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*var_names are not unique.*")
        warnings.filterwarnings("ignore", message=".*var_names are intersecting.*")
        mdata = mudata.MuData(dict(mods), obs=pd.DataFrame(index=labels.index))
        mdata.update()
    for column in labels.columns:
        mdata.obs[column] = labels[column].reindex(mdata.obs_names).array
    return mdata
