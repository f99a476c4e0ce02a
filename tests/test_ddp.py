"""Data-parallel training: Lightning DDP on 2 CPU processes (gloo), one epoch per model."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch.distributed as dist

WORKER = Path(__file__).resolve().parent / "ddp_worker.py"


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="no gloo")
@pytest.mark.parametrize(
    ("model", "n_latent", "steps_per_batch"),
    [
        ("MultiVAE", 16, 1),
        ("CLUE", 40, 2),  # two optimizers: module and discriminator steps both count
        ("JAE", 15, 1),
    ],
)
def test_ddp_two_cpu_processes_train_and_embed(model, n_latent, steps_per_batch, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run(
        [sys.executable, str(WORKER), model, str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    result = np.load(tmp_path / "result.npz")
    assert result["z"].shape == (240, n_latent)
    assert np.isfinite(result["z"]).all()
    # 216 training cells sharded over 2 processes in minibatches of 32: 4 steps each (7 without
    # the distributed sampler)
    assert int(result["steps"]) == 4 * steps_per_batch
