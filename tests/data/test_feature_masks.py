"""Feature masks at the data level: joining panels, registry form, masked likelihoods."""

from __future__ import annotations

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

import mosaicvi as mv
from mosaicvi.data._feature_masks import (
    drop_unmeasured_values,
    measured_matrix,
    merge_unmeasured,
    resolve_feature_masks,
)
from mosaicvi.distributions import get_likelihood


def _dataset(genes, second: str, n: int, seed: int, prefix: str = "c") -> md.MuData:
    rng = np.random.default_rng(seed)
    mods = {
        "rna": ad.AnnData(
            sp.csr_matrix(rng.poisson(2, (n, len(genes))).astype(np.float32)),
            obs=pd.DataFrame(index=[f"{prefix}{i}" for i in range(n)]),
            var=pd.DataFrame(index=genes),
        ),
        second: ad.AnnData(
            sp.csr_matrix(rng.poisson(1, (n, 5)).astype(np.float32)),
            obs=pd.DataFrame(index=[f"{prefix}{i}" for i in range(n)]),
            var=pd.DataFrame(index=[f"{second}{j}" for j in range(5)]),
        ),
    }
    with md.set_options(pull_on_update=False):
        mdata = md.MuData(mods)
    mdata.obs["batch"] = np.where(np.arange(n) % 2 == 0, "s1", "s2")
    mdata.obs["cell_type"] = "T"
    return mdata


def test_concat_mosaic_joins_panels_and_masks_the_missing_genes():
    cite = _dataset(["g0", "g1", "g2", "g3"], "adt", 6, 0)
    multiome = _dataset(["g2", "g3", "g4"], "atac", 4, 1)
    before = cite["rna"].X.toarray().copy()
    mosaic, masks = mv.data.concat_mosaic({"cite": cite, "multiome": multiome})

    assert list(mosaic["rna"].var_names) == ["g0", "g1", "g2", "g3", "g4"]
    assert mosaic["adt"].n_obs == 6 and mosaic["atac"].n_obs == 4 and mosaic.n_obs == 10
    assert mosaic.obs_names[0].startswith("cite:")  # the cell names collided
    assert set(mosaic.obs["batch"]) == {"cite:s1", "cite:s2", "multiome:s1", "multiome:s2"}
    assert list(masks) == ["rna"]  # the protein and ATAC panels are each one dataset's
    rna = masks["rna"]
    assert not rna.loc[["cite:s1", "cite:s2"], "g4"].any()
    assert not rna.loc[["multiome:s1", "multiome:s2"], ["g0", "g1"]].to_numpy().any()
    assert rna.loc[:, ["g2", "g3"]].to_numpy().all()
    x = mosaic["rna"][["cite:c0", "multiome:c0"]].X.toarray()
    np.testing.assert_array_equal(x[0, :4], before[0])
    assert x[0, 4] == 0 and (x[1, :2] == 0).all()
    np.testing.assert_array_equal(cite["rna"].X.toarray(), before)  # the input is untouched

    mv.model.MultiVAE.setup_mudata(mosaic, batch_key="batch", feature_masks=masks)
    model = mv.model.MultiVAE(mosaic, n_hidden=8, n_latent=2)
    pd.testing.assert_frame_equal(model.feature_masks["rna"], rna.astype(bool))


def test_concat_mosaic_needs_two_datasets():
    with pytest.raises(ValueError, match="two or more"):
        mv.data.concat_mosaic({"only": _dataset(["g0"], "adt", 2, 0)})


def test_registry_form_round_trip_and_merge():
    var_names = {"rna": pd.Index(["a", "b", "c"])}
    frame = pd.DataFrame(
        [[True, False, True], [True, True, True]], index=["x", "y"], columns=["c", "b", "a"]
    )  # columns in another order than the modality's
    resolved = resolve_feature_masks({"rna": frame}, var_names, ["x", "y"], "batch")
    assert resolved == {"rna": {"x": ["b"]}}
    table = measured_matrix(resolved["rna"], ["y", "x"], var_names["rna"])
    np.testing.assert_array_equal(table, [[True, True, True], [True, False, True]])
    merged = merge_unmeasured(resolved, {"rna": {"x": ["b", "c"], "z": ["a"]}})
    assert merged == {"rna": {"x": ["b", "c"], "z": ["a"]}}


def test_drop_unmeasured_values_counts_and_zeroes():
    x = sp.csr_matrix(np.array([[1, 2, 0], [3, 0, 4], [5, 6, 7]], dtype=np.float32))
    measured = np.array([[True, True, True], [False, True, False]])
    n = drop_unmeasured_values(x, np.array([0, 1, 1]), measured, chunk_rows=2)
    assert n == 4
    np.testing.assert_array_equal(x.toarray(), [[1, 2, 0], [0, 0, 0], [0, 6, 0]])


@pytest.mark.parametrize("name", ["nb", "zinb", "poisson", "bernoulli", "normal"])
def test_masked_likelihood_scores_measured_features_only(name):
    """Masked log-likelihood = that of the measured sub-panel with renormalised proportions."""
    torch.manual_seed(0)
    lik = get_likelihood(name)
    head = lik.make_head(8, 6)
    params = head(torch.randn(4, 8))
    mask = torch.tensor([[1, 1, 0, 1, 0, 1]] * 4, dtype=torch.float32)
    x = torch.poisson(torch.full((4, 6), 3.0))
    library = torch.log(x.sum(-1, keepdim=True) + 1)
    restricted = lik.restrict(params, mask)
    masked = lik.log_likelihood(lik.distribution(restricted, library), x, feature_mask=mask)

    keep = mask[0] > 0
    sub = {}
    for key, value in params.items():
        sub[key] = value[:, keep] if value.shape[-1] == 6 else value
    if "log_scale" in sub:  # the sub-panel's own proportions
        sub["log_scale"] = torch.log_softmax(sub["log_scale"], dim=-1)
    direct = lik.log_likelihood(lik.distribution(sub, library), x[:, keep])
    torch.testing.assert_close(masked, direct, rtol=1e-5, atol=1e-4)
    if "log_scale" in restricted:
        total = restricted["log_scale"].exp().mul(mask).sum(-1)
        torch.testing.assert_close(total, torch.ones(4))
