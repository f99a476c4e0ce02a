"""Cell-cycle marker genes (Tirosh et al. 2015) and per-cell S / G2M scores.

The gene lists are the S-phase (43 genes) and G2/M (54 genes) markers of Tirosh et al.,
*Science* 352 (2016; online 2015), in the form distributed with Seurat (``cc.genes``) and
used in scanpy's cell-cycle tutorial (``regev_lab_cell_cycle_genes.txt``). The symbols are
the original ones; three of them have since been renamed by HGNC (``MLF1IP`` -> ``CENPU``,
``FAM64A`` -> ``PIMREG``, ``HN1`` -> ``JPT1``) and :func:`score_cell_cycle` falls back to
the current symbol when the original one is absent.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ._normalise import is_sparse_rows, log_normalise, row_chunks, select

__all__ = [
    "G2M_GENES_HUMAN",
    "S_GENES_HUMAN",
    "cell_cycle_genes",
    "guess_organism",
    "score_cell_cycle",
]

#: S-phase markers of Tirosh et al. (43 human gene symbols, Seurat ``cc.genes$s.genes``).
S_GENES_HUMAN: tuple[str, ...] = (
    "MCM5", "PCNA", "TYMS", "FEN1", "MCM2", "MCM4", "RRM1", "UNG", "GINS2", "MCM6",
    "CDCA7", "DTL", "PRIM1", "UHRF1", "MLF1IP", "HELLS", "RFC2", "RPA2", "NASP",
    "RAD51AP1", "GMNN", "WDR76", "SLBP", "CCNE2", "UBR7", "POLD3", "MSH2", "ATAD2",
    "RAD51", "RRM2", "CDC45", "CDC6", "EXO1", "TIPIN", "DSCC1", "BLM", "CASP8AP2",
    "USP1", "CLSPN", "POLA1", "CHAF1B", "BRIP1", "E2F8",
)  # fmt: skip

#: G2/M markers of Tirosh et al. (54 human gene symbols, Seurat ``cc.genes$g2m.genes``).
G2M_GENES_HUMAN: tuple[str, ...] = (
    "HMGB2", "CDK1", "NUSAP1", "UBE2C", "BIRC5", "TPX2", "TOP2A", "NDC80", "CKS2",
    "NUF2", "CKS1B", "MKI67", "TMPO", "CENPF", "TACC3", "FAM64A", "SMC4", "CCNB2",
    "CKAP2L", "CKAP2", "AURKB", "BUB1", "KIF11", "ANP32E", "TUBB4B", "GTSE1", "KIF20B",
    "HJURP", "CDCA3", "HN1", "CDC20", "TTK", "CDC25C", "KIF2C", "RANGAP1", "NCAPD2",
    "DLGAP5", "CDCA2", "CDCA8", "ECT2", "KIF23", "HMMR", "AURKA", "PSRC1", "ANLN", "LBR",
    "CKAP5", "CENPE", "CTCF", "NEK2", "G2E3", "GAS2L3", "CBX5", "CENPA",
)  # fmt: skip

# Current HGNC symbols of list members renamed after 2015 (annotations from ~2019 on use them).
_RENAMED_HUMAN = {"MLF1IP": "CENPU", "FAM64A": "PIMREG", "HN1": "JPT1"}

# scanpy's defaults; n_bins is lowered for small gene panels (see _n_bins).
_N_BINS = 25
_GENES_PER_BIN = 10

# Ends every warning of score_cell_cycle.
_ADVICE = (
    "Score the cell cycle on all genes (not only highly variable ones) and pass the "
    "precomputed scores via `cell_cycle_keys`."
)


def _to_mouse(symbol: str) -> str:
    # Mouse gene symbols: first letter upper case, the rest lower case (Mki67, Cdk1, E2f8).
    return symbol[:1].upper() + symbol[1:].lower()


def _check_organism(organism: str) -> Literal["human", "mouse"]:
    if organism not in ("human", "mouse"):
        raise ValueError(f"`organism` must be 'human' or 'mouse', got {organism!r}.")
    return organism  # type: ignore[return-value]


def cell_cycle_genes(organism: Literal["human", "mouse"] = "human") -> tuple[list[str], list[str]]:
    """Tirosh et al. S-phase and G2/M marker genes for an organism.

    Parameters
    ----------
    organism
        ``"human"`` (upper-case symbols, as published) or ``"mouse"`` (the same genes with
        mouse capitalisation: first letter upper case, rest lower case, e.g. ``Mki67``).

    Returns
    -------
    s_genes, g2m_genes
        New lists (43 and 54 symbols) that the caller may modify.
    """
    organism = _check_organism(organism)
    if organism == "human":
        return list(S_GENES_HUMAN), list(G2M_GENES_HUMAN)
    return [_to_mouse(g) for g in S_GENES_HUMAN], [_to_mouse(g) for g in G2M_GENES_HUMAN]


def guess_organism(var_names: Sequence[str] | pd.Index | np.ndarray) -> Literal["human", "mouse"]:
    """Guess whether gene symbols are human or mouse from their capitalisation.

    Human symbols are all upper case (``MKI67``), mouse symbols are not (``Mki67``). Symbols
    without any letter are ignored.

    Parameters
    ----------
    var_names
        Gene symbols.

    Returns
    -------
    str
        ``"human"`` if more than half of the symbols with letters are entirely upper case,
        else ``"mouse"``.

    Raises
    ------
    ValueError
        If no symbol contains a letter.
    """
    symbols = [str(v) for v in var_names]
    with_letters = [s for s in symbols if any(c.isalpha() for c in s)]
    if not with_letters:
        raise ValueError("Cannot guess the organism: no gene symbol contains a letter.")
    frac_upper = np.mean([s == s.upper() for s in with_letters])
    return "human" if frac_upper > 0.5 else "mouse"


def _match_genes(genes: list[str], present: set[str], organism: str) -> list[str]:
    """Genes of the list found in ``present``, using the renamed symbol when needed."""
    found = []
    for gene in genes:
        if gene in present:
            found.append(gene)
            continue
        key = gene.upper()
        if key in _RENAMED_HUMAN:
            alias = _RENAMED_HUMAN[key]
            alias = alias if organism == "human" else _to_mouse(alias)
            if alias in present:
                found.append(alias)
    return found


def _check_counts(counts: Any, rows: np.ndarray, columns: slice) -> None:
    """Reject NaN / infinite / negative values in the part of ``counts`` that will be scored."""
    for chunk in row_chunks(rows):
        block = select(counts, chunk, columns)
        values = block.data if sp.issparse(block) else block
        if values.size and not np.isfinite(values).all():
            raise ValueError("`counts` contains NaN or infinite values.")
        if values.size and values.min() < 0:
            raise ValueError("`counts` contains negative values; expected raw counts.")


def _n_bins(n_vars: int) -> int:
    # scanpy splits the genes into n_bins expression bins of about n_vars / (n_bins - 1)
    # genes; with few genes that size rounds to 0 and the binning breaks, so keep about
    # _GENES_PER_BIN genes per bin.
    return int(min(_N_BINS, max(2, n_vars // _GENES_PER_BIN)))


def _check_selection(
    counts: Any, names: pd.Index, rows: np.ndarray | None, columns: slice | None
) -> tuple[Any, np.ndarray, slice, int]:
    """Validate the shape of ``counts`` against ``names``; returns the counts (an array unless
    sparse), the selected rows and columns (default: all) and the number of selected cells.
    """
    if not is_sparse_rows(counts):
        counts = np.asarray(counts)
    if len(counts.shape) != 2:
        raise ValueError(f"`counts` must be 2-D (cells x genes), got shape {counts.shape}.")
    rows = np.arange(counts.shape[0]) if rows is None else np.asarray(rows)
    columns = slice(None) if columns is None else columns
    n_genes = len(range(*columns.indices(counts.shape[1])))
    if n_genes != len(names):
        raise ValueError(
            f"`counts` has {n_genes} genes (columns) but `var_names` has {len(names)} entries."
        )
    return counts, rows, columns, int(len(rows))


def _found_genes(
    names: pd.Index, organism: Literal["human", "mouse"]
) -> tuple[dict[str, Any], str]:
    """The ``info`` of :func:`score_cell_cycle` (unscored) and a sentence on the genes found."""
    s_list, g2m_list = cell_cycle_genes(organism)
    present = set(names)
    s_found = _match_genes(s_list, present, organism)
    g2m_found = _match_genes(g2m_list, present, organism)
    info: dict[str, Any] = {
        "organism": organism,
        "n_s_genes": len(s_found),
        "n_g2m_genes": len(g2m_found),
        "s_genes": s_found,
        "g2m_genes": g2m_found,
        "scored": False,
    }
    found_msg = (
        f"score_cell_cycle: found {len(s_found)}/{len(s_list)} S-phase and "
        f"{len(g2m_found)}/{len(g2m_list)} G2/M genes of the Tirosh et al. lists "
        f"({organism} symbols) in `var_names`"
    )
    return info, found_msg


def _scanpy_cell_cycle(adata: Any, s_genes: list[str], g2m_genes: list[str]) -> None:
    """:func:`scanpy.tl.score_genes_cell_cycle` on ``adata`` (in place), without its log
    messages and keeping numpy's global random state.
    """
    import scanpy as sc

    rng_state = np.random.get_state()  # noqa: NPY002 (scanpy reseeds the global generator)
    verbosity = sc.settings.verbosity
    try:
        sc.settings.verbosity = 0  # scanpy otherwise logs every missing control bin
        sc.tl.score_genes_cell_cycle(
            adata,
            s_genes=s_genes,
            g2m_genes=g2m_genes,
            n_bins=_n_bins(adata.n_vars),
            random_state=0,
        )
    finally:
        sc.settings.verbosity = verbosity
        np.random.set_state(rng_state)  # noqa: NPY002


def score_cell_cycle(
    counts: Any,
    var_names: Sequence[str] | pd.Index | np.ndarray,
    organism: Literal["human", "mouse"] | None = None,
    min_genes: int = 10,
    *,
    rows: np.ndarray | None = None,
    columns: slice | None = None,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Per-cell S-phase and G2/M scores from raw counts (Seurat / scanpy method).

    The counts are normalised to 10,000 per cell and log1p-transformed (in a new matrix),
    then :func:`scanpy.tl.score_genes_cell_cycle` scores the Tirosh et al. genes present in
    ``var_names`` against expression-matched random control genes on a temporary AnnData
    (``random_state=0``, so the result is deterministic; numpy's global random state is
    restored afterwards).

    Parameters
    ----------
    counts
        Raw counts, cells x genes, dense array or scipy sparse matrix; never modified.
    var_names
        Gene symbols, one per column of ``counts``.
    organism
        ``"human"`` or ``"mouse"``; guessed from the capitalisation of ``var_names``
        (:func:`guess_organism`) when None.
    min_genes
        A :class:`UserWarning` is emitted when fewer than this many genes of either list
        are found.
    rows, columns
        Score only these cells (integer positions) and genes (a slice) of ``counts``, read
        chunk by chunk so that no copy of the selection is made; ``var_names`` then names the
        selected genes. Default: all.

    Returns
    -------
    s_score, g2m_score
        ``float64`` arrays of length ``n_cells``. Both are all zeros when no gene of one of
        the lists is present (or no control genes are left), with a warning.
    info
        ``"organism"``, ``"n_s_genes"`` and ``"n_g2m_genes"`` (numbers of list genes
        found), ``"s_genes"`` and ``"g2m_genes"`` (the symbols used) and ``"scored"``
        (False when zeros were returned).

    Raises
    ------
    ValueError
        If ``counts`` is not 2-D, contains negative / non-finite values, or its number of
        columns differs from the length of ``var_names``.
    """
    import anndata as ad

    names = pd.Index([str(v) for v in var_names])
    counts, rows, columns, n_cells = _check_selection(counts, names, rows, columns)
    if organism is None:
        organism = guess_organism(names)
    organism = _check_organism(organism)

    info, found_msg = _found_genes(names, organism)
    s_found, g2m_found = info["s_genes"], info["g2m_genes"]
    zeros = np.zeros(n_cells, dtype=np.float64), np.zeros(n_cells, dtype=np.float64)
    if not s_found or not g2m_found:
        warnings.warn(
            f"{found_msg}; returning zero S and G2/M scores. {_ADVICE}", UserWarning, stacklevel=2
        )
        return (*zeros, info)
    if len(s_found) < min_genes or len(g2m_found) < min_genes:
        warnings.warn(
            f"{found_msg} (fewer than min_genes={min_genes}); the scores are unreliable. {_ADVICE}",
            UserWarning,
            stacklevel=2,
        )

    _check_counts(counts, rows, columns)
    x = log_normalise(counts, rows, columns, dtype=np.float64)
    adata = ad.AnnData(X=x, obs=pd.DataFrame(index=[str(i) for i in range(n_cells)]))
    # Duplicated symbols would make scanpy's gene look-up ambiguous.
    adata.var_names = names
    adata.var_names_make_unique()
    try:
        _scanpy_cell_cycle(adata, s_found, g2m_found)
    except (RuntimeError, ValueError) as err:
        # Only possible when (nearly) every gene is a marker gene: no control genes left.
        warnings.warn(
            f"{found_msg}, but scanpy could not score them ({err}); returning zero S and G2/M "
            f"scores. {_ADVICE}",
            UserWarning,
            stacklevel=2,
        )
        return (*zeros, info)
    info["scored"] = True
    s_score = adata.obs["S_score"].to_numpy(dtype=np.float64)
    g2m_score = adata.obs["G2M_score"].to_numpy(dtype=np.float64)
    return s_score, g2m_score, info
