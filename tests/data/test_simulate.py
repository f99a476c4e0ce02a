import mudata
import numpy as np
import pandas as pd
import pytest
from scipy import sparse
from sklearn.decomposition import PCA
from sklearn.model_selection import cross_val_score
from sklearn.neighbors import KNeighborsClassifier

from mosaicvi.data._simulate import simulate

ALL_MODS = ("rna", "adt", "atac")


@pytest.fixture(scope="module")
def mdata_all():
    return simulate(n_cells=900, modalities=ALL_MODS, seed=1)


def _dense(x):
    return x.toarray() if sparse.issparse(x) else np.asarray(x)


def _knn_accuracy(counts, labels, n_pcs=20):
    """5-fold kNN accuracy on the PCA of log-normalised counts."""
    x = _dense(counts).astype(np.float64)
    x = np.log1p(x / np.maximum(x.sum(1, keepdims=True), 1.0) * 1e4)
    pcs = PCA(n_components=min(n_pcs, x.shape[1] - 1), random_state=0).fit_transform(x)
    knn = KNeighborsClassifier(n_neighbors=15)
    return cross_val_score(knn, pcs, np.asarray(labels), cv=5).mean()


def _majority_rate(labels):
    return pd.Series(np.asarray(labels)).value_counts(normalize=True).iloc[0]


# ----------------------------------------------------------------------------------------------
# structure
# ----------------------------------------------------------------------------------------------


def test_default_call_structure():
    mdata = simulate()
    assert isinstance(mdata, mudata.MuData)
    assert list(mdata.mod) == ["rna", "adt"]
    assert mdata.n_obs == 1200
    assert mdata["rna"].shape == (1200, 300)
    assert mdata["adt"].shape == (1200, 30)
    assert list(mdata.obs_names) == [f"cell_{i}" for i in range(1200)]
    assert mdata.obs["batch"].cat.categories.tolist() == ["batch_0", "batch_1", "batch_2"]
    assert mdata.obs["cell_type"].cat.categories.tolist() == [f"type_{k}" for k in range(6)]


def test_shapes_names_and_dtypes(mdata_all):
    sizes = {"rna": 300, "adt": 30, "atac": 500}
    prefixes = {"rna": "gene", "adt": "protein", "atac": "peak"}
    assert list(mdata_all.mod) == list(ALL_MODS)
    assert mdata_all.n_obs == 900
    for mod in ALL_MODS:
        adata = mdata_all[mod]
        assert adata.shape == (900, sizes[mod])
        assert list(adata.var_names) == [f"{prefixes[mod]}_{j}" for j in range(sizes[mod])]
        assert list(adata.obs_names) == [f"cell_{i}" for i in range(900)]
        assert adata.X.dtype == np.float32
        assert adata.layers["counts"].dtype == np.float32
        if mod == "adt":
            assert isinstance(adata.X, np.ndarray)
            assert isinstance(adata.layers["counts"], np.ndarray)
        else:
            assert sparse.isspmatrix_csr(adata.X) or isinstance(adata.X, sparse.csr_array)
            assert sparse.issparse(adata.layers["counts"])
            assert adata.layers["counts"].format == "csr"
        x = _dense(adata.X)
        np.testing.assert_array_equal(x, _dense(adata.layers["counts"]))
        # .X and the counts layer must not be the same object
        assert adata.layers["counts"] is not adata.X
        assert np.all(x >= 0)
        np.testing.assert_array_equal(x, np.round(x))
        assert x.sum() > 0


def test_obs_labels_and_true_latent(mdata_all):
    obs = mdata_all.obs
    assert list(obs.index) == [f"cell_{i}" for i in range(900)]
    for col in ("batch", "cell_type"):
        assert isinstance(obs[col].dtype, pd.CategoricalDtype)
        assert obs[col].notna().all()
    # all types / batches present, cell-type proportions unequal
    counts = obs["cell_type"].value_counts()
    assert (counts > 0).all() and len(counts) == 6
    assert counts.max() > 1.5 * counts.min()
    assert obs["batch"].nunique() == 3
    # cells are ordered by batch
    codes = obs["batch"].cat.codes.to_numpy()
    assert np.all(np.diff(codes) >= 0)
    z = mdata_all.obsm["X_true"]
    assert z.shape == (900, 8)
    assert np.isfinite(z).all()
    # the true latent separates cell types (between-type variance dominates)
    means = pd.DataFrame(z).groupby(obs["cell_type"].to_numpy()).mean()
    within = pd.DataFrame(z).groupby(obs["cell_type"].to_numpy()).var().mean().mean()
    assert means.var().mean() > 2 * within


def test_custom_sizes_and_modality_order():
    mdata = simulate(
        n_cells=50,
        n_cell_types=3,
        n_batches=2,
        modalities=["atac", "rna"],
        n_genes=20,
        n_peaks=40,
        n_latent=4,
    )
    assert list(mdata.mod) == ["atac", "rna"]
    assert mdata["atac"].shape == (50, 40)
    assert mdata["rna"].shape == (50, 20)
    assert mdata.obsm["X_true"].shape == (50, 4)
    assert mdata.obs["batch"].cat.categories.tolist() == ["batch_0", "batch_1"]


