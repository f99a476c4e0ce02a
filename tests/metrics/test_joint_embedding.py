"""Tests for the NeurIPS 2021 joint-embedding metrics."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from _shared_data import require_shared_data
from mosaicvi.metrics import (
    ERYTHROID_LINEAGE,
    cell_cycle_conservation,
    joint_embedding_scores,
    lineage_pseudotime,
    trajectory_conservation,
)
from mosaicvi.metrics._joint_embedding import JOINT_EMBEDDING_METRICS, _pcr_variance

# --- cell-cycle conservation -----------------------------------------------------------


def _cell_cycle_data(n: int = 300, seed: int = 0):
    """20-D data whose leading PCs are driven by the S and G2/M scores, in two batches."""
    rng = np.random.default_rng(seed)
    s, g2m = rng.normal(size=n), rng.normal(size=n)
    loadings = rng.normal(size=(2, 20))
    noise = rng.normal(size=(n, 20))
    x = 2.0 * np.column_stack([s, g2m]) @ loadings + noise
    batch = np.repeat(["b1", "b2"], n // 2)
    return x, s, g2m, batch, loadings, noise


def test_pcr_variance_exact_fraction():
    # Orthonormal, centred columns: PC1 = 2 * s (variance 4), PC2 = z (variance 1) with z
    # orthogonal to both scores, so the scores explain exactly 4 / 5 of the variance.
    rng = np.random.default_rng(0)
    m = rng.normal(size=(100, 3))
    q, _ = np.linalg.qr(m - m.mean(axis=0))
    s, g2m, z = q.T
    x = np.column_stack([2.0 * s, z])
    assert _pcr_variance(x, np.column_stack([s, g2m]), n_comps=50) == pytest.approx(0.8)
    # Equal variances: half of the variance is cell-cycle driven -> 1 - |0.5 - 0.8| / 0.8.
    emb = np.column_stack([s, z])
    score = cell_cycle_conservation(emb, x, s, g2m, batch=None)
    assert score == pytest.approx(1 - 0.3 / 0.8)


def test_cell_cycle_conservation_identity_and_rotation():
    x, s, g2m, batch, _, _ = _cell_cycle_data()
    assert cell_cycle_conservation(x, x, s, g2m, batch) == pytest.approx(1.0, abs=1e-9)
    # PCA is invariant to rotations and a global scale of the embedding.
    rot, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(20, 20)))
    assert cell_cycle_conservation(3.0 * x @ rot, x, s, g2m, batch) == pytest.approx(1.0, abs=1e-6)


def test_cell_cycle_conservation_drops_without_signal():
    x, s, g2m, batch, loadings, noise = _cell_cycle_data()
    design = np.column_stack([np.ones(len(s)), s, g2m])
    removed = x - design @ np.linalg.lstsq(design, x, rcond=None)[0]
    assert cell_cycle_conservation(removed, x, s, g2m, batch) < 0.05
    assert cell_cycle_conservation(noise, x, s, g2m, batch) < 0.1
    # Half the cell-cycle amplitude keeps part of the signal.
    weaker = np.column_stack([s, g2m]) @ loadings + noise
    assert 0.5 < cell_cycle_conservation(weaker, x, s, g2m, batch) < 0.95


def test_cell_cycle_conservation_skips_batches():
    x, s, g2m, batch, _, noise = _cell_cycle_data()
    # A batch of 5 cells is skipped: the score equals that of the two large batches.
    batch3 = batch.copy()
    batch3[:5] = "tiny"
    keep = batch3 != "tiny"
    full = cell_cycle_conservation(noise, x, s, g2m, batch3)
    sub = cell_cycle_conservation(noise[keep], x[keep], s[keep], g2m[keep], batch3[keep])
    assert full == pytest.approx(sub)
    # Constant scores explain nothing before integration: no batch can be scored.
    zeros = np.zeros_like(s)
    assert np.isnan(cell_cycle_conservation(x, x, zeros, zeros, batch))
    with pytest.raises(ValueError, match="s_score"):
        cell_cycle_conservation(x, x, s[:-1], g2m, batch)
    with pytest.raises(ValueError, match="n_comps"):
        cell_cycle_conservation(x, x, s, g2m, batch, n_comps=0)


# --- trajectory conservation ---------------------------------------------------------


def _curve(n: int = 150, seed: int = 0):
    """Cells along a smooth 3-D curve, the pseudotime being the position on it."""
    rng = np.random.default_rng(seed)
    t = rng.uniform(size=n)
    emb = 5.0 * np.column_stack([np.cos(3 * t), np.sin(3 * t), t])
    return emb + rng.normal(scale=0.1, size=emb.shape), t


def test_trajectory_conservation_curve():
    emb, t = _curve()
    assert trajectory_conservation(emb, t) > 0.95
    # The root follows the reference: a reversed pseudotime is rooted at the other end.
    assert trajectory_conservation(emb, -t) > 0.95
    # Rooted at the wrong end, DPT runs against the reference.
    assert trajectory_conservation(emb, t, root=int(np.argmax(t))) < 0.05


def test_trajectory_conservation_permuted_is_chance():
    emb, t = _curve()
    perm = np.random.default_rng(3).permutation(t)
    assert trajectory_conservation(emb, perm) == pytest.approx(0.5, abs=0.15)


def test_trajectory_conservation_ignores_cells_outside():
    emb, t = _curve()
    rng = np.random.default_rng(5)
    # 50 extra cells off the trajectory (NaN pseudotime) in a far-away blob.
    emb_all = np.vstack([emb, rng.normal(loc=3.0, size=(50, 3))])
    t_all = np.concatenate([t, np.full(50, np.nan)])
    assert trajectory_conservation(emb_all, t_all) == pytest.approx(
        trajectory_conservation(emb, t), abs=1e-9
    )
    # Fewer than 10 trajectory cells: NaN.
    t_few = np.full(len(t), np.nan)
    t_few[:9] = np.arange(9)
    assert np.isnan(trajectory_conservation(emb, t_few))
    with pytest.raises(ValueError, match="root"):
        trajectory_conservation(emb_all, t_all, root=len(t) + 1)  # a NaN cell
    with pytest.raises(ValueError, match="length"):
        trajectory_conservation(emb, t[:-1])


def test_lineage_pseudotime():
    labels = pd.Series(["HSC", "B", "Erythroblast", None, "Reticulocyte", "MK/E prog"])
    pt = lineage_pseudotime(labels, ERYTHROID_LINEAGE)
    np.testing.assert_array_equal(pt, [0.0, np.nan, 3.0, np.nan, 5.0, 1.0])
    assert pt.dtype == np.float64
    cat = pd.Categorical(["a", "c", "b", "d"])
    np.testing.assert_array_equal(lineage_pseudotime(cat, ["a", "b", "c"]), [0, 2, 1, np.nan])
    assert ERYTHROID_LINEAGE[0] == "HSC" and ERYTHROID_LINEAGE[-1] == "Reticulocyte"
    with pytest.raises(ValueError, match="duplicated"):
        lineage_pseudotime(["a"], ["a", "b", "a"])
    with pytest.raises(ValueError, match="string"):
        lineage_pseudotime(["a"], "abc")


# --- joint_embedding_scores ------------------------------------------------------------


def _labelled_blobs(n_per: int = 60, seed: int = 0):
    """Three cell types as blobs in 10-D, each split over two batches."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=6.0, size=(3, 10))
    labels = np.repeat(["A", "B", "C"], n_per)
    emb = centres[np.repeat(np.arange(3), n_per)] + rng.normal(size=(3 * n_per, 10))
    batch = np.tile(["b1", "b2"], 3 * n_per // 2)
    return emb, labels, batch


def _check_overall(res: dict, n_expected: int) -> None:
    values = [res[k] for k in JOINT_EMBEDDING_METRICS]
    finite = [v for v in values if np.isfinite(v)]
    assert res["n_metrics"] == n_expected == len(finite)
    assert res["overall"] == pytest.approx(np.mean(finite))


def test_joint_embedding_scores_keys_and_missing_inputs():
    emb, labels, batch = _labelled_blobs()
    res = joint_embedding_scores(emb, labels, batch)
    assert set(res) == {*JOINT_EMBEDDING_METRICS, "overall", "n_metrics"}
    assert np.isnan(res["cell_cycle_conservation"]) and np.isnan(res["trajectory_conservation"])
    _check_overall(res, 4)
    # Well-separated blobs, batches mixed within each: near-perfect scores.
    assert res["nmi"] > 0.95 and res["graph_connectivity"] == pytest.approx(1.0)
    assert res["asw_label"] > 0.75 and res["asw_batch"] > 0.9

    rng = np.random.default_rng(1)
    s, g2m = rng.normal(size=len(labels)), rng.normal(size=len(labels))
    unintegrated = emb + np.column_stack([s, g2m]) @ rng.normal(size=(2, 10))
    # Pseudotime along the A -> B -> C axis, NaN nowhere.
    pt = lineage_pseudotime(labels, ["A", "B", "C"]) + rng.uniform(size=len(labels))
    res_all = joint_embedding_scores(
        emb, labels, batch, unintegrated=unintegrated, s_score=s, g2m_score=g2m, pseudotime=pt
    )
    _check_overall(res_all, 6)
    assert 0.0 <= res_all["cell_cycle_conservation"] <= 1.0
    assert 0.0 <= res_all["trajectory_conservation"] <= 1.0
    for key in ("nmi", "asw_label", "asw_batch", "graph_connectivity"):
        assert res_all[key] == pytest.approx(res[key])

    res_pt = joint_embedding_scores(emb, labels, batch, pseudotime=pt, clustering="kmeans")
    _check_overall(res_pt, 5)
    # Two trajectories as columns: the score is their mean.
    two = np.column_stack([pt, np.where(labels == "C", np.nan, pt)])
    res_two = joint_embedding_scores(emb, labels, batch, pseudotime=two, clustering="kmeans")
    t1 = trajectory_conservation(emb, two[:, 0])
    t2 = trajectory_conservation(emb, two[:, 1])
    assert res_two["trajectory_conservation"] == pytest.approx((t1 + t2) / 2)

    with pytest.raises(ValueError, match="g2m_score"):
        joint_embedding_scores(emb, labels, batch, unintegrated=emb, s_score=s)


def test_joint_embedding_scores_single_batch_and_missing_labels():
    emb, labels, _ = _labelled_blobs()
    labels = labels.astype(object)
    labels[:7] = None
    res = joint_embedding_scores(emb, labels, np.zeros(len(labels)), clustering="kmeans")
    assert np.isnan(res["asw_batch"])
    _check_overall(res, 3)


def test_joint_embedding_scores_real_data_pca_beats_random():
    import anndata as ad
    import mudata
    import scanpy as sc

    from mosaicvi.data import score_cell_cycle

    path = require_shared_data("neurips2021_bmmc_cite_600.h5mu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mdata = mudata.read_h5mu(path)
        counts = mdata["rna"].layers["counts"]
        # Only 7 marker genes among the 1000 HVGs: a warning, but usable scores.
        s, g2m, _ = score_cell_cycle(counts, mdata["rna"].var_names)
    tmp = ad.AnnData(counts.copy())
    sc.pp.normalize_total(tmp, target_sum=1e4)
    sc.pp.log1p(tmp)
    sc.pp.pca(tmp, n_comps=30, random_state=0)
    pca = tmp.obsm["X_pca"]
    labels, batch = mdata.obs["cell_type"], mdata.obs["batch"]
    pt = lineage_pseudotime(labels, ERYTHROID_LINEAGE)
    assert np.isfinite(pt).sum() == 100  # erythroid cells, HSC to reticulocyte

    kwargs = {"unintegrated": pca, "s_score": s, "g2m_score": g2m, "pseudotime": pt}
    res_pca = joint_embedding_scores(pca, labels, batch, **kwargs)
    rand = np.random.default_rng(0).normal(size=pca.shape)
    res_rand = joint_embedding_scores(rand, labels, batch, **kwargs)
    assert res_pca["n_metrics"] == res_rand["n_metrics"] == 6
    assert res_pca["cell_cycle_conservation"] == pytest.approx(1.0)
    assert res_pca["trajectory_conservation"] > 0.85
    assert res_rand["trajectory_conservation"] < 0.65
    assert res_pca["nmi"] > res_rand["nmi"] + 0.2
    assert res_pca["overall"] > res_rand["overall"] + 0.15
