"""TileDB-SOMA Experiments as a store: written from a MuData, read back cell block by block."""

from __future__ import annotations

import pickle
import warnings

import mudata as md
import numpy as np
import pytest
import scipy.sparse as sp

import mosaicvi as mv
from mosaicvi.data import assemble_mosaic, build_specs
from mosaicvi.data._backed import assembled_matrix, is_out_of_core
from mosaicvi.data._constants import LIBRARY_OBSM_KEY, OBSERVED_OBSM_KEY

pytest.importorskip("tiledbsoma", reason="tiledbsoma is not installed (pip install mosaicvi[soma])")
warnings.filterwarnings("ignore", category=UserWarning)


def _mosaic(n_cells: int = 300) -> md.MuData:
    """RNA for every cell, ADT for two of three batches, the ADT cells in another order."""
    full = mv.data.simulate(n_cells=n_cells, n_genes=40, n_proteins=8, n_batches=3, seed=5)
    keep = full.obs_names[full.obs["batch"] != "batch_2"]
    mdata = md.MuData({"rna": full["rna"].copy(), "adt": full["adt"][keep[::-1]].copy()})
    for column in ("batch", "cell_type"):
        mdata.obs[column] = full.obs[column].reindex(mdata.obs_names).astype(str).to_numpy()
    mdata.obs["has_adt"] = mdata.obs_names.isin(keep)
    return mdata


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """``(MuData in memory, URI of the same MuData as a SOMA Experiment)``."""
    mdata = _mosaic()
    uri = str(tmp_path_factory.mktemp("soma") / "experiment")
    assert mv.data.write_soma(mdata, uri) == uri
    return mdata, uri


def _dense(x) -> np.ndarray:
    return x.toarray() if sp.issparse(x) else np.asarray(x)


def test_read_soma_gives_every_modality_with_its_cells_and_features(store):
    memory, uri = store
    soma = mv.data.read_soma(uri)
    assert set(soma.mod) == {"rna", "adt"}
    assert soma.n_obs == memory.n_obs
    for key in ("rna", "adt"):
        assert isinstance(soma[key].X, mv.data.SomaRows)
        assert set(soma[key].obs_names) == set(memory[key].obs_names)
        assert list(soma[key].var_names) == list(memory[key].var_names)
    assert (soma.obs["batch"] == memory.obs.loc[soma.obs_names, "batch"]).all()
    # cells keep the store's order, so a block of consecutive cells is one run in the store
    assert np.all(np.diff(soma.obs["soma_joinid"].to_numpy()) > 0)


def test_soma_rows_equal_the_in_memory_rows_in_any_order(store):
    memory, uri = store
    soma = mv.data.read_soma(uri)
    for key in ("rna", "adt"):
        rows = soma[key].X
        picked = np.array([7, 3, 3, 0, rows.shape[0] - 1])
        expected = memory[key][soma[key].obs_names[picked]].X
        np.testing.assert_array_equal(_dense(rows[picked]), _dense(expected))
        runs = rows.runs(np.array([0, 10]), np.array([4, 13]))
        expected = memory[key][soma[key].obs_names[[0, 1, 2, 3, 10, 11, 12]]].X
        np.testing.assert_array_equal(_dense(runs), _dense(expected))
        whole = rows.to_memory()
        np.testing.assert_array_equal(_dense(whole), _dense(memory[key][soma[key].obs_names].X))
        # a pickled reader (a DDP or data-loader worker) reopens the store and reads the same
        clone = pickle.loads(pickle.dumps(rows))
        np.testing.assert_array_equal(_dense(clone[picked]), _dense(rows[picked]))


def test_obs_value_filter_assembles_like_the_same_cells_in_memory(store):
    memory, uri = store
    soma = mv.data.read_soma(uri, obs_value_filter="batch != 'batch_0'")
    keep = memory.obs_names[memory.obs["batch"] != "batch_0"]
    assert set(soma.obs_names) == set(keep)
    subset = memory[soma.obs_names].copy()
    assembled_soma = assemble_mosaic(soma, build_specs(soma, None, None, None), batch_key="batch")
    specs = build_specs(subset, None, None, None)
    assembled_memory = assemble_mosaic(subset, specs, batch_key="batch")
    assert is_out_of_core(assembled_soma)
    order = [list(soma.mod).index(spec.mod_key) for spec in specs]
    rows = np.arange(soma.n_obs)[::-1]
    soma_rows = _dense(assembled_matrix(assembled_soma)[rows])
    columns = np.concatenate(
        [np.flatnonzero(assembled_soma.var["modality"] == spec.name) for spec in specs]
    )
    np.testing.assert_array_equal(soma_rows[:, columns], _dense(assembled_memory.X[rows]))
    for key in (OBSERVED_OBSM_KEY, LIBRARY_OBSM_KEY):
        np.testing.assert_allclose(
            assembled_soma.obsm[key][:, order], assembled_memory.obsm[key], rtol=1e-6
        )


def test_observed_column_and_renamed_measurements(store):
    memory, uri = store
    soma = mv.data.read_soma(uri, {"gex": "rna", "protein": "adt"}, observed={"protein": "has_adt"})
    assert set(soma.mod) == {"gex", "protein"}
    assert set(soma["protein"].obs_names) == set(memory["adt"].obs_names)


def test_soma_errors_name_the_problem_and_the_fix(store, tmp_path):
    _, uri = store
    with pytest.raises(FileNotFoundError, match="not a SOMA Experiment"):
        mv.data.read_soma(tmp_path / "nothing")
    with pytest.raises(KeyError, match=r"\['atac'\].*has"):
        mv.data.read_soma(uri, ["rna", "atac"])
    with pytest.raises(KeyError, match="no X layer 'counts'.*X_layer="):
        mv.data.read_soma(uri, X_layer="counts")
    with pytest.raises(KeyError, match="no column 'barcode'.*obs_index="):
        mv.data.read_soma(uri, obs_index="barcode")
    with pytest.raises(ValueError, match="No cell.*passes obs_value_filter"):
        mv.data.read_soma(uri, obs_value_filter="batch == 'batch_9'")
    with pytest.raises(ValueError, match="must be a boolean column"):
        mv.data.read_soma(uri, observed={"adt": "batch"})
    with pytest.raises(FileExistsError, match="already holds"):
        mv.data.write_soma(_mosaic(30), uri)


def test_an_open_experiment_and_joinid_names_are_accepted(store):
    import tiledbsoma

    memory, uri = store
    with tiledbsoma.Experiment.open(uri) as experiment:
        soma = mv.data.read_soma(
            experiment, ["adt"], obs_index=None, var_index=None, obs_column_names=["batch"]
        )
    assert list(soma.mod) == ["adt"] and soma.n_obs == memory["adt"].n_obs
    assert soma.obs_names.name == "soma_joinid" and list(soma.obs.columns) == [
        "soma_joinid",
        "batch",
    ]
    assert list(soma["adt"].var_names) == [str(i) for i in range(memory["adt"].n_vars)]
    # the reader outlives the handle it was opened from
    assert soma["adt"].X[:3].shape == (3, memory["adt"].n_vars)
