"""Contract: every registered model sets up and trains on paired, mosaic and 3-modality data."""

from __future__ import annotations

import numpy as np
import pytest


def test_setup_registers_every_modality_and_its_features(method, trained, contract, shape):
    run = trained(method, shape)
    model, mdata = run.model, run.case.mdata
    assert model.modalities == list(mdata.mod)
    for name in mdata.mod:
        assert list(model.modality_var_names(name)) == list(mdata[name].var_names), name
    # the data really is a mosaic where the shape hides cells (and paired where it does not)
    n_missing = sum(mdata.n_obs - mdata[name].n_obs for name in mdata.mod)
    assert (n_missing > 0) == bool(contract.SHAPES[shape]["hide"])


def test_training_loss_decreases(method, trained, contract, shape):
    run = trained(method, shape)
    assert "train_loss" in run.model.history, sorted(run.model.history)
    loss = run.model.history["train_loss"].to_numpy(dtype=float).ravel()
    assert len(loss) == contract.SHAPES[shape]["epochs"]
    assert np.isfinite(loss).all()
    print(f"{method.name} {shape}: train_loss last/first {loss[-1] / loss[0]:.2f}")
    # measured last/first: 0.37 (JAE) to 0.89 (MultiVAE, paired) over the models and shapes
    assert loss[-1] < 0.95 * loss[0], f"train_loss {loss[0]:.4g} -> {loss[-1]:.4g}"


def test_epoch_losses_are_logged_by_the_plan(method, trained, contract):
    # the plan's training and validation steps sum the losses into epoch means
    run = trained(method, "paired")
    history = run.model.history
    keys = ["train_loss", "elbo_train"]
    if "elbo_validation" in history:  # where the model's defaults ran validation epochs
        keys.append("validation_loss")
        assert len(history["validation_loss"]) == len(history["elbo_validation"])
    for key in keys:
        assert key in history, (key, sorted(history))
        assert np.isfinite(history[key].to_numpy(dtype=float)).all(), key
    assert len(history["train_loss"]) == contract.SHAPES["paired"]["epochs"]


def test_setup_rejects_a_batch_key_that_is_not_a_column(method, contract):
    case = contract.build("paired")
    with pytest.raises(KeyError, match=contract.words("donor", "column")):
        contract.setup(method, case.mdata, batch_key="donor")


def test_model_on_an_unregistered_mudata_is_refused(method, contract):
    case = contract.build("paired", seed=101, cell_prefix="fresh_")  # never set up anywhere
    with pytest.raises(ValueError, match=contract.words("regist", "setup_mudata")):
        method.model_class()(case.mdata, **contract.init_kwargs(method))


def test_setup_anndata_points_to_setup_mudata(method, contract):
    adata = contract.build("paired").mdata["rna"]
    with pytest.raises(TypeError, match="setup_mudata"):
        method.model_class().setup_anndata(adata)


def test_registry_holds_the_modality_layout_and_no_per_cell_field(method, trained):
    # the layout is stored once, in the registry (no "rna:GENE" parsing), and reaches no loader
    from mosaicvi.base import ModalitiesField, registered_specs

    run = trained(method, "paired")
    model, mdata = run.model, run.case.mdata
    assert registered_specs(model.registry_) == model.modality_specs
    assert model.summary_stats["n_modalities"] == len(mdata.mod)
    assert "modalities" not in model.adata_manager.data_registry
    for name in model.modalities:
        assert list(model.modality_var_names(name)) == list(mdata[name].var_names)
    field = ModalitiesField(model.modality_specs, {n: mdata[n].var_names for n in mdata.mod})
    assert field.get_data_registry() == {}
    assert field.register_field(model.adata)["specs"] == [s.to_dict() for s in model.modality_specs]


def test_registered_models_handle_every_second_modality(method):
    from mosaicvi import registry

    assert method.kind == "model" and registry.get(method.display_name) == method
    assert all(method.handles(second) for second in ("adt", "atac"))
    for second in ("adt", "atac"):
        assert registry.peer_for(second).handles(second)
