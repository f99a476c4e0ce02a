"""Contract: query mapping (new batches, missing modalities, other feature layouts)."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch

QUERY_PLAN = {"weight_decay": 0.1}


def _map(method, contract, ref, query, scenario, **kwargs):
    spec = contract.QUERY_SCENARIOS[scenario]
    warns = spec.get("warns")
    expectation = pytest.warns(UserWarning, match=warns) if warns else contextlib.nullcontext()
    with expectation:
        return method.model_class().load_query_data(query, ref.model, **kwargs)


def test_query_maps_trains_and_leaves_the_user_data_alone(
    method, query_reference, contract, query_scenario
):
    scenario = query_scenario
    ref = query_reference(method)
    spec = contract.QUERY_SCENARIOS[scenario]
    query = contract.build_query(ref, scenario)
    query_before, reference_before = contract.snapshot(query), contract.snapshot(ref.mdata)
    kwargs = {} if spec["unfrozen"] is None else {"unfrozen": spec["unfrozen"]}

    query_model = _map(method, contract, ref, query, scenario, **kwargs)
    assert query_model.is_query and not ref.model.is_query
    contract.fit(query_model, contract.QUERY_EPOCHS["query"], 32, plan_kwargs=QUERY_PLAN)

    n_latent = ref.model.get_latent_representation().shape[1]
    z = query_model.get_latent_representation()
    assert z.shape == (query.n_obs, n_latent)
    assert np.isfinite(z).all()
    for name in ref.mdata.mod:  # every reference modality, also those the query lacks
        values = query_model.get_normalized_expression(modality=name)
        assert list(values.index) == list(query.obs_names), name
        assert list(values.columns) == list(ref.mdata[name].var_names), name
        assert np.isfinite(values.to_numpy()).all(), name
    if spec["features"] == "reordered_missing":  # aligned to the reference, absent genes zero
        aligned = query_model.mdata["rna"]
        assert list(aligned.var_names) == list(ref.mdata["rna"].var_names)
        assert contract.dense(aligned[:, contract.dropped_genes(ref)].X).sum() == 0
        # ... and unmeasured in the query's batch: left out of the likelihood, imputed
        measured = query_model.feature_masks["rna"]
        dropped = contract.dropped_genes(ref)
        assert not measured.loc["batch_2", dropped].any()
        assert measured.loc["batch_2"].drop(dropped).all()
        assert set(ref.model.feature_masks) == set()
        kept = ref.mdata["rna"].var_names[0]
        np.testing.assert_array_equal(
            contract.dense(aligned[query.obs_names, kept].X),
            contract.dense(query["rna"][:, kept].X),
        )
    contract.assert_unchanged(query_before, query, "query")
    contract.assert_unchanged(reference_before, ref.mdata, "reference mdata")


def _assert_holds_reference_weights(state: dict, reference_state: dict, when: str) -> None:
    """Entries of the reference's shape are equal; wider ones keep the reference's columns."""
    assert set(state) == set(reference_state), when
    for name, old in reference_state.items():
        new = state[name]
        if new.shape == old.shape:
            assert torch.equal(new, old), f"reference weight {name} differs {when}"
        else:  # new category columns appended; the reference's columns are untouched
            assert new.dim() == 2 and new.shape[0] == old.shape[0], name
            assert torch.equal(new[:, : old.shape[1]], old), (
                f"reference columns of {name} differ {when}"
            )


def test_frozen_query_training_keeps_reference_weights_bit_identical(
    method, query_reference, contract, new_category_scenario
):
    scenario = new_category_scenario
    ref = query_reference(method)
    reference_state = {
        k: v.detach().cpu().clone() for k, v in ref.model.module.state_dict().items()
    }
    query = contract.build_query(ref, scenario)
    query_model = _map(method, contract, ref, query, scenario, unfrozen=False)
    start = {k: v.detach().cpu().clone() for k, v in query_model.module.state_dict().items()}
    _assert_holds_reference_weights(start, reference_state, "after mapping")
    if not any(p.requires_grad for p in query_model.module.parameters()):
        pytest.skip(
            f"{method.display_name} has no trainable parameter in a frozen query with new "
            "batch categories: there is nothing query training could change"
        )
    contract.fit(query_model, contract.QUERY_EPOCHS["query"], 32, plan_kwargs=QUERY_PLAN)
    trained_state = {k: v.detach().cpu() for k, v in query_model.module.state_dict().items()}

    _assert_holds_reference_weights(trained_state, reference_state, "after query training")
    moved = [k for k in start if not torch.equal(start[k], trained_state[k])]
    assert moved, "query training changed no parameter at all"
    # the reference model itself is untouched
    for name, value in ref.model.module.state_dict().items():
        assert torch.equal(value.detach().cpu(), reference_state[name]), name


def test_query_feature_order_does_not_change_the_mapping(method, query_reference, contract):
    ref = query_reference(method)
    cls = method.model_class()
    in_order = contract.build_query(ref, "rna_only_known_batch")
    reordered = contract.rebuild(
        {k: a[:, ::-1].copy() for k, a in in_order.mod.items()}, in_order.obs
    )
    z = cls.load_query_data(in_order, ref.model).get_latent_representation()
    z_reordered = cls.load_query_data(reordered, ref.model).get_latent_representation()
    np.testing.assert_allclose(z_reordered, z, atol=1e-5)
    # before query training, cells of known batches embed as the reference embeds their RNA
    paired = contract.rebuild(
        {k: ref.truth[k][in_order.obs_names].copy() for k in ref.mdata.mod}, in_order.obs
    )
    z_reference = ref.model.get_latent_representation(paired, modality="rna")
    np.testing.assert_allclose(z, z_reference, atol=1e-5)
