"""Dataset readers: public download formats rebuilt from the local subsets, read back exactly."""

from __future__ import annotations

import gzip
import logging
import warnings

import anndata as ad
import h5py
import mudata as md
import numpy as np
import pandas as pd
import pytest
import scipy.io
import scipy.sparse as sp

import mosaicvi as mv
from _shared_data import require_shared_data
from mosaicvi.data._readers import _h5ad

CITE_GEO = "GSE194122_openproblems_neurips2021_cite_BMMC_processed.h5ad"
MULTIOME_GEO = "GSE194122_openproblems_neurips2021_multiome_BMMC_processed.h5ad"
SNARE = "GSE126074_AdBrainCortex_SNAREseq"


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def mosaicvi_log(monkeypatch, caplog):
    """Let caplog see the 'mosaicvi' logger (it does not propagate to the root by default)."""
    monkeypatch.setattr(logging.getLogger("mosaicvi"), "propagate", True)
    caplog.set_level(logging.INFO, logger="mosaicvi")
    return caplog


def _dense(matrix) -> np.ndarray:
    return matrix.toarray() if sp.issparse(matrix) else np.asarray(matrix)


def _counts(mdata: md.MuData, mod: str) -> np.ndarray:
    return _dense(mdata[mod].layers["counts"])


def _assert_contract(mdata: md.MuData) -> None:
    for mod, adata in mdata.mod.items():
        assert mod in ("rna", "adt", "atac")
        assert adata.X.dtype == np.float32
        if mod == "adt":
            assert isinstance(adata.X, np.ndarray)
        else:
            assert sp.isspmatrix_csr(adata.X)
        np.testing.assert_array_equal(_dense(adata.X), _dense(adata.layers["counts"]))
        assert adata.layers["counts"] is not adata.X
        assert adata.obs_names.is_unique and adata.var_names.is_unique
        assert adata.obs.shape[1] == 0
        assert set(adata.var["feature_types"]) == {mv.data._readers.CONTRACT_FEATURE_TYPES[mod]}


def _geo_h5ad(mdata: md.MuData, mods: tuple[str, str], fmt: str = "csr") -> ad.AnnData:
    """A GSE194122-style AnnData: all features side by side, normalised X, counts in a layer."""
    names = {"rna": "GEX", "adt": "ADT", "atac": "ATAC"}
    counts = sp.hstack([sp.csr_matrix(_counts(mdata, m)) for m in mods], format="csr")
    var = pd.concat(
        [
            pd.DataFrame(
                {
                    "feature_types": names[m],
                    "gene_id": [f"ID{m}{i}" for i in range(mdata[m].n_vars)],
                },
                index=mdata[m].var_names,
            )
            for m in mods
        ]
    )
    var["feature_types"] = pd.Categorical(var["feature_types"])
    obs = mdata.obs.copy()
    obs["Site"] = pd.Categorical("site" + obs["site"].astype(str).str[1:])
    obs["DonorNumber"] = pd.Categorical("donor" + obs["donor"].astype(str).str[1:])
    obs["Samplename"] = pd.Categorical(obs["batch"].astype(str) + "_" + mods[1])
    obs["GEX_n_counts"] = np.asarray(counts.sum(axis=1)).ravel()
    obs = obs.drop(columns=["site", "donor"])
    # normalised X as in the GEO files: log1p of library-size-normalised counts (not integers)
    size = np.maximum(np.asarray(counts.sum(axis=1)).ravel(), 1.0)
    x = sp.csr_matrix(sp.diags(1e4 / size) @ counts)
    x.data = np.log1p(x.data).astype(np.float32)
    layer = {"csr": counts, "csc": counts.tocsc(), "dense": counts.toarray()}[fmt]
    with warnings.catch_warnings():  # a protein and its gene share a name, as in the GEO file
        warnings.filterwarnings("ignore", message="Variable names are not unique")
        return ad.AnnData(X=x, obs=obs, var=var, layers={"counts": layer})


def _read_h5mu(name: str) -> md.MuData:
    with warnings.catch_warnings():  # the local CITE file has genes and proteins of one name
        warnings.filterwarnings("ignore", message=".*var_names are intersecting")
        return md.read_h5mu(require_shared_data(name))


