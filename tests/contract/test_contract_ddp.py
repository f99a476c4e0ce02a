"""Data-parallel training of every registered model: Lightning DDP on 2 CPU processes (gloo)."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch.distributed as dist

import mosaicvi as mv

WORKER = Path(__file__).resolve().parent / "ddp_worker.py"


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="no gloo")
@pytest.mark.parametrize("method_name", mv.registry.names("model"))
def test_ddp_two_cpu_processes_train_and_embed(method_name, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run(
        [sys.executable, str(WORKER), method_name, str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    result = np.load(tmp_path / "result.npz")
    assert result["z"].shape == (240, int(result["n_latent"]))
    assert np.isfinite(result["z"]).all()
    # 216 training cells sharded over 2 processes in minibatches of 32: 4 steps each (7 without
    # the distributed sampler); a plan with a discriminator counts both optimizers' steps
    assert int(result["steps"]) == 4 * int(result["n_optimizers"])
