"""Training plans: epoch metrics accumulated on the device equal scvi-tools' per-step logging."""

import numpy as np
import pytest
import scvi
import torch
from scvi.train import TrainingPlan

import mosaicvi as mv
from mosaicvi.base import EpochMetricsMixin


@pytest.fixture(scope="module")
def mosaic():
    return mv.data.simulate(
        n_cells=240, n_genes=50, n_proteins=10, n_batches=2, missing={"batch_1": ["adt"]}, seed=3
    )


def _history(model_cls, mosaic, **setup):
    scvi.settings.seed = 0
    mdata = mosaic.copy()
    model_cls.setup_mudata(mdata, modalities=["rna", "adt"], batch_key="batch", **setup)
    model = model_cls(mdata, n_hidden=16)
    model.train(max_epochs=3, batch_size=64, enable_progress_bar=False, check_val_every_n_epoch=1)
    return {key: frame.to_numpy(dtype=float).ravel() for key, frame in model.history.items()}


def _per_step_logging(self, loss_output, metrics, mode, extra_sums=None):
    """scvi-tools' own logging: every metric through Lightning at every step."""
    n_obs = loss_output.n_obs_minibatch
    with torch.no_grad():
        TrainingPlan.compute_and_log_metrics.__wrapped__(self, loss_output, metrics, mode)
        self.log(f"{mode}_loss", loss_output.loss, on_step=False, on_epoch=True, batch_size=n_obs)
        for name, value in (extra_sums or {}).items():
            self.log(
                f"{name}_{mode}", value / n_obs, on_step=False, on_epoch=True, batch_size=n_obs
            )
        if mode == "train" and "kl_weight" in self.loss_kwargs:  # rises: its max is the last
            kl_weight = float(self.loss_kwargs["kl_weight"])
            self.log("kl_weight", kl_weight, on_step=False, on_epoch=True, reduce_fx="max")


@pytest.mark.parametrize(
    ("model_name", "setup"),
    [("MultiVAE", {}), ("CLUE", {}), ("JAE", {"labels_key": "cell_type"})],
)
def test_epoch_metrics_equal_per_step_logging(model_name, setup, mosaic, monkeypatch):
    model_cls = getattr(mv.model, model_name)
    accumulated = _history(model_cls, mosaic, **setup)
    monkeypatch.setattr(EpochMetricsMixin, "compute_and_log_metrics", _per_step_logging)
    monkeypatch.setattr(EpochMetricsMixin, "_log_epoch_metrics", lambda self, mode: None)
    logged = _history(model_cls, mosaic, **setup)

    assert set(accumulated) == set(logged)
    for mode in ("train", "validation"):
        for term in ("elbo", "reconstruction_loss", "kl_local", "kl_global"):
            assert len(accumulated[f"{term}_{mode}"]) == 3
    for key, values in logged.items():
        assert len(accumulated[key]) == len(values), key
        np.testing.assert_allclose(accumulated[key], values, rtol=1e-5, atol=1e-6, err_msg=key)


@pytest.mark.parametrize("model_name", ["MultiVAE", "CLUE"])
def test_bf16_mixed_precision_keeps_the_loss(model_name):
    # autocast runs matrix products in bfloat16; the likelihood sums must stay in float32
    mdata = mv.data.simulate(
        n_cells=300,
        n_genes=60,
        n_proteins=12,
        n_peaks=80,
        modalities=("rna", "adt", "atac"),
        n_batches=2,
        seed=4,
    )
    model_cls = getattr(mv.model, model_name)
    elbo = {}
    for precision in ("32-true", "bf16-mixed"):
        scvi.settings.seed = 0
        data = mdata.copy()
        model_cls.setup_mudata(data, batch_key="batch")
        model = model_cls(data, n_hidden=32)
        model.train(max_epochs=8, batch_size=64, precision=precision, enable_progress_bar=False)
        history = model.history["elbo_validation"].to_numpy(dtype=float).ravel()
        assert np.isfinite(history).all()
        elbo[precision] = history[-1]
    assert abs(elbo["bf16-mixed"] - elbo["32-true"]) < 0.01 * abs(elbo["32-true"])