@pytest.fixture(scope="module")
def cite() -> md.MuData:
    return _read_h5mu("neurips2021_bmmc_cite_600.h5mu")


@pytest.fixture(scope="module")
def multiome() -> md.MuData:
    return _read_h5mu("neurips2021_bmmc_multiome_500.h5mu")


@pytest.fixture
def cite_file(cite, tmp_path):
    path = tmp_path / CITE_GEO
    _geo_h5ad(cite, ("rna", "adt")).write_h5ad(path)
    return path


# ---------------------------------------------------------------------------------------------
# read_neurips2021
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["csr", "csc", "dense"])
def test_neurips2021_cite_round_trip(cite, tmp_path, monkeypatch, fmt):
    path = tmp_path / CITE_GEO
    _geo_h5ad(cite, ("rna", "adt"), fmt).write_h5ad(path)
    monkeypatch.setattr(_h5ad, "_CHUNK_NNZ", 3000)  # many windows even on small data

    mdata = mv.data.read_neurips2021(path)

    _assert_contract(mdata)
    assert list(mdata.mod) == ["rna", "adt"]
    for mod in ("rna", "adt"):
        assert list(mdata[mod].obs_names) == list(cite[mod].obs_names)
        assert list(mdata[mod].var_names) == list(cite[mod].var_names)
        np.testing.assert_array_equal(_counts(mdata, mod), _counts(cite, mod))
    assert list(mdata.obs_names) == list(cite.obs_names)
    for col in ("cell_type", "batch", "site", "donor"):
        assert list(mdata.obs[col].astype(str)) == list(cite.obs[col].astype(str)), col
    assert list(mdata.obs.columns[:4]) == ["cell_type", "batch", "site", "donor"]
    assert {"Site", "DonorNumber", "Samplename", "GEX_n_counts"} <= set(mdata.obs.columns)
    assert mdata["rna"].var["gene_id"].iloc[0] == "IDrna0"


def test_neurips2021_multiome_round_trip(multiome, tmp_path):
    path = tmp_path / MULTIOME_GEO
    _geo_h5ad(multiome, ("rna", "atac")).write_h5ad(path)

    mdata = mv.data.read_neurips2021(path)

    _assert_contract(mdata)
    assert list(mdata.mod) == ["rna", "atac"]
    for mod in ("rna", "atac"):
        assert list(mdata[mod].var_names) == list(multiome[mod].var_names)
        np.testing.assert_array_equal(_counts(mdata, mod), _counts(multiome, mod))
    assert list(mdata.obs["cell_type"].astype(str)) == list(multiome.obs["cell_type"].astype(str))


def test_neurips2021_batches_max_cells_and_modalities(cite, cite_file):
    mdata = mv.data.read_neurips2021(cite_file, batches=["s1d2"])
    expected = cite.obs_names[(cite.obs["batch"] == "s1d2").to_numpy()]
    assert list(mdata.obs_names) == list(expected)
    assert list(mdata.obs["batch"].cat.categories) == ["s1d2"]
    np.testing.assert_array_equal(_counts(mdata, "rna"), _counts(cite[expected], "rna"))
    np.testing.assert_array_equal(_counts(mdata, "adt"), _counts(cite[expected], "adt"))

    first = mv.data.read_neurips2021(cite_file, "s1d1", max_cells=50, random_state=1)
    again = mv.data.read_neurips2021(cite_file, "s1d1", max_cells=50, random_state=1)
    assert first.n_obs == 50 and list(first.obs_names) == list(again.obs_names)
    assert set(first.obs["batch"]) == {"s1d1"}
    position = cite.obs_names.get_indexer(first.obs_names)
    assert (np.diff(position) > 0).all()  # file order is kept
    np.testing.assert_array_equal(_counts(first, "adt"), _counts(cite[first.obs_names], "adt"))

    rna_only = mv.data.read_neurips2021(cite_file, modalities=["rna"], max_cells=10)
    assert list(rna_only.mod) == ["rna"] and rna_only.n_obs == 10


