"""SNARE-seq adult mouse cortex (GEO GSE126074)."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import mudata
import pandas as pd
import scipy.sparse as sp

from ._common import _assemble, _check_unique_obs_names, _make_modality

logger = logging.getLogger(__name__)

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
_SNARE_BARCODE_PATTERN = re.compile(r"^([^_]+)_([ACGTN]+)$")  # <library>_<cell barcode>


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
