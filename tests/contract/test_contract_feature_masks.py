"""Contract: per-batch feature masks (batches measured with different feature panels)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from scvi import REGISTRY_KEYS

#: rna genes 0-9 unmeasured in batch_1, proteins 0-2 in batch_2
UNMEASURED = {"rna": ("batch_1", slice(0, 10)), "adt": ("batch_2", slice(0, 3))}


def _case(seed: int = 7):
    import mosaicvi as mv

    return mv.data.simulate(n_cells=180, n_genes=40, n_proteins=10, n_batches=3, seed=seed)


def _masks(mdata) -> dict[str, pd.DataFrame]:
    batches = sorted(mdata.obs["batch"].astype(str).unique())
    masks = {}
    for name, (batch, features) in UNMEASURED.items():
        frame = pd.DataFrame(True, index=batches, columns=mdata[name].var_names)
        frame.loc[batch, frame.columns[features]] = False
        masks[name] = frame
    return masks


def _with_noise_where_unmeasured(mdata, seed: int = 0):
    """A copy of ``mdata`` with large counts in every unmeasured entry."""
    rng = np.random.default_rng(seed)
    noisy = mdata.copy()
    for name, (batch, features) in UNMEASURED.items():
        adata = noisy.mod[name]
        x = np.asarray(adata.X.toarray() if sp.issparse(adata.X) else adata.X, dtype=np.float32)
        rows = np.flatnonzero(noisy.obs.loc[adata.obs_names, "batch"].astype(str) == batch)
        x[np.ix_(rows, np.arange(x.shape[1])[features])] = rng.poisson(
            50, (len(rows), len(range(*features.indices(x.shape[1]))))
        )
        adata.X = sp.csr_matrix(x)
    return noisy


def _first_minibatch(model, noise: float | None = None, seed: int = 0) -> dict:
    loader = model._make_data_loader(
        adata=model.adata, indices=np.arange(model.adata.n_obs), batch_size=model.adata.n_obs
    )
    tensors = dict(next(iter(loader)))
    if noise is not None:  # counts in every unmeasured entry of the minibatch
        generator = torch.Generator().manual_seed(seed)
        batch = tensors[REGISTRY_KEYS.BATCH_KEY].long().ravel()
        x = tensors[REGISTRY_KEYS.X_KEY].clone()
        for k, measured in model.module.feature_masks(batch).items():
            s = model.module.slices[k]
            fill = torch.poisson(torch.full(measured.shape, noise), generator=generator)
            x[:, s] = torch.where(measured > 0, x[:, s], fill)
        tensors[REGISTRY_KEYS.X_KEY] = x
    return tensors


def _loss(model, tensors: dict) -> float:
    model.module.eval()
    torch.manual_seed(0)
    with torch.no_grad():
        inference, _, losses = model.module(tensors)
    return float(losses.loss), inference["qz_mean"]


def test_unmeasured_values_never_reach_the_model(method, contract):
    """Counts stored in unmeasured entries change neither the loss nor the latent."""
    mdata = _case()
    contract.setup(method, mdata, feature_masks=_masks(mdata))
    model = contract.fit(contract.make_model(method, mdata), 2, 64)
    assert set(model.feature_masks) == {"rna", "adt"}
    frame = model.feature_masks["rna"]
    assert not frame.loc["batch_1"].iloc[:10].any() and frame.loc["batch_1"].iloc[10:].all()
    assert frame.loc[["batch_0", "batch_2"]].to_numpy().all()

    clean = _first_minibatch(model)
    noisy = _first_minibatch(model, noise=30.0)
    assert not torch.equal(clean[REGISTRY_KEYS.X_KEY], noisy[REGISTRY_KEYS.X_KEY])
    loss_clean, z_clean = _loss(model, clean)
    loss_noisy, z_noisy = _loss(model, noisy)
    assert np.isfinite(loss_clean)
    assert loss_noisy == pytest.approx(loss_clean, rel=1e-5, abs=1e-4)
    torch.testing.assert_close(z_noisy, z_clean, rtol=1e-5, atol=1e-5)

    # the same through setup: values stored in the user's unmeasured entries are ignored
    noisy_mdata = _with_noise_where_unmeasured(mdata)
    before = contract.snapshot(noisy_mdata)
    contract.setup(method, noisy_mdata, feature_masks=_masks(noisy_mdata))
    other = contract.make_model(method, noisy_mdata)
    other.module.load_state_dict(model.module.state_dict())
    other.is_trained_ = True  # the trained model's weights
    np.testing.assert_allclose(
        other.get_latent_representation(), model.get_latent_representation(), atol=1e-5
    )
    contract.assert_unchanged(before, noisy_mdata)


def test_masks_change_what_the_model_scores(method, contract):
    """Without masks, the same weights score the unmeasured zeros: the loss differs."""
    mdata = _case()
    contract.setup(method, mdata, feature_masks=_masks(mdata))
    masked = contract.make_model(method, mdata)
    masked._prepare_module()
    plain_mdata = mdata.copy()
    contract.setup(method, plain_mdata)
    plain = contract.make_model(method, plain_mdata)
    plain.module.load_state_dict(masked.module.state_dict())
    plain._prepare_module()
    assert plain.feature_masks == {}
    loss_masked, _ = _loss(masked, _first_minibatch(masked))
    loss_plain, _ = _loss(plain, _first_minibatch(plain))
    assert abs(loss_masked - loss_plain) > 1e-3 * abs(loss_plain)


def test_masks_are_saved_and_imputed(method, contract, tmp_path):
    mdata = _case()
    contract.setup(method, mdata, feature_masks=_masks(mdata))
    model = contract.fit(contract.make_model(method, mdata), 2, 64)
    model.save(tmp_path / "model", save_anndata=True)
    loaded = method.model_class().load(tmp_path / "model")
    for name, frame in model.feature_masks.items():
        pd.testing.assert_frame_equal(loaded.feature_masks[name], frame)
    np.testing.assert_allclose(
        loaded.get_latent_representation(), model.get_latent_representation(), atol=1e-5
    )
    if not hasattr(model, "get_normalized_expression"):
        return
    in_batch_1 = mdata.obs_names[mdata.obs["batch"].astype(str) == "batch_1"]
    values = model.get_normalized_expression(modality="rna", indices=None)
    imputed = values.loc[in_batch_1].iloc[:, :10].to_numpy()
    assert np.isfinite(imputed).all() and (imputed > 0).all()


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda m: {"protein": m["rna"]}, r"(?s)'protein'.*not registered modalities"),
        (lambda m: {"rna": m["rna"].drop(index="batch_2")}, r"(?s)lacks 1 batch .*batch_2"),
        (
            lambda m: {"rna": m["rna"].rename(index={"batch_2": "batch_9"})},
            r"(?s)not among the categories of mdata.obs\['batch'\].*batch_9",
        ),
        (lambda m: {"rna": m["rna"].iloc[:, 1:]}, r"(?s)lacks 1 feature "),
        (lambda m: {"rna": m["rna"].astype(float) * 0.5}, r"True \(measured\) / False"),
        (
            lambda m: {"rna": m["rna"].where(m["rna"].index.to_series() != "batch_0", False)},
            r"(?s)every feature of 'rna' as unmeasured in batch 'batch_0'",
        ),
        (lambda m: {"rna": m["rna"].to_numpy()}, r"must be a pandas.DataFrame"),
    ],
    ids=["modality", "missing_batch", "unknown_batch", "features", "values", "empty", "type"],
)
def test_bad_feature_masks_are_refused(method, contract, edit, message):
    mdata = _case()
    before = contract.snapshot(mdata)
    with pytest.raises((ValueError, TypeError), match=message):
        contract.setup(method, mdata, feature_masks=edit(_masks(mdata)))
    contract.assert_unchanged(before, mdata)


def test_feature_masks_need_a_batch_key(method, contract):
    mdata = _case()
    setup = dict(contract.setup_kwargs(method), batch_key=None)
    with pytest.raises(ValueError, match="need `batch_key`"):
        method.model_class().setup_mudata(mdata, feature_masks=_masks(mdata), **setup)