@pytest.mark.filterwarnings("ignore:Variable names are not unique:UserWarning")
def test_neurips2021_errors(cite, cite_file, tmp_path):
    with pytest.raises(FileNotFoundError, match=CITE_GEO):
        mv.data.read_neurips2021(tmp_path / "missing.h5ad")
    gz = tmp_path / "other" / (CITE_GEO + ".gz")
    gz.parent.mkdir()
    gz.write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="gunzip"):
        mv.data.read_neurips2021(gz.with_suffix(""))
    with pytest.raises(ValueError, match="gunzip"):
        mv.data.read_neurips2021(gz)
    with pytest.raises(ValueError, match=r"\['s9d9'\].*s1d1"):
        mv.data.read_neurips2021(cite_file, batches=["s1d1", "s9d9"])
    with pytest.raises(ValueError, match=r"\['atac'\].*\['ADT', 'GEX'\]"):
        mv.data.read_neurips2021(cite_file, modalities=["rna", "atac"])
    with pytest.raises(ValueError, match="max_cells"):
        mv.data.read_neurips2021(cite_file, max_cells=0)

    adata = _geo_h5ad(cite, ("rna", "adt"))
    no_counts = tmp_path / "no_counts.h5ad"
    ad.AnnData(X=adata.X, obs=adata.obs, var=adata.var).write_h5ad(no_counts)
    with pytest.raises(KeyError, match=r"layers\['counts'\]"):
        mv.data.read_neurips2021(no_counts)

    no_types = tmp_path / "no_types.h5ad"
    adata.var = adata.var.drop(columns="feature_types")
    adata.write_h5ad(no_types)
    with pytest.raises(KeyError, match=r"feature_types.*gene_id"):
        mv.data.read_neurips2021(no_types)

    rna_only = tmp_path / "rna_only.h5ad"
    adata = _geo_h5ad(cite, ("rna", "adt"))
    adata[:, adata.var["feature_types"] == "GEX"].copy().write_h5ad(rna_only)
    with pytest.raises(ValueError, match=r"\['GEX'\].*modalities=\['rna'\]"):
        mv.data.read_neurips2021(rna_only)


def test_neurips2021_duplicate_names_made_unique(cite, tmp_path, mosaicvi_log):
    adata = _geo_h5ad(cite, ("rna", "adt"))
    names = adata.var_names.to_numpy().copy()
    names[1] = names[0]
    adata.var_names = names
    path = tmp_path / CITE_GEO
    adata.write_h5ad(path)

    mdata = mv.data.read_neurips2021(path)

    assert mdata["rna"].n_vars == cite["rna"].n_vars and mdata["rna"].var_names.is_unique
    assert mdata["rna"].var_names[1] == f"{names[0]}-1"
    assert "made unique" in mosaicvi_log.text


# ---------------------------------------------------------------------------------------------
# read_10x_multimodal
# ---------------------------------------------------------------------------------------------


def _write_10x_h5(path, barcodes, blocks) -> None:
    """Cell Ranger >= 3 HDF5 layout; ``blocks``: (feature_type, names, ids, cells x features)."""
    x = sp.hstack([sp.csr_matrix(b[3]) for b in blocks], format="csr")
    x.sort_indices()
    names = np.concatenate([np.asarray(b[1], dtype=str) for b in blocks])
    ids = np.concatenate([np.asarray(b[2], dtype=str) for b in blocks])
    types = np.concatenate([[b[0]] * len(b[1]) for b in blocks])
    peaks = any(b[0] == "Peaks" for b in blocks)
    with h5py.File(path, "w") as f:
        m = f.create_group("matrix")
        m["barcodes"] = np.asarray(barcodes, dtype="S")
        # cells x features CSR == features x cells CSC: the same three arrays
        m["data"] = x.data.astype(np.uint32)
        m["indices"] = x.indices.astype(np.int64)
        m["indptr"] = x.indptr.astype(np.int64)
        m["shape"] = np.array([x.shape[1], x.shape[0]], dtype=np.int32)
        feats = m.create_group("features")
        feats["id"] = ids.astype("S")
        feats["name"] = names.astype("S")
        feats["feature_type"] = types.astype("S")
        feats["genome"] = np.full(len(names), "GRCh38", dtype="S")
        keys = ["genome", "interval"] if peaks else ["genome"]
        feats["_all_tag_keys"] = np.asarray(keys, dtype="S")
        if peaks:
            interval = [
                n.replace("-", ":", 1) if t == "Peaks" else "NA" for n, t in zip(names, types)
            ]
            feats["interval"] = np.asarray(interval, dtype="S")


