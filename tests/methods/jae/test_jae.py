"""JAE: latent slices, semi-supervision, batch uniformity, cell cycle, fitted inputs, query."""

import warnings

import mudata as md
import numpy as np
import pandas as pd
import pytest
import torch

import mosaicvi as mv
from mosaicvi.model import JAE

QUIET = {"enable_progress_bar": False}


def _query_only(mdata, modality):
    single = md.MuData({modality: mdata[modality].copy()})
    single.obs["batch"] = mdata.obs.loc[single.obs_names, "batch"].to_numpy()
    return single


@pytest.fixture(scope="module")
def simulated():
    mdata = mv.data.simulate(n_cells=300, n_genes=80, n_proteins=12, n_batches=3, seed=2)
    mdata.obs["phase_s"] = np.random.default_rng(0).normal(size=mdata.n_obs)
    mdata.obs["phase_g2m"] = np.random.default_rng(1).normal(size=mdata.n_obs)
    JAE.setup_mudata(
        mdata, batch_key="batch", labels_key="cell_type", cell_cycle_keys=["phase_s", "phase_g2m"]
    )
    model = JAE(mdata, n_components=20, n_hidden=64)
    model.train(max_epochs=40, batch_size=64, **QUIET)
    return mdata, model


@pytest.fixture(scope="module")
def bmmc_cite(shared_data_file):
    """Real CITE-seq, donor s1d2's labels hidden: trained semi-supervised."""
    mdata = md.read_h5mu(shared_data_file("neurips2021_bmmc_cite_600.h5mu"))
    held_out = (mdata.obs["batch"] == "s1d2").to_numpy()
    mdata.obs["label_s1d1"] = mdata.obs["cell_type"].astype(object).where(~held_out, np.nan)
    JAE.setup_mudata(mdata, batch_key="batch", labels_key="label_s1d1")
    model = JAE(mdata)
    model.train(max_epochs=150, **QUIET)
    return mdata, model, held_out


def test_latent_slices_have_the_documented_sizes(simulated):
    mdata, model = simulated
    n_types = mdata.obs["cell_type"].nunique()
    n_batches = mdata.obs["batch"].nunique()
    sizes = {name: s.stop - s.start for name, s in model.latent_slices.items()}
    assert sizes == {"cell_type": n_types, "batch": n_batches, "cell_cycle": 2, "free": 5}
    assert model.get_latent_representation().shape == (mdata.n_obs, n_types + n_batches + 7)
    assert model.cell_type_names == sorted(mdata.obs["cell_type"].astype(str).unique())
    for name, size in sizes.items():
        assert model.get_latent_representation(latent_slice=name).shape == (mdata.n_obs, size)


def test_loss_is_the_weighted_sum_of_the_logged_terms(simulated):
    mdata, model = simulated
    h = model.history
    recon = sum(h[f"reconstruction_loss_{m}_train"].iloc[-1, 0] for m in ("rna", "adt"))
    expected = (
        0.7 * recon
        + 0.2 * h["cell_type_loss_train"].iloc[-1, 0]
        + 0.05 * h["batch_loss_train"].iloc[-1, 0]
        + 0.05 * h["cell_cycle_loss_train"].iloc[-1, 0]
    )
    # epoch means of per-batch means: equal up to unequal last minibatch weights
    assert h["train_loss"].iloc[-1, 0] == pytest.approx(expected, rel=0.05)
    assert h["train_loss"].iloc[-1, 0] < h["train_loss"].iloc[0, 0]


def test_given_cell_cycle_scores_are_used_and_not_written(simulated):
    mdata, model = simulated
    scores = model.cell_cycle_scores()
    np.testing.assert_allclose(scores["S_score"], mdata.obs["phase_s"], rtol=1e-6)
    np.testing.assert_allclose(scores["G2M_score"], mdata.obs["phase_g2m"], rtol=1e-6)
    assert "S_score" not in mdata.obs and "_mosaicvi_labels" not in mdata.obs


