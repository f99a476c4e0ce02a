"""Train registered models for one epoch each with Lightning DDP on 2 CPU processes (gloo).

Usage: python tests/contract/ddp_worker.py METHOD[,METHOD...] OUT_DIR (names of
``mosaicvi.registry``). Lightning re-launches this script once per extra process, so everything
here runs in every rank; only rank 0 writes the outputs (``{name}_{method}.npz``). With
``MOSAICVI_BACKED_FILE`` set, each method also trains on that ``.h5mu`` file opened backed (each
process reads its own shard of it). The processes are launched once and every fit reuses them.
"""

import inspect
import os
import sys

import numpy as np
import torch

import mosaicvi as mv


def simulated():
    """The data every DDP test trains on."""
    return mv.data.simulate(n_cells=240, n_genes=50, n_proteins=8, n_batches=2, seed=0)


def train_and_save(method_name: str, mdata, out_path: str) -> None:
    cls = mv.registry.get(method_name).model_class()
    setup_args = inspect.signature(cls.setup_mudata).parameters
    cls.setup_mudata(
        mdata,
        batch_key="batch",
        **({"labels_key": "cell_type"} if "labels_key" in setup_args else {}),
    )
    small = {"n_hidden": 16, "n_components": 10}
    init_args = inspect.signature(cls.__init__).parameters
    model = cls(mdata, **{k: v for k, v in small.items() if k in init_args})
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
        np.savez(
            out_path,
            z=z,
            n_latent=int(model.module.n_latent),
            steps=int(model.trainer.global_step),
            n_optimizers=len(model.trainer.optimizers),
            data_loader=model.data_loader_,
        )


def main(method_names: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    backed_file = os.environ.get("MOSAICVI_BACKED_FILE")
    for method_name in method_names.split(","):
        out = os.path.join(out_dir, f"result_{method_name}.npz")
        train_and_save(method_name, simulated(), out)
        if backed_file:
            mdata = mv.data.read_backed(backed_file)
            train_and_save(method_name, mdata, os.path.join(out_dir, f"backed_{method_name}.npz"))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
