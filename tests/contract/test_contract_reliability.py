"""Contract: bad input and faults give an early error that names the problem and the fix.

Every check runs for every registered model. Errors are asserted by type and by the words the
user needs (the offending modality, feature, batch or file, and the way out).
"""

from __future__ import annotations

import inspect
import os
import warnings

import mudata as md
import numpy as np
import pytest
import torch

QUIET = {"enable_progress_bar": False}


def _edited(mdata: md.MuData, modality: str, edit) -> md.MuData:
    """A copy of ``mdata`` whose modality ``modality`` is replaced by ``edit(adata)``."""
    mods = {k: (edit(a.copy()) if k == modality else a.copy()) for k, a in mdata.mod.items()}
    return md.MuData(mods, obs=mdata.obs.copy())


def _with_a_duplicated_feature(adata):
    """``adata`` whose second feature takes the first one's name."""
    names = list(adata.var_names)
    names[1] = names[0]
    adata.var_names = names
    return adata


def _with_obs(mdata: md.MuData, column: str, values) -> md.MuData:
    edited = mdata.copy()
    edited.obs[column] = values
    return edited


# ------------------------------------------------------------------ setup_mudata
def test_setup_rejects_duplicated_feature_names(method, contract):
    mdata = contract.build("paired", seed=11).mdata

    bad = _edited(mdata, "rna", _with_a_duplicated_feature)
    with pytest.raises(
        ValueError, match=contract.words("'rna'", "duplicated", "var_names_make_unique")
    ):
        contract.setup(method, bad)


def test_setup_rejects_a_modality_without_features(method, contract):
    mdata = contract.build("paired", seed=12).mdata
    bad = _edited(mdata, "adt", lambda adata: adata[:, :0].copy())
    with pytest.raises(ValueError, match=contract.words("'adt'", "no features")):
        contract.setup(method, bad)


def test_setup_rejects_an_empty_mudata(method, contract):
    mdata = contract.build("paired", seed=13).mdata
    with pytest.raises(ValueError, match=contract.words("no cells")):
        contract.setup(method, mdata[:0].copy())


# ------------------------------------------------------------------ construction
def test_construction_rejects_degenerate_sizes(method, contract):
    mdata = contract.build("paired", seed=14).mdata
    contract.setup(method, mdata)
    cls = method.model_class()
    accepted = inspect.signature(cls.__init__).parameters
    names = [n for n in ("n_latent", "n_hidden", "n_layers", "n_components") if n in accepted]
    assert names, "the model names none of the usual architecture sizes"
    for name in names:
        with pytest.raises(ValueError, match=contract.words(name, ">= 1")):
            cls(mdata, **{**contract.init_kwargs(method), name: 0})
    with pytest.raises(ValueError, match=contract.words("dropout_rate")):
        cls(mdata, **{**contract.init_kwargs(method), "dropout_rate": 1.5})


# ------------------------------------------------------------------ train
@pytest.fixture(scope="module")
def fresh_model():
    """``fresh_model(method, contract)``: an untrained model on small paired data (cached)."""
    cache = {}

    def get(method, contract):
        if method.name not in cache:
            mdata = contract.build("paired", seed=15).mdata
            contract.setup(method, mdata)
            cache[method.name] = contract.make_model(method, mdata)
        return cache[method.name]

    return get


@pytest.mark.parametrize(
    ("arguments", "words"),
    [
        ({"max_epochs": -1}, ("max_epochs", "positive", "forever")),
        ({"max_epochs": 0}, ("max_epochs", "positive")),
        ({"max_epochs": 1, "batch_size": 0}, ("batch_size", "positive")),
        ({"max_epochs": 1, "train_size": 0.0}, ("train_size",)),
        ({"max_epochs": 1, "train_size": 0.8, "validation_size": 0.5}, ("validation_size",)),
    ],
    ids=["max_epochs=-1", "max_epochs=0", "batch_size=0", "train_size=0", "sizes_over_1"],
)
def test_train_rejects_bad_arguments_before_training(
    method, contract, fresh_model, arguments, words
):
    model = fresh_model(method, contract)
    with pytest.raises(ValueError, match=contract.words(*words)):
        model.train(**arguments, **QUIET)
    assert not model.is_trained_ and model.history_ is None


def test_train_rejects_a_misspelt_plan_option_before_training(method, contract, fresh_model):
    model = fresh_model(method, contract)
    with pytest.raises(TypeError, match=contract.words("'lrr'", "did you mean 'lr'")):
        model.train(max_epochs=1, plan_kwargs={"lrr": 1e-3}, **QUIET)
    assert model.history_ is None  # the trainer never started


def test_outputs_of_an_untrained_model_are_refused(method, contract, fresh_model):
    model = fresh_model(method, contract)
    with pytest.raises(RuntimeError, match=contract.words("not trained", "train()")):
        model.get_latent_representation()
    with pytest.raises(RuntimeError, match=contract.words("not trained")):
        model.get_normalized_expression(modality="adt")


def test_a_diverging_run_stops_with_the_epoch_and_step(method, contract):
    from mosaicvi.base import TrainingDivergedError

    mdata = contract.build("paired", seed=16).mdata
    contract.setup(method, mdata)
    model = contract.make_model(method, mdata)
    model._prepare_module()
    with torch.no_grad():  # what a diverged update leaves behind
        for parameter in model.module.parameters():
            parameter.fill_(float("nan"))
    with pytest.raises(TrainingDivergedError, match=contract.words("epoch 0", "step", "lr")):
        contract.fit(model, 2)