def test_unlabelled_cells_and_no_labels_are_accepted():
    mdata = mv.data.simulate(n_cells=200, n_genes=60, n_proteins=10, n_batches=2, seed=3)
    labels = mdata.obs["cell_type"].astype(object).copy()
    labels.iloc[::3] = np.nan
    labels.iloc[1::3] = "Unknown"
    mdata.obs["partial"] = labels
    with pytest.warns(UserWarning, match="S-phase"):  # simulated genes: no cell-cycle genes
        JAE.setup_mudata(mdata, batch_key="batch", labels_key="partial")
    model = JAE(mdata, n_components=10, n_hidden=32)
    assert np.isnan(model.cell_cycle_scores().to_numpy()).all()
    assert "Unknown" not in model.cell_type_names
    model.train(max_epochs=3, **QUIET)
    assert np.isfinite(model.history["cell_type_loss_train"].to_numpy(dtype=float)).all()
    assert set(model.predict()) <= set(model.cell_type_names)

    JAE.setup_mudata(mdata, batch_key="batch")
    unlabelled = JAE(mdata, n_components=10, n_hidden=32)
    assert unlabelled.latent_slices["cell_type"] == slice(0, 0)
    unlabelled.train(max_epochs=2, **QUIET)
    with pytest.raises(ValueError, match="without labels"):
        unlabelled.predict()


def test_bad_setup_arguments_are_explained():
    mdata = mv.data.simulate(n_cells=120, n_genes=40, n_proteins=8, seed=4)
    mdata["rna"].obs["kind"] = "x"
    with pytest.raises(KeyError, match="pull_obs"):
        JAE.setup_mudata(mdata, labels_key="kind")
    with pytest.raises(ValueError, match="two columns"):
        JAE.setup_mudata(mdata, cell_cycle_keys=["only_one"])
    with pytest.raises(KeyError, match="not a column"):
        JAE.setup_mudata(mdata, cell_cycle_keys=["a", "b"])
    with pytest.raises(TypeError, match="unexpected"):
        JAE.setup_mudata(mdata, label_key="cell_type")
    JAE.setup_mudata(mdata)
    with pytest.raises(KeyError, match="unknown modalities"):
        JAE(mdata, input_transforms={"protein": "clr"})
    with pytest.raises(ValueError, match="use one of"):
        JAE(mdata, input_transforms={"adt": "pca"})


def test_cell_cycle_scores_are_computed_from_rna_when_not_given(shared_data_file):
    mdata = md.read_h5mu(shared_data_file("neurips2021_bmmc_cite_600.h5mu"))
    JAE.setup_mudata(mdata, batch_key="batch")
    model = JAE(mdata, n_components=20)
    scores = model.cell_cycle_scores()
    assert np.isfinite(scores.to_numpy()).all() and (scores.std() > 0.05).all()
    # the same as scoring the RNA counts directly with the packaged gene lists
    from mosaicvi.data import score_cell_cycle

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s_score, g2m_score, _ = score_cell_cycle(mdata["rna"].X, mdata["rna"].var_names)
    np.testing.assert_allclose(scores["S_score"], s_score, atol=1e-5)
    np.testing.assert_allclose(scores["G2M_score"], g2m_score, atol=1e-5)


def test_cell_cycle_of_an_atlas_is_scored_on_a_bounded_sample(shared_data_file, monkeypatch):
    # above MAX_FIT_CELLS only a seeded sample is scored, the rest has no phase target
    from mosaicvi.data import score_cell_cycle
    from mosaicvi.methods.jae import _transforms

    monkeypatch.setattr(_transforms, "MAX_FIT_CELLS", 256)
    mdata = md.read_h5mu(shared_data_file("neurips2021_bmmc_cite_600.h5mu"))
    JAE.setup_mudata(mdata, batch_key="batch")
    scores = JAE(mdata, n_components=20).cell_cycle_scores()
    scored = scores["S_score"].notna().to_numpy()
    assert scored.sum() == 256
    sample = _transforms.fit_cells(np.arange(mdata.n_obs))
    np.testing.assert_array_equal(np.flatnonzero(scored), sample)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s_score, _, _ = score_cell_cycle(mdata["rna"].X[sample], mdata["rna"].var_names)
    np.testing.assert_allclose(scores["S_score"].to_numpy()[scored], s_score, atol=1e-5)


