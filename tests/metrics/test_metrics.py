import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from scipy.stats import spearmanr

from mosaicvi.metrics import (
    foscttm,
    imputation_scores,
    integration_scores,
    knn_matching_matrix,
    knn_overlap,
    matching_score,
    per_feature_correlation,
    silhouette_label,
)
from mosaicvi.metrics._integration import _silhouette_batch

# ----------------------------------------------------------------------------- FOSCTTM


def test_foscttm_identical_is_zero():
    x = np.random.default_rng(0).normal(size=(300, 8))
    assert foscttm(x, x.copy()) == 0.0


def test_foscttm_random_is_half():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(500, 5)), rng.normal(size=(500, 5))
    assert abs(foscttm(x, y) - 0.5) < 0.05


def test_foscttm_hand_computed_with_tie():
    # d(x, y) rows: x0 -> [0.4, 3, 4.5] (true 0.4, n1=0); x1 -> [0.6, 2, 3.5] (true 2, n1=1);
    # x2 -> [4.6, 2, 0.5] (n1=0). Columns: y1 -> d to x = [3, 2, 2], true 2: the tie with x2
    # does not count (strict <), so all n2 = 0.  FOSCTTM = 1 / (2 * 3 * 3).
    x = np.array([[0.0], [1.0], [5.0]])
    y = np.array([[0.4], [3.0], [4.5]])
    score, per_cell = foscttm(x, y, return_per_cell=True)
    assert score == pytest.approx(1 / 18)
    np.testing.assert_allclose(per_cell, [0.0, 1 / 6, 0.0])
    # moving x2 to 4.9 makes it closer to y1 than x1 is: n2_1 = 1 -> total 2 / 18
    x[2, 0] = 4.9
    assert foscttm(x, y) == pytest.approx(2 / 18)
    # the metric is symmetric in its two arguments
    assert foscttm(y, x) == pytest.approx(2 / 18)


def test_foscttm_chunking_does_not_change_result():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(101, 4))
    y = x + rng.normal(scale=0.7, size=x.shape)
    ref = foscttm(x, y)
    assert 0.0 < ref < 0.5
    assert foscttm(x, y, chunk_size=7) == pytest.approx(ref)
    assert foscttm(x, y, chunk_size=1) == pytest.approx(ref)


def test_foscttm_validation():
    x = np.zeros((5, 2))
    with pytest.raises(ValueError, match="same cells"):
        foscttm(x, np.zeros((4, 2)))
    with pytest.raises(ValueError, match="same space"):
        foscttm(x, np.zeros((5, 3)))
    bad = x.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        foscttm(bad, x)
    with pytest.raises(ValueError, match="2-D"):
        foscttm(np.zeros(5), np.zeros(5))


# ----------------------------------------------------------------------------- matching


def test_matching_score_identity_and_uniform():
    n = 7
    assert matching_score(np.eye(n)) == pytest.approx(1.0)
    assert matching_score(sp.identity(n, format="csr")) == pytest.approx(1.0)
    assert matching_score(np.ones((n, n))) == pytest.approx(1 / n)
    assert matching_score(sp.csr_matrix(np.full((n, n), 3.0))) == pytest.approx(1 / n)


def test_matching_score_row_normalisation_and_empty_rows():
    m = np.array([[2.0, 2.0, 0.0], [0.0, 0.0, 0.0], [1.0, 0.0, 3.0]])
    # rows: 2/4, 0 (empty row contributes 0), 3/4
    with pytest.warns(UserWarning, match="sum to zero"):
        assert matching_score(m) == pytest.approx((0.5 + 0.0 + 0.75) / 3)
    with pytest.warns(UserWarning, match="sum to zero"):
        assert matching_score(sp.csr_matrix(m)) == pytest.approx((0.5 + 0.0 + 0.75) / 3)


