"""Modalities left on disk: assembled rows read from backed .h5mu and zarr stores."""

from __future__ import annotations

import warnings

import h5py
import mudata as md
import numpy as np
import pytest
import scipy.sparse as sp

import mosaicvi as mv
from mosaicvi.data import assemble_mosaic, build_specs
from mosaicvi.data._backed import (
    DiskCSR,
    assembled_matrix,
    is_out_of_core,
    read_rows,
    row_pieces,
    row_reader,
    row_sums,
)
from mosaicvi.data._constants import LIBRARY_OBSM_KEY, OBSERVED_OBSM_KEY

warnings.filterwarnings("ignore", category=UserWarning)


def _mosaic(n_cells: int = 300) -> md.MuData:
    """RNA for every cell, ADT for two batches of three, cells of ADT in another order."""
    full = mv.data.simulate(n_cells=n_cells, n_genes=40, n_proteins=8, n_batches=3, seed=3)
    keep = full.obs_names[full.obs["batch"] != "batch_2"]
    adt = full["adt"][keep[::-1]].copy()  # reversed: rows of the file are not assembly order
    mdata = md.MuData({"rna": full["rna"].copy(), "adt": adt})
    for column in ("batch", "cell_type"):
        mdata.obs[column] = full.obs[column].reindex(mdata.obs_names).to_numpy()
    return mdata


@pytest.fixture(scope="module", params=["h5mu", "zarr"])
def stored(request, tmp_path_factory):
    """``(in-memory MuData, the same MuData opened backed)``."""
    mdata = _mosaic()
    path = tmp_path_factory.mktemp("backed") / f"mosaic.{request.param}"
    if request.param == "h5mu":
        mdata.write(path)
    else:
        mdata.write_zarr(path)
    return mdata, mv.data.read_backed(path)


def _assemble(mdata):
    specs = build_specs(mdata, None, None, None)
    return assemble_mosaic(mdata, specs, batch_key="batch")


def test_backed_modalities_stay_on_disk(stored):
    memory, backed = stored
    assert list(backed.mod) == list(memory.mod)  # modality order kept (zarr lists it sorted)
    assert not isinstance(backed["rna"].X, np.ndarray | sp.spmatrix)
    assembled = _assemble(backed)
    assert is_out_of_core(assembled) and assembled.X is None
    assert not is_out_of_core(_assemble(memory))


def test_rows_read_from_disk_equal_the_in_memory_assembly(stored):
    memory, backed = stored
    expected = _assemble(memory)
    assembled = _assemble(backed)
    rows = np.random.default_rng(0).integers(0, memory.n_obs, size=150)  # any order, repeats
    np.testing.assert_array_equal(
        assembled_matrix(assembled)[rows].toarray(), expected.X[rows].toarray()
    )
    np.testing.assert_array_equal(
        assembled_matrix(assembled)[rows, 40:].toarray(), expected.X[rows][:, 40:].toarray()
    )
    for key in (OBSERVED_OBSM_KEY, LIBRARY_OBSM_KEY):
        np.testing.assert_array_equal(assembled.obsm[key], expected.obsm[key])
    # library sizes are the per-modality sums of the registered values
    rna_total = np.asarray(memory["rna"].X.sum(1)).ravel()
    np.testing.assert_allclose(assembled.obsm[LIBRARY_OBSM_KEY][:, 0], rna_total, rtol=1e-6)
    assert (
        assembled.obsm[LIBRARY_OBSM_KEY][:, 1][~memory.obs_names.isin(memory["adt"].obs_names)] == 0
    ).all()


def test_runs_of_consecutive_rows_are_read_as_slices(tmp_path):
    matrix = sp.random(50, 7, density=0.3, format="csr", dtype=np.float32, random_state=0)
    md.MuData({"a": __import__("anndata").AnnData(matrix)}).write(tmp_path / "one.h5mu")
    backed = md.read_h5mu(tmp_path / "one.h5mu", backed="r")["a"].X
    calls = []

    class Counting:
        shape, format = backed.shape, "csr"

        def __getitem__(self, key):
            calls.append(key)
            return backed[key]

    rows = np.array([0, 1, 2, 3, 10, 11, 12, 40])
    np.testing.assert_array_equal(read_rows(Counting(), rows).toarray(), matrix[rows].toarray())
    assert calls == [slice(0, 4), slice(10, 13), slice(40, 41)]
    # on-disk CSR is read from its data and indices arrays directly, with the same result
    reader = row_reader(backed)
    assert isinstance(reader, DiskCSR)
    for some in (rows, np.arange(50), np.array([49]), np.array([], dtype=int)):
        np.testing.assert_array_equal(read_rows(reader, some).toarray(), matrix[some].toarray())


