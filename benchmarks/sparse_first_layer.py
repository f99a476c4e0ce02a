"""Does an encoder's first layer train faster on the sparse minibatch than on the dense one?

Times one forward and backward pass of the first layer of an encoder (``n_features`` inputs plus
two covariate columns -> 128 hidden units, minibatch 128, input transform ``log1p``) on CPU, three
ways:

- ``dense``: the minibatch as a dense matrix times the weight (what the encoders do);
- ``sparse CSR``: ``torch.sparse.mm`` of the minibatch as a CSR tensor by the weight;
- ``embedding_bag``: the weight's rows of the non-zero features, weighted by their values and
  summed per cell (``torch.nn.functional.embedding_bag``).

The sparse forms include building the sparse minibatch from the dense one, as a model would
have to. Shapes: RNA-like (4,000 genes, 10% non-zero) and ATAC-like (50,000 peaks, 2.4%).

Usage::

    .venv/bin/python benchmarks/sparse_first_layer.py --threads 2
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import torch
import torch.nn.functional as F

SHAPES = {"RNA-like": (4000, 0.10), "ATAC-like": (50_000, 0.024)}
N_CELLS, N_HIDDEN, N_COVARIATES = 128, 128, 2


def _minibatch(n_features: int, density: float, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    x = np.zeros((N_CELLS, n_features), dtype=np.float32)
    mask = rng.random(x.shape) < density
    x[mask] = rng.integers(1, 6, size=int(mask.sum()))
    return torch.from_numpy(x)


def _ways(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> dict:
    n = x.shape[1]
    covariates = torch.zeros(N_CELLS, N_COVARIATES)
    covariates[:, 0] = 1.0

    def dense():
        h = torch.cat([torch.log1p(x), covariates], dim=1)
        F.linear(h, weight, bias).sum().backward()

    def sparse_csr():
        csr = x.to_sparse_csr()
        values = torch.log1p(csr.values())
        csr = torch.sparse_csr_tensor(csr.crow_indices(), csr.col_indices(), values, csr.shape)
        out = torch.sparse.mm(csr, weight[:, :n].t()) + covariates @ weight[:, n:].t() + bias
        out.sum().backward()

    def embedding_bag():
        rows, cols = x.nonzero(as_tuple=True)
        offsets = torch.searchsorted(rows, torch.arange(N_CELLS))
        table = weight[:, :n].t().contiguous()
        out = F.embedding_bag(
            cols, table, offsets, mode="sum", per_sample_weights=torch.log1p(x[rows, cols])
        )
        (out + covariates @ weight[:, n:].t() + bias).sum().backward()

    return {"dense": dense, "sparse CSR": sparse_csr, "embedding_bag": embedding_bag}


def _ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=30)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message=".*[Ss]parse.*")
    print(f"ms per forward + backward, median of {args.repeats}, {args.threads} threads")
    print("| data | features | non-zero | dense | sparse CSR | embedding_bag |")
    print("|---|---|---|---|---|---|")
    for name, (n_features, density) in SHAPES.items():
        x = _minibatch(n_features, density)
        weight = torch.randn(N_HIDDEN, n_features + N_COVARIATES, requires_grad=True)
        bias = torch.zeros(N_HIDDEN, requires_grad=True)
        times = {k: _ms(fn, args.repeats) for k, fn in _ways(x, weight, bias).items()}
        cells = " | ".join(f"{times[k]:.1f}" for k in ("dense", "sparse CSR", "embedding_bag"))
        print(f"| {name} | {n_features:,} | {density:.1%} | {cells} |")


if __name__ == "__main__":
    main()