def test_single_modality_as_string():
    mdata = simulate(n_cells=40, modalities="adt")
    assert list(mdata.mod) == ["adt"]


def test_minimal_cells_every_type_present():
    mdata = simulate(n_cells=6, n_cell_types=6, n_batches=3)
    assert mdata.obs["cell_type"].value_counts().min() == 1
    assert mdata.obs["batch"].value_counts().min() >= 1


# ----------------------------------------------------------------------------------------------
# count properties
# ----------------------------------------------------------------------------------------------


def test_atac_is_sparse_and_low_count(mdata_all):
    x = mdata_all["atac"].X
    density = x.nnz / (x.shape[0] * x.shape[1])
    assert 0.01 < density < 0.25
    values = x.data
    assert np.all(values > 0)
    # non-zero entries are mostly 1 or 2
    assert np.mean(values <= 2) > 0.9
    # every cell has some accessible peaks
    assert np.all(np.asarray(x.sum(axis=1)).ravel() > 0)


def test_rna_overdispersed(mdata_all):
    x = _dense(mdata_all["rna"].X)
    types = mdata_all.obs["cell_type"].to_numpy()
    batches = mdata_all.obs["batch"].to_numpy()
    # within a homogeneous group, variance clearly exceeds the mean for expressed genes (NB)
    group = (types == "type_0") & (batches == "batch_0")
    sub = x[group]
    sub = sub / sub.sum(1, keepdims=True) * np.median(sub.sum(1))
    mean, var = sub.mean(0), sub.var(0)
    expressed = mean > 5
    assert expressed.sum() > 10
    assert np.median(var[expressed] / mean[expressed]) > 1.5


def test_protein_background_and_dynamic_range(mdata_all):
    x = mdata_all["adt"].X
    # ambient background: almost every cell has non-zero counts for every protein
    assert np.mean(x.min(axis=1) > 0) > 0.9
    # foreground: high dynamic range across cells for at least some proteins
    ratio = np.percentile(x, 99, axis=0) / np.maximum(np.percentile(x, 10, axis=0), 1.0)
    assert np.sum(ratio > 10) >= 5


def test_cell_types_separable(mdata_all):
    labels = mdata_all.obs["cell_type"]
    chance = _majority_rate(labels)
    for mod in ALL_MODS:
        acc = _knn_accuracy(mdata_all[mod].X, labels)
        assert acc > max(0.8, chance + 0.3), (mod, acc, chance)


def test_batch_effects_present_and_controlled():
    with_be = simulate(n_cells=900, modalities=ALL_MODS, batch_effect=0.6, seed=3)
    without = simulate(n_cells=900, modalities=ALL_MODS, batch_effect=0.0, seed=3)
    labels = with_be.obs["batch"]
    chance = _majority_rate(labels)
    acc_rna = _knn_accuracy(with_be["rna"].X, labels)
    assert acc_rna > max(0.8, chance + 0.3)
    for mod in ("adt", "atac"):
        assert _knn_accuracy(with_be[mod].X, labels) > chance + 0.05, mod
    # without batch effects, batch is (almost) unpredictable from RNA
    acc_none = _knn_accuracy(without["rna"].X, without.obs["batch"])
    assert acc_none < _majority_rate(without.obs["batch"]) + 0.1
    assert acc_none < acc_rna - 0.3
    # same seed -> same design (labels and true latent) regardless of batch_effect
    np.testing.assert_array_equal(with_be.obsm["X_true"], without.obsm["X_true"])


def test_library_size_depends_on_batch():
    mdata = simulate(n_cells=900, batch_effect=1.0, seed=5)
    lib = np.asarray(mdata["rna"].X.sum(axis=1)).ravel()
    medians = pd.Series(np.log(lib)).groupby(mdata.obs["batch"].to_numpy()).median()
    assert medians.max() - medians.min() > 0.1


# ----------------------------------------------------------------------------------------------
# determinism
# ----------------------------------------------------------------------------------------------


def test_deterministic_given_seed():
    a = simulate(n_cells=300, modalities=ALL_MODS, seed=7)
    b = simulate(n_cells=300, modalities=ALL_MODS, seed=7)
    c = simulate(n_cells=300, modalities=ALL_MODS, seed=8)
    for mod in ALL_MODS:
        np.testing.assert_array_equal(_dense(a[mod].X), _dense(b[mod].X))
        assert not np.array_equal(_dense(a[mod].X), _dense(c[mod].X))
    pd.testing.assert_frame_equal(a.obs, b.obs)
    np.testing.assert_array_equal(a.obsm["X_true"], b.obsm["X_true"])
    assert not np.array_equal(a.obsm["X_true"], c.obsm["X_true"])


def test_modalities_use_independent_streams():
    rna_only = simulate(n_cells=300, modalities=("rna",), seed=2)
    full = simulate(n_cells=300, modalities=("atac", "adt", "rna"), seed=2)
    np.testing.assert_array_equal(_dense(rna_only["rna"].X), _dense(full["rna"].X))
    pd.testing.assert_frame_equal(rna_only.obs, full.obs)


