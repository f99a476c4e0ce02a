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


def _run_worker(method_names: list[str], out_dir: Path, **env_extra) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", **env_extra)
    proc = subprocess.run(
        [sys.executable, str(WORKER), ",".join(method_names), str(out_dir)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]


needs_gloo = pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(), reason="no gloo"
)


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    """Every registered model trained by one 2-process launch (starting processes is the cost)."""
    sys.path.insert(0, str(WORKER.parent))
    from ddp_worker import simulated

    out_dir = tmp_path_factory.mktemp("ddp")
    path = out_dir / "data.h5mu"
    mdata = simulated()
    for mod in mdata.mod.values():
        mod.layers.clear()
    mdata.write(path)
    _run_worker(mv.registry.names("model"), out_dir, MOSAICVI_BACKED_FILE=str(path))
    return out_dir


@needs_gloo
@pytest.mark.parametrize("method_name", mv.registry.names("model"))
def test_ddp_two_cpu_processes_train_and_embed_in_memory_and_from_a_backed_file(
    method_name, ddp_results
):
    for name, loader, steps in (("result", "in_memory", 4), ("backed", "out_of_core", 4)):
        result = dict(np.load(ddp_results / f"{name}_{method_name}.npz"))
        assert str(result["data_loader"]) == loader
        assert result["z"].shape == (240, int(result["n_latent"]))
        assert np.isfinite(result["z"]).all()
        # In memory: 216 training cells sharded over 2 processes in minibatches of 32 give 4
        # steps each (7 without the distributed sampler). From the file: 4 blocks of 64 cells
        # (the last one of 24), two per process; the process with the short block repeats 40
        # of its cells, so both train on 128 cells, in 4 minibatches. A plan with a
        # discriminator counts both optimizers' steps.
        assert int(result["steps"]) == steps * int(result["n_optimizers"]), name