def test_cell_type_slice_predicts_held_out_labels(bmmc_cite):
    mdata, model, held_out = bmmc_cite
    truth = mdata.obs["cell_type"].astype(str).to_numpy()
    majority = pd.Series(truth[~held_out]).value_counts().index[0]
    baseline = (truth[held_out] == majority).mean()
    accuracy = (model.predict()[held_out] == truth[held_out]).mean()
    from_rna = (model.predict(modality="rna")[held_out] == truth[held_out]).mean()
    print(f"\nJAE held-out acc {accuracy:.3f}, RNA only {from_rna:.3f}, majority {baseline:.3f}")
    # measured 0.61 (joint) and 0.47 (RNA only) vs majority 0.16
    assert accuracy > baseline + 0.3
    assert from_rna > baseline + 0.2
    probabilities = model.predict(soft=True)
    assert list(probabilities.columns) == model.cell_type_names
    np.testing.assert_allclose(probabilities.sum(1), 1.0, rtol=1e-5)


def test_batch_logits_are_near_uniform_and_phase_slice_follows_scores(bmmc_cite):
    mdata, model, _ = bmmc_cite
    logits = torch.as_tensor(model.get_latent_representation(latent_slice="batch"))
    probabilities = torch.softmax(logits, dim=-1).numpy()
    deviation = np.abs(probabilities - 0.5).mean()
    scores = model.cell_cycle_scores().to_numpy()
    phase = model.get_latent_representation(latent_slice="cell_cycle")
    r = [np.corrcoef(scores[:, j], phase[:, j])[0, 1] for j in range(2)]
    print(f"\nJAE batch softmax mean |p - 1/2| {deviation:.3f}; phase slice r (S, G2M) {r}")
    assert deviation < 0.06  # measured 0.03
    assert min(r) > 0.4  # measured 0.65


def test_imputed_protein_correlates_with_held_out_truth(bmmc_cite):
    mdata, model, held_out = bmmc_cite
    predicted = model.get_normalized_expression(modality="adt", from_modalities="rna")
    assert np.allclose(predicted.sum(1), 1.0, atol=1e-4)
    observed = np.asarray(mdata["adt"].X)
    r = mv.metrics.per_feature_correlation(predicted.to_numpy()[held_out], observed[held_out])
    print(f"\nJAE protein from RNA, held-out donor: per-protein r {np.nanmean(r):.3f}")
    assert np.nanmean(r) > 0.4  # measured 0.59
    with pytest.raises(ValueError, match="deterministic"):
        model.get_normalized_expression(modality="adt", n_samples=3)


def test_query_reuses_the_reference_input_transforms(bmmc_cite):
    mdata, model, held_out = bmmc_cite
    query = mdata[held_out].copy()
    rna_only = _query_only(query, "rna")
    reference_state = {k: v.clone() for k, v in model.module.state_dict().items()}

    query_model = JAE.load_query_data(rna_only, model)
    x = torch.as_tensor(query_model.adata.X[:50].toarray())
    with torch.no_grad():
        np.testing.assert_array_equal(
            query_model.module.features(x).numpy(), model.module.features(x).numpy()
        )
    query_model.train(**QUIET)  # published recipe: 2 epochs, reconstruction only
    assert len(query_model.history["train_loss"]) == 2
    assert query_model.history["cell_type_loss_train"].notna().all().all()
    for name, buffer in query_model.module.named_buffers():
        assert torch.equal(buffer.cpu(), reference_state[name]), name  # transforms unchanged
    for name, value in model.module.state_dict().items():
        assert torch.equal(value, reference_state[name]), name  # the reference is untouched

    truth = query.obs["cell_type"].astype(str).to_numpy()
    majority = mdata.obs["cell_type"][~held_out].value_counts().index[0]
    accuracy = (query_model.predict() == truth).mean()
    print(f"\nJAE RNA-only query (2 epochs fine-tuning): label accuracy {accuracy:.3f}")
    assert accuracy > (truth == majority).mean() + 0.15


