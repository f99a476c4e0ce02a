"""Contract: save/load round trips of every registered model, with and without the data."""

from __future__ import annotations

import mudata as md
import numpy as np
import pytest


def _outputs(model, mdata) -> dict[str, np.ndarray]:
    """Joint latent, each modality's latent (cells that have it) and each imputation."""
    out = {"latent": model.get_latent_representation()}
    for name in mdata.mod:
        has = np.flatnonzero(mdata.obs_names.isin(mdata[name].obs_names))
        out[f"latent[{name}]"] = model.get_latent_representation(indices=has, modality=name)
        out[f"expression[{name}]"] = model.get_normalized_expression(modality=name).to_numpy()
    return out


def _assert_identical(loaded: dict, original: dict) -> None:
    assert loaded.keys() == original.keys()
    for key, value in original.items():
        np.testing.assert_array_equal(loaded[key], value, err_msg=key)


def test_save_then_load_with_data_gives_identical_outputs(method, trained, tmp_path):
    run = trained(method, "mosaic")
    cls = method.model_class()
    run.model.save(tmp_path / "model")
    loaded = cls.load(str(tmp_path / "model"), run.case.mdata)
    assert type(loaded) is cls
    assert loaded.modality_specs == run.model.modality_specs
    _assert_identical(_outputs(loaded, run.case.mdata), _outputs(run.model, run.case.mdata))


def test_save_with_anndata_then_load_without_data_restores_the_mudata(method, trained, tmp_path):
    run = trained(method, "mosaic")
    mdata = run.case.mdata
    run.model.save(tmp_path / "model", save_anndata=True)
    loaded = method.model_class().load(str(tmp_path / "model"))
    restored = loaded.mdata
    assert isinstance(restored, md.MuData), type(restored)
    assert list(restored.obs_names) == list(mdata.obs_names)
    assert list(restored.mod) == list(mdata.mod)
    for name, adata in mdata.mod.items():
        assert list(restored[name].obs_names) == list(adata.obs_names), name
        assert list(restored[name].var_names) == list(adata.var_names), name
        x, y = restored[name].X, adata.X
        np.testing.assert_array_equal(
            x.toarray() if hasattr(x, "toarray") else np.asarray(x),
            y.toarray() if hasattr(y, "toarray") else np.asarray(y),
            err_msg=name,
        )
    np.testing.assert_array_equal(
        loaded.get_latent_representation(), run.model.get_latent_representation()
    )


def test_load_refuses_a_folder_of_another_model_class(method, trained, contract, tmp_path):
    others = [m for m in contract.MODELS if m.name != method.name]
    if not others:
        pytest.skip("only one model is registered: there is no other model class to save")
    other = others[0]
    other_run = trained(other, "mosaic")
    other_run.model.save(tmp_path / "other")
    cls, other_cls = method.model_class(), other.model_class()
    mdata = contract.build("mosaic").mdata
    with pytest.raises(ValueError, match=contract.words(other_cls.__name__, cls.__name__)):
        cls.load(str(tmp_path / "other"), mdata)
    with pytest.raises(ValueError, match=contract.words(other_cls.__name__, cls.__name__)):
        cls.load_query_data(mdata, str(tmp_path / "other"))


def test_load_onto_reordered_features_names_the_modality(method, trained, tmp_path):
    run = trained(method, "mosaic")
    run.model.save(tmp_path / "model")
    mdata = run.case.mdata
    genes = mdata["rna"].var_names
    reordered = md.MuData(
        {
            name: (adata[:, genes[::-1]].copy() if name == "rna" else adata.copy())
            for name, adata in mdata.mod.items()
        }
    )
    reordered.obs = mdata.obs.loc[reordered.obs_names].copy()
    with pytest.raises(ValueError, match=r"(?s)'rna'.*modality_var_names"):
        method.model_class().load(str(tmp_path / "model"), reordered)
