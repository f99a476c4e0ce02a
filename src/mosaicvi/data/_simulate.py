"""Simulation of paired and mosaic multimodal single-cell count data."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import anndata as ad
import mudata
import numpy as np
import pandas as pd
from scipy import sparse

_VALID_MODALITIES = ("rna", "adt", "atac")

# Order in which independent random streams are spawned from the seed. Each modality gets its own
# stream, so e.g. the RNA counts do not change when ADT is added to or removed from `modalities`.
_STREAMS = ("design", "rna", "adt", "atac")

# Feature names of each modality: "gene_0", "protein_0", "peak_0", ...
_PREFIXES = {"rna": "gene", "adt": "protein", "atac": "peak"}


def simulate(
    n_cells: int = 1200,
    n_cell_types: int = 6,
    n_batches: int = 3,
    modalities: Sequence[str] = ("rna", "adt"),
    n_genes: int = 300,
    n_proteins: int = 30,
    n_peaks: int = 500,
    n_latent: int = 8,
    batch_effect: float = 0.6,
    missing: Mapping[str, Sequence[str]] | None = None,
    seed: int = 0,
) -> mudata.MuData:
    """Simulate a multimodal single-cell dataset with cell types, batches and missing modalities.

    Every cell has a true biological state in an ``n_latent``-dimensional space: a cell-type
    centre plus a within-type continuous gradient plus isotropic noise. Each modality is generated
    from this shared state, so that paired modalities carry consistent biology:

    - **RNA**: negative binomial counts with gene-wise dispersion ``theta ~ U(2, 10)``. The mean
      of gene ``g`` in cell ``n`` is ``l_n * softmax_g(b_g + z_n W + log f_{s_n g})`` where
      ``l_n`` is a log-normal, batch-dependent library size and ``f_{s g}`` are batch-specific
      multiplicative gene-wise factors (log-normal with scale ``batch_effect``).
    - **ADT**: CITE-seq-like protein counts, the sum of a cell-type specific foreground
      (negative binomial with mean ``exp(a_p + z_n V)``, high dynamic range) and a background
      (negative binomial around a per-protein ambient level that depends on the batch).
    - **ATAC**: sparse peak counts, ``Poisson(d_n * sigmoid(c_j + z_n U + e_{s_n j}))`` with
      per-cell, batch-dependent depth ``d_n`` and batch-specific shifts ``e`` on a subset of peaks.
      Most entries are 0, the non-zero ones are mostly 1 or 2.

    Parameters
    ----------
    n_cells
        Total number of cells.
    n_cell_types
        Number of cell types (``"type_0"``, ``"type_1"``, ...), with unequal proportions.
    n_batches
        Number of batches (``"batch_0"``, ``"batch_1"``, ...). Cells are ordered by batch and the
        cell-type composition differs mildly between batches.
    modalities
        Modalities to simulate, any non-empty subset (in any order) of ``"rna"``, ``"adt"`` and
        ``"atac"``. The order is the order of ``mdata.mod``.
    n_genes
        Number of genes of the RNA modality (``"gene_0"``, ...).
    n_proteins
        Number of proteins of the ADT modality (``"protein_0"``, ...).
    n_peaks
        Number of peaks of the ATAC modality (``"peak_0"``, ...).
    n_latent
        Dimension of the true biological state.
    batch_effect
        Strength of the batch effects (0 means no batch effects at all). It scales the log-normal
        gene-wise RNA factors, the library size / depth shifts of all modalities, the batch
        dependence of the protein background and the batch-specific accessibility of a subset of
        peaks.
    missing
        Mosaic design: mapping from a batch name to the modalities that the cells of this batch
        lack. These cells are absent from the AnnData of those modalities. Every batch must keep
        at least one modality and every modality must keep at least one batch.
    seed
        Seed of the random number generator. The output is deterministic given all arguments.
        Each modality uses its own random stream, so the counts of a modality do not depend on
        which other modalities are simulated nor on ``missing``.

    Returns
    -------
    mudata.MuData
        One AnnData per modality (keys as in ``modalities``) with raw integer counts stored as
        ``float32`` both in ``.X`` and in ``.layers["counts"]``: scipy CSR matrices for RNA and
        ATAC, a dense array for ADT. The global ``.obs`` is indexed by all cells
        (``"cell_0"``, ..., in this order) and holds the categorical columns ``"batch"`` and
        ``"cell_type"``; ``.obsm["X_true"]`` holds the true latent state (``n_cells x n_latent``).

    Raises
    ------
    ValueError
        If a size is out of range, a modality name is unknown or repeated, or ``missing``
        refers to an unknown batch or modality, or leaves a batch or a modality without data.

    Examples
    --------
    >>> mdata = simulate(n_cells=600, modalities=("rna", "adt"), missing={"batch_2": ["adt"]})
    >>> mdata.n_obs, mdata["rna"].n_obs, mdata["adt"].n_obs
    (600, 600, 405)
    """
    modalities = _check_modalities(modalities)
    sizes = {
        "n_cells": n_cells,
        "n_cell_types": n_cell_types,
        "n_batches": n_batches,
        "n_genes": n_genes,
        "n_proteins": n_proteins,
        "n_peaks": n_peaks,
        "n_latent": n_latent,
    }
    _check_numbers(sizes, seed, batch_effect)
    batch_names = [f"batch_{i}" for i in range(n_batches)]
    missing = _check_missing(missing, batch_names, modalities)

    streams = dict(
        zip(_STREAMS, np.random.SeedSequence(seed).spawn(len(_STREAMS)), strict=True),
    )
    rngs = {name: np.random.default_rng(seq) for name, seq in streams.items()}

    batch, cell_type, z = _simulate_design(
        rngs["design"], n_cells, n_cell_types, n_batches, n_latent
    )
    cell_names = pd.Index([f"cell_{i}" for i in range(n_cells)])
    generators = {"rna": _simulate_rna, "adt": _simulate_adt, "atac": _simulate_atac}
    n_features = {"rna": n_genes, "adt": n_proteins, "atac": n_peaks}
    adatas = {}
    for mod in modalities:
        counts = generators[mod](rngs[mod], z, batch, n_batches, n_features[mod], batch_effect)
        lacking = [b for b, mods in missing.items() if mod in mods]
        keep = ~np.isin(batch, [batch_names.index(b) for b in lacking])
        adatas[mod] = _modality_adata(mod, counts[keep], cell_names[keep])

    labels = {
        "batch": pd.Categorical.from_codes(batch, batch_names),
        "cell_type": pd.Categorical.from_codes(
            cell_type, [f"type_{k}" for k in range(n_cell_types)]
        ),
    }
    return _to_mudata(adatas, cell_names, z, labels)


def _to_mudata(
    adatas: dict[str, ad.AnnData],
    cell_names: pd.Index,
    z: np.ndarray,
    labels: Mapping[str, pd.Categorical],
) -> mudata.MuData:
    """MuData of all ``cell_names`` (in this order) with the true state and the labels in obs."""
    # Passing the global obs (all cells, natural order) makes MuData keep this order, instead of
    # the union of the modalities' obs_names in order of appearance.
    with mudata.set_options(pull_on_update=False):
        mdata = mudata.MuData(
            adatas,
            obs=pd.DataFrame(index=cell_names),
            obsm={"X_true": z.astype(np.float32)},
        )
        mdata.update()
    # Set the labels explicitly on the global obs (aligned by cell name, not by position).
    for col, values in labels.items():
        mdata.obs[col] = pd.Series(values, index=cell_names).reindex(mdata.obs_names).array
    return mdata


def _modality_adata(mod: str, counts: np.ndarray, cell_names: pd.Index) -> ad.AnnData:
    """AnnData of one modality: ``float32`` counts in ``.X`` and ``.layers["counts"]``."""
    if mod in ("rna", "atac"):
        x = sparse.csr_matrix(counts, dtype=np.float32)
    else:
        x = np.ascontiguousarray(counts, dtype=np.float32)
    adata = ad.AnnData(
        X=x,
        obs=pd.DataFrame(index=cell_names),
        var=pd.DataFrame(index=[f"{_PREFIXES[mod]}_{j}" for j in range(counts.shape[1])]),
    )
    adata.layers["counts"] = x.copy()
    return adata


def _check_numbers(sizes: Mapping[str, int], seed: int, batch_effect: float) -> None:
    """Validate the sizes (``n_cells``, ...: integers >= 1), the seed and the batch effect."""
    for name, value in sizes.items():
        _check_int(name, value, 1)
    _check_int("seed", seed, 0)
    n_cells, n_cell_types, n_batches = sizes["n_cells"], sizes["n_cell_types"], sizes["n_batches"]
    if n_cells < n_cell_types:
        raise ValueError(
            f"n_cells ({n_cells}) must be >= n_cell_types ({n_cell_types}) so that every cell "
            "type has at least one cell."
        )
    if n_cells < n_batches:
        raise ValueError(
            f"n_cells ({n_cells}) must be >= n_batches ({n_batches}) so that every batch has at "
            "least one cell."
        )
    if not np.isfinite(batch_effect) or batch_effect < 0:
        raise ValueError(f"batch_effect must be a finite number >= 0, got {batch_effect!r}.")


def _check_int(name: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"{name} must be an integer, got {value!r}.")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}.")


def _check_modalities(modalities: Sequence[str]) -> tuple[str, ...]:
    if isinstance(modalities, str):
        modalities = (modalities,)
    modalities = tuple(modalities)
    if len(modalities) == 0:
        raise ValueError(
            f"modalities must contain at least one of {list(_VALID_MODALITIES)}, got an empty "
            "sequence."
        )
    unknown = [m for m in modalities if m not in _VALID_MODALITIES]
    if unknown:
        raise ValueError(
            f"Unknown modality {unknown!r}: modalities must be chosen among "
            f"{list(_VALID_MODALITIES)}."
        )
    if len(set(modalities)) != len(modalities):
        raise ValueError(f"modalities must not contain duplicates, got {list(modalities)}.")
    return modalities


def _check_missing(
    missing: Mapping[str, Sequence[str]] | None,
    batch_names: list[str],
    modalities: tuple[str, ...],
) -> dict[str, tuple[str, ...]]:
    if missing is None:
        return {}
    if not isinstance(missing, Mapping):
        raise ValueError(
            "missing must be a mapping from batch name to the modalities lacking in that batch, "
            f"got {type(missing).__name__}."
        )
    out: dict[str, tuple[str, ...]] = {}
    for batch, mods in missing.items():
        if batch not in batch_names:
            raise ValueError(
                f"missing refers to unknown batch {batch!r}; existing batches are {batch_names}."
            )
        mods = (mods,) if isinstance(mods, str) else tuple(mods)
        unknown = [m for m in mods if m not in modalities]
        if unknown:
            raise ValueError(
                f"missing[{batch!r}] refers to modality {unknown!r} which is not simulated; "
                f"modalities are {list(modalities)}."
            )
        if set(mods) >= set(modalities):
            raise ValueError(
                f"missing[{batch!r}] drops every modality ({list(modalities)}); each cell must "
                "keep at least one modality."
            )
        out[batch] = tuple(dict.fromkeys(mods))
    for mod in modalities:
        if all(mod in out.get(b, ()) for b in batch_names):
            raise ValueError(
                f"missing drops modality {mod!r} from every batch, so it would contain no cells; "
                "remove it from modalities instead."
            )
    return out


def _simulate_design(
    rng: np.random.Generator,
    n_cells: int,
    n_cell_types: int,
    n_batches: int,
    n_latent: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Simulate batch labels, cell-type labels and the true latent state of every cell."""
    # Unequal cell-type proportions (sorted so that type_0 is the most abundant), with a floor so
    # that no type is vanishingly rare.
    props = np.sort(rng.dirichlet(np.full(n_cell_types, 2.0)))[::-1]
    props = 0.8 * props + 0.2 / n_cell_types
    # Batch sizes: mildly unequal, every batch non-empty. Cells are ordered by batch.
    batch_props = rng.dirichlet(np.full(n_batches, 20.0))
    batch_sizes = 1 + rng.multinomial(n_cells - n_batches, batch_props)
    batch = np.repeat(np.arange(n_batches), batch_sizes)
    # Mildly different composition per batch.
    cell_type = np.empty(n_cells, dtype=np.int64)
    for b in range(n_batches):
        comp = props * np.exp(rng.normal(0.0, 0.15, size=n_cell_types))
        comp /= comp.sum()
        idx = np.flatnonzero(batch == b)
        cell_type[idx] = rng.choice(n_cell_types, size=idx.size, p=comp)
    # Guarantee that every cell type is present (relevant for small n_cells).
    for k in range(n_cell_types):
        if not np.any(cell_type == k):
            counts = np.bincount(cell_type, minlength=n_cell_types)
            donors = np.flatnonzero(counts[cell_type] > 1)
            cell_type[rng.choice(donors)] = k

    # Latent state: type centre + within-type gradient + noise.
    centres = rng.normal(0.0, 1.0, size=(n_cell_types, n_latent))
    directions = rng.normal(size=(n_cell_types, n_latent))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    t = rng.uniform(-1.0, 1.0, size=n_cells)
    noise = rng.normal(0.0, 0.35, size=(n_cells, n_latent))
    z = centres[cell_type] + 0.8 * t[:, None] * directions[cell_type] + noise
    return batch, cell_type, z


