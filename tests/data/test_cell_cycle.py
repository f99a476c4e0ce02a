"""Tests for the packaged cell-cycle gene lists and per-cell S / G2M scoring."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse as sp

from _shared_data import require_shared_data
from mosaicvi.data._cell_cycle import (
    G2M_GENES_HUMAN,
    S_GENES_HUMAN,
    cell_cycle_genes,
    guess_organism,
    score_cell_cycle,
)


def _synthetic_counts(n_cells: int = 200, n_s: int = 40, n_g2m: int = 50, n_other: int = 200):
    """Poisson counts where the first half of the cells over-express the S-phase genes."""
    rng = np.random.default_rng(0)
    names = list(S_GENES_HUMAN[:n_s]) + list(G2M_GENES_HUMAN[:n_g2m])
    names += [f"GENE{i}" for i in range(n_other)]
    rate = rng.gamma(2.0, 1.0, size=len(names))
    lam = np.tile(rate, (n_cells, 1))
    lam[: n_cells // 2, :n_s] *= 4.0
    counts = rng.poisson(lam).astype(np.float32)
    return counts, names


def _user_warnings(record) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, UserWarning)]


def test_gene_lists():
    assert len(S_GENES_HUMAN) == len(set(S_GENES_HUMAN)) == 43
    assert len(G2M_GENES_HUMAN) == len(set(G2M_GENES_HUMAN)) == 54
    assert not set(S_GENES_HUMAN) & set(G2M_GENES_HUMAN)
    assert {"PCNA", "MCM5", "E2F8"} <= set(S_GENES_HUMAN)
    assert {"MKI67", "TOP2A", "CENPA"} <= set(G2M_GENES_HUMAN)


def test_cell_cycle_genes_per_organism():
    s_h, g_h = cell_cycle_genes("human")
    assert s_h == list(S_GENES_HUMAN) and g_h == list(G2M_GENES_HUMAN)
    s_m, g_m = cell_cycle_genes("mouse")
    assert len(s_m) == 43 and len(g_m) == 54
    assert "Pcna" in s_m and "E2f8" in s_m and "Rad51ap1" in s_m
    assert "Mki67" in g_m and "Top2a" in g_m and "Cks1b" in g_m
    # A fresh list each call: editing it must not change the packaged genes.
    s_h.append("XYZ")
    assert "XYZ" not in cell_cycle_genes("human")[0]
    with pytest.raises(ValueError, match="organism"):
        cell_cycle_genes("zebrafish")  # type: ignore[arg-type]


def test_guess_organism():
    assert guess_organism(["CD3E", "MS4A1", "AL627309.1", "Cd4"]) == "human"
    assert guess_organism(["Cd3e", "Ms4a1", "Gm12345", "CD4"]) == "mouse"
    # Symbols without letters are ignored.
    assert guess_organism(["1", "2", "3", "Actb"]) == "mouse"
    with pytest.raises(ValueError, match="letter"):
        guess_organism(["1", "2"])


def test_score_cell_cycle_synthetic_dense_and_sparse():
    counts, names = _synthetic_counts()
    before = counts.copy()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        s, g, info = score_cell_cycle(counts, names)
    assert not _user_warnings(record)
    np.testing.assert_array_equal(counts, before)
    assert info["organism"] == "human" and info["scored"]
    assert info["n_s_genes"] == 40 and info["n_g2m_genes"] == 50
    assert s.shape == g.shape == (200,) and s.dtype == np.float64
    # The first half over-expresses S genes four-fold: clearly higher S score; G2M only moves
    # a little (library-size normalisation dilutes the other genes).
    s_diff, g_diff = s[:100].mean() - s[100:].mean(), g[:100].mean() - g[100:].mean()
    assert s_diff > 0.5
    assert abs(g_diff) < s_diff / 3

    csr = sp.csr_matrix(counts)
    data_before = csr.data.copy()
    s_sp, g_sp, _ = score_cell_cycle(csr, names)
    np.testing.assert_array_equal(csr.data, data_before)
    np.testing.assert_allclose(s_sp, s, atol=1e-10)
    np.testing.assert_allclose(g_sp, g, atol=1e-10)

    # cells and genes selected in place (a model's assembled matrix) score as the copied selection
    padded = sp.hstack([sp.csr_matrix(np.ones((200, 3))), csr], format="csr")
    rows = np.arange(0, 200, 2)
    s_sel, g_sel, _ = score_cell_cycle(padded, names, rows=rows, columns=slice(3, 3 + len(names)))
    s_copy, g_copy, _ = score_cell_cycle(csr[rows], names)
    np.testing.assert_array_equal(s_sel, s_copy)
    np.testing.assert_array_equal(g_sel, g_copy)


def test_score_cell_cycle_matches_scanpy_and_restores_rng():
    import anndata as ad
    import scanpy as sc

    counts, names = _synthetic_counts()
    np.random.seed(123)  # noqa: NPY002 (checking the global state is left alone)
    expected_draw = np.random.rand()  # noqa: NPY002
    np.random.seed(123)  # noqa: NPY002
    s, g, info = score_cell_cycle(counts, names)
    assert np.random.rand() == expected_draw  # noqa: NPY002

    ref = ad.AnnData(counts.copy())
    ref.var_names = names
    sc.pp.normalize_total(ref, target_sum=1e4)
    sc.pp.log1p(ref)
    sc.tl.score_genes_cell_cycle(
        ref, s_genes=info["s_genes"], g2m_genes=info["g2m_genes"], n_bins=25, random_state=0
    )
    np.testing.assert_allclose(s, ref.obs["S_score"].to_numpy(), atol=1e-6)
    np.testing.assert_allclose(g, ref.obs["G2M_score"].to_numpy(), atol=1e-6)


def test_score_cell_cycle_few_genes_warns():
    counts, names = _synthetic_counts(n_s=3, n_g2m=4, n_other=60)
    with pytest.warns(UserWarning, match=r"3/43 S-phase and 4/54 G2/M.*cell_cycle_keys"):
        s, g, info = score_cell_cycle(counts, names, min_genes=10)
    assert info["n_s_genes"] == 3 and info["n_g2m_genes"] == 4 and info["scored"]
    assert np.all(np.isfinite(s)) and np.std(s) > 0 and np.std(g) > 0
    # With a lower threshold the same input is accepted silently.
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        score_cell_cycle(counts, names, min_genes=3)
    assert not _user_warnings(record)


def test_score_cell_cycle_missing_list_returns_zeros():
    counts, names = _synthetic_counts(n_s=5, n_g2m=0, n_other=50)
    with pytest.warns(UserWarning, match="0/54 G2/M.*zero"):
        s, g, info = score_cell_cycle(counts, names)
    assert info["n_g2m_genes"] == 0 and not info["scored"]
    np.testing.assert_array_equal(s, np.zeros(counts.shape[0]))
    np.testing.assert_array_equal(g, np.zeros(counts.shape[0]))


def test_score_cell_cycle_small_panel_and_renamed_symbols():
    # 12 genes only: scanpy's default 25 expression bins would be empty.
    rng = np.random.default_rng(1)
    names = ["CENPU", "PCNA", "TYMS", "JPT1", "MKI67", "TOP2A"] + [f"G{i}" for i in range(6)]
    counts = rng.poisson(3.0, size=(50, len(names))).astype(float)
    with pytest.warns(UserWarning, match="3/43 S-phase and 3/54 G2/M"):
        s, g, info = score_cell_cycle(counts, names, organism="human")
    # MLF1IP and HN1 are found under their current symbols.
    assert "CENPU" in info["s_genes"] and "JPT1" in info["g2m_genes"]
    assert np.all(np.isfinite(s)) and np.all(np.isfinite(g)) and np.std(s) > 0


def test_score_cell_cycle_mouse_symbols():
    counts, names = _synthetic_counts(n_s=20, n_g2m=20, n_other=100)
    mouse_names = [n[:1] + n[1:].lower() for n in names]
    s, g, info = score_cell_cycle(counts, mouse_names)
    assert info["organism"] == "mouse"
    assert info["n_s_genes"] == 20 and info["n_g2m_genes"] == 20
    assert s[:100].mean() > s[100:].mean()


def test_score_cell_cycle_input_errors():
    counts, names = _synthetic_counts(n_other=10)
    with pytest.raises(ValueError, match="var_names"):
        score_cell_cycle(counts, names[:-1])
    bad = counts.copy()
    bad[0, 0] = -1
    with pytest.raises(ValueError, match="negative"):
        score_cell_cycle(bad, names)
    with pytest.raises(ValueError, match="organism"):
        score_cell_cycle(counts, names, organism="fly")  # type: ignore[arg-type]


def _read_rna(name: str):
    import mudata

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return mudata.read_h5mu(require_shared_data(name))


def test_score_cell_cycle_real_hvg_panel_warns():
    # 1000 HVGs of the NeurIPS 2021 bone-marrow CITE-seq data: only 3 S (FEN1, MCM2, USP1)
    # and 4 G2/M (SMC4, BUB1, DLGAP5, G2E3) marker genes survive HVG selection.
    mdata = _read_rna("neurips2021_bmmc_cite_600.h5mu")
    rna = mdata["rna"]
    counts = rna.layers["counts"]
    data_before = counts.data.copy()
    with pytest.warns(UserWarning, match="3/43 S-phase and 4/54 G2/M"):
        s, g, info = score_cell_cycle(counts, rna.var_names)
    np.testing.assert_array_equal(counts.data, data_before)
    assert info["organism"] == "human"
    assert info["n_s_genes"] == 3 and info["n_g2m_genes"] == 4
    assert s.shape == (mdata.n_obs,)
    assert np.all(np.isfinite(s)) and np.all(np.isfinite(g))
    assert np.std(s) > 0 and np.std(g) > 0


def test_score_cell_cycle_real_full_panel():
    # 4000 genes of 10x PBMC 10k: enough marker genes, no warning; MLF1IP is found as CENPU.
    mdata = _read_rna("pbmc10k_cite_6855.h5mu")
    rna = mdata["rna"]
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        s, g, info = score_cell_cycle(rna.layers["counts"], rna.var_names)
    assert not _user_warnings(record)
    assert info["n_s_genes"] >= 20 and info["n_g2m_genes"] >= 20
    assert "CENPU" in info["s_genes"]
    assert np.all(np.isfinite(s)) and np.std(s) > 0 and np.std(g) > 0
    # Cycling cells are rare in blood, but the two phase scores must go together.
    assert np.corrcoef(s, g)[0, 1] > 0.1
