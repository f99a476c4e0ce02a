"""Contract: the user's MuData is only read, never used stale, and models do not keep it alive."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest


# ------------------------------------------------------------------ the user's MuData is only read
def test_user_mudata_is_never_modified(method, contract, tmp_path):
    case = contract.build("mosaic")
    mdata = case.mdata
    before = contract.snapshot(mdata)
    cls = method.model_class()

    contract.setup(method, mdata)
    contract.assert_unchanged(before, mdata, "after setup_mudata")
    model = contract.make_model(method, mdata)
    contract.fit(model, 1)
    contract.assert_unchanged(before, mdata, "after training")

    model.get_latent_representation()
    for name in mdata.mod:
        model.get_latent_representation(indices=case.observed_positions(name), modality=name)
        model.get_normalized_expression(modality=name)
        model.get_normalized_expression(modality=name, library_size=1e4)
    model.get_latent_representation(mdata.copy())
    contract.assert_unchanged(before, mdata, "after outputs")

    model.save(tmp_path / "plain")
    model.save(tmp_path / "with_data", save_anndata=True)
    contract.assert_unchanged(before, mdata, "after save")
    loaded = cls.load(str(tmp_path / "plain"), mdata)
    loaded.get_latent_representation()
    for name in mdata.mod:
        loaded.get_normalized_expression(modality=name)
    contract.assert_unchanged(before, mdata, "after load")


# ------------------------------------------------------------------ edits after setup_mudata
def _live_or_explained(contract, build_and_read):
    """Run ``build_and_read``; an exception is acceptable only if it names the edit."""
    try:
        return build_and_read()
    except Exception as error:  # noqa: BLE001 - any error type, but it must explain itself
        message = f"{type(error).__name__}: {error}"
        assert contract.EDIT_MESSAGE.search(str(error)), (
            f"the MuData was edited after setup_mudata and the model raised an error that does "
            f"not say so: {message}"
        )
        return None


def test_values_edited_after_setup_are_not_used_stale(method, contract):
    mdata = contract.build("paired").mdata
    contract.setup(method, mdata)
    counts = mdata["rna"].X
    counts.data[:] = np.random.default_rng(0).permutation(counts.data)  # in place, still counts

    def build_and_read():
        model = contract.make_model(method, mdata)
        contract.fit(model, 1)
        return model, model.get_latent_representation()

    result = _live_or_explained(contract, build_and_read)
    if result is None:
        return  # refused with an error naming the edit: allowed
    model, z_used = result
    z_live = model.get_latent_representation(mdata.copy())  # assembled from the live values
    np.testing.assert_allclose(
        z_used,
        z_live,
        atol=1e-5,
        err_msg="the model trained and embeds a stale copy of X from before the edit",
    )


def test_cells_removed_after_setup_are_not_used_stale(method, contract):
    import muon

    mdata = contract.build("paired").mdata
    contract.setup(method, mdata)
    muon.pp.filter_obs(mdata, mdata.obs_names[::2])  # in place: half of the cells remain
    first = next(iter(mdata.mod))

    def build_and_read():
        model = contract.make_model(method, mdata)
        contract.fit(model, 1)
        return model.get_normalized_expression(modality=first)

    values = _live_or_explained(contract, build_and_read)
    if values is None:
        return  # refused with an error naming the edit: allowed
    assert list(values.index) == list(mdata.obs_names), (
        f"the model used {len(values)} cells; the MuData now has {mdata.n_obs}"
    )


# ------------------------------------------------------------------ memory ownership
def _train_and_forget(methods, contract, mdata) -> dict[str, weakref.ref]:
    """Train one model per method on ``mdata``; return weak references to their AnnData."""
    models = []
    for method in methods:
        contract.setup(method, mdata)
        model = contract.make_model(method, mdata)
        contract.fit(model, 1)
        model.get_latent_representation()
        models.append((method.name, model))
    refs = {name: weakref.ref(model.adata) for name, model in models}
    del models, model
    return refs


def test_a_deleted_model_releases_its_data(method, contract):
    mdata = contract.build("paired").mdata  # the user keeps the MuData
    refs = _train_and_forget([method], contract, mdata)
    gc.collect()
    alive = [name for name, ref in refs.items() if ref() is not None]
    assert not alive, f"the internal AnnData of {alive} outlives the deleted model"


def test_models_sharing_one_mudata_release_their_data(contract):
    if len(contract.MODELS) < 2:
        pytest.skip("only one model is registered")
    mdata = contract.build("paired").mdata
    refs = _train_and_forget(contract.MODELS, contract, mdata)
    gc.collect()
    alive = [name for name, ref in refs.items() if ref() is not None]
    assert not alive, f"the internal AnnData of {alive} outlives the deleted models"
