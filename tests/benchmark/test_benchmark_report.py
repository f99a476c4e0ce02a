"""`mosaicvi benchmark` and the `mosaicvi.benchmark` API: task, scores, report, input errors."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest

import mosaicvi as mv
from _shared_data import require_shared_data
from mosaicvi.cli import main


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_benchmark_command_writes_report_on_real_cite_seq(tmp_path, capsys):
    data = require_shared_data("neurips2021_bmmc_cite_600.h5mu")
    before = _digest(data)
    out = tmp_path / "report"
    code = main(
        [
            "benchmark",
            "--data",
            str(data),
            "--models",
            "multivae,jae,peer",
            "--max-cells",
            "360",
            "--epochs",
            "4",
            "--threads",
            "1",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    assert _digest(data) == before  # the input file is only read

    report = (out / "report.md").read_text()
    for method in ("MultiVAE", "JAE", "TOTALVI", "RNA PCA"):
        assert f"| {method} |" in report
    for figure in ("umap.png", "metrics.png", "imputation.png"):
        assert (out / figure).stat().st_size > 10_000
        assert f"]({figure})" in report
    assert "is hidden" in report and "JAE did not see" in report

    scores = pd.read_csv(out / "scores.csv", index_col=0)
    assert list(scores.index) == ["MultiVAE", "JAE", "TOTALVI", "RNA PCA"]
    # the scoring pipeline works on real data: the nearest-neighbour baseline imputes proteins
    # of a held-out donor well, every model gets finite imputation and integration scores
    assert scores.loc["RNA PCA", "impute_pearson"] > 0.4
    assert np.isfinite(scores[["impute_pearson", "nmi", "silhouette_batch", "total"]]).all().all()
    assert scores.loc["TOTALVI", "epochs"] == 4
    assert "RNA PCA" in capsys.readouterr().out


def test_benchmark_task_on_one_batch_hides_a_random_fraction():
    mdata = mv.data.simulate(n_cells=200, modalities=("rna", "adt"), n_batches=1, seed=0)
    before = mdata.copy()
    task, protocol = mv.benchmark.prepare_task(mdata, holdout_fraction=0.25, epochs=3)
    assert task.second == "adt"
    assert task.hidden.sum() == 50
    assert "random 25%" in protocol["holdout"]
    # the user's MuData is untouched
    assert list(mdata.obs.columns) == list(before.obs.columns)
    assert (mdata["adt"].X != before["adt"].X).sum() == 0

    result = mv.benchmark.run_benchmark(task, ["totalvi", "pca"])
    notes = " ".join(result.notes["TOTALVI"])
    assert "per batch" in notes  # TOTALVI cannot impute cells that share a batch with measured ones
    assert np.isnan(result.scores.loc["TOTALVI", "impute_pearson"])
    assert result.scores.loc["RNA PCA", "impute_pearson"] > 0.2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--models", "multivae,multivi"], "MULTIVI needs RNA + ATAC"),
        (["--methods", "multivae", "multivi"], "MULTIVI needs RNA + ATAC"),
        (["--models", "scvi"], "unknown method 'scvi'"),
        (["--label-key", "celltype"], "--label-key 'celltype' is not a column of mdata.obs"),
        (["--holdout-batch", "b9"], "holdout batch 'b9' not found"),
        (["--layer", "raw"], "has no layer 'raw'"),
    ],
)
def test_benchmark_command_input_errors(tmp_path, capsys, args, message):
    mdata = mv.data.simulate(n_cells=120, modalities=("rna", "adt"), n_batches=2, seed=0)
    path = tmp_path / "sim.h5mu"
    mdata.write_h5mu(path)
    code = main(["benchmark", "--data", str(path), "--out", str(tmp_path / "o"), *args])
    assert code == 2
    assert message in capsys.readouterr().err


def test_default_methods_come_from_the_registry():
    from mosaicvi import registry

    for second in ("adt", "atac"):
        expected = [*registry.names("model"), registry.peer_for(second).name, "pca"]
        assert mv.benchmark.resolve_methods(None, second) == expected
        assert mv.benchmark.resolve_methods("peer", second) == [expected[-2], "pca"]
    # display names work too; the baseline is always added once
    assert mv.benchmark.resolve_methods(["MultiVAE", "rna pca"], "adt") == ["multivae", "pca"]


def test_benchmark_command_refuses_anndata(tmp_path, capsys):
    path = tmp_path / "x.h5ad"
    path.write_bytes(b"")
    assert main(["benchmark", "--data", str(path)]) == 2
    assert "needs a MuData file" in capsys.readouterr().err


def test_benchmark_on_rna_atac_scores_open_peaks_with_multivi_as_peer():
    mdata = mv.data.simulate(n_cells=240, modalities=("rna", "atac"), n_batches=2, seed=0)
    task, protocol = mv.benchmark.prepare_task(mdata, epochs=2)
    assert task.second == "atac"
    methods = mv.benchmark.resolve_methods("multivae,peer", task.second)
    assert methods == ["multivae", "multivi", "pca"]
    result = mv.benchmark.run_benchmark(task, methods, protocol=protocol)
    assert not any(n.startswith("failed") for notes in result.notes.values() for n in notes)
    # cell types drive accessibility in the simulation: neighbours in RNA space predict it
    assert 0.6 < result.scores.loc["RNA PCA", "impute_auroc"] <= 1.0
    assert result.scores["impute_auroc"].notna().all()