def test_setup_reads_a_file_once_and_sums_rows_from_its_values_alone(tmp_path):
    matrix = sp.random(60, 9, density=0.2, format="csr", dtype=np.float32, random_state=1)
    matrix[[0, 7, 8, 59]] = 0  # empty rows, first and last among them
    matrix.eliminate_zeros()
    md.MuData({"a": __import__("anndata").AnnData(matrix)}).write(tmp_path / "one.h5mu")
    reader = row_reader(md.read_h5mu(tmp_path / "one.h5mu", backed="r")["a"].X)
    expected = np.asarray(matrix.sum(1)).ravel()
    for max_values in (1, 5, 17, 10_000):  # pieces of one row, a few rows, all rows
        pieces = list(row_pieces(reader, max_values))
        assert [p[0] for p in pieces[1:]] == [p[1] for p in pieces[:-1]]  # consecutive
        assert pieces[0][0] == 0 and pieces[-1][1] == 60
        assert all(len(p[2]) <= max(max_values, p[3].max(initial=0)) for p in pieces)
    np.testing.assert_allclose(row_sums(reader), expected, rtol=1e-6)
    # setup reads the stored values once: the value checks and the library sizes in one pass
    mdata = _mosaic(120)
    mdata.write(tmp_path / "mosaic.h5mu")
    backed = mv.data.read_backed(tmp_path / "mosaic.h5mu")
    reads, original = [], DiskCSR.data.fget
    DiskCSR.data = property(lambda self: reads.append(1) or original(self))
    try:
        assembled = _assemble(backed)
    finally:
        DiskCSR.data = property(original)
    on_disk_csr = [m for m in backed.mod if isinstance(row_reader(backed[m].X), DiskCSR)]
    assert len(on_disk_csr) >= 1 and len(reads) == len(on_disk_csr)  # one piece each
    np.testing.assert_allclose(
        assembled.obsm[LIBRARY_OBSM_KEY], _assemble(mdata).obsm[LIBRARY_OBSM_KEY], rtol=1e-6
    )


def test_bad_values_on_disk_are_named_before_training(tmp_path):
    mdata = _mosaic(120)
    mdata["adt"].X[3, 2] = np.nan
    path = tmp_path / "nan.h5mu"
    mdata.write(path)
    with pytest.raises(ValueError, match=r"(?s)'adt'.*NaN"):
        mv.model.MultiVAE.setup_mudata(mv.data.read_backed(path), batch_key="batch")
    mdata = _mosaic(120)
    mdata["rna"].X.data[:5] = -1.0
    path = tmp_path / "negative.h5mu"
    mdata.write(path)
    with pytest.raises(ValueError, match=r"(?s)'rna'.*negative"):
        mv.model.MultiVAE.setup_mudata(mv.data.read_backed(path), batch_key="batch")


def test_reading_a_store_that_is_not_a_mudata_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        mv.data.read_backed(tmp_path / "absent.h5mu")
    import zarr

    zarr.open_group(str(tmp_path / "plain.zarr"), mode="w").create_group("something")
    with pytest.raises(ValueError, match="not a MuData zarr store"):
        mv.data.read_backed(tmp_path / "plain.zarr")


def test_setup_of_a_backed_mudata_leaves_the_file_unchanged(tmp_path):
    path = tmp_path / "m.h5mu"
    _mosaic(120).write(path)
    before = path.read_bytes()
    backed = mv.data.read_backed(path)
    mv.model.MultiVAE.setup_mudata(backed, batch_key="batch")
    with h5py.File(path, "r") as fh:  # still readable while open read-only
        assert "mod" in fh
    backed.file.close()
    assert path.read_bytes() == before


def test_a_modality_stored_by_feature_on_disk_is_refused_with_the_fix(tmp_path):
    mdata = _mosaic(120)
    mdata["rna"].X = sp.csc_matrix(mdata["rna"].X)
    path = tmp_path / "csc.h5mu"
    mdata.write(path)
    with pytest.raises(ValueError, match=r"(?s)'rna'.*CSC.*csr_matrix"):
        mv.model.MultiVAE.setup_mudata(mv.data.read_backed(path), batch_key="batch")
