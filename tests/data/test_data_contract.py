"""setup_mudata: mosaic assembly, likelihood defaults, bad input, user data untouched."""

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import mosaicvi as mv
from mosaicvi.model import MultiVAE


@pytest.fixture
def mosaic():
    return mv.data.simulate(
        n_cells=240, n_genes=60, n_proteins=12, n_batches=3, missing={"batch_2": ["adt"]}, seed=3
    )


def _snapshot(mdata):
    return {
        "obs": mdata.obs.copy(),
        "uns": dict(mdata.uns),
        "obsm": set(mdata.obsm.keys()),
        "mods": {
            k: (
                m.X.copy(),
                m.obs.copy(),
                m.var.copy(),
                dict(m.uns),
                set(m.obsm.keys()),
                set(m.layers.keys()),
            )
            for k, m in mdata.mod.items()
        },
    }


def _assert_same(before, after):
    pd.testing.assert_frame_equal(before["obs"], after["obs"])
    assert before["uns"].keys() == after["uns"].keys()
    assert before["obsm"] == after["obsm"]
    for key, (x, obs, var, uns, obsm, layers) in before["mods"].items():
        x2, obs2, var2, uns2, obsm2, layers2 = after["mods"][key]
        assert (sp.csr_matrix(x) != sp.csr_matrix(x2)).nnz == 0
        pd.testing.assert_frame_equal(obs, obs2)
        pd.testing.assert_frame_equal(var, var2)
        assert uns.keys() == uns2.keys()
        assert obsm == obsm2 and layers == layers2


def test_mosaic_assembly_observed_mask_and_sparsity(mosaic):
    MultiVAE.setup_mudata(mosaic, modalities=["rna", "adt"], batch_key="batch")
    model = MultiVAE(mosaic)
    assembled = model.adata
    mask = assembled.obsm["_mosaicvi_observed"]
    expected_adt = mosaic.obs_names.isin(mosaic["adt"].obs_names)
    np.testing.assert_array_equal(mask[:, 1].astype(bool), expected_adt)
    assert mask[:, 0].all()
    assert sp.issparse(assembled.X)
    # a cell's ADT block matches its counts; absent cells have empty rows
    adt_block = assembled.X[:, 60:].toarray()
    first = mosaic["adt"].obs_names[0]
    row = mosaic.obs_names.get_loc(first)
    np.testing.assert_array_equal(adt_block[row], mosaic["adt"].X[0])
    assert adt_block[~expected_adt].sum() == 0
    assert model.summary_stats.n_batch == 3


def test_likelihood_defaults_are_visible(mosaic):
    mosaic = mosaic.copy()
    mosaic.mod["custom"] = ad.AnnData(
        np.random.default_rng(0).normal(size=(mosaic.n_obs, 4)).astype(np.float32),
        obs=pd.DataFrame(index=mosaic.obs_names),
    )
    mosaic.update()
    MultiVAE.setup_mudata(mosaic, modalities=["rna", "adt", "custom"], likelihoods={"adt": "zinb"})
    model = MultiVAE(mosaic)
    chosen = {s.name: s.likelihood for s in model.modality_specs}
    assert chosen == {"rna": "nb", "adt": "zinb", "custom": "normal"}
    assert "zinb" in model.summary_string


def test_user_mudata_unchanged_by_setup_and_training(mosaic):
    before = _snapshot(mosaic)
    MultiVAE.setup_mudata(mosaic, modalities=["rna", "adt"], batch_key="batch")
    model = MultiVAE(mosaic, n_hidden=16)
    model.train(max_epochs=1, batch_size=128, enable_progress_bar=False)
    model.get_latent_representation()
    model.get_normalized_expression(modality="adt")
    _assert_same(before, _snapshot(mosaic))


def test_unused_categories_do_not_count_as_batches(mosaic):
    mosaic = mosaic.copy()
    mosaic.obs["batch"] = pd.Categorical(
        mosaic.obs["batch"].astype(str), categories=["batch_0", "batch_1", "batch_2", "ghost"]
    )
    MultiVAE.setup_mudata(mosaic, modalities=["rna", "adt"], batch_key="batch")
    assert MultiVAE(mosaic).summary_stats.n_batch == 3


# ---------------------------------------------------------------- bad input, one test each


def test_error_non_integer_counts(mosaic):
    mosaic = mosaic.copy()
    mosaic["adt"].X = mosaic["adt"].X + 0.5
    with pytest.raises(ValueError, match="non-integer values.*raw counts"):
        MultiVAE.setup_mudata(mosaic, modalities=["rna", "adt"])