@pytest.fixture(scope="module")
def pbmc() -> md.MuData:
    full = _read_h5mu("pbmc10k_cite_6855.h5mu")
    return full[full.obs_names[:300]].copy()


def _pbmc_h5(pbmc, path, duplicate_gene=False):
    barcodes = [name.removesuffix("-pbmc10k") for name in pbmc.obs_names]
    genes = pbmc["rna"].var_names.to_numpy().copy()
    if duplicate_gene:
        genes[1] = genes[0]
    proteins = pbmc["adt"].var_names.to_numpy()
    _write_10x_h5(
        path,
        barcodes,
        [
            (
                "Gene Expression",
                genes,
                [f"ENSG{i:011d}" for i in range(len(genes))],
                _counts(pbmc, "rna"),
            ),
            (
                "Antibody Capture",
                proteins,
                [p.split("_")[0] for p in proteins],
                _counts(pbmc, "adt"),
            ),
        ],
    )
    return path


def test_10x_cite_round_trip(pbmc, tmp_path):
    path = _pbmc_h5(pbmc, tmp_path / "pbmc_10k_protein_v3_filtered_feature_bc_matrix.h5")

    mdata = mv.data.read_10x_multimodal(path, batch="pbmc10k")

    _assert_contract(mdata)
    assert list(mdata.mod) == ["rna", "adt"]
    assert list(mdata.obs_names) == list(pbmc.obs_names)  # <barcode>-pbmc10k, as locally
    for mod in ("rna", "adt"):
        assert list(mdata[mod].obs_names) == list(pbmc[mod].obs_names)
        assert list(mdata[mod].var_names) == list(pbmc[mod].var_names)
        np.testing.assert_array_equal(_counts(mdata, mod), _counts(pbmc, mod))
    assert list(mdata.obs["batch"]) == ["pbmc10k"] * pbmc.n_obs
    assert mdata["adt"].var["gene_ids"].iloc[0] == "CD127"

    # a folder holding the file works too; without batch the names are the raw barcodes
    plain = mv.data.read_10x_multimodal(tmp_path)
    assert plain.obs_names[0] == pbmc.obs_names[0].removesuffix("-pbmc10k")
    assert "batch" not in plain.obs.columns


def test_10x_duplicate_gene_names(pbmc, tmp_path, mosaicvi_log):
    path = _pbmc_h5(pbmc, tmp_path / "x_filtered_feature_bc_matrix.h5", duplicate_gene=True)
    mdata = mv.data.read_10x_multimodal(path)
    genes = pbmc["rna"].var_names
    assert mdata["rna"].n_vars == len(genes)
    assert list(mdata["rna"].var_names[:2]) == [genes[0], f"{genes[0]}-1"]
    np.testing.assert_array_equal(_counts(mdata, "rna"), _counts(pbmc, "rna"))
    assert "made unique" in mosaicvi_log.text


def test_10x_arc_multiome(multiome, tmp_path):
    path = tmp_path / "arc_filtered_feature_bc_matrix.h5"
    barcodes = [name.removesuffix("-s1d1").removesuffix("-s1d2") for name in multiome.obs_names]
    barcodes = [f"{b}-{i}" for i, b in enumerate(barcodes)]  # keep them unique across donors
    peaks = multiome["atac"].var_names
    genes = multiome["rna"].var_names
    _write_10x_h5(
        path,
        barcodes,
        [
            ("Gene Expression", genes, multiome["rna"].var["gene_ids"], _counts(multiome, "rna")),
            ("Peaks", peaks, peaks, _counts(multiome, "atac")),
        ],
    )

    mdata = mv.data.read_10x_multimodal(path)

    _assert_contract(mdata)
    assert list(mdata.mod) == ["rna", "atac"]
    assert list(mdata.obs_names) == barcodes
    np.testing.assert_array_equal(_counts(mdata, "atac"), _counts(multiome, "atac"))
    np.testing.assert_array_equal(_counts(mdata, "rna"), _counts(multiome, "rna"))
    assert mdata["atac"].var["interval"].iloc[0] == peaks[0].replace("-", ":", 1)