def test_matching_score_validation():
    with pytest.raises(ValueError, match="square"):
        matching_score(np.ones((3, 4)))
    with pytest.raises(ValueError, match="square"):
        matching_score(sp.csr_matrix(np.ones((3, 4))))
    with pytest.raises(ValueError, match="non-negative"):
        matching_score(-np.eye(3))
    with pytest.raises(ValueError, match="NaN"):
        matching_score(np.full((2, 2), np.nan))


def test_knn_matching_matrix():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(50, 3))
    m = knn_matching_matrix(x, x, k=4)
    assert sp.isspmatrix_csr(m)
    assert m.shape == (50, 50)
    np.testing.assert_allclose(np.asarray(m.sum(axis=1)).ravel(), 1.0)
    assert np.all(m.getnnz(axis=1) == 4)
    # every cell's nearest neighbour in an identical copy is itself -> weight 1/k on diagonal
    np.testing.assert_allclose(m.diagonal(), 0.25)
    assert matching_score(m) == pytest.approx(0.25)
    # a far-away copy with a shuffled order puts (almost) no mass on the true partner
    y = x[rng.permutation(50)]
    assert matching_score(knn_matching_matrix(x, y, k=1)) < 0.1
    with pytest.raises(ValueError, match="larger than"):
        knn_matching_matrix(x, x[:3], k=4)
    with pytest.raises(ValueError, match="same space"):
        knn_matching_matrix(x, x[:, :2], k=2)


# ----------------------------------------------------------------------------- kNN overlap


def test_knn_overlap_identical_and_random():
    rng = np.random.default_rng(4)
    a = rng.normal(size=(500, 6))
    assert knn_overlap(a, a.copy(), k=10) == pytest.approx(1.0)
    # rotation + scaling keeps Euclidean neighbourhoods
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    assert knn_overlap(a, 3.0 * a @ q, k=10) == pytest.approx(1.0)
    mean, per_cell = knn_overlap(a, rng.normal(size=(500, 2)), k=10, return_per_cell=True)
    assert mean < 0.06  # expectation k / (n - 1) = 0.02
    assert per_cell.shape == (500,)
    assert mean == pytest.approx(per_cell.mean())


def test_knn_overlap_excludes_self_with_duplicates():
    rng = np.random.default_rng(5)
    base = rng.normal(size=(40, 3))
    a = np.vstack([base, base])  # every point has an exact duplicate
    assert knn_overlap(a, a, k=5) == pytest.approx(1.0)
    # with k=1 the only neighbour is the duplicate (distance 0), never the cell itself
    _, per_cell = knn_overlap(a, a + 1e-3 * rng.normal(size=a.shape), k=1, return_per_cell=True)
    assert per_cell.mean() > 0.9


def test_knn_overlap_partial_hand_example():
    # 1-D points; k = 1. In `a`, nearest other of 0 is 1, of 1 is 0, of 10 is 11, of 11 is 10.
    a = np.array([[0.0], [1.0], [10.0], [11.0]])
    # In `b`: 0 -> 2 (distance 3), 1 -> 3 (16), 2 -> 3 (1), 3 -> 2 (1).
    b = np.array([[0.0], [20.0], [3.0], [4.0]])
    _, per_cell = knn_overlap(a, b, k=1, return_per_cell=True)
    np.testing.assert_allclose(per_cell, [0.0, 0.0, 1.0, 1.0])


def test_knn_overlap_validation():
    a = np.zeros((10, 2))
    with pytest.raises(ValueError, match="same cells"):
        knn_overlap(a, np.zeros((9, 2)))
    with pytest.raises(ValueError, match="larger than"):
        knn_overlap(a, a, k=10)
    with pytest.raises(ValueError, match=">= 1"):
        knn_overlap(a, a, k=0)


# ----------------------------------------------------------------------------- imputation


