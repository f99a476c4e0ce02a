"""Train a model for one epoch with Lightning DDP on 2 CPU processes (gloo); run by a test.

Usage: python tests/ddp_worker.py MODEL OUT_DIR. Lightning re-launches this script once per
extra process, so everything here runs in every rank; only rank 0 writes the outputs.
"""

import os
import sys

import numpy as np
import torch

import mosaicvi as mv


def main(model_name: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    mdata = mv.data.simulate(n_cells=240, n_genes=50, n_proteins=8, n_batches=2, seed=0)
    cls = getattr(mv.model, model_name)
    kwargs = {"labels_key": "cell_type"} if model_name == "JAE" else {}
    cls.setup_mudata(mdata, batch_key="batch", **kwargs)
    model = cls(mdata, n_hidden=16) if model_name != "JAE" else cls(mdata, n_components=10)
    model.train(
        max_epochs=1,
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        batch_size=32,
        early_stopping=True,
        enable_progress_bar=False,
        data_loader=os.environ.get("MOSAICVI_DATA_LOADER", "auto"),
    )
    rank = int(os.environ.get("LOCAL_RANK", 0))
    if rank == 0:
        z = model.get_latent_representation()
        n_steps = int(model.trainer.global_step)
        np.savez(os.path.join(out_dir, "result.npz"), z=z, steps=n_steps)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