def test_error_nan_or_inf(mosaic):
    mosaic = mosaic.copy()
    x = mosaic["adt"].X.copy()
    x[0, 0] = np.nan
    x[1, 1] = np.inf
    mosaic["adt"].X = x
    with pytest.raises(ValueError, match="2 NaN or infinite"):
        MultiVAE.setup_mudata(mosaic, modalities=["rna", "adt"], likelihoods={"adt": "normal"})


def test_error_missing_modality(mosaic):
    with pytest.raises(KeyError, match=r"\['protein'\] are not in the MuData"):
        MultiVAE.setup_mudata(mosaic, modalities={"rna": "rna", "adt": "protein"})


def test_error_missing_layer(mosaic):
    with pytest.raises(KeyError, match="Layer 'raw' is not in"):
        MultiVAE.setup_mudata(mosaic, modalities=["rna", "adt"], layers={"rna": "raw"})


def test_error_missing_batch_key(mosaic):
    with pytest.raises(KeyError, match="'donor' is not a column of mdata.obs"):
        MultiVAE.setup_mudata(mosaic, modalities=["rna", "adt"], batch_key="donor")


def test_error_batch_key_in_modality_obs(mosaic):
    mosaic = mosaic.copy()
    mosaic["rna"].obs["donor"] = "d1"
    with pytest.raises(KeyError, match=r"in the obs of modality 'rna'.*pull_obs"):
        MultiVAE.setup_mudata(mosaic, modalities=["rna", "adt"], batch_key="donor")


def test_error_modality_observed_in_no_cell(mosaic):
    empty = ad.AnnData(np.zeros((0, 5), dtype=np.float32))
    mdata = md.MuData({"rna": mosaic["rna"].copy(), "adt": empty})
    with pytest.raises(ValueError, match=r"\['adt'\] are observed in no cell"):
        MultiVAE.setup_mudata(mdata, modalities=["rna", "adt"])


def test_error_fewer_than_two_modalities(mosaic):
    with pytest.raises(ValueError, match="At least two modalities"):
        MultiVAE.setup_mudata(mosaic, modalities=["rna"])


def test_error_empty_cells(mosaic):
    mosaic = mosaic.copy()
    rna = mosaic["rna"].X.tolil()
    rna[0, :] = 0
    mosaic["rna"].X = rna.tocsr()
    first = mosaic["rna"].obs_names[0]
    adt_rows = mosaic["adt"].obs_names == first
    mosaic["adt"].X[adt_rows] = 0
    with pytest.raises(ValueError, match="1 cells have zero counts in every observed modality"):
        MultiVAE.setup_mudata(mosaic, modalities=["rna", "adt"])


def test_error_negative_values_under_counts(mosaic):
    mosaic = mosaic.copy()
    mosaic["adt"].X[0, 0] = -1
    with pytest.raises(ValueError, match="negative values"):
        MultiVAE.setup_mudata(mosaic, modalities=["rna", "adt"])


def test_error_unknown_likelihood(mosaic):
    with pytest.raises(ValueError, match="Unknown likelihood 'gaussian'"):
        MultiVAE.setup_mudata(mosaic, modalities=["rna", "adt"], likelihoods={"adt": "gaussian"})


def test_error_anndata_instead_of_mudata(mosaic):
    with pytest.raises(TypeError, match="works on MuData"):
        MultiVAE.setup_anndata(mosaic["rna"])


def test_error_unregistered_mudata(mosaic):
    MultiVAE.setup_mudata(mosaic, modalities=["rna", "adt"], batch_key="batch")
    MultiVAE(mosaic.copy())  # the same content is the same registration
    with pytest.raises(ValueError, match="has not been registered"):
        MultiVAE(mosaic[: mosaic.n_obs // 2].copy())


def test_assembled_matrix_is_stacked_chunk_by_chunk_exactly():
    from mosaicvi.data._mosaic import _count_in_chunks, _hstack_rows

    blocks = [
        sp.random(53, n, density=d, format="csr", random_state=i, dtype=np.float32)
        for i, (n, d) in enumerate([(40, 0.2), (7, 1.0), (30, 0.0)])
    ]
    blocks[0][5] = 0  # a cell without counts in the first block
    blocks[0].eliminate_zeros()
    stacked = _hstack_rows(blocks, chunk_rows=6)
    expected = sp.hstack(blocks, format="csr", dtype=np.float32)
    assert stacked.shape == expected.shape and stacked.dtype == np.float32
    np.testing.assert_array_equal(stacked.indptr, expected.indptr)
    np.testing.assert_array_equal(stacked.toarray(), expected.toarray())
    # validation counts in chunks too, with the same totals
    values = np.array([0.0, 1.5, -1.0, np.nan, 3.0] * 5)
    assert _count_in_chunks(values, lambda v: v < 0, chunk_size=3) == 5
    assert _count_in_chunks(values, lambda v: ~np.isfinite(v), chunk_size=4) == 5