@pytest.fixture(scope="module")
def counts():
    rng = np.random.default_rng(6)
    mu = rng.gamma(2.0, 2.0, size=(1, 40)) * rng.gamma(2.0, 0.5, size=(300, 1))
    return mu, rng.poisson(mu).astype(float)


def test_imputation_perfect_prediction(counts):
    _, obs = counts
    res = imputation_scores(obs, obs)
    assert res["pearson"] == pytest.approx(1.0)
    assert res["spearman"] == pytest.approx(1.0)
    assert res["rmse"] == pytest.approx(0.0, abs=1e-12)
    assert res["n_features_scored"] == obs.shape[1]
    assert res["n_features_skipped"] == 0


def test_imputation_shuffled_is_near_zero(counts):
    mu, obs = counts
    rng = np.random.default_rng(7)
    res = imputation_scores(obs[rng.permutation(obs.shape[0])], obs)
    assert abs(res["pearson"]) < 0.1
    assert abs(res["spearman"]) < 0.1
    assert res["rmse"] > 0.3
    # the true means are informative: clearly better than shuffled
    good = imputation_scores(mu, obs)
    assert good["pearson"] > 0.3
    assert good["rmse"] < res["rmse"]


def test_imputation_matches_reference_formulas(counts):
    mu, obs = counts
    pear = per_feature_correlation(mu, obs, method="pearson")
    spear = per_feature_correlation(mu, obs, method="spearman")
    lp, lo = np.log1p(mu), np.log1p(obs)
    for j in (0, 5, 17):
        assert pear[j] == pytest.approx(np.corrcoef(lp[:, j], lo[:, j])[0, 1])
        assert spear[j] == pytest.approx(spearmanr(mu[:, j], obs[:, j]).statistic)
    raw = per_feature_correlation(mu, obs, log1p=False)
    assert raw[0] == pytest.approx(np.corrcoef(mu[:, 0], obs[:, 0])[0, 1])
    res = imputation_scores(mu, obs)
    assert res["pearson"] == pytest.approx(pear.mean())
    assert res["spearman"] == pytest.approx(spear.mean())
    assert res["rmse"] == pytest.approx(np.sqrt(np.mean((lp - lo) ** 2)))
    res_raw = imputation_scores(mu, obs, log1p=False)
    assert res_raw["rmse"] == pytest.approx(np.sqrt(np.mean((mu - obs) ** 2)))


def test_imputation_zero_variance_features_skipped(counts):
    mu, obs = counts
    obs = obs.copy()
    pred = mu.copy()
    obs[:, 0] = 0.0  # constant in observed
    pred[:, 1] = 5.0  # constant in predicted
    res = imputation_scores(pred, obs)
    assert res["n_features_scored"] == obs.shape[1] - 2
    assert res["n_features_skipped"] == 2
    corr = per_feature_correlation(pred, obs)
    assert np.isnan(corr[0]) and np.isnan(corr[1])
    assert res["pearson"] == pytest.approx(corr.iloc[2:].mean())
    with pytest.warns(UserWarning, match="constant"):
        res_all = imputation_scores(np.ones((5, 3)), np.ones((5, 3)))
    assert np.isnan(res_all["pearson"]) and res_all["n_features_scored"] == 0


def test_imputation_input_types(counts):
    mu, obs = counts
    genes = [f"g{i}" for i in range(obs.shape[1])]
    dense = imputation_scores(mu, obs)
    df_pred = pd.DataFrame(mu, columns=genes)
    df_obs = pd.DataFrame(obs, columns=genes)
    for p, o in [(df_pred, df_obs), (mu, sp.csr_matrix(obs)), (sp.csc_matrix(mu), df_obs)]:
        res = imputation_scores(p, o)
        for key in ("pearson", "spearman", "rmse"):
            assert res[key] == pytest.approx(dense[key])
    corr = per_feature_correlation(mu, df_obs, method="spearman")
    assert isinstance(corr, pd.Series)
    assert list(corr.index) == genes
    assert corr.name == "spearman"
    assert list(per_feature_correlation(mu, obs).index) == list(range(obs.shape[1]))