# ------------------------------------------------------------------ outputs
@pytest.mark.parametrize("library_size", [-5, 0, float("nan"), float("inf"), "lots"])
def test_imputation_rejects_a_bad_library_size(method, trained, contract, library_size):
    run = trained(method, "paired")
    with pytest.raises(ValueError, match=contract.words("library_size")):
        run.model.get_normalized_expression(modality="rna", library_size=library_size)


def test_transform_batch_must_have_measured_the_modality(method, trained, contract):
    run = trained(method, "mosaic")  # batch_2 has no protein
    with pytest.raises(ValueError, match=contract.words("transform_batch")):
        run.model.get_normalized_expression(modality="adt", transform_batch="batch_2")
    with pytest.raises(ValueError, match=contract.words("transform_batch")):
        run.model.get_normalized_expression(modality="adt", transform_batch="no_such_batch")
    if not getattr(run.model, "imputation_is_approximate", False):  # decodes per batch
        with pytest.raises(ValueError, match=contract.words("batch_2", "'adt'", "batch_0")):
            run.model.get_normalized_expression(modality="adt", transform_batch="batch_2")
        values = run.model.get_normalized_expression(modality="adt", transform_batch="batch_0")
        assert np.isfinite(values.to_numpy()).all()


# ------------------------------------------------------------------ load
@pytest.fixture
def saved(method, trained, tmp_path):
    run = trained(method, "paired")
    run.model.save(tmp_path / "model")
    return run, str(tmp_path / "model")


def test_load_names_the_modality_of_another_width(method, contract, saved):
    run, folder = saved
    narrower = _edited(run.case.mdata, "adt", lambda adata: adata[:, 2:].copy())
    with pytest.raises(ValueError, match=contract.words("'adt'", "missing", "load_query_data")):
        method.model_class().load(folder, narrower)


def test_load_points_an_unseen_batch_to_query_mapping(method, contract, saved):
    run, folder = saved
    batches = run.case.mdata.obs["batch"].astype(str).replace({"batch_1": "batch_9"})
    unseen = _with_obs(run.case.mdata, "batch", batches.to_numpy())
    with pytest.raises(ValueError, match=contract.words("'batch_9'", "load_query_data")):
        method.model_class().load(folder, unseen)


@pytest.mark.parametrize("damage", ["empty", "truncated", "random"])
def test_load_names_a_corrupt_model_file(method, contract, saved, damage):
    run, folder = saved
    path = os.path.join(folder, "model.pt")
    content = open(path, "rb").read()
    replacement = {
        "empty": b"",
        "truncated": content[: len(content) // 2],
        "random": np.random.default_rng(0).bytes(2048),
    }[damage]
    with open(path, "wb") as fh:
        fh.write(replacement)
    with pytest.raises(
        ValueError, match=contract.words("model.pt", "corrupt", "save the model again")
    ):
        method.model_class().load(folder, run.case.mdata)


def test_load_names_weights_of_another_architecture(method, contract, saved):
    # what a model saved by a mosaicvi version with other layer names or sizes looks like
    run, folder = saved
    path = os.path.join(folder, "model.pt")
    content = torch.load(path, weights_only=False)
    weights = content["model_state_dict"]
    renamed = next(iter(weights))
    weights[renamed + "_old"] = weights.pop(renamed)
    torch.save(content, path)
    with pytest.raises(
        ValueError, match=contract.words(renamed, "another mosaicvi version", "train it again")
    ):
        method.model_class().load(folder, run.case.mdata)


def test_load_names_a_missing_folder(method, contract, tmp_path):
    with pytest.raises(FileNotFoundError, match=contract.words("does not exist", "model.save")):
        method.model_class().load(str(tmp_path / "nowhere"), None)


# ------------------------------------------------------------------ load_query_data
def test_query_mapping_rejects_an_empty_query(method, query_reference, contract):
    ref = query_reference(method)
    query = contract.build_query(ref, "new_batch")
    with pytest.raises(ValueError, match=contract.words("no cells")):
        method.model_class().load_query_data(query[:0].copy(), ref.model)


def test_query_mapping_rejects_duplicated_feature_names(method, query_reference, contract):
    ref = query_reference(method)
    query = contract.build_query(ref, "new_batch")

    bad = _edited(query, "rna", _with_a_duplicated_feature)
    with pytest.raises(ValueError, match=contract.words("'rna'", "duplicated")):
        method.model_class().load_query_data(bad, ref.model)


def test_a_query_of_known_batches_is_usable_without_training(method, query_reference, contract):
    ref = query_reference(method)
    query = contract.build_query(ref, "rna_only_known_batch")
    cls = method.model_class()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mapped = cls.load_query_data(query, ref.model, unfrozen=False)
    messages = [str(w.message) for w in caught]
    assert any("nothing trains" in m and "unfrozen=True" in m for m in messages), messages
    latent = mapped.get_latent_representation()  # the reference's weights, as they are
    assert latent.shape[0] == query.n_obs and np.isfinite(latent).all()
    with pytest.raises(ValueError, match=contract.words("frozen", "unfrozen=True")):
        mapped.train(max_epochs=1, **QUIET)


def test_the_divergence_guard_reports_where_a_forward_pass_failed():
    from types import SimpleNamespace

    from mosaicvi.base import TrainingDivergedError
    from mosaicvi.base._divergence import DivergenceGuard

    guard = DivergenceGuard()
    guard.on_train_batch_start(SimpleNamespace(current_epoch=3, global_step=41), None, None, 0)
    failure = ValueError("Expected parameter loc (Tensor) ... but found invalid values: nan")
    translated = guard.translate(failure)
    assert isinstance(translated, TrainingDivergedError)
    assert "epoch 3, step 41" in str(translated) and "learning rate" in str(translated)
    assert guard.translate(ValueError("something else")) is None
    assert guard.translate(KeyError("found invalid values")) is None