def test_10x_errors(pbmc, tmp_path):
    with pytest.raises(FileNotFoundError, match="filtered_feature_bc_matrix.h5"):
        mv.data.read_10x_multimodal(tmp_path / "missing_filtered_feature_bc_matrix.h5")
    with pytest.raises(FileNotFoundError, match="exactly one"):
        mv.data.read_10x_multimodal(tmp_path)

    path = _pbmc_h5(pbmc, tmp_path / "pbmc_filtered_feature_bc_matrix.h5")
    with pytest.raises(ValueError, match=r"\['atac'\].*\['Antibody Capture', 'Gene Expression'\]"):
        mv.data.read_10x_multimodal(path, modalities=["atac"])

    rna_path = tmp_path / "rna" / "rna_filtered_feature_bc_matrix.h5"
    rna_path.parent.mkdir()
    genes = pbmc["rna"].var_names
    _write_10x_h5(
        rna_path,
        [f"c{i}" for i in range(pbmc.n_obs)],
        [("Gene Expression", genes, genes, _counts(pbmc, "rna"))],
    )
    with pytest.raises(ValueError, match=r"\['Gene Expression'\].*modalities=\['rna'\]"):
        mv.data.read_10x_multimodal(rna_path)
    rna_only = mv.data.read_10x_multimodal(rna_path, modalities=["rna"])
    assert list(rna_only.mod) == ["rna"]
    np.testing.assert_array_equal(_counts(rna_only, "rna"), _counts(pbmc, "rna"))

    legacy = tmp_path / "legacy.h5"
    with h5py.File(legacy, "w") as f:
        f.create_group("GRCh38")
    with pytest.raises(ValueError, match="Cell Ranger 2"):
        mv.data.read_10x_multimodal(legacy)
    not_h5 = tmp_path / "not_h5.h5"
    not_h5.write_text("matrix")
    with pytest.raises(ValueError, match="not a readable HDF5"):
        mv.data.read_10x_multimodal(not_h5)


# ---------------------------------------------------------------------------------------------
# read_snareseq
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def snare() -> md.MuData:
    full = _read_h5mu("snareseq_mouse_cortex_10k.h5mu")
    rng = np.random.default_rng(0)
    cells = full.obs_names[np.sort(rng.choice(full.n_obs, size=300, replace=False))]
    return full[cells].copy()


def _write_lines(path, lines) -> None:
    with gzip.open(path, "wt") as fh:
        fh.write("".join(f"{line}\n" for line in lines))


def _write_mtx(path, cells_by_features) -> None:
    """GEO's orientation: features x cells, integer Matrix Market, gzipped."""
    matrix = sp.coo_matrix(cells_by_features.T.astype(np.int64))
    with gzip.open(path, "wb") as fh:
        scipy.io.mmwrite(fh, matrix, field="integer")


def _peak_name(name: str) -> str:
    chrom, start, end = name.rsplit("_", 2)
    return f"{chrom}:{start}-{end}"


@pytest.fixture
def snare_dir(snare, tmp_path):
    """GEO files: ATAC barcodes in another order and 10 cells without ATAC."""
    folder = tmp_path / "GSE126074"
    folder.mkdir()
    rna_cells = list(snare.obs_names)
    order = np.random.default_rng(1).permutation(snare.n_obs)[10:]
    atac_cells = [rna_cells[i] for i in order]
    _write_mtx(folder / f"{SNARE}_cDNA.counts.mtx.gz", _counts(snare, "rna"))
    _write_lines(folder / f"{SNARE}_cDNA.barcodes.tsv.gz", rna_cells)
    _write_lines(folder / f"{SNARE}_cDNA.genes.tsv.gz", snare["rna"].var_names)
    _write_mtx(folder / f"{SNARE}_chromatin.counts.mtx.gz", _counts(snare, "atac")[order])
    _write_lines(folder / f"{SNARE}_chromatin.barcodes.tsv.gz", atac_cells)
    _write_lines(
        folder / f"{SNARE}_chromatin.peaks.tsv.gz", map(_peak_name, snare["atac"].var_names)
    )
    return folder