def test_imputation_validation(counts):
    mu, obs = counts
    with pytest.raises(ValueError, match="same shape"):
        imputation_scores(mu[:, :5], obs)
    with pytest.raises(ValueError, match="negative"):
        imputation_scores(mu - 100.0, obs)
    imputation_scores(mu - 100.0, obs, log1p=False)  # allowed without log1p
    nan_pred = mu.copy()
    nan_pred[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        imputation_scores(nan_pred, obs)
    with pytest.raises(ValueError, match="method"):
        per_feature_correlation(mu, obs, method="kendall")
    cols = [f"g{i}" for i in range(obs.shape[1])]
    with pytest.raises(ValueError, match="same columns"):
        imputation_scores(pd.DataFrame(mu, columns=cols), pd.DataFrame(obs, columns=cols[::-1]))


# ----------------------------------------------------------------------------- integration

N_CELLS = 300


def _layouts(seed: int = 0):
    """Three labels x two batches, each label present in both batches.

    ``good``: clusters by label, batches mixed inside each cluster.
    ``confounded``: clusters by batch, labels mixed inside each cluster.
    """
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.array(["T", "B", "NK"]), N_CELLS // 3)
    batch = np.tile(np.array(["b1", "b2"]), N_CELLS // 2)
    lab_idx = pd.Categorical(labels).codes
    bat_idx = pd.Categorical(batch).codes
    centers = rng.normal(size=(3, 8)) * 6
    shifts = rng.normal(size=(2, 8)) * 6
    good = centers[lab_idx] + rng.normal(size=(N_CELLS, 8))
    confounded = shifts[bat_idx] + rng.normal(size=(N_CELLS, 8))
    return good, confounded, labels, batch


@pytest.fixture(scope="module")
def integration_results():
    good, confounded, labels, batch = _layouts()
    modality = np.where(np.arange(N_CELLS) % 3 == 0, "rna", "rna+atac")
    res_good = integration_scores(good, labels, batch, modality=modality)
    res_bad = integration_scores(confounded, pd.Series(labels), batch)
    return res_good, res_bad


def test_integration_orderings(integration_results):
    good, bad = integration_results
    for res in (good, bad):
        for key in ("bio", "batch", "total"):
            assert 0.0 <= res[key] <= 1.0
        assert res["total"] == pytest.approx(0.4 * res["batch"] + 0.6 * res["bio"])
        bio = [res[k] for k in ("silhouette_label", "isolated_labels", "nmi", "ari", "clisi")]
        assert res["bio"] == pytest.approx(np.mean(bio))
        batch = [res[k] for k in ("silhouette_batch", "ilisi", "graph_connectivity")]
        assert res["batch"] == pytest.approx(np.mean(batch))
        assert all(isinstance(v, float) for v in res.values())
    assert good["bio"] > bad["bio"] + 0.3
    assert good["batch"] > bad["batch"] + 0.3
    assert good["total"] > bad["total"]
    for key in ("silhouette_label", "nmi", "ari", "clisi", "silhouette_batch", "ilisi"):
        assert good[key] > bad[key], key
    assert "kbet" not in good and "pcr_comparison" not in good


def test_integration_modality_asw(integration_results):
    good, bad = integration_results
    assert "modality_asw" in good
    assert "modality_asw" not in bad
    # modality groups are randomly interleaved with the clusters -> well mixed
    assert 0.8 < good["modality_asw"] <= 1.0


def test_integration_modality_asw_detects_separation(integration_results):
    good, _, labels, batch = _layouts()
    modality = np.where(np.arange(N_CELLS) % 3 == 0, "rna", "rna+atac")  # as in the fixture
    shifted = good + (modality == "rna")[:, None] * 4.0
    res = integration_scores(shifted, labels, batch, modality=modality)
    assert res["modality_asw"] < integration_results[0]["modality_asw"] - 0.2


def test_silhouette_batch_matches_scib_metrics():
    import scib_metrics

    rng = np.random.default_rng(8)
    x = rng.normal(size=(60, 4)).astype(np.float32)
    lab = np.repeat([0, 1, 2], 20)
    bat = np.tile([0, 1], 30)
    x[bat == 1] += 0.8
    ours = _silhouette_batch(x.astype(np.float64), lab, bat)
    assert ours == pytest.approx(float(scib_metrics.silhouette_batch(x, lab, bat)), abs=1e-5)
    # a label present in only one batch is skipped, as in scib-metrics
    bat_conf = np.where(lab == 0, 0, bat)
    ours = _silhouette_batch(x.astype(np.float64), lab, bat_conf)
    assert ours == pytest.approx(float(scib_metrics.silhouette_batch(x, lab, bat_conf)), abs=1e-5)
    assert np.isnan(_silhouette_batch(x.astype(np.float64), lab, lab))


def test_integration_missing_labels_are_dropped(integration_results):
    good, _, labels, batch = _layouts()
    lab = pd.Series(labels, dtype=object)
    lab.iloc[::10] = np.nan
    res = integration_scores(good, lab, batch)
    keep = lab.notna().to_numpy()
    assert res["silhouette_label"] == pytest.approx(silhouette_label(good[keep], labels[keep]))
    assert res["silhouette_label"] == pytest.approx(silhouette_label(good, lab))
    # iLISI uses all cells: identical to the fully labelled run
    assert res["ilisi"] == pytest.approx(integration_results[0]["ilisi"])
    assert np.isfinite(res["total"])


def test_integration_single_batch():
    good, _, labels, _ = _layouts()
    with pytest.warns(UserWarning, match="only one batch"):
        res = integration_scores(good, labels, np.zeros(N_CELLS))
    for key in ("silhouette_batch", "ilisi", "graph_connectivity", "batch"):
        assert np.isnan(res[key])
    assert res["total"] == res["bio"]
    assert res["bio"] > 0.8


def test_integration_pcr_and_inputs_unchanged():
    good, confounded, labels, batch = _layouts()
    emb = good.copy()
    lab = pd.Series(labels, dtype="category")
    res = integration_scores(emb, lab, batch, embedding_pre=confounded)
    np.testing.assert_array_equal(emb, good)
    assert list(lab) == list(labels)
    # batch explains much of the variance before integration and almost none after
    assert 0.8 < res["pcr_comparison"] <= 1.0
    batch_keys = ("silhouette_batch", "ilisi", "graph_connectivity", "pcr_comparison")
    assert res["batch"] == pytest.approx(np.mean([res[k] for k in batch_keys]))


def test_integration_validation():
    good, _, labels, batch = _layouts()
    bad = good.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        integration_scores(bad, labels, batch)
    with pytest.raises(ValueError, match="length"):
        integration_scores(good, labels[:-1], batch)
    with pytest.raises(ValueError, match="length"):
        integration_scores(good, labels, batch, modality=batch[:10])
    bat_nan = pd.Series(batch, dtype=object)
    bat_nan.iloc[0] = None
    with pytest.raises(ValueError, match="missing"):
        integration_scores(good, labels, bat_nan)
    with pytest.raises(ValueError, match="two distinct"):
        integration_scores(good, np.full(N_CELLS, "T"), batch)
    with pytest.raises(ValueError, match="clustering"):
        integration_scores(good, labels, batch, clustering="louvain")
    with pytest.raises(ValueError, match="embedding_pre"):
        integration_scores(good, labels, batch, embedding_pre=good[:10])
    with pytest.raises(ValueError, match="2-D"):
        integration_scores(good[:, 0], labels, batch)
    with pytest.raises(ValueError, match="two distinct"):
        silhouette_label(good, np.full(N_CELLS, "T"))
