"""Tests of the ``mosaicvi`` command line (demo, fit, benchmark)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mosaicvi import registry
from mosaicvi.cli import main

CITE_FILE = "neurips2021_bmmc_cite_600.h5mu"


def _png_ok(path):
    data = path.read_bytes()
    return data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5_000


def test_help_and_no_command(capsys):
    assert main(["--help"]) == 0
    assert "demo" in capsys.readouterr().out
    assert main([]) == 1


def test_fit_help_lists_every_registered_model(capsys):
    assert main(["fit", "--help"]) == 0
    out = capsys.readouterr().out
    for method in registry.models():
        assert method.name in out


def test_fit_unknown_model_is_a_usage_error(capsys):
    assert main(["fit", "--data", "x.h5mu", "--model", "not_a_model"]) == 2
    err = capsys.readouterr().err
    assert "invalid choice" in err and "multivae" in err


def test_benchmark_requires_data(capsys):
    assert main(["benchmark"]) == 2
    assert "--data" in capsys.readouterr().err


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    code = main(["demo", "--out", str(out), "--epochs", "3", "--n-cells", "300", "--threads", "1"])
    return code, out


def test_demo_writes_outputs(demo_run, capsys):
    import mudata

    code, out = demo_run
    assert code == 0
    for name in ("latent.h5mu", "umap.png", "metrics.json"):
        assert (out / name).is_file(), name

    assert _png_ok(out / "umap.png")

    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("n_cells", "epochs", "train_time_s", "integration", "knn_overlap_15"):
        assert key in metrics, key
    assert metrics["n_cells"] == 300
    assert 1 <= metrics["epochs"] <= 3
    assert metrics["train_time_s"] > 0
    assert {"bio", "batch", "total"} <= set(metrics["integration"])
    for v in (metrics["integration"][k] for k in ("bio", "batch", "total")):
        assert 0.0 <= v <= 1.0
    overlap = metrics["knn_overlap_15"]
    assert 0.0 <= overlap["rna_vs_joint"] <= 1.0
    assert 0.0 <= overlap["adt_vs_joint"] <= 1.0
    # batch_2 lacks protein: those cells get imputed values
    assert metrics["imputed"] == {"adt": "imputed_adt.csv"}
    assert (out / "imputed_adt.csv").is_file()

    mdata = mudata.read_h5mu(out / "latent.h5mu")
    z = mdata.obsm["X_mosaicvi"]
    assert z.shape == (300, metrics["n_latent"])
    assert np.isfinite(z).all()
    assert mdata.obsm["X_umap_mosaicvi"].shape == (300, 2)


def test_demo_imputed_protein_is_sane(demo_run):
    import pandas as pd

    _, out = demo_run
    imputed = pd.read_csv(out / "imputed_adt.csv", index_col=0)
    assert len(imputed) > 0
    assert np.isfinite(imputed.to_numpy()).all()
    assert (imputed.to_numpy() >= 0).all()


def test_fit_missing_file(tmp_path, capsys):
    code = main(["fit", "--data", str(tmp_path / "nope.h5mu"), "--out", str(tmp_path / "o")])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    assert "not found" in err
    assert "Traceback" not in err


def test_fit_requires_data(capsys):
    assert main(["fit"]) == 2
    assert "--data" in capsys.readouterr().err


def test_fit_bad_likelihood_spec(tmp_path, capsys):
    path = tmp_path / "x.h5mu"
    path.write_bytes(b"")
    code = main(["fit", "--data", str(path), "--likelihood", "adt"])
    assert code == 2
    assert "MODALITY=NAME" in capsys.readouterr().err


@pytest.fixture(scope="module")
def small_mosaic_file(tmp_path_factory):
    import mosaicvi as mv

    mdata = mv.data.simulate(
        n_cells=120, modalities=("rna", "adt"), n_batches=2, missing={"batch_1": ["adt"]}, seed=1
    )
    path = tmp_path_factory.mktemp("data") / "small.h5mu"
    mdata.write_h5mu(path)
    return path


def test_fit_bad_modality(small_mosaic_file, tmp_path, capsys):
    code = main(
        ["fit", "--data", str(small_mosaic_file), "--modalities", "rna", "atac", "--epochs", "1"]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    assert "'atac'" in err and "available modalities" in err
    assert "Traceback" not in err


def test_fit_bad_batch_key(small_mosaic_file, capsys):
    code = main(["fit", "--data", str(small_mosaic_file), "--batch-key", "donor_id"])
    assert code == 2
    assert "donor_id" in capsys.readouterr().err


def test_fit_bad_layer(small_mosaic_file, capsys):
    code = main(["fit", "--data", str(small_mosaic_file), "--layer", "raw_counts"])
    assert code == 2
    err = capsys.readouterr().err
    assert "no layer 'raw_counts'" in err and "--layer X" in err


def test_fit_unknown_likelihood_is_clean_error(small_mosaic_file, tmp_path, capsys):
    code = main(
        [
            "fit",
            "--data",
            str(small_mosaic_file),
            "--likelihood",
            "adt=not_a_distribution",
            "--epochs",
            "1",
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    assert "Traceback" not in err


def test_fit_does_not_modify_input(small_mosaic_file, tmp_path):
    before = small_mosaic_file.read_bytes()
    out = tmp_path / "fit"
    code = main(
        ["fit", "--data", str(small_mosaic_file), "--epochs", "1", "--out", str(out)]
        + ["--threads", "1"]
    )
    assert code == 0
    assert small_mosaic_file.read_bytes() == before
    assert (out / "latent.h5mu").is_file()


@pytest.mark.slow
def test_fit_real_cite_file(shared_data_file, tmp_path, capsys):
    import mudata

    path = shared_data_file(CITE_FILE)
    out = tmp_path / "cite"
    code = main(
        ["fit", "--data", str(path), "--modalities", "rna", "adt", "--epochs", "2"]
        + ["--out", str(out), "--threads", "1"]
    )
    assert code == 0, capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_cells"] == 600
    assert metrics["epochs"] == 2
    assert "integration" in metrics  # cell_type and batch are in mdata.obs
    assert _png_ok(out / "umap.png")
    z = mudata.read_h5mu(out / "latent.h5mu").obsm["X_mosaicvi"]
    assert z.shape[0] == 600 and np.isfinite(z).all()


@pytest.mark.parametrize("model", registry.names("model"))
def test_fit_every_registered_model(model, small_mosaic_file, tmp_path, capsys):
    import mudata
    import pandas as pd

    from mosaicvi.benchmark import is_semi_supervised

    out = tmp_path / model
    code = main(
        ["fit", "--data", str(small_mosaic_file), "--model", model, "--epochs", "2"]
        + ["--out", str(out), "--threads", "1"]
    )
    assert code == 0, capsys.readouterr().err
    for name in ("latent.h5mu", "umap.png", "metrics.json", "imputed_adt.csv"):
        assert (out / name).is_file(), name
    assert (out / "model").is_dir()
    assert _png_ok(out / "umap.png")

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model"] == registry.get(model).display_name
    assert metrics["n_cells"] == 120
    assert 1 <= metrics["epochs"] <= 2
    assert metrics["imputed"] == {"adt": "imputed_adt.csv"}
    model_cls = registry.get(model).model_class()
    trains_on_labels = is_semi_supervised(model_cls)
    assert metrics.get("labels_in_training") == ("cell_type" if trains_on_labels else None)
    approximate = getattr(model_cls, "imputation_is_approximate", False)
    assert ("approximate" in metrics["imputed_values"]["adt"]) == approximate

    result = mudata.read_h5mu(out / "latent.h5mu")
    z = result.obsm["X_mosaicvi"]
    assert z.shape == (120, metrics["n_latent"])
    assert np.isfinite(z).all()
    assert result.obsm["X_umap_mosaicvi"].shape == (120, 2)
    assert result.uns["mosaicvi"]["model"] == metrics["model"]
    # batch_1 has no protein: exactly its cells are imputed, with finite non-negative values
    lacking = int((result.obs["batch"].astype(str) == "batch_1").sum())
    imputed = pd.read_csv(out / "imputed_adt.csv", index_col=0)
    assert len(imputed) == lacking > 0
    assert np.isfinite(imputed.to_numpy()).all() and (imputed.to_numpy() >= 0).all()


@pytest.mark.parametrize("model", registry.names("model"))
def test_fit_options_a_model_does_not_take_are_clean_errors(model, small_mosaic_file, capsys):
    from mosaicvi.cli._common import accepts

    model_cls = registry.get(model).model_class()
    if accepts(model_cls.__init__, "n_latent"):
        pytest.skip(f"{model} takes n_latent")
    code = main(["fit", "--data", str(small_mosaic_file), "--model", model, "--n-latent", "4"])
    assert code == 2
    assert "--n-latent does not apply" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("command", "message"),
    [
        (["demo", "--epochs", "-1"], "--epochs: must be a positive integer"),
        (["demo", "--epochs", "0"], "--epochs: must be a positive integer"),
        (["demo", "--threads", "0"], "--threads: must be a positive integer"),
        (["demo", "--accelerator", "tpu"], "--accelerator: invalid choice: 'tpu'"),
        (["fit", "--data", "x.h5mu", "--batch-size", "0"], "--batch-size: must be a positive"),
        (["fit", "--data", "x.h5mu", "--epochs", "ten"], "--epochs: expected a positive integer"),
        (["fit", "--data", "x.h5mu", "--mmd-weight", "-1"], "--mmd-weight: must be a finite"),
        (["benchmark", "--data", "x.h5mu", "--max-cells", "0"], "--max-cells: must be a positive"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else None,
)
def test_bad_numbers_and_choices_are_usage_errors(command, message, capsys):
    assert main(command) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err


def test_out_that_is_a_file_or_unwritable_is_a_clean_error(small_mosaic_file, tmp_path, capsys):
    existing = tmp_path / "results.txt"
    existing.write_text("not a folder")
    assert main(["demo", "--out", str(existing)]) == 2
    assert "is an existing file" in capsys.readouterr().err
    under_a_file = existing / "out"
    code = main(["fit", "--data", str(small_mosaic_file), "--out", str(under_a_file)])
    assert code == 2
    err = capsys.readouterr().err
    assert "cannot create the folder" in err and "Traceback" not in err, err
    assert main(["benchmark", "--data", str(small_mosaic_file), "--out", str(existing)]) == 2
    assert "is an existing file" in capsys.readouterr().err
    assert existing.read_text() == "not a folder"


def test_gpu_accelerator_without_a_gpu_is_a_clean_error(small_mosaic_file, tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    code = main(
        [
            "fit",
            "--data",
            str(small_mosaic_file),
            "--out",
            str(tmp_path / "o"),
            "--accelerator",
            "gpu",
        ]
    )
    assert code == 2
    assert "no CUDA GPU is available" in capsys.readouterr().err