# ----------------------------------------------------------------------------------------------
# mosaic / missing modalities
# ----------------------------------------------------------------------------------------------


def test_missing_removes_right_cells():
    full = simulate(n_cells=600, modalities=ALL_MODS, seed=4)
    missing = {"batch_0": ["adt"], "batch_2": ("rna", "atac")}
    mdata = simulate(n_cells=600, modalities=ALL_MODS, missing=missing, seed=4)

    assert mdata.n_obs == 600
    assert list(mdata.obs_names) == [f"cell_{i}" for i in range(600)]
    pd.testing.assert_frame_equal(mdata.obs, full.obs)
    np.testing.assert_array_equal(mdata.obsm["X_true"], full.obsm["X_true"])

    batch = mdata.obs["batch"].to_numpy()
    expected = {
        "rna": mdata.obs_names[batch != "batch_2"],
        "adt": mdata.obs_names[batch != "batch_0"],
        "atac": mdata.obs_names[batch != "batch_2"],
    }
    for mod, names in expected.items():
        assert list(mdata[mod].obs_names) == list(names), mod
        assert mdata[mod].n_obs < 600
        # present cells have exactly the counts of the fully paired simulation
        np.testing.assert_array_equal(_dense(mdata[mod].X), _dense(full[mod][names].X), err_msg=mod)
        np.testing.assert_array_equal(_dense(mdata[mod].layers["counts"]), _dense(mdata[mod].X))
        # global modality membership agrees with the AnnData
        np.testing.assert_array_equal(
            np.asarray(mdata.obsm[mod]).ravel(), np.isin(mdata.obs_names, names)
        )

    # every cell keeps at least one modality
    present = np.column_stack([np.asarray(mdata.obsm[m]).ravel() for m in ALL_MODS])
    assert present.any(axis=1).all()
    assert not present.all(axis=1).all()


def test_missing_accepts_single_string():
    mdata = simulate(n_cells=300, missing={"batch_1": "adt"})
    batch = mdata.obs["batch"].to_numpy()
    assert mdata["adt"].n_obs == int(np.sum(batch != "batch_1"))
    assert mdata["rna"].n_obs == 300


def test_missing_empty_mapping_is_paired():
    mdata = simulate(n_cells=200, missing={})
    assert mdata["rna"].n_obs == mdata["adt"].n_obs == 200


def test_write_read_roundtrip(tmp_path):
    mdata = simulate(n_cells=300, modalities=ALL_MODS, missing={"batch_1": ["rna"]}, seed=6)
    obs = mdata.obs.copy()
    z = pd.DataFrame(mdata.obsm["X_true"], index=mdata.obs_names)
    path = tmp_path / "sim.h5mu"
    mdata.write(path)
    back = mudata.read_h5mu(path)
    assert back.n_obs == 300
    assert set(back.obs_names) == set(obs.index)
    # labels and latent stay aligned with cell names (mudata may reorder the global obs)
    pd.testing.assert_frame_equal(back.obs.loc[obs.index], obs, check_categorical=False)
    assert isinstance(back.obs["batch"].dtype, pd.CategoricalDtype)
    np.testing.assert_allclose(
        pd.DataFrame(back.obsm["X_true"], index=back.obs_names).loc[obs.index].to_numpy(),
        z.to_numpy(),
    )
    for mod in ALL_MODS:
        assert list(back[mod].obs_names) == list(mdata[mod].obs_names)
        np.testing.assert_array_equal(_dense(back[mod].X), _dense(mdata[mod].X))
        np.testing.assert_array_equal(
            _dense(back[mod].layers["counts"]), _dense(mdata[mod].layers["counts"])
        )
    assert back["rna"].n_obs == int(np.sum(obs["batch"].to_numpy() != "batch_1"))


# ----------------------------------------------------------------------------------------------
# validation
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"modalities": ("rna", "protein")}, r"Unknown modality.*protein"),
        ({"modalities": ()}, r"at least one"),
        ({"modalities": ("rna", "rna")}, r"duplicates"),
        ({"n_cells": 3, "n_cell_types": 6}, r"n_cells.*n_cell_types"),
        ({"n_cells": 2, "n_cell_types": 2, "n_batches": 3}, r"n_cells.*n_batches"),
        ({"n_cells": 0}, r"n_cells must be >= 1"),
        ({"n_genes": 0}, r"n_genes must be >= 1"),
        ({"n_latent": 2.5}, r"n_latent must be an integer"),
        ({"batch_effect": -0.1}, r"batch_effect"),
        ({"missing": {"batch_9": ["adt"]}}, r"unknown batch 'batch_9'"),
        ({"missing": {"batch_0": ["atac"]}}, r"modality \['atac'\] which is not simulated"),
        ({"missing": {"batch_0": ["rna", "adt"]}}, r"drops every modality"),
        (
            {"missing": {"batch_0": ["adt"], "batch_1": ["adt"], "batch_2": ["adt"]}},
            r"drops modality 'adt' from every batch",
        ),
        ({"missing": ["batch_0"]}, r"missing must be a mapping"),
    ],
)
def test_invalid_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        simulate(**kwargs)