def test_snareseq_round_trip(snare, snare_dir, tmp_path, mosaicvi_log):
    labels = snare.obs[["cell_type", "cell_type_fine"]].rename(columns={"cell_type": "Ident"})
    labels.iloc[:-5].to_csv(tmp_path / "AdBrainCortex_SNAREseq_metadata.csv")

    mdata = mv.data.read_snareseq(
        snare_dir, cell_types=tmp_path / "AdBrainCortex_SNAREseq_metadata.csv", label_key="Ident"
    )

    _assert_contract(mdata)
    assert list(mdata.mod) == ["rna", "atac"]
    paired = snare.obs_names[snare.obs_names.isin(mdata["atac"].obs_names)]
    assert len(paired) == snare.n_obs - 10 and list(mdata.obs_names) == list(paired)
    assert "10 RNA-only and 0 ATAC-only" in mosaicvi_log.text
    assert list(mdata["rna"].var_names) == list(snare["rna"].var_names)
    assert list(mdata["atac"].var_names) == [_peak_name(n) for n in snare["atac"].var_names]
    for mod in ("rna", "atac"):
        np.testing.assert_array_equal(_counts(mdata, mod), _counts(snare[paired], mod))
    assert list(mdata.obs["batch"].astype(str)) == list(snare.obs.loc[paired, "batch"].astype(str))
    expected = snare.obs.loc[paired, "cell_type"].astype(str).to_numpy()
    got = mdata.obs["cell_type"].astype(object).to_numpy()
    unlabelled = ~paired.isin(labels.index[:-5])
    assert unlabelled.sum() >= 1 and pd.isna(got[unlabelled]).all()
    np.testing.assert_array_equal(got[~unlabelled].astype(str), expected[~unlabelled])
    assert "have no cell-type label" in mosaicvi_log.text


def test_snareseq_mosaic_and_series_labels(snare, snare_dir):
    mdata = mv.data.read_snareseq(
        snare_dir, cell_types=snare.obs["cell_type_fine"], paired_only=False
    )
    assert mdata.n_obs == snare.n_obs
    assert mdata["rna"].n_obs == snare.n_obs and mdata["atac"].n_obs == snare.n_obs - 10
    assert list(mdata.obs["cell_type"].astype(str)) == list(
        snare.obs.loc[mdata.obs_names, "cell_type_fine"].astype(str)
    )
    atac_cells = mdata["atac"].obs_names
    np.testing.assert_array_equal(_counts(mdata, "atac"), _counts(snare[atac_cells], "atac"))


def test_snareseq_errors(snare, snare_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="not a folder"):
        mv.data.read_snareseq(tmp_path / "nowhere")
    (snare_dir / f"{SNARE}_chromatin.peaks.tsv.gz").unlink()
    with pytest.raises(FileNotFoundError, match=r"chromatin\.peaks\.tsv\.gz.*GSE126074"):
        mv.data.read_snareseq(snare_dir)
    _write_lines(snare_dir / f"{SNARE}_chromatin.peaks.tsv.gz", ["chr1:1-2"])
    with pytest.raises(ValueError, match=r"chromatin\.counts\.mtx\.gz is .* 1 features"):
        mv.data.read_snareseq(snare_dir)


def test_snareseq_label_errors(snare, snare_dir):
    table = snare.obs[["cell_type", "cell_type_fine"]].rename(columns={"cell_type": "Ident"})
    with pytest.raises(KeyError, match=r"\['Ident', 'cell_type_fine'\]; pass label_key="):
        mv.data.read_snareseq(snare_dir, cell_types=table)
    with pytest.raises(KeyError, match="'Cluster' is not a column"):
        mv.data.read_snareseq(snare_dir, cell_types=table, label_key="Cluster")
