"""The ``"shared"`` ELBO estimator of MultiVAE and CLUE: one decoding per step, same expectation.

Both models train an objective with two ELBOs per multimodal cell (MultiVAE: joint + subset;
CLUE: self + cross). ``elbo_estimator="shared"`` decodes one of them per cell, chosen at random
and reweighted; ``"separate"`` decodes both. The two must agree in expectation.
"""

import numpy as np
import pytest
import torch

import mosaicvi as mv
from mosaicvi.model import CLUE, MultiVAE

# dropout off: train() mode then changes only the estimator, not the network
MODELS = {
    "MultiVAE": (MultiVAE, {"n_hidden": 32, "n_latent": 8, "dropout_rate": 0.0}),
    "CLUE": (CLUE, {"n_hidden": 32, "n_latent": 6, "dropout_rate": 0.0}),
}


@pytest.fixture(scope="module")
def mosaic():
    return mv.data.simulate(
        n_cells=300, n_genes=60, n_proteins=12, n_batches=3, missing={"batch_2": ["adt"]}, seed=1
    )


def _trained(name, mosaic, **options):
    cls, small = MODELS[name]
    cls.setup_mudata(mosaic, modalities=["rna", "adt"], batch_key="batch")
    model = cls(mosaic, **small, **options)
    model.train(max_epochs=5, batch_size=64, enable_progress_bar=False)
    return model


def _losses(module, batch, estimator: str, n_draws: int) -> tuple[np.ndarray, int]:
    """Training-mode losses of ``n_draws`` forward passes, and the decodings per pass."""
    module.elbo_estimator = estimator
    module.train()
    calls = []
    decode_all = module.decode_all
    module.decode_all = lambda *a, **k: calls.append(1) or decode_all(*a, **k)
    try:
        torch.manual_seed(0)
        with torch.no_grad():
            losses = [
                module(batch, loss_kwargs={"kl_weight": 0.5})[2].loss.item() for _ in range(n_draws)
            ]
    finally:
        del module.decode_all
    return np.array(losses), len(calls) // n_draws


@pytest.mark.parametrize("name", list(MODELS))
def test_shared_estimator_decodes_once_and_matches_separate_in_expectation(name, mosaic):
    model = _trained(name, mosaic)
    batch = next(iter(model._make_data_loader(adata=model.adata, batch_size=400)))
    shared, shared_calls = _losses(model.module, batch, "shared", n_draws=150)
    separate, separate_calls = _losses(model.module, batch, "separate", n_draws=150)
    assert (shared_calls, separate_calls) == (1, 2)
    # shared draws differ (the decoded posterior is random), their mean is the separate one's
    assert shared.std() > separate.std()
    standard_error = np.sqrt(shared.var() / len(shared) + separate.var() / len(separate))
    assert abs(shared.mean() - separate.mean()) < 4 * standard_error
    assert abs(shared.mean() - separate.mean()) < 0.01 * abs(separate.mean())


@pytest.mark.parametrize("name", list(MODELS))
def test_validation_loss_uses_the_separate_estimator(name, mosaic):
    model = _trained(name, mosaic)
    batch = next(iter(model._make_data_loader(adata=model.adata, batch_size=400)))
    model.module.eval()
    inference_outputs, generative_outputs, _ = model.module(batch)
    assert "z_decoded" not in inference_outputs
    assert "px_decoded" not in generative_outputs


@pytest.mark.parametrize("name", list(MODELS))
def test_unknown_estimator_is_refused(name, mosaic):
    cls, small = MODELS[name]
    cls.setup_mudata(mosaic, modalities=["rna", "adt"], batch_key="batch")
    with pytest.raises(ValueError, match="elbo_estimator must be 'shared' or 'separate'"):
        cls(mosaic, **small, elbo_estimator="both")