def _nb(rng: np.random.Generator, mu: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """Negative binomial draws with mean ``mu`` and inverse dispersion ``theta`` (gamma-Poisson)."""
    rate = rng.gamma(shape=theta, scale=mu / theta)
    return rng.poisson(rate)


def _simulate_rna(
    rng: np.random.Generator,
    z: np.ndarray,
    batch: np.ndarray,
    n_batches: int,
    n_genes: int,
    batch_effect: float,
) -> np.ndarray:
    n_latent = z.shape[1]
    baseline = rng.normal(0.0, 1.0, size=n_genes)
    weights = rng.normal(0.0, 1.0 / np.sqrt(n_latent), size=(n_latent, n_genes))
    log_factors = rng.normal(0.0, batch_effect, size=(n_batches, n_genes))
    log_lib_shift = rng.normal(0.0, 0.5 * batch_effect, size=n_batches)
    theta = rng.uniform(2.0, 10.0, size=n_genes)

    logits = baseline + 1.5 * z @ weights + log_factors[batch]
    logits -= logits.max(axis=1, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(axis=1, keepdims=True)
    library = np.exp(rng.normal(np.log(2000.0) + log_lib_shift[batch], 0.35))
    return _nb(rng, probs * library[:, None], theta)


def _simulate_adt(
    rng: np.random.Generator,
    z: np.ndarray,
    batch: np.ndarray,
    n_batches: int,
    n_proteins: int,
    batch_effect: float,
) -> np.ndarray:
    n_cells, n_latent = z.shape
    # Foreground: strongly cell-type dependent, high dynamic range.
    baseline = rng.normal(2.5, 0.5, size=n_proteins)
    weights = rng.normal(0.0, 1.6 / np.sqrt(n_latent), size=(n_latent, n_proteins))
    cell_scale = np.exp(rng.normal(0.0, 0.2, size=n_cells))
    log_fg = np.clip(baseline + z @ weights, None, 9.0)
    fg_mean = np.exp(log_fg) * cell_scale[:, None]
    theta_fg = rng.uniform(3.0, 10.0, size=n_proteins)
    # Background: per-protein ambient level, modulated per batch (overall and per protein).
    ambient = np.exp(rng.normal(np.log(20.0), 0.4, size=n_proteins))
    batch_scale = np.exp(
        rng.normal(0.0, 0.5 * batch_effect, size=(n_batches, 1))
        + rng.normal(0.0, 0.3 * batch_effect, size=(n_batches, n_proteins))
    )
    bg_mean = ambient * batch_scale[batch] * cell_scale[:, None]
    theta_bg = 30.0
    return _nb(rng, fg_mean, theta_fg) + _nb(rng, bg_mean, np.full(n_proteins, theta_bg))


def _simulate_atac(
    rng: np.random.Generator,
    z: np.ndarray,
    batch: np.ndarray,
    n_batches: int,
    n_peaks: int,
    batch_effect: float,
) -> np.ndarray:
    n_cells, n_latent = z.shape
    baseline = rng.normal(-2.8, 1.0, size=n_peaks)
    weights = rng.normal(0.0, 2.0 / np.sqrt(n_latent), size=(n_latent, n_peaks))
    # Batch-specific accessibility shifts on a subset (~20%) of the peaks.
    affected = rng.random(n_peaks) < 0.2
    shifts = rng.normal(0.0, 2.0 * batch_effect, size=(n_batches, n_peaks)) * affected
    log_depth_shift = rng.normal(0.0, 0.5 * batch_effect, size=n_batches)
    depth = np.exp(rng.normal(np.log(0.5) + log_depth_shift[batch], 0.4))
    prob = 1.0 / (1.0 + np.exp(-(baseline + z @ weights + shifts[batch])))
    return rng.poisson(depth[:, None] * prob)