def test_save_load_and_frozen_query(bmmc_cite, tmp_path):
    mdata, model, held_out = bmmc_cite
    model.save(tmp_path / "jae", overwrite=True)
    loaded = JAE.load(str(tmp_path / "jae"), mdata)
    np.testing.assert_allclose(
        loaded.get_latent_representation(), model.get_latent_representation(), atol=1e-6
    )
    frozen = JAE.load_query_data(mdata[held_out].copy(), str(tmp_path / "jae"), unfrozen=False)
    with pytest.raises(ValueError, match="frozen"):
        frozen.train(**QUIET)
    np.testing.assert_allclose(
        frozen.get_latent_representation(),
        model.get_latent_representation(indices=np.flatnonzero(held_out)),
        atol=1e-5,
    )


@pytest.mark.parametrize("sparse_input", [True, False])
def test_input_transform_reads_its_cells_and_features_chunk_by_chunk(sparse_input):
    # fitting on (rows, columns) of the full matrix equals fitting on the copied selection
    import scipy.sparse as sp

    from mosaicvi.data import _normalise
    from mosaicvi.methods.jae import _transforms as _pipeline

    rng = np.random.default_rng(0)
    counts = sp.random(120, 30, density=0.3, format="csr", random_state=1, dtype=np.float32)
    counts.data = np.ceil(counts.data * 20)
    counts = counts if sparse_input else counts.toarray()
    rows, columns = np.sort(rng.choice(120, 70, replace=False)), slice(5, 25)
    selected = counts[rows][:, columns]

    chunked = _normalise.log_normalise(counts, rows, columns, chunk_size=8)
    whole = _normalise.log_normalise(selected, chunk_size=len(rows))
    assert sp.issparse(chunked) == sparse_input
    dense = chunked.toarray() if sparse_input else chunked
    np.testing.assert_array_equal(dense, whole.toarray() if sparse_input else whole)
    if sparse_input:  # any sparse format is read row-wise
        csc = _normalise.log_normalise(sp.csc_matrix(counts), rows, columns, chunk_size=8)
        np.testing.assert_array_equal(csc.toarray(), dense)

    for kind in ("svd", "clr", "log1p"):
        on_selection = _pipeline.ModalityTransform(20, kind, n_components=6).fit(selected)
        in_place = _pipeline.ModalityTransform(20, kind, n_components=6).fit(
            counts, rows=rows, columns=columns
        )
        for name, buffer in on_selection.named_buffers():
            torch.testing.assert_close(dict(in_place.named_buffers())[name], buffer, msg=name)


def test_input_transforms_of_an_atlas_are_fitted_on_a_bounded_sample_of_blocks(monkeypatch):
    # above MAX_FIT_CELLS the fit reads a seeded sample of neighbouring blocks, not every cell
    import scipy.sparse as sp

    from mosaicvi.methods.jae import _transforms

    rows = np.arange(10, 1010)
    sample = _transforms.fit_cells(rows, limit=256, seed=3)
    assert len(sample) == 256 and np.all(np.isin(sample, rows))
    assert np.all(np.diff(sample) > 0)  # sorted, unique
    assert len(np.flatnonzero(np.diff(sample) != 1)) < 256 // 64  # a few runs of 64
    np.testing.assert_array_equal(sample, _transforms.fit_cells(rows, limit=256, seed=3))
    assert not np.array_equal(sample, _transforms.fit_cells(rows, limit=256, seed=4))
    np.testing.assert_array_equal(_transforms.fit_cells(rows, limit=5000), rows)

    counts = sp.random(1000, 30, density=0.3, format="csr", random_state=1, dtype=np.float32)
    counts.data = np.ceil(counts.data * 20)
    monkeypatch.setattr(_transforms, "MAX_FIT_CELLS", 256)
    fitted = _transforms.ModalityTransform(30, "svd", n_components=6).fit(counts)
    on_sample = _transforms.ModalityTransform(30, "svd", n_components=6).fit(
        counts[_transforms.fit_cells(np.arange(1000), limit=256)]
    )
    for name, buffer in on_sample.named_buffers():
        torch.testing.assert_close(dict(fitted.named_buffers())[name], buffer, msg=name)
